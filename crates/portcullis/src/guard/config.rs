//! `GuardConfig`: what the guard enforces, as loaded from TOML or built in
//! code. Validated once, when the [`Guard`](super::Guard) is built; errors
//! name the route and the field.

use portcullis_core::AuthMethod;
use portcullis_core::authz::roles::RoleDef;
use portcullis_core::authz::routes::{Effect, Requirements};
use portcullis_core::ratelimit::{ClientIpConfig, RuleConfig};
use serde::Deserialize;

/// Where a route looks for credentials, in the order configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialSource {
    /// `Authorization: Bearer <JWT>`: the local key set or a trusted issuer.
    Jwt,
    /// `Authorization: Bearer pck_…` or the configured API-key header.
    ApiKey,
    /// App id and secret headers (`x-app-id` / `x-app-secret` by default).
    App,
    /// An HMAC-signed service request (`x-portcullis-*` headers).
    Signed,
    /// No credentials: allowed only where listed, and only when none is presented.
    Anonymous,
}

impl CredentialSource {
    /// The auth method a credential of this source proves.
    pub fn auth_method(self) -> AuthMethod {
        match self {
            Self::Jwt => AuthMethod::Jwt,
            Self::ApiKey => AuthMethod::ApiKey,
            Self::App => AuthMethod::App,
            Self::Signed => AuthMethod::SignedRequest,
            Self::Anonymous => AuthMethod::Anonymous,
        }
    }
}

/// Whether a route's refusals are enforced or only recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Refusals are answered.
    #[default]
    Enforce,
    /// Every decision is computed and audited, would-be refusals are counted
    /// (`portcullis_guard_dry_run_refusals_total`), and the request goes through.
    DryRun,
}

/// One protected route: what it matches, how callers authenticate, what
/// they need, and which rate limits apply.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A name for logs, metrics, audit and 403 bodies.
    pub name: String,
    /// `allow` (under `require`) or `deny` (always refused).
    #[serde(default)]
    pub effect: Effect,
    /// Methods (empty: any).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path pattern: literal segments, `{param}`, a trailing `**`.
    pub path: String,
    /// Host (a port is ignored; empty: any).
    #[serde(default)]
    pub host: Option<String>,
    /// Credential sources, tried in order; the first one present decides.
    #[serde(default = "default_credentials")]
    pub credentials: Vec<CredentialSource>,
    /// What an authenticated caller must hold.
    #[serde(default)]
    pub require: Requirements,
    /// Names of the rate limits that apply (from `rate_limits`).
    #[serde(default)]
    pub rate_limits: Vec<String>,
    /// `enforce` (default) or `dry_run`.
    #[serde(default)]
    pub mode: Mode,
    /// Whether paths with parameters (`/a;v=1/b`) may pass (default
    /// false: refused as `malformed_path`, since servlet containers route
    /// `/admin;x/users` to `/admin/users`). The route matches the path
    /// with its parameters removed.
    #[serde(default)]
    pub path_parameters: bool,
}

fn default_credentials() -> Vec<CredentialSource> {
    vec![CredentialSource::Jwt, CredentialSource::ApiKey]
}

impl RouteConfig {
    /// An `allow` route on `path` taking JWTs and API keys, with no further requirement.
    pub fn new(name: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            effect: Effect::Allow,
            methods: Vec::new(),
            path: path.into(),
            host: None,
            credentials: default_credentials(),
            require: Requirements::default(),
            rate_limits: Vec::new(),
            mode: Mode::Enforce,
            path_parameters: false,
        }
    }

    /// Refuses every request of this route.
    #[must_use]
    pub fn deny(mut self) -> Self {
        self.effect = Effect::Deny;
        self
    }

    /// Only these methods.
    #[must_use]
    pub fn methods<S: Into<String>>(mut self, methods: impl IntoIterator<Item = S>) -> Self {
        self.methods = methods.into_iter().map(Into::into).collect();
        self
    }

    /// Only this host.
    #[must_use]
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Credential sources, in order.
    #[must_use]
    pub fn credentials(mut self, sources: impl IntoIterator<Item = CredentialSource>) -> Self {
        self.credentials = sources.into_iter().collect();
        self
    }

    /// Every one of these permissions is required.
    #[must_use]
    pub fn permissions<S: Into<String>>(mut self, p: impl IntoIterator<Item = S>) -> Self {
        self.require.permissions_all = p.into_iter().map(Into::into).collect();
        self
    }

    /// At least one of these roles is required.
    #[must_use]
    pub fn roles_any<S: Into<String>>(mut self, r: impl IntoIterator<Item = S>) -> Self {
        self.require.roles_any = r.into_iter().map(Into::into).collect();
        self
    }

    /// The caller's tenant must equal this path parameter.
    #[must_use]
    pub fn tenant_param(mut self, param: impl Into<String>) -> Self {
        self.require.tenant_param = Some(param.into());
        self
    }

    /// A named custom policy must allow too.
    #[must_use]
    pub fn policy(mut self, name: impl Into<String>) -> Self {
        self.require.policies.push(name.into());
        self
    }

    /// These rate limits apply.
    #[must_use]
    pub fn rate_limits<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.rate_limits = names.into_iter().map(Into::into).collect();
        self
    }

    /// Dry run: decide and audit, never refuse.
    #[must_use]
    pub fn dry_run(mut self) -> Self {
        self.mode = Mode::DryRun;
        self
    }
}

