//! The [`Guard`]: one decision per request. Everything that protects an
//! HTTP request, in the library's layers or the gateway, goes through it.
//!
//! For each request, stopping at the first refusal:
//!
//! 1. request id (adopted only from a trusted proxy) and client IP;
//! 2. IP ban;
//! 3. authentication: the route's credential sources in order, the first
//!    credential present decides (a bad one is refused, never skipped);
//! 4. revocation (jti denylist, revoked session; API keys and apps are
//!    checked by the stores) and the subject's ban;
//! 5. the route's rate limits, in one limiter call that also carries the
//!    burst detector's window;
//! 6. authorization (route requirements, roles, tenant, custom policies);
//! 7. anomaly signals for failures and denials;
//! 8. one audit event, recorded when the response is known.

mod config;
mod credentials;
mod decision;
mod explain;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use http::{HeaderName, HeaderValue};
use portcullis_core::anomaly::{SampleRequest, Signal};
use portcullis_core::audit::redact::Redactor;
use portcullis_core::authz::routes::{AuthzConfig, Effect, Reason, RouteRule};
use portcullis_core::authz::signed_request::{SignatureHeaders, SignedParts};
use portcullis_core::ratelimit::{ClientIpConfig, Rule};
use portcullis_core::{AuthMethod, Clock, ErrorCode, Principal, SystemClock, Verifier};

pub use self::config::{
    CredentialHeaders, CredentialSource, GuardConfig, GuardConfigError, Mode, RouteConfig,
};
use self::credentials::Presented;
use self::decision::Snapshot;
pub use self::decision::{AuditTicket, Decision, Refusal, RequestIdText};
pub use self::explain::{
    AuthzTrace, BanTrace, Checked, Conclusion, CredentialTrace, ExplainOptions, Explanation,
    RateTrace, SourceTrace,
};
use crate::anomaly::AnomalyEngine;
use crate::audit::AuditWriter;
use crate::authz::{
    Authorizer, BoxFuture, NonceStore, Policy, SignedRequestAuthenticator, SignedRequestError,
};
use crate::jwks::TrustedIssuers;
use crate::ratelimit::{HttpHeaders, RateLimiter, RateLimiterBuilder, RuleSet, Verdict};
use crate::stores::{StoreError, Stores, StoresRevocation};
use crate::token_cache::{AuthError, CachedVerifier, RevocationHook, TokenCacheConfig};

/// The revocation hook of the local verifier: the stores, or (only when
/// asked for explicitly) none.
#[derive(Debug, Clone)]
enum LocalRevocation {
    Stores(StoresRevocation),
    Off,
}

impl RevocationHook for LocalRevocation {
    async fn check(&self, principal: &Principal) -> Result<(), ErrorCode> {
        match self {
            Self::Stores(hook) => hook.check(principal).await,
            Self::Off => Ok(()),
        }
    }
}

/// A signed-request authenticator over any nonce store, object-safe.
trait SignedAuth: Send + Sync {
    fn authenticate<'a>(
        &'a self,
        headers: &'a SignatureHeaders<'a>,
        parts: &'a SignedParts<'a>,
    ) -> BoxFuture<'a, Result<Principal, SignedRequestError>>;
}

impl<N: NonceStore + 'static> SignedAuth for SignedRequestAuthenticator<N> {
    fn authenticate<'a>(
        &'a self,
        headers: &'a SignatureHeaders<'a>,
        parts: &'a SignedParts<'a>,
    ) -> BoxFuture<'a, Result<Principal, SignedRequestError>> {
        Box::pin(SignedRequestAuthenticator::authenticate(
            self, headers, parts,
        ))
    }
}

/// A route as compiled once at build time.
#[derive(Debug)]
struct CompiledRoute {
    name: Option<Arc<str>>,
    sources: Box<[CredentialSource]>,
    anonymous: bool,
    rules: RuleSet,
    dry_run: bool,
    counters: DecisionCounters,
}

/// `portcullis_guard_decisions_total{decision, route, code}` of one route:
/// each handle is registered on its first use (so a recorder installed
/// after the guard was built still sees it) and reused after, so counting
/// a decision allocates nothing.
struct DecisionCounters {
    /// The route's name, or `default` for requests no route matched.
    route: metrics::SharedString,
    allow: std::sync::OnceLock<metrics::Counter>,
    deny: [std::sync::OnceLock<metrics::Counter>; ErrorCode::ALL.len()],
}

impl std::fmt::Debug for DecisionCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionCounters")
            .field("route", &&*self.route)
            .finish_non_exhaustive()
    }
}

impl DecisionCounters {
    fn new(route: Option<&Arc<str>>) -> Self {
        Self {
            route: route.map_or_else(
                || metrics::SharedString::const_str("default"),
                |name| metrics::SharedString::from(Arc::clone(name)),
            ),
            allow: std::sync::OnceLock::new(),
            deny: std::array::from_fn(|_| std::sync::OnceLock::new()),
        }
    }

    fn register(&self, decision: &'static str, code: &'static str) -> metrics::Counter {
        metrics::counter!(
            "portcullis_guard_decisions_total",
            "decision" => decision,
            "route" => self.route.clone(),
            "code" => code
        )
    }

    /// Counts one decision: allowed (`code="none"`) or refused with `code`.
    fn count(&self, refused: Option<ErrorCode>) {
        match refused {
            None => self
                .allow
                .get_or_init(|| self.register("allow", "none"))
                .increment(1),
            Some(code) => match self.deny.get(code.index()) {
                Some(slot) => slot
                    .get_or_init(|| self.register("deny", code.as_str()))
                    .increment(1),
                None => self.register("deny", code.as_str()).increment(1),
            },
        }
    }
}

struct Inner {
    realm: String,
    client_ip: ClientIpConfig,
    headers: credentials::HeaderNames,
    routes: Vec<CompiledRoute>,
    default_route: CompiledRoute,
    authorizer: Authorizer,
    local: Option<CachedVerifier<LocalRevocation>>,
    remote: Option<TrustedIssuers>,
    stores: Option<Arc<Stores>>,
    signed: Option<Box<dyn SignedAuth>>,
    limiter: Option<RateLimiter>,
    anomaly: Option<Arc<AnomalyEngine>>,
    audit: Option<Arc<AuditWriter>>,
    redactor: Arc<Redactor>,
    clock: Arc<dyn Clock>,
    max_signed_body: usize,
    /// API keys whose owner starts with one of these are refused here.
    refused_key_owners: Vec<Box<str>>,
    /// When set, only API keys whose owner starts with this are accepted.
    required_key_owner: Option<Box<str>>,
    /// The name this guard's audit events carry (`admin`), if any.
    audit_guard: Option<&'static str>,
}

