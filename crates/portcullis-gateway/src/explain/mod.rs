//! Explaining a decision: what the gateway makes of one request, step by
//! step, from the engine's own code (the canonical form, the route
//! matcher, credential extraction, the permission matcher, rate-limit
//! keys, the proxy's header rewrite), never a second copy of the rules.
//! Offline it is built from the configuration alone (`portcullis
//! explain`, `portcullis test`, `[tests]`); live it runs over the running
//! request path and its stores (`POST /admin/explain`).
//!
//! Over 800 lines with its tests (about 200): `Explainer::explain` walks
//! the request path in order and reads best whole; the report it fills is
//! in `report.rs`.

pub mod cases;
pub mod replay;
mod report;

pub use report::{
    AuthorizationView, BanView, CredentialsView, DecisionView, DryRunView, HeaderChanges,
    HeaderView, Malformed, Precedence, PrincipalView, RateView, Report, RequestView,
    RequirementView, RouteMatchView, RoutesView, SourceView, UpstreamView,
};

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use portcullis::Guard;
use portcullis::guard::{Checked, Conclusion, ExplainOptions, Explanation};
use portcullis_core::authz::routes::Effect;
use portcullis_core::{AuthMethod, Principal};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::proxy::Proxy;

/// The client address explained when none is given (a documentation address).
pub const DEFAULT_CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

/// Most headers one explained request may carry.
pub const MAX_HEADERS: usize = 64;

/// Longest request target (path or URL) explained.
pub const MAX_TARGET: usize = 8 * 1024;

/// Shown instead of a secret header value.
const REDACTED: &str = "<redacted>";

/// The caller to decide for, instead of authenticating a credential
/// (`--as`, `as = { … }`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssumedCaller {
    /// The subject (default `explain`).
    #[serde(default)]
    pub subject: Option<String>,
    /// Roles held.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Permissions held directly.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Token scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// How it authenticated (default `jwt`).
    #[serde(default)]
    pub method: Option<AuthMethod>,
}

impl AssumedCaller {
    fn principal(&self) -> Principal {
        let mut p = Principal::new(
            self.subject.clone().unwrap_or_else(|| "explain".to_owned()),
            self.method.unwrap_or(AuthMethod::Jwt),
        );
        p.roles.clone_from(&self.roles);
        p.permissions.clone_from(&self.permissions);
        p.scopes.clone_from(&self.scopes);
        p.tenant.clone_from(&self.tenant);
        p
    }
}

/// One request to explain (the body of `POST /admin/explain`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The method (default `GET`).
    #[serde(default)]
    pub method: Option<String>,
    /// A path (`/docs/1?x=1`) or an absolute URL (`https://api.example.com/docs/1`).
    pub target: String,
    /// The `Host` header.
    #[serde(default)]
    pub host: Option<String>,
    /// Extra headers, `Name: value`.
    #[serde(default)]
    pub headers: Vec<String>,
    /// An access token, sent as `Authorization: Bearer …`.
    #[serde(default)]
    pub token: Option<String>,
    /// An API key, sent in the configured API-key header.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Decide for this caller instead of a credential.
    #[serde(default, rename = "as")]
    pub assume: Option<AssumedCaller>,
    /// The socket peer (default [`DEFAULT_CLIENT_IP`]).
    #[serde(default)]
    pub client_ip: Option<IpAddr>,
}

/// A request that cannot be explained as given (a usage error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// What the request path of one configuration is made of, for explaining.
#[derive(Clone)]
pub struct Explainer {
    canonical: crate::proxy::canonical::Canonicalizer,
    guard: Guard,
    proxy: Proxy,
    /// The configuration's routes (their requirements, as written).
    routes: Arc<[portcullis::RouteConfig]>,
    default: Effect,
    /// Surfaces answered before the guard: (prefix, name).
    surfaces: Arc<[(String, &'static str)]>,
    /// Exact paths answered before the guard: the JWKS.
    jwks_path: String,
    /// Header names whose values are secrets.
    secret_headers: Arc<[HeaderName]>,
    api_key_header: HeaderName,
    offline: bool,
    remote_issuers: bool,
}

impl std::fmt::Debug for Explainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Explainer")
            .field("offline", &self.offline)
            .finish_non_exhaustive()
    }
}