/// Names of the headers credentials arrive in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialHeaders {
    /// A header carrying an API key besides `Authorization: Bearer pck_…`
    /// (default `x-api-key`).
    #[serde(default = "default_api_key_header")]
    pub api_key: String,
    /// App id header (default `x-app-id`).
    #[serde(default = "default_app_id_header")]
    pub app_id: String,
    /// App secret header (default `x-app-secret`).
    #[serde(default = "default_app_secret_header")]
    pub app_secret: String,
}

fn default_api_key_header() -> String {
    "x-api-key".into()
}
fn default_app_id_header() -> String {
    "x-app-id".into()
}
fn default_app_secret_header() -> String {
    "x-app-secret".into()
}

impl Default for CredentialHeaders {
    fn default() -> Self {
        Self {
            api_key: default_api_key_header(),
            app_id: default_app_id_header(),
            app_secret: default_app_secret_header(),
        }
    }
}

/// Everything the guard enforces. Build it in code or deserialize it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// The `realm` of `WWW-Authenticate` challenges (default `api`).
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Client IP resolution: which proxies are trusted and which header
    /// they write (`{trusted_proxies, header = "xff" | "forwarded", ipv6_prefix}`).
    #[serde(default)]
    pub client_ip: ClientIpConfig,
    /// Credential header names.
    #[serde(default)]
    pub headers: CredentialHeaders,
    /// Role definitions (roles may include roles).
    #[serde(default)]
    pub roles: Vec<RoleDef>,
    /// Rate limits routes refer to by name (at most 8).
    #[serde(default)]
    pub rate_limits: Vec<RuleConfig>,
    /// Protected routes: a matching `deny` route always refuses; otherwise
    /// the most specific matching `allow` route decides (host, then path
    /// segments from the left, then methods; see docs/authz.md).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// What a request matching no route gets (default `deny`).
    #[serde(default = "default_deny")]
    pub default: Effect,
    /// Largest body buffered to check a signed request (default 1 MiB).
    #[serde(default = "default_max_signed_body")]
    pub max_signed_body_bytes: usize,
}

fn default_realm() -> String {
    "api".into()
}
fn default_deny() -> Effect {
    Effect::Deny
}
fn default_max_signed_body() -> usize {
    1024 * 1024
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            realm: default_realm(),
            client_ip: ClientIpConfig::default(),
            headers: CredentialHeaders::default(),
            roles: Vec::new(),
            rate_limits: Vec::new(),
            routes: Vec::new(),
            default: Effect::Deny,
            max_signed_body_bytes: default_max_signed_body(),
        }
    }
}

impl GuardConfig {
    /// Adds a route.
    #[must_use]
    pub fn route(mut self, route: RouteConfig) -> Self {
        self.routes.push(route);
        self
    }

    /// Adds a rate limit.
    #[must_use]
    pub fn rate_limit(mut self, rule: RuleConfig) -> Self {
        self.rate_limits.push(rule);
        self
    }

    /// Adds a role.
    #[must_use]
    pub fn role(mut self, role: RoleDef) -> Self {
        self.roles.push(role);
        self
    }
}

/// Why a guard could not be built; names the part and field to fix.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum GuardConfigError {
    /// A route is invalid.
    #[error("route `{route}`, field `{field}`: {message}")]
    Route {
        /// The route's name.
        route: String,
        /// The field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A field outside the routes is invalid.
    #[error("`{field}`: {message}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The authorization rules are invalid.
    #[error(transparent)]
    Authz(#[from] portcullis_core::authz::routes::AuthzConfigError),
    /// The rate limits are invalid.
    #[error(transparent)]
    RateLimit(#[from] crate::ratelimit::RateLimitError),
    /// A route needs a runtime handle that was not given to the builder.
    #[error("route `{route}` uses {what}, but the guard was built without {missing}")]
    Missing {
        /// The route's name.
        route: String,
        /// What the route uses.
        what: &'static str,
        /// The builder call that provides it.
        missing: &'static str,
    },
}