/// Decides requests; cheap to clone and share.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("routes", &self.inner.routes.len())
            .field("local_keys", &self.inner.local.is_some())
            .field("remote_issuers", &self.inner.remote.is_some())
            .field("stores", &self.inner.stores.is_some())
            .field("rate_limits", &self.inner.limiter.is_some())
            .field("anomaly", &self.inner.anomaly.is_some())
            .field("audit", &self.inner.audit.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Guard`] from a [`GuardConfig`] and the runtime handles.
pub struct GuardBuilder {
    config: GuardConfig,
    local: Option<(Verifier, TokenCacheConfig)>,
    remote: Option<TrustedIssuers>,
    stores: Option<Arc<Stores>>,
    revocation_off: bool,
    signed: Option<Box<dyn SignedAuth>>,
    limiter: Option<RateLimiterBuilder>,
    previous_limiter: Option<RateLimiter>,
    anomaly: Option<Arc<AnomalyEngine>>,
    audit: Option<Arc<AuditWriter>>,
    policies: Vec<(String, Box<dyn PolicyObject>)>,
    redactor: Redactor,
    clock: Arc<dyn Clock>,
    refused_key_owners: Vec<Box<str>>,
    required_key_owner: Option<Box<str>>,
    audit_guard: Option<&'static str>,
}

impl std::fmt::Debug for GuardBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A boxed policy, so the builder can hold any number of them.
trait PolicyObject: Policy {
    fn into_policy(self: Box<Self>) -> Box<dyn Policy>;
}

impl<P: Policy + 'static> PolicyObject for P {
    fn into_policy(self: Box<Self>) -> Box<dyn Policy> {
        self
    }
}

struct BoxedPolicy(Box<dyn Policy>);

impl Policy for BoxedPolicy {
    fn allows<'a>(
        &'a self,
        principal: Option<&'a Principal>,
        facts: &'a portcullis_core::authz::routes::RequestFacts<'a>,
    ) -> BoxFuture<'a, bool> {
        self.0.allows(principal, facts)
    }
}

impl GuardBuilder {
    /// Verifies JWTs with this key set (the local issuer), through the
    /// verified-token cache; the stores' denylist and sessions are checked
    /// on every request.
    #[must_use]
    pub fn local_keys(mut self, verifier: Verifier) -> Self {
        self.local = Some((verifier, TokenCacheConfig::default()));
        self
    }

    /// Like [`Self::local_keys`] with a sized cache.
    #[must_use]
    pub fn local_keys_cached(mut self, verifier: Verifier, cache: TokenCacheConfig) -> Self {
        self.local = Some((verifier, cache));
        self
    }

    /// Refuses API keys whose owner starts with `prefix` (`auth.invalid_api_key`),
    /// e.g. `admin:` on a public listener, so an operator's key is only
    /// ever accepted where it is meant to be.
    #[must_use]
    pub fn refuse_api_key_owners(mut self, prefix: impl Into<String>) -> Self {
        self.refused_key_owners.push(prefix.into().into_boxed_str());
        self
    }

    /// Names this guard in its audit events (`guard`), e.g. `admin` for
    /// the admin API's, so they are told apart from the request path's
    /// (which carry none) in a shared audit log.
    #[must_use]
    pub fn audit_as(mut self, guard: &'static str) -> Self {
        self.audit_guard = Some(guard);
        self
    }

    /// Accepts only API keys whose owner starts with `prefix` (any other is
    /// `auth.invalid_api_key`), e.g. `admin:` on the admin API, so a key
    /// whose grants happen to cover an admin route is still not an admin key.
    #[must_use]
    pub fn require_api_key_owner(mut self, prefix: impl Into<String>) -> Self {
        self.required_key_owner = Some(prefix.into().into_boxed_str());
        self
    }

    /// Trusts these remote issuers (their tokens' `jti` is checked against the denylist).
    #[must_use]
    pub fn trusted_issuers(mut self, issuers: TrustedIssuers) -> Self {
        self.remote = Some(issuers);
        self
    }

    /// The stores: API keys, apps, and revocation of JWTs.
    #[must_use]
    pub fn stores(mut self, stores: Arc<Stores>) -> Self {
        self.stores = Some(stores);
        self
    }

    /// Verifies JWTs without any revocation check. Only for deployments
    /// that issue no revocable token; without this call a guard that
    /// verifies JWTs must be given the stores.
    #[must_use]
    pub fn without_revocation(mut self) -> Self {
        self.revocation_off = true;
        self
    }

    /// Accepts HMAC-signed service requests.
    #[must_use]
    pub fn signed_requests<N: NonceStore + 'static>(
        mut self,
        auth: SignedRequestAuthenticator<N>,
    ) -> Self {
        self.signed = Some(Box::new(auth));
        self
    }

    /// The rate limiter's backend (memory by default); the configured
    /// rules are added to it.
    #[must_use]
    pub fn rate_limiter(mut self, limiter: RateLimiterBuilder) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Keeps using `limiter` (its counters, its backend) when the configured
    /// rate limits equal its rules: a configuration reload that leaves the
    /// rate limits alone does not reset them. Otherwise a new limiter is
    /// built as usual.
    #[must_use]
    pub fn reuse_rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.previous_limiter = Some(limiter);
        self
    }

    /// Bans and anomaly detection.
    #[must_use]
    pub fn anomaly(mut self, engine: Arc<AnomalyEngine>) -> Self {
        self.anomaly = Some(engine);
        self
    }

    /// The audit log: one event per request.
    #[must_use]
    pub fn audit(mut self, writer: Arc<AuditWriter>) -> Self {
        self.audit = Some(writer);
        self
    }

    /// Registers a custom policy that routes name in `require.policies`.
    #[must_use]
    pub fn policy(mut self, name: impl Into<String>, policy: impl Policy + 'static) -> Self {
        self.policies.push((name.into(), Box::new(policy)));
        self
    }

    /// How paths are redacted in audit events.
    #[must_use]
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// The clock (tests).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Validates everything and compiles the routes.
    pub fn build(self) -> Result<Guard, GuardConfigError> {
        let config = self.config;
        let field =
            |field: &'static str, message: String| GuardConfigError::Field { field, message };
        if config.realm.is_empty()
            || config.realm.len() > 64
            || !config
                .realm
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(field(
                "realm",
                "must be 1-64 visible ASCII characters without quotes or backslashes".into(),
            ));
        }
        let headers = credentials::HeaderNames::new(&config.headers)?;

        // Rate limits: one limiter holding every configured rule; routes
        // select theirs by name.
        let rules = config
            .rate_limits
            .iter()
            .cloned()
            .map(Rule::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| GuardConfigError::RateLimit(e.into()))?;
        let limiter = if rules.is_empty() {
            None
        } else if let Some(previous) = self
            .previous_limiter
            .filter(|p| p.rules() == rules.as_slice())
        {
            Some(previous)
        } else {
            let mut b = self
                .limiter
                .unwrap_or_else(RateLimiter::builder)
                .clock(Arc::clone(&self.clock));
            for r in rules {
                b = b.rule(r);
            }
            Some(b.build()?)
        };

        // Routes: authorization rules plus what the guard needs per route.
        let mut rules = Vec::with_capacity(config.routes.len());
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let bad = |field: &'static str, message: &str| GuardConfigError::Route {
                route: r.name.clone(),
                field,
                message: message.to_owned(),
            };
            if r.credentials.is_empty() {
                return Err(bad(
                    "credentials",
                    "list at least one of jwt, api_key, app, signed, anonymous",
                ));
            }
            for (i, s) in r.credentials.iter().enumerate() {
                if r.credentials[..i].contains(s) {
                    return Err(bad("credentials", "a source is listed twice"));
                }
            }
            if r.require.anonymous {
                return Err(bad(
                    "require.anonymous",
                    "list `anonymous` in `credentials` instead",
                ));
            }
            if !r.require.auth_methods.is_empty() {
                return Err(bad(
                    "require.auth_methods",
                    "the route's `credentials` list says which methods it accepts",
                ));
            }
            let anonymous = r.credentials.contains(&CredentialSource::Anonymous);
            let mut require = r.require.clone();
            if r.effect == Effect::Allow {
                require.anonymous = anonymous;
                require.auth_methods = r
                    .credentials
                    .iter()
                    .filter(|s| **s != CredentialSource::Anonymous)
                    .map(|s| s.auth_method())
                    .collect();
            }
            for source in r.credentials.iter() {
                let missing = match source {
                    CredentialSource::Jwt if self.local.is_none() && self.remote.is_none() => {
                        Some(("JWTs", "local_keys() or trusted_issuers()"))
                    }
                    CredentialSource::ApiKey | CredentialSource::App if self.stores.is_none() => {
                        Some(("API keys or app credentials", "stores()"))
                    }
                    CredentialSource::Signed if self.signed.is_none() => {
                        Some(("signed requests", "signed_requests()"))
                    }
                    _ => None,
                };
                if let Some((what, missing)) = missing {
                    return Err(GuardConfigError::Missing {
                        route: r.name.clone(),
                        what,
                        missing,
                    });
                }
            }
            let rule_set = match &limiter {
                _ if r.rate_limits.is_empty() => RuleSet::NONE,
                Some(l) => l.rule_set(&r.rate_limits).map_err(|e| {
                    bad("rate_limits", &format!("{e}; define it under rate_limits"))
                })?,
                None => {
                    return Err(bad(
                        "rate_limits",
                        "names a rate limit, but none is defined under rate_limits",
                    ));
                }
            };
            rules.push(RouteRule {
                name: r.name.clone(),
                effect: r.effect,
                methods: r.methods.clone(),
                path: r.path.clone(),
                host: r.host.clone(),
                require,
                path_parameters: r.path_parameters,
            });
            let name: Arc<str> = Arc::from(r.name.as_str());
            routes.push(CompiledRoute {
                counters: DecisionCounters::new(Some(&name)),
                name: Some(name),
                sources: r.credentials.clone().into_boxed_slice(),
                anonymous,
                rules: rule_set,
                dry_run: r.mode == Mode::DryRun,
            });
        }
        let default_route = CompiledRoute {
            counters: DecisionCounters::new(None),
            name: None,
            sources: match config.default {
                Effect::Allow => vec![
                    CredentialSource::Jwt,
                    CredentialSource::ApiKey,
                    CredentialSource::Anonymous,
                ]
                .into_iter()
                .filter(|s| match s {
                    CredentialSource::Jwt => self.local.is_some() || self.remote.is_some(),
                    CredentialSource::ApiKey => self.stores.is_some(),
                    _ => true,
                })
                .collect(),
                Effect::Deny => Box::new([]),
            },
            anonymous: config.default == Effect::Allow,
            rules: RuleSet::NONE,
            dry_run: false,
        };
        let mut authz = Authorizer::builder(AuthzConfig {
            roles: config.roles.clone(),
            rules,
            default: config.default,
        });
        for (name, policy) in self.policies {
            authz = authz.policy(name, BoxedPolicy(policy.into_policy()));
        }
        let authorizer = authz.build()?;

        let local = match self.local {
            None => None,
            Some((verifier, cache)) => {
                let hook = match (&self.stores, self.revocation_off) {
                    (Some(stores), false) => {
                        LocalRevocation::Stores(StoresRevocation::new(Arc::clone(stores)))
                    }
                    (_, true) => LocalRevocation::Off,
                    (None, false) => {
                        return Err(field(
                            "revocation",
                            "JWTs are verified but no stores were given to check revocation \
                             against; call stores(..), or without_revocation() if no token \
                             you accept can be revoked"
                                .into(),
                        ));
                    }
                };
                Some(CachedVerifier::with_hook(verifier, cache, hook))
            }
        };
        let remote = match (self.remote, &self.stores, self.revocation_off) {
            (Some(remote), Some(stores), false) => {
                Some(remote.with_revocation(StoresRevocation::jti_only(Arc::clone(stores))))
            }
            (Some(_), None, false) => {
                return Err(field(
                    "revocation",
                    "remote issuers are trusted but no stores were given for the jti denylist; \
                     call stores(..), or without_revocation()"
                        .into(),
                ));
            }
            (remote, _, _) => remote,
        };
        Ok(Guard {
            inner: Arc::new(Inner {
                realm: config.realm,
                client_ip: config.client_ip,
                headers,
                routes,
                default_route,
                authorizer,
                local,
                remote,
                stores: self.stores,
                signed: self.signed,
                limiter,
                anomaly: self.anomaly,
                audit: self.audit,
                redactor: Arc::new(self.redactor),
                clock: self.clock,
                max_signed_body: config.max_signed_body_bytes,
                refused_key_owners: self.refused_key_owners,
                required_key_owner: self.required_key_owner,
                audit_guard: self.audit_guard,
            }),
        })
    }
}

/// What authentication produced.
enum Authn {
    Caller(Arc<Principal>, Option<String>),
    Anonymous,
}

/// What the steps produced for one request.
struct Steps {
    outcome: Result<&'static str, Refused>,
    principal: Option<Arc<Principal>>,
    headers: Vec<(HeaderName, HeaderValue)>,
    dry_run: bool,
}

/// A refusal under construction, with what the audit event needs.
struct Refused {
    refusal: Refusal,
    reason: &'static str,
}

impl Guard {
    /// A builder over `config`.
    pub fn builder(config: GuardConfig) -> GuardBuilder {
        GuardBuilder {
            config,
            local: None,
            remote: None,
            stores: None,
            revocation_off: false,
            signed: None,
            limiter: None,
            previous_limiter: None,
            anomaly: None,
            audit: None,
            refused_key_owners: Vec::new(),
            required_key_owner: None,
            audit_guard: None,
            policies: Vec::new(),
            redactor: Redactor::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// The local verifier (to replace its keys on rotation).
    pub fn local_verifier(&self) -> Option<&CachedVerifier<impl RevocationHook>> {
        self.inner.local.as_ref()
    }

    /// Verifies local tokens against `keys` from now on (a signing-key
    /// rotation): tokens of keys no longer in the set stop verifying at
    /// once. No effect without local keys.
    pub fn replace_local_keys(&self, keys: Arc<portcullis_core::KeySet>) {
        if let Some(local) = &self.inner.local {
            local.replace_keys(keys);
        }
    }

    /// The rate limiter, when rate limits are configured.
    pub fn rate_limiter(&self) -> Option<&RateLimiter> {
        self.inner.limiter.as_ref()
    }

    /// The stores, when given.
    pub fn stores(&self) -> Option<&Arc<Stores>> {
        self.inner.stores.as_ref()
    }

    /// The compiled routes and roles.
    pub fn access_policy(&self) -> &portcullis_core::authz::routes::AccessPolicy {
        self.inner.authorizer.access()
    }

    /// Only step 3 (with revocation): the caller of `parts` by its route's
    /// credential sources; `Ok(None)` for an anonymous caller where the
    /// route allows one. No ban, limit, authorization or audit.
    pub async fn authenticate(
        &self,
        parts: &Parts,
        body: Option<&[u8]>,
    ) -> Result<Option<Arc<Principal>>, Refusal> {
        let route = self.route_of(parts);
        match self.authenticate_route(parts, body, route).await {
            Ok(Authn::Caller(p, _)) => Ok(Some(p)),
            Ok(Authn::Anonymous) => Ok(None),
            Err((refused, _)) => Err(refused.refusal),
        }
    }

    /// The `realm` of challenges.
    pub fn realm(&self) -> &str {
        &self.inner.realm
    }

    /// Largest body a layer buffers for a signed request.
    pub fn max_signed_body(&self) -> usize {
        self.inner.max_signed_body
    }

    /// Whether deciding this request needs its body: its route accepts
    /// signed requests and the request carries a signature.
    pub fn needs_body(&self, parts: &Parts) -> bool {
        self.inner.signed.is_some()
            && parts
                .headers
                .contains_key(portcullis_core::authz::signed_request::HEADER_SIGNATURE)
            && self
                .route_of(parts)
                .sources
                .contains(&CredentialSource::Signed)
    }

    fn route_of(&self, parts: &Parts) -> &CompiledRoute {
        self.route_for(&authz_facts(parts)).1
    }

    /// The rules matching `facts` and the route whose settings apply.
    fn route_for(
        &self,
        facts: &portcullis_core::authz::routes::RequestFacts<'_>,
    ) -> (portcullis_core::authz::routes::RouteMatch, &CompiledRoute) {
        let matched = self.inner.authorizer.access().match_route(facts);
        let route = matched
            .route_index()
            .and_then(|i| self.inner.routes.get(i))
            .unwrap_or(&self.inner.default_route);
        (matched, route)
    }

    /// The client address of a request from `peer`: the socket peer, or
    /// what a trusted proxy's configured forwarding header says.
    pub fn client_ip(&self, parts: &Parts, peer: IpAddr) -> IpAddr {
        crate::ratelimit::client_key(&self.inner.client_ip, peer, &parts.headers)
    }

    fn is_trusted_proxy(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|p| self.inner.client_ip.is_trusted(p))
    }

    fn request_id(&self, parts: &Parts, peer: Option<IpAddr>) -> RequestIdText {
        if self.is_trusted_proxy(peer)
            && let Some(id) = crate::audit::request::inbound_request_id(&parts.headers)
        {
            return RequestIdText::adopt(id);
        }
        RequestIdText::generate()
    }

    /// Decides a request whose body is not needed (see [`Self::needs_body`]).
    pub async fn check(&self, parts: &Parts, peer: Option<IpAddr>) -> Decision {
        self.check_with_body(parts, peer, None).await
    }

    /// Decides a request; `body` is the buffered body of a signed request.
    pub async fn check_with_body(
        &self,
        parts: &Parts,
        peer: Option<IpAddr>,
        body: Option<&[u8]>,
    ) -> Decision {
        let started = Instant::now();
        let inner = &*self.inner;
        let request_id = self.request_id(parts, peer);
        let client_ip = peer.map(|p| self.client_ip(parts, p));
        // Only the anomaly engine keys by the address as text.
        let ip_text = client_ip
            .filter(|_| inner.anomaly.is_some())
            .map(|ip| ip.to_string());
        let facts = authz_facts(parts);
        let (matched, route) = self.route_for(&facts);
        let mut event = self.snapshot(parts, &request_id, client_ip, route);
        let mut headers = Vec::new();
        let mut principal = None;
        let outcome = self
            .decide(
                parts,
                body,
                route,
                client_ip,
                ip_text.as_deref(),
                (&facts, matched),
                &mut principal,
                &mut headers,
                event.as_deref_mut(),
                None,
            )
            .await;
        let steps = Steps {
            outcome,
            principal,
            headers,
            dry_run: route.dry_run,
        };
        self.conclude(started, request_id, client_ip, route, event, steps)
    }

    /// The decision for a signed request whose body could not be buffered
    /// (larger than [`Self::max_signed_body`], or unreadable): refused with
    /// 413 `request.body_too_large` before any check runs (nothing is
    /// authenticated from a body that was not read), with its one audit
    /// event. Never let through, not even on a `dry_run` route.
    pub fn body_too_large(&self, parts: &Parts, peer: Option<IpAddr>) -> Decision {
        let started = Instant::now();
        let request_id = self.request_id(parts, peer);
        let client_ip = peer.map(|p| self.client_ip(parts, p));
        let route = self.route_of(parts);
        let event = self.snapshot(parts, &request_id, client_ip, route);
        let refusal = Refusal::new(
            ErrorCode::BodyTooLarge,
            format!(
                "the signed request body could not be read or exceeds {} bytes",
                self.inner.max_signed_body
            ),
        );
        let steps = Steps {
            outcome: Err(Refused {
                refusal,
                reason: "body_too_large",
            }),
            principal: None,
            headers: Vec::new(),
            dry_run: false,
        };
        self.conclude(started, request_id, client_ip, route, event, steps)
    }

    /// 400 `request.malformed` for a request with no single meaning (the
    /// gateway's canonical form refused it before any check), with its
    /// one audit event; `reason` is the specific stable reason
    /// (e.g. `request.host_mismatch`). Never let through, not even on a
    /// `dry_run` route.
    pub fn malformed(
        &self,
        parts: &Parts,
        peer: Option<IpAddr>,
        reason: &'static str,
        detail: &str,
    ) -> Decision {
        let started = Instant::now();
        let request_id = self.request_id(parts, peer);
        let client_ip = peer.map(|p| self.client_ip(parts, p));
        let route = self.route_of(parts);
        let event = self.snapshot(parts, &request_id, client_ip, route);
        let steps = Steps {
            outcome: Err(Refused {
                refusal: Refusal::new(ErrorCode::MalformedRequest, detail),
                reason,
            }),
            principal: None,
            headers: Vec::new(),
            dry_run: false,
        };
        self.conclude(started, request_id, client_ip, route, event, steps)
    }

    /// What the request's audit event is made of, when there is an audit log.
    fn snapshot(
        &self,
        parts: &Parts,
        request_id: &RequestIdText,
        client_ip: Option<IpAddr>,
        route: &CompiledRoute,
    ) -> Option<Box<Snapshot>> {
        let inner = &*self.inner;
        inner.audit.as_ref().map(|_| {
            let host = portcullis_core::audit::bounded_host(request_host(parts));
            Box::new(Snapshot {
                ts_us: i64::try_from(inner.clock.now().as_micros()).unwrap_or(i64::MAX),
                request_id: request_id.clone(),
                method: parts.method.clone(),
                host_and_path: [
                    host,
                    parts
                        .uri
                        .path_and_query()
                        .map_or_else(|| parts.uri.path(), |pq| pq.as_str()),
                ]
                .concat()
                .into(),
                host_len: host.len(),
                guard: inner.audit_guard,
                user_agent: parts
                    .headers
                    .get(http::header::USER_AGENT)
                    .map(|v| snapshot_user_agent(v.as_bytes())),
                client_ip,
                route: route.name.clone(),
                principal: None,
                deny: false,
                code: None,
                reason: None,
                allow_reason: "",
                rate_limit_remaining: None,
                flags: Vec::new(),
                redactor: Arc::clone(&inner.redactor),
                status: None,
                latency_us: 0,
                upstream_us: None,
            })
        })
    }

    /// The [`Decision`] from what the steps produced: metrics, the audit
    /// ticket (finished at once for a refusal), dry run.
    fn conclude(
        &self,
        started: Instant,
        request_id: RequestIdText,
        client_ip: Option<IpAddr>,
        route: &CompiledRoute,
        mut event: Option<Box<Snapshot>>,
        steps: Steps,
    ) -> Decision {
        let inner = &*self.inner;
        let Steps {
            outcome,
            principal,
            headers,
            dry_run,
        } = steps;
        let (refusal, dry_run_refusal) = match outcome {
            Ok(reason) => {
                if let Some(e) = event.as_mut() {
                    e.allow_reason = reason;
                }
                (None, None)
            }
            Err(refused) => {
                if let Some(e) = event.as_mut() {
                    e.deny = true;
                    // The code the client is answered: a malformed request
                    // gets its specific one (`request.host_mismatch`), not
                    // the umbrella `request.malformed`.
                    e.code = Some(if refused.refusal.code == ErrorCode::MalformedRequest {
                        refused.reason
                    } else {
                        refused.refusal.code.as_str()
                    });
                    e.reason = Some(format!(
                        "{}{}: {}",
                        if dry_run { "dry_run: " } else { "" },
                        refused.reason,
                        refused.refusal.detail
                    ));
                }
                tracing::debug!(
                    request_id = request_id.as_str(),
                    route = route.name.as_deref().unwrap_or("<default>"),
                    code = refused.refusal.code.as_str(),
                    reason = refused.reason,
                    dry_run,
                    "request refused"
                );
                if dry_run {
                    metrics::counter!("portcullis_guard_dry_run_refusals_total").increment(1);
                    (None, Some(refused.refusal))
                } else {
                    (Some(refused.refusal), None)
                }
            }
        };
        // Handles registered once per route and code: no allocation here.
        route.counters.count(refusal.as_ref().map(|r| r.code));
        let mut audit = AuditTicket::default();
        if let (Some(mut e), Some(writer)) = (event, inner.audit.as_ref()) {
            e.principal.clone_from(&principal);
            audit = AuditTicket::new(e, Arc::clone(writer), started);
        }
        let mut decision = Decision {
            request_id,
            client_ip,
            route: route.name.clone(),
            principal,
            headers,
            refusal,
            dry_run_refusal,
            audit,
        };
        if let Some(r) = &decision.refusal {
            let status = r.status;
            decision.finish(status);
        }
        decision
    }

    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        parts: &Parts,
        body: Option<&[u8]>,
        route: &CompiledRoute,
        client_ip: Option<IpAddr>,
        ip: Option<&str>,
        (facts, matched): (
            &portcullis_core::authz::routes::RequestFacts<'_>,
            portcullis_core::authz::routes::RouteMatch,
        ),
        principal_out: &mut Option<Arc<Principal>>,
        headers_out: &mut Vec<(HeaderName, HeaderValue)>,
        mut event: Option<&mut Snapshot>,
        mut probe: Option<&mut explain::Probe>,
    ) -> Result<&'static str, Refused> {
        let inner = &*self.inner;

        // 2. A banned IP is refused before any credential costs us work.
        if let (Some(engine), Some(ip)) = (&inner.anomaly, ip) {
            let banned = self.check_ban(engine, Some(ip), None).await;
            if let Some(p) = probe.as_deref_mut() {
                p.ban("ip", banned.is_err());
            }
            banned?;
        }

        // 3. Authentication (explain may give the caller instead).
        let assumed = probe
            .as_deref()
            .and_then(|p| p.assume.clone())
            .map(|p| Authn::Caller(p, None));
        let authenticated = match assumed {
            Some(a) => Ok(a),
            None => self.authenticate_route(parts, body, route).await,
        };
        if let (Some(p), Err((refused, _))) = (probe.as_deref_mut(), &authenticated) {
            p.credentials.refused = Some(refused.refusal.code);
        }
        let authn = match authenticated {
            Ok(a) => a,
            Err((refused, account)) => {
                if let (Some(engine), Some(ip)) = (&inner.anomaly, ip)
                    && probe.is_none()
                    && is_auth_failure(refused.refusal.code)
                {
                    let signal = Signal::AuthFailure {
                        ip,
                        account: account.as_deref(),
                    };
                    self.observe(engine, signal, parts, event.as_deref_mut())
                        .await;
                }
                return Err(refused);
            }
        };
        let (principal, key_or_app) = match authn {
            Authn::Caller(p, id) => (Some(p), id),
            Authn::Anonymous => (None, None),
        };
        *principal_out = principal.clone();

        // 4. The subject's ban (revocation ran inside authentication).
        if let (Some(engine), Some(p)) = (&inner.anomaly, principal.as_deref()) {
            let banned = self.check_ban(engine, None, Some(&p.subject)).await;
            if let Some(probe) = probe.as_deref_mut() {
                probe.ban("subject", banned.is_err());
            }
            banned?;
        }

        // 5. Rate limits, with the burst detector's window in the same call.
        if let Some(limiter) = &inner.limiter {
            let p = principal.as_deref();
            let rl_facts = portcullis_core::ratelimit::RequestFacts {
                client_ip,
                subject: p.map(|p| p.subject.as_str()),
                api_key_id: key_or_app
                    .as_deref()
                    .filter(|_| p.is_some_and(|p| p.auth_method == AuthMethod::ApiKey)),
                app_id: key_or_app.as_deref().filter(|_| {
                    p.is_some_and(|p| {
                        matches!(p.auth_method, AuthMethod::App | AuthMethod::SignedRequest)
                    })
                }),
                tenant: p.and_then(|p| p.tenant.as_deref()),
                route: route.name.as_deref(),
                headers: Some(&HttpHeaders(&parts.headers)),
            };
            let outcome = match (&inner.anomaly, ip) {
                // Explain reads the counters, never consumes them.
                _ if probe.is_some() => {
                    let outcome = limiter.peek_rules(&rl_facts, route.rules).await;
                    if let Some(probe) = probe.as_deref_mut() {
                        probe.rate_limits =
                            explain_rate_rules(limiter, &rl_facts, route.rules, &outcome);
                    }
                    outcome
                }
                (Some(engine), Some(ip)) => {
                    let (outcome, observed) = limiter
                        .check_observing_rules(
                            &rl_facts,
                            route.rules,
                            engine,
                            Signal::Request { ip },
                            || sample(parts, &inner.redactor),
                        )
                        .await;
                    match observed {
                        Ok(o) => {
                            if let Some(e) = event.as_deref_mut() {
                                tag(e, &o);
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "burst detection skipped"),
                    }
                    outcome
                }
                _ if route.rules.is_empty() => crate::ratelimit::Outcome::empty(),
                _ => limiter.check_rules(&rl_facts, route.rules).await,
            };
            limiter.push_header_values(&outcome, headers_out);
            if let Some(e) = event.as_deref_mut() {
                e.rate_limit_remaining = outcome
                    .primary()
                    .map(|(_, d)| i64::try_from(d.remaining).unwrap_or(i64::MAX));
            }
            match outcome.verdict() {
                Verdict::Admitted => {}
                Verdict::Limited => {
                    let mut r = Refusal::new(
                        ErrorCode::RateLimitExceeded,
                        "too many requests; retry after the time in Retry-After",
                    );
                    r.headers = headers_out.clone();
                    return Err(Refused {
                        refusal: r,
                        reason: "rate_limited",
                    });
                }
                Verdict::Unavailable => {
                    let mut r = Refusal::new(
                        ErrorCode::BackendUnavailable,
                        "the rate-limit backend is unavailable and this limit fails closed; retry shortly",
                    );
                    r.headers = headers_out.clone();
                    return Err(Refused {
                        refusal: r,
                        reason: "rate_limit_backend_down",
                    });
                }
            }
        } else if let (Some(engine), Some(ip)) = (&inner.anomaly, ip) {
            // No rate limits configured: the burst detector counts anyway
            // (it rode in the limiter's call above).
            self.observe(engine, Signal::Request { ip }, parts, event.as_deref_mut())
                .await;
        }

        // 6. Authorization.
        let decision = inner
            .authorizer
            .authorize_matched(principal.as_deref(), facts, matched)
            .await;
        if let Some(probe) = probe.as_deref_mut() {
            probe.authorization = Some(explain::AuthzTrace {
                rule: decision.rule.map(str::to_owned),
                allowed: decision.allowed,
                reason: decision.reason.as_str(),
                detail: match decision.reason {
                    Reason::NoMatchingRule => "no route allows this request".to_owned(),
                    other => other.to_string(),
                },
            });
        }
        if !decision.allowed {
            let code = decision.code().unwrap_or(ErrorCode::Denied);
            let detail = match decision.reason {
                Reason::NoMatchingRule => "no route allows this request".to_owned(),
                other => other.to_string(),
            };
            if let (Some(engine), Some(p)) = (&inner.anomaly, principal.as_deref())
                && probe.is_none()
                && code == ErrorCode::Denied
            {
                let signal = Signal::Denied {
                    subject: &p.subject,
                };
                self.observe(engine, signal, parts, event).await;
            }
            let mut refusal = Refusal::new(code, detail);
            if code == ErrorCode::MissingCredentials {
                refusal.headers.push(self.challenge(None));
            }
            refusal.headers.extend(headers_out.iter().cloned());
            return Err(Refused {
                refusal,
                reason: decision.reason.as_str(),
            });
        }
        Ok(decision.reason.as_str())
    }

    async fn check_ban(
        &self,
        engine: &AnomalyEngine,
        ip: Option<&str>,
        subject: Option<&str>,
    ) -> Result<(), Refused> {
        match engine.banned(ip, subject).await {
            Ok(None) => Ok(()),
            Ok(Some(ban)) => {
                let now_ms = u64::try_from(self.inner.clock.now().as_millis()).unwrap_or(u64::MAX);
                let secs = ban.until_ms.saturating_sub(now_ms).div_ceil(1000).max(1);
                let mut r = Refusal::new(
                    ErrorCode::Banned,
                    "this client is temporarily banned after abusive traffic; retry after the time in Retry-After",
                );
                r.headers
                    .push((http::header::RETRY_AFTER, HeaderValue::from(secs)));
                Err(Refused {
                    refusal: r,
                    reason: "banned",
                })
            }
            Err(e) => {
                // Bans fail open: a ban backend outage must not stop every request.
                tracing::warn!(error = %e, "ban check failed; letting the request through");
                Ok(())
            }
        }
    }

    async fn observe(
        &self,
        engine: &AnomalyEngine,
        signal: Signal<'_>,
        parts: &Parts,
        event: Option<&mut Snapshot>,
    ) {
        match engine
            .observe(signal, || sample(parts, &self.inner.redactor))
            .await
        {
            Ok(o) => {
                if let Some(e) = event {
                    tag(e, &o);
                }
            }
            Err(e) => tracing::debug!(error = %e, "anomaly detection skipped"),
        }
    }

    /// `WWW-Authenticate: Bearer realm="…"[, error="…", error_description="…"]`.
    fn challenge(&self, error: Option<(&str, &str)>) -> (HeaderName, HeaderValue) {
        let value = match error {
            None => format!("Bearer realm=\"{}\"", self.inner.realm),
            Some((error, description)) => format!(
                "Bearer realm=\"{}\", error=\"{error}\", error_description=\"{}\"",
                self.inner.realm,
                description.replace(['"', '\\'], "'")
            ),
        };
        let value =
            HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
        (http::header::WWW_AUTHENTICATE, value)
    }

    fn auth_refusal(&self, code: ErrorCode, detail: &str) -> Refused {
        let mut refusal = Refusal::new(code, detail);
        if refusal.status == http::StatusCode::UNAUTHORIZED {
            refusal
                .headers
                .push(self.challenge(Some(("invalid_token", detail))));
        }
        Refused {
            refusal,
            reason: "authentication_failed",
        }
    }

    /// Step 3: the first credential present among the route's sources decides.
    async fn authenticate_route(
        &self,
        parts: &Parts,
        body: Option<&[u8]>,
        route: &CompiledRoute,
    ) -> Result<Authn, (Refused, Option<String>)> {
        let inner = &*self.inner;
        let presented = credentials::find(&parts.headers, &inner.headers, &route.sources);
        match presented {
            Presented::None => {
                if route.anonymous {
                    return Ok(Authn::Anonymous);
                }
                if route.sources.is_empty() {
                    // The default route under `default = "deny"`: authorization refuses.
                    return Ok(Authn::Anonymous);
                }
                let mut refusal = Refusal::new(
                    ErrorCode::MissingCredentials,
                    format!(
                        "this route needs credentials: {}",
                        credentials::describe(&route.sources)
                    ),
                );
                refusal.headers.push(self.challenge(None));
                Err((
                    Refused {
                        refusal,
                        reason: "missing_credentials",
                    },
                    None,
                ))
            }
            Presented::Unaccepted(kind) => {
                let mut refusal = Refusal::new(
                    ErrorCode::MissingCredentials,
                    format!(
                        "this route does not accept {kind}; it accepts {}",
                        credentials::describe(&route.sources)
                    ),
                );
                refusal.headers.push(self.challenge(Some((
                    "invalid_request",
                    "credential type not accepted here",
                ))));
                Err((
                    Refused {
                        refusal,
                        reason: "credential_type_not_accepted",
                    },
                    None,
                ))
            }
            Presented::Jwt(token) => self
                .verify_jwt(token.as_bytes())
                .await
                .map(|p| Authn::Caller(p, None))
                .map_err(|code| (self.auth_refusal(code, jwt_detail(code)), None)),
            Presented::ApiKey(key) => {
                let Some(stores) = &inner.stores else {
                    return Err((
                        self.auth_refusal(ErrorCode::InvalidApiKey, "API keys are not enabled"),
                        None,
                    ));
                };
                // The key, then its owner's status, in one budget: a key
                // of a disabled user is refused like a revoked token.
                let checked = within_budget(stores, async {
                    let record = stores.verify_api_key(key).await?;
                    let disabled = stores.user_is_disabled(&record.owner).await?;
                    Ok((record, disabled))
                })
                .await;
                match checked {
                    Ok((record, true)) => Err((
                        self.auth_refusal(
                            ErrorCode::TokenRevoked,
                            "the API key's owner is disabled",
                        ),
                        Some(record.id.clone()),
                    )),
                    Ok((record, false))
                        if inner
                            .refused_key_owners
                            .iter()
                            .any(|prefix| record.owner.starts_with(&**prefix)) =>
                    {
                        Err((
                            self.auth_refusal(
                                ErrorCode::InvalidApiKey,
                                "this API key is not accepted here (an admin key works only on the admin listener)",
                            ),
                            Some(record.id.clone()),
                        ))
                    }
                    Ok((record, false))
                        if inner
                            .required_key_owner
                            .as_ref()
                            .is_some_and(|prefix| !record.owner.starts_with(&**prefix)) =>
                    {
                        Err((
                            self.auth_refusal(
                                ErrorCode::InvalidApiKey,
                                "this API key is not accepted here (only an admin key, owner `admin:<name>`, works on the admin API)",
                            ),
                            Some(record.id.clone()),
                        ))
                    }
                    Ok((record, false)) => {
                        let mut p = Principal::new(record.owner.clone(), AuthMethod::ApiKey);
                        p.roles.clone_from(&record.roles);
                        p.permissions.clone_from(&record.permissions);
                        p.scopes.clone_from(&record.scopes);
                        p.token_id = Some(record.id.clone());
                        p.expires_at = record.expires_at;
                        Ok(Authn::Caller(Arc::new(p), Some(record.id.clone())))
                    }
                    Err(e) => {
                        let account = crate::stores::api_keys::parse_api_key(key)
                            .map(|(id, _)| id.to_owned());
                        Err((store_refusal(self, &e, ErrorCode::InvalidApiKey), account))
                    }
                }
            }
            Presented::App { id, secret } => {
                let Some(stores) = &inner.stores else {
                    return Err((
                        self.auth_refusal(
                            ErrorCode::InvalidAppCredentials,
                            "app credentials are not enabled",
                        ),
                        None,
                    ));
                };
                match within_budget(stores, stores.verify_app(id, secret)).await {
                    Ok(app) => {
                        let mut p = Principal::new(app.app_id.clone(), AuthMethod::App);
                        p.permissions = app.permissions;
                        p.tenant = app.tenant;
                        p.name = Some(app.name);
                        Ok(Authn::Caller(Arc::new(p), Some(app.app_id)))
                    }
                    Err(e) => Err((
                        store_refusal(self, &e, ErrorCode::InvalidAppCredentials),
                        Some(id.to_owned()),
                    )),
                }
            }
            Presented::Signed => {
                let Some(signed) = &inner.signed else {
                    return Err((
                        self.auth_refusal(
                            ErrorCode::InvalidSignatureRequest,
                            "signed requests are not enabled",
                        ),
                        None,
                    ));
                };
                let sig_headers = crate::authz::signature_headers(&parts.headers);
                let signed_parts = SignedParts {
                    method: parts.method.as_str(),
                    path: parts.uri.path(),
                    query: parts.uri.query().unwrap_or(""),
                    body: body.unwrap_or(&[]),
                };
                match signed.authenticate(&sig_headers, &signed_parts).await {
                    Ok(p) => {
                        let app = p.subject.clone();
                        Ok(Authn::Caller(Arc::new(p), Some(app)))
                    }
                    Err(e) => {
                        let code = e.code();
                        let refused = if code == ErrorCode::BackendUnavailable {
                            Refused {
                                refusal: Refusal::new(
                                    code,
                                    "the nonce store is unavailable; retry shortly",
                                ),
                                reason: "backend_unavailable",
                            }
                        } else {
                            self.auth_refusal(
                                code,
                                &format!("the request signature does not verify: {e}"),
                            )
                        };
                        Err((refused, sig_headers.app_id.map(str::to_owned)))
                    }
                }
            }
        }
    }

    /// A JWT against the local key set, then (for another issuer) the
    /// trusted remote issuers; revocation is checked either way.
    async fn verify_jwt(&self, token: &[u8]) -> Result<Arc<Principal>, ErrorCode> {
        let inner = &*self.inner;
        if let Some(local) = &inner.local {
            match local.verify(token).await {
                Ok(p) => return Ok(p),
                Err(AuthError::Token(portcullis_core::TokenError::InvalidIssuer))
                    if inner.remote.is_some() => {}
                // The local set does not know the kid: a trusted remote
                // issuer's token (its signature is checked there).
                Err(AuthError::Token(portcullis_core::TokenError::UnknownKey(_)))
                    if inner
                        .remote
                        .as_ref()
                        .is_some_and(|r| r.names_issuer_of(token)) => {}
                Err(e) => return Err(e.code()),
            }
        }
        let Some(remote) = &inner.remote else {
            return Err(ErrorCode::InvalidIssuer);
        };
        let principal = remote.verify(token).await.map_err(|e| e.code())?;
        Ok(Arc::new(principal))
    }
}

/// Each rate rule in `set`: the key `facts` count under and what the
/// counters (read, in `outcome`) say.
fn explain_rate_rules(
    limiter: &RateLimiter,
    facts: &portcullis_core::ratelimit::RequestFacts<'_>,
    set: RuleSet,
    outcome: &crate::ratelimit::Outcome,
) -> Vec<explain::RateTrace> {
    limiter
        .rules()
        .iter()
        .enumerate()
        .filter(|(i, _)| set.contains(*i))
        .map(|(i, rule)| {
            let read = outcome.decisions().find(|(j, _)| *j == i).map(|(_, d)| d);
            explain::RateTrace {
                rule: rule.name.clone(),
                key: rule.key.render(facts),
                limit: read.map(|d| d.limit),
                remaining: read.map(|d| d.remaining),
                limited: read.is_some_and(|d| !d.allowed),
            }
        })
        .collect()
}

/// A credential lookup on the request path, within the revocation budget
/// and behind the stores' circuit breaker: a store that hangs is a store
/// that is down (`backend.unavailable`), and once known down it costs a
/// request nothing.
async fn within_budget<T>(
    stores: &Stores,
    lookup: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    stores
        .on_request_path(crate::stores::hook::DEFAULT_REVOCATION_BUDGET, lookup)
        .await
}

/// Marks the audit snapshot with the detectors whose `tag` action fired.
fn tag(snapshot: &mut Snapshot, observed: &crate::anomaly::Observed) {
    for kind in &observed.tags {
        let name = kind.as_str();
        if !snapshot.flags.contains(&name) {
            snapshot.flags.push(name);
        }
    }
}

fn store_refusal(guard: &Guard, e: &StoreError, code: ErrorCode) -> Refused {
    match e {
        StoreError::Unavailable(_) | StoreError::Corrupt(_) => {
            tracing::warn!(error = %e, "credential store unavailable; refusing");
            Refused {
                refusal: Refusal::new(
                    ErrorCode::BackendUnavailable,
                    "the credential store is unavailable; retry shortly",
                ),
                reason: "backend_unavailable",
            }
        }
        _ => guard.auth_refusal(
            code,
            match code {
                ErrorCode::InvalidApiKey => "the API key is invalid, revoked or expired",
                _ => "the app id or secret is wrong, or the app is disabled",
            },
        ),
    }
}

fn jwt_detail(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::TokenExpired => "the access token expired; refresh it or log in again",
        ErrorCode::TokenNotYetValid => "the access token is not valid yet; check the clock",
        ErrorCode::TokenRevoked => "the access token was revoked",
        ErrorCode::SessionRevoked => "the session of this token was revoked; log in again",
        ErrorCode::InvalidIssuer => "the token's issuer is not trusted",
        ErrorCode::InvalidAudience => "the token is not meant for this API",
        ErrorCode::WrongTokenType => "this is not an access token",
        ErrorCode::JwksUnavailable => "the issuer's keys are unavailable; retry shortly",
        ErrorCode::BackendUnavailable => "the revocation store is unavailable; retry shortly",
        ErrorCode::MissingClaim => "the token lacks a required claim",
        _ => "the access token is invalid",
    }
}

fn authz_facts(parts: &Parts) -> portcullis_core::authz::routes::RequestFacts<'_> {
    let facts =
        portcullis_core::authz::routes::RequestFacts::new(parts.method.as_str(), parts.uri.path());
    match parts.uri.host().or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    }) {
        Some(host) => facts.with_host(host),
        None => facts,
    }
}

fn sample(parts: &Parts, redactor: &Redactor) -> SampleRequest {
    let path = redactor.path(
        parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path(), |pq| pq.as_str()),
    );
    let ua = parts
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    SampleRequest::new(parts.method.as_str(), &path, ua)
}

/// The request's host as the audit event records it: the `Host` header,
/// else the URI's authority (HTTP/2), else `""`.
fn request_host(parts: &Parts) -> &str {
    parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.host())
        .unwrap_or("")
}

/// The user agent as the audit event keeps it: at most
/// `MAX_USER_AGENT` bytes (cut on a char boundary), lossily decoded.
fn snapshot_user_agent(raw: &[u8]) -> Box<str> {
    let max = portcullis_core::audit::redact::MAX_USER_AGENT;
    let text = String::from_utf8_lossy(&raw[..raw.len().min(max + 4)]);
    portcullis_core::audit::redact::user_agent(&text).into_boxed_str()
}

/// Whether a refused credential counts as a failed authentication for the
/// `auth_failures` detector (which bans by default): a forged, malformed or
/// unknown credential does; no credential, a backend outage, and a stale
/// one do not — an expired, not-yet-valid or revoked token verified once,
/// and a client that has not replaced it yet (an open tab polling after
/// logout) is no guesser: counting it would ban a whole office's address.
fn is_auth_failure(code: ErrorCode) -> bool {
    !matches!(
        code,
        ErrorCode::MissingCredentials
            | ErrorCode::BackendUnavailable
            | ErrorCode::TokenExpired
            | ErrorCode::TokenNotYetValid
            | ErrorCode::TokenRevoked
            | ErrorCode::SessionRevoked
    )
}