fn header_name(field: &str, name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
        .map_err(|e| format!("{field}: {e}"))
}

impl Explainer {
    /// The request path of `config` from the configuration alone: its key
    /// directory and signed-request secrets are read; no store, no Redis,
    /// no remote issuer is contacted.
    pub fn offline(config: &Config) -> Result<Self, String> {
        let configured =
            crate::keys::load_key_dir(&config.keys.dir, config.keys.active_kid.as_deref())
                .map_err(|e| format!("keys.dir: {e}"))?;
        let keys = Arc::new(configured);
        let mut issuer = portcullis_core::IssuerConfig::new(config.keys.issuer.clone());
        issuer.audience.clone_from(&config.keys.audience);
        let verifier = portcullis_core::Verifier::new(
            Arc::clone(&keys),
            portcullis_core::Validation::for_local_issuer(&issuer),
        );
        // Empty stores, so routes that accept API keys and apps build; the
        // guard's explain never looks a credential up in them offline.
        let hasher = portcullis_core::SecretHasher::new(&[0; 32]).map_err(|e| e.to_string())?;
        let stores = portcullis::stores::Stores::new(
            portcullis::stores::Backends::all(Arc::new(
                portcullis::stores::memory::MemoryStores::new(),
            )),
            portcullis::stores::StoresConfig::new(hasher),
        )
        .map_err(|e| e.to_string())?;
        let mut builder = Guard::builder(config.guard.clone())
            .local_keys(verifier)
            .stores(Arc::new(stores))
            .without_revocation()
            .refuse_api_key_owners(crate::ops::admin::ADMIN_OWNER_PREFIX);
        if let Some(signed) = &config.signed_requests {
            let nonces = portcullis::authz::MemoryNonceStore::new(1024);
            let authenticator = crate::signed_requests::authenticator(signed, nonces)
                .map_err(|(what, m)| format!("{what}: {}", crate::redact::redact(&m)))?;
            builder = builder.signed_requests(authenticator);
        }
        let guard = builder.build().map_err(|e| format!("guard: {e}"))?;
        let outbound = crate::proxy::identity::Outbound::new(config, keys)
            .map_err(|e| format!("internal_token: {e}"))?;
        let proxy =
            Proxy::new(config, outbound, Arc::default()).map_err(|e| format!("upstreams: {e}"))?;
        Self::assemble(config, guard, proxy, true)
    }

    /// The running request path (its guard reads the live stores, bans
    /// and rate-limit counters).
    pub(crate) fn live(config: &Config, guard: Guard, proxy: Proxy) -> Result<Self, String> {
        Self::assemble(config, guard, proxy, false)
    }

    fn assemble(
        config: &Config,
        guard: Guard,
        proxy: Proxy,
        offline: bool,
    ) -> Result<Self, String> {
        let canonical = crate::proxy::canonical::Canonicalizer::new(config)
            .map_err(|e| format!("request: {e}"))?;
        let mut surfaces = Vec::new();
        if config.token_service.enabled {
            surfaces.push((config.token_service.prefix.clone(), "token_service"));
        }
        if config.forward_auth.enabled {
            surfaces.push((config.forward_auth.prefix.clone(), "forward_auth"));
        }
        let h = &config.guard.headers;
        let api_key_header = header_name("guard.headers.api_key", &h.api_key)?;
        let mut secret_headers = vec![
            http::header::AUTHORIZATION,
            http::header::COOKIE,
            api_key_header.clone(),
            header_name("guard.headers.app_secret", &h.app_secret)?,
            header_name("internal_token.header", &config.internal_token.header)?,
        ];
        secret_headers.push(HeaderName::from_static(
            portcullis_core::authz::signed_request::HEADER_SIGNATURE,
        ));
        Ok(Self {
            canonical,
            guard,
            proxy,
            routes: config.guard.routes.clone().into(),
            default: config.guard.default,
            surfaces: surfaces.into(),
            jwks_path: config.internal_token.jwks_path.clone(),
            secret_headers: secret_headers.into(),
            api_key_header,
            offline,
            remote_issuers: !config.keys.trusted_issuers.is_empty(),
        })
    }

    /// The request as it reaches the gateway: method, target, headers and
    /// credential, over TLS when the target is an `https` URL.
    fn build(&self, req: &ExplainRequest) -> Result<(http::request::Parts, bool), BadRequest> {
        let bad = |m: String| BadRequest(m);
        if req.target.len() > MAX_TARGET {
            return Err(bad(format!(
                "the request target is longer than {MAX_TARGET} bytes"
            )));
        }
        if req.headers.len() > MAX_HEADERS {
            return Err(bad(format!("more than {MAX_HEADERS} headers")));
        }
        let credentials = usize::from(req.token.is_some())
            + usize::from(req.api_key.is_some())
            + usize::from(req.assume.is_some());
        if credentials > 1 {
            return Err(bad(
                "give at most one of a token, an API key or an assumed caller (--as)".into(),
            ));
        }
        let method = req.method.as_deref().unwrap_or("GET");
        let uri: http::Uri = req
            .target
            .parse()
            .map_err(|_| bad(format!("`{}` is not a path or URL", req.target)))?;
        let tls = uri.scheme_str() == Some("https");
        let mut builder = http::Request::builder()
            .method(
                http::Method::from_bytes(method.as_bytes())
                    .map_err(|_| bad(format!("`{method}` is not an HTTP method")))?,
            )
            .uri(uri);
        let headers = builder
            .headers_mut()
            .ok_or_else(|| bad("the request could not be built".into()))?;
        if let Some(host) = &req.host {
            headers.insert(
                http::header::HOST,
                HeaderValue::from_str(host).map_err(|_| bad(format!("bad host `{host}`")))?,
            );
        }
        for line in &req.headers {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| bad(format!("header `{line}`: write it `Name: value`")))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| bad(format!("header `{}`: not a header name", name.trim())))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| bad(format!("header `{name}`: not a header value")))?;
            headers.append(name, value);
        }
        if let Some(token) = &req.token {
            let value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .map_err(|_| bad("the token is not a header value".into()))?;
            headers.insert(http::header::AUTHORIZATION, value);
        }
        if let Some(key) = &req.api_key {
            let value = HeaderValue::from_str(key.trim())
                .map_err(|_| bad("the API key is not a header value".into()))?;
            headers.insert(self.api_key_header.clone(), value);
        }
        let (parts, ()) = builder
            .body(())
            .map_err(|e| bad(format!("the request could not be built: {e}")))?
            .into_parts();
        Ok((parts, tls))
    }

    /// Explains `req`: the canonical request (or why it is refused), the
    /// routes, the credential, the caller, rate limits, mode, upstream and
    /// the decision.
    pub async fn explain(&self, req: &ExplainRequest) -> Result<Report, BadRequest> {
        let (mut parts, tls) = self.build(req)?;
        let peer_ip = req.client_ip.unwrap_or(DEFAULT_CLIENT_IP);
        let mut report = Report {
            live: !self.offline,
            request: RequestView::of(&parts),
            malformed: None,
            surface: "proxy".into(),
            routes: None,
            credentials: None,
            principal: None,
            requirement: None,
            authorization: None,
            bans: Vec::new(),
            rate_limits: Vec::new(),
            mode: None,
            upstream: None,
            decision: DecisionView::undetermined(String::new()),
        };
        if tls {
            parts.extensions.insert(crate::proxy::ClientTls);
        }
        if let Err(crate::proxy::canonical::Refused(why)) =
            self.canonical.apply(&mut parts, peer_ip, tls)
        {
            report.malformed = Some(Malformed {
                reason: why.code().into(),
                detail: why.to_string(),
            });
            report.decision = DecisionView {
                allow: false,
                undetermined: None,
                // What the client is answered and the audit event
                // records: the specific stable code.
                code: Some(why.code().into()),
                status: Some(400),
                reason: Some("malformed".into()),
                detail: Some(why.to_string()),
                dry_run_would_refuse: None,
            };
            return Ok(report);
        }
        let sent = std::mem::replace(&mut report.request, RequestView::of(&parts));
        report.request.client_ip = Some(self.guard.client_ip(&parts, peer_ip));
        let target = |r: &RequestView| (r.method.clone(), r.host.clone(), r.path.clone());
        if target(&sent) != target(&report.request) {
            report.request.as_sent = Some(Box::new(sent));
        }
        let path = parts.uri.path();
        if path == self.jwks_path {
            report.surface = "jwks".into();
        } else if let Some((_, name)) = self
            .surfaces
            .iter()
            .find(|(prefix, _)| crate::proxy::canonical::under(path, prefix))
        {
            report.surface = (*name).into();
        }
        if report.surface != "proxy" {
            report.decision = DecisionView::undetermined(format!(
                "this path is served by the {} before the guard's routes; explain covers the routes of the reverse proxy",
                report.surface.replace('_', " ")
            ));
            return Ok(report);
        }
        let options = ExplainOptions {
            assume: req.assume.as_ref().map(AssumedCaller::principal),
            offline: self.offline,
        };
        let explanation = self.guard.explain(&parts, Some(peer_ip), options).await;
        self.fill(&mut report, &explanation, &parts, peer_ip, tls);
        Ok(report)
    }

    fn fill(
        &self,
        report: &mut Report,
        e: &Explanation,
        parts: &http::request::Parts,
        peer: IpAddr,
        tls: bool,
    ) {
        let policy = self.guard.access_policy();
        let name_of = |i: usize| self.routes.get(i).map(|r| r.name.clone());
        let deciding = e.route.deciding;
        let why = match deciding {
            Some(w) => e
                .route
                .matches
                .iter()
                .filter(|m| m.index != w)
                .filter_map(|m| {
                    policy.precedence(w, m.index).map(|p| Precedence {
                        over: m.name.clone(),
                        rule: p.as_str().into(),
                        detail: p.to_string(),
                    })
                })
                .collect(),
            None => Vec::new(),
        };
        report.routes = Some(RoutesView {
            matched_path: e.route.path.clone(),
            path_parameters: e.route.path_parameters,
            matches: e
                .route
                .matches
                .iter()
                .map(|m| RouteMatchView {
                    name: m.name.clone(),
                    effect: match m.effect {
                        Effect::Allow => "allow",
                        Effect::Deny => "deny",
                    }
                    .into(),
                })
                .collect(),
            decided_by: deciding.and_then(name_of),
            settings_from: e.route_name.clone(),
            default: deciding.is_none().then(|| {
                match self.default {
                    Effect::Allow => "allow",
                    Effect::Deny => "deny",
                }
                .to_owned()
            }),
            why,
        });
        let c = &e.credentials;
        let outcome = if c.assumed {
            "assumed"
        } else if matches!(e.conclusion, Conclusion::Undetermined { .. }) && c.presented.is_some() {
            if self.offline {
                "not_checked_offline"
            } else {
                "not_checked"
            }
        } else if c.refused.is_some() {
            "refused"
        } else if c.presented.is_none() {
            "none_presented"
        } else {
            "verified"
        };
        let mut note = None;
        if self.offline
            && self.remote_issuers
            && matches!(
                c.refused,
                Some(
                    portcullis_core::ErrorCode::InvalidIssuer
                        | portcullis_core::ErrorCode::UnknownKey
                )
            )
        {
            note = Some(
                "trusted remote issuers' keys are not fetched offline: a token of theirs verifies only against the running gateway"
                    .to_owned(),
            );
        }
        report.credentials = Some(CredentialsView {
            sources: c
                .sources
                .iter()
                .map(|s| SourceView {
                    source: source_name(s.source).into(),
                    present: s.present,
                })
                .collect(),
            presented: c.presented.map(str::to_owned),
            outcome: outcome.into(),
            code: c.refused.map(|code| code.as_str().to_owned()),
            revocation: c
                .revocation
                .unwrap_or(Checked::NotApplicable)
                .as_str()
                .into(),
            note,
        });
        if let Some(p) = e.principal.as_deref() {
            report.principal = Some(PrincipalView {
                subject: p.subject.clone(),
                auth_method: p.auth_method.as_str().into(),
                roles: p.roles.clone(),
                permissions: p.permissions.clone(),
                scopes: p.scopes.clone(),
                tenant: p.tenant.clone(),
                effective_permissions: e.effective_permissions.clone(),
            });
        }
        report.requirement = e
            .route
            .settings
            .and_then(|i| self.routes.get(i))
            .map(RequirementView::of);
        report.authorization = e.authorization.as_ref().map(|a| AuthorizationView {
            rule: a.rule.clone(),
            allowed: a.allowed,
            reason: a.reason.into(),
            detail: a.detail.clone(),
        });
        report.bans = e
            .bans
            .iter()
            .map(|b| BanView {
                on: b.on.into(),
                result: b.result.as_str().into(),
            })
            .collect();
        report.rate_limits = e
            .rate_limits
            .iter()
            .map(|r| RateView {
                rule: r.rule.clone(),
                key: r.key.clone(),
                applies: r.key.is_some(),
                limit: r.limit,
                remaining: r.remaining,
                limited: r.limited,
            })
            .collect();
        report.mode = Some(if e.dry_run { "dry_run" } else { "enforce" }.into());
        report.decision = match &e.conclusion {
            Conclusion::Allowed { reason } => DecisionView {
                allow: true,
                undetermined: None,
                code: None,
                status: None,
                reason: Some((*reason).into()),
                detail: None,
                dry_run_would_refuse: None,
            },
            Conclusion::Refused {
                code,
                status,
                reason,
                detail,
            } if e.dry_run => DecisionView {
                allow: true,
                undetermined: None,
                code: None,
                status: None,
                reason: Some((*reason).into()),
                detail: Some(format!("dry run: would refuse ({detail})")),
                dry_run_would_refuse: Some(DryRunView {
                    code: code.as_str().into(),
                    status: *status,
                }),
            },
            Conclusion::Refused {
                code,
                status,
                reason,
                detail,
            } => DecisionView {
                allow: false,
                undetermined: None,
                code: Some(code.as_str().into()),
                status: Some(*status),
                reason: Some((*reason).into()),
                detail: Some(detail.clone()),
                dry_run_would_refuse: None,
            },
            Conclusion::Undetermined { why } => DecisionView::undetermined(why.clone()),
            _ => DecisionView::undetermined("unknown verdict".into()),
        };
        if report.decision.allow {
            report.upstream = Some(self.upstream(e, parts, peer, tls));
        }
    }

    /// The upstream of an allowed request and how its headers change.
    fn upstream(
        &self,
        e: &Explanation,
        parts: &http::request::Parts,
        peer: IpAddr,
        tls: bool,
    ) -> UpstreamView {
        let Some((name, uri)) = self
            .proxy
            .target(e.route_name.as_deref(), parts.uri.path_and_query())
        else {
            return UpstreamView {
                name: None,
                url: None,
                error: Some(
                    "no upstream serves this route (the gateway answers 502 gateway.no_upstream)"
                        .into(),
                ),
                headers: HeaderChanges::default(),
            };
        };
        let dry_run = match &e.conclusion {
            Conclusion::Refused { code, .. } if e.dry_run => Some(*code),
            _ => None,
        };
        let original_host = parts.headers.get(http::header::HOST).cloned();
        let out = crate::proxy::Outgoing {
            upstream: name,
            websocket: None,
            principal: e.principal.as_deref(),
            request_id: Some("<request id>"),
            dry_run,
            peer: Some(peer),
            client_ip: None,
            tls,
            original_host,
        };
        let mut after = parts.headers.clone();
        let (headers, error) = match self.proxy.rewrite_headers(&mut after, &out) {
            Ok(()) => (self.changes(&parts.headers, &after), None),
            Err(err) => (
                HeaderChanges::default(),
                Some(format!("{err} (the gateway answers 500)")),
            ),
        };
        UpstreamView {
            name: Some(name.to_owned()),
            url: uri.map(|u| u.to_string()),
            error,
            headers,
        }
    }

    fn shown(&self, name: &HeaderName, value: &HeaderValue) -> String {
        if self.secret_headers.contains(name) {
            REDACTED.to_owned()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        }
    }

    fn changes(&self, before: &HeaderMap, after: &HeaderMap) -> HeaderChanges {
        let mut out = HeaderChanges::default();
        let joined = |m: &HeaderMap, n: &HeaderName| -> Vec<HeaderValue> {
            m.get_all(n).iter().cloned().collect()
        };
        for name in after.keys() {
            let new = joined(after, name);
            let shown = new
                .iter()
                .map(|v| self.shown(name, v))
                .collect::<Vec<_>>()
                .join(", ");
            match before.contains_key(name) {
                false => out.added.push(HeaderView {
                    name: name.to_string(),
                    value: shown,
                }),
                true if joined(before, name) != new => out.replaced.push(HeaderView {
                    name: name.to_string(),
                    value: shown,
                }),
                true => {}
            }
        }
        for name in before.keys() {
            if !after.contains_key(name) {
                out.removed.push(name.to_string());
            }
        }
        out
    }
}

pub(crate) fn source_name(s: portcullis::guard::CredentialSource) -> &'static str {
    use portcullis::guard::CredentialSource as S;
    match s {
        S::Jwt => "jwt",
        S::ApiKey => "api_key",
        S::App => "app",
        S::Signed => "signed",
        S::Anonymous => "anonymous",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CONFIG: &str = r#"
[storage]
url = "memory"

[keys]
dir = "KEYS"
issuer = "https://issuer.test"

[[guard.roles]]
name = "viewer"
permissions = ["docs.read"]

[[guard.routes]]
name = "docs-read"
methods = ["GET"]
path = "/docs/**"
credentials = ["jwt"]
require = { permissions_all = ["docs.read"] }

[[guard.routes]]
name = "docs-one"
methods = ["GET", "DELETE"]
path = "/docs/{id}"
credentials = ["jwt"]
require = { permissions_all = ["docs.read"] }

[[guard.routes]]
name = "docs-delete"
methods = ["DELETE"]
path = "/docs/{id}"
credentials = ["jwt"]
require = { permissions_all = ["docs.delete"] }

[[guard.routes]]
name = "no-secrets"
effect = "deny"
path = "/docs/secret/**"
credentials = ["jwt"]

[[guard.routes]]
name = "beta"
path = "/beta/**"
credentials = ["jwt"]
require = { roles_any = ["beta"] }
mode = "dry_run"

[[guard.routes]]
name = "open"
host = "open.test"
path = "/**"
credentials = ["anonymous"]

[[upstreams]]
name = "docs"
url = "http://127.0.0.1:9"
routes = ["docs-read", "docs-one", "docs-delete", "beta", "open"]
"#;

    struct Fixture {
        explainer: Explainer,
        tokens: Vec<Option<String>>,
        _dir: std::path::PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self._dir);
        }
    }

    fn fixture() -> Fixture {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-explain-unit-{}-{}",
            std::process::id(),
            portcullis_core::opaque::generate("t").unwrap()
        ));
        let keys = dir.join("keys");
        let key = portcullis_core::Key::generate(portcullis_core::Algorithm::ES256)
            .unwrap()
            .with_kid("k1");
        crate::keys::create_dir(&keys).unwrap();
        crate::keys::write_new(
            &keys.join("k1.pem"),
            key.private_pkcs8_pem().unwrap().as_bytes(),
            crate::keys::PRIVATE_MODE,
        )
        .unwrap();
        let text = CONFIG.replace("KEYS", &keys.display().to_string());
        let config = crate::config::parse(&dir.join("gateway.toml"), &text).unwrap();
        let explainer = Explainer::offline(&config).unwrap();
        let set = crate::keys::load_key_dir(&keys, None).unwrap();
        let issuer = portcullis_core::TokenIssuer::new(
            Arc::new(set),
            portcullis_core::IssuerConfig::new("https://issuer.test"),
            portcullis_core::SecretHasher::new(&[1; 32]).unwrap(),
        );
        let token = |claims: serde_json::Value| {
            issuer
                .issue_access(&portcullis_core::AccessRequest {
                    subject: "s".into(),
                    claims: claims.as_object().cloned().unwrap_or_default(),
                    ..portcullis_core::AccessRequest::default()
                })
                .unwrap()
                .token
        };
        let tokens = vec![
            None,
            Some(token(serde_json::json!({"roles": ["viewer"]}))),
            Some(token(
                serde_json::json!({"permissions": ["docs.delete", "docs.read"]}),
            )),
            Some("not.a.token".to_owned()),
        ];
        Fixture {
            explainer,
            tokens,
            _dir: dir,
        }
    }

    /// What the request path decides: the canonical form, then the guard
    /// (as `App::dispatch` and the `GuardLayer` do): let through, or the
    /// stable code answered.
    async fn gateway_decides(x: &Explainer, req: &ExplainRequest) -> (bool, Option<String>) {
        let (mut parts, tls) = x.build(req).unwrap();
        if let Err(crate::proxy::canonical::Refused(why)) =
            x.canonical.apply(&mut parts, DEFAULT_CLIENT_IP, tls)
        {
            return (false, Some(why.code().to_owned()));
        }
        let d = x.guard.check(&parts, Some(DEFAULT_CLIENT_IP)).await;
        match &d.refusal {
            None => (true, None),
            Some(r) => (false, Some(r.code.as_str().to_owned())),
        }
    }

    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "docs", "secret", "beta", "1", "a", "x", "..", ".", "%2F", "%64ocs", "DOCS", "a;v=1",
            "",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The decision explain reports is the one the request path takes.
        #[test]
        fn explain_decides_what_the_request_path_decides(
            method in prop::sample::select(vec!["GET", "DELETE", "POST", "get"]),
            host in prop::option::of(prop::sample::select(vec!["open.test", "api.test", "OPEN.TEST."])),
            segments in prop::collection::vec(segment(), 1..4),
            caller in 0usize..4,
        ) {
            thread_local! {
                static FIXTURE: Fixture = fixture();
            }
            let path = format!("/{}", segments.join("/"));
            FIXTURE.with(|f| {
                let req = ExplainRequest {
                    method: Some(method.to_owned()),
                    target: path.clone(),
                    host: host.map(str::to_owned),
                    token: f.tokens[caller].clone(),
                    ..ExplainRequest::default()
                };
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let report = rt.block_on(f.explainer.explain(&req)).unwrap();
                let gateway = rt.block_on(gateway_decides(&f.explainer, &req));
                let explained = (report.decision.allow, report.decision.code.clone());
                prop_assert_eq!(explained, gateway, "{} {} {:?}", method, path, host);
                Ok(())
            })?;
        }
    }

    #[test]
    fn secrets_given_are_redacted_in_the_upstream_headers() {
        let f = fixture();
        let token = f.tokens[1].clone().unwrap();
        let req = ExplainRequest {
            target: "/docs/a/b".into(),
            token: Some(token.clone()),
            headers: vec!["Cookie: id=s3cret".into(), "X-Trace: t1".into()],
            ..ExplainRequest::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let report = rt.block_on(f.explainer.explain(&req)).unwrap();
        let json = serde_json::to_string(&report).unwrap();
        assert!(!json.contains(&token));
        assert!(!json.contains("s3cret"));
        assert!(report.text().contains("ALLOW"), "{}", report.text());
    }
}
