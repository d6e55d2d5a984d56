//! The token service: an axum [`Router`] for login, refresh (rotation with
//! reuse detection), logout, logout-all, the caller's own sessions and API
//! keys, the public JWKS and OpenID discovery, over the [`Stores`].
//!
//! ```ignore
//! let service = TokenService::builder(stores, issuer, keys).build()?;
//! let app = axum::Router::new().nest("/auth", service.router());
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! ```
//!
//! Serve with connect info so that per-IP login limits, detectors and the
//! session records see the client address (without it they see none, and
//! only the per-account limit applies). See `docs/service.md`.

mod api_keys;
mod discovery;
mod extract;
mod problem;
mod regulate;
mod sessions;
mod tokens;

// For other routers in the same style (the gateway's admin API): strict
// JSON bodies and problem+json answers with the stable codes.
pub use self::extract::{BodyLimit, JsonBody, OptionalJsonBody};
pub use self::problem::{INVALID_INPUT, Problem, problem};

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use http::HeaderValue;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use portcullis_core::anomaly::{SampleRequest, Signal};
use portcullis_core::audit::{AuditEvent, Decision, EventKind};
use portcullis_core::ratelimit::ClientIpConfig;
use portcullis_core::{Clock, KeySet, SystemClock, TokenIssuer, Validation, Verifier};

use crate::anomaly::AnomalyEngine;
use crate::audit::AuditWriter;
use crate::ratelimit::RateLimiter;
use crate::regulation::Regulator;
use crate::stores::{Stores, StoresRevocation};
use crate::token_cache::{CachedVerifier, TokenCacheConfig};

use self::extract::Client;

/// Default bound on request bodies: 16 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;

/// Default time budget of each store call the service makes (login's
/// password check has its own bound and is not counted).
pub const DEFAULT_STORE_BUDGET: Duration = Duration::from_secs(1);

/// Why a [`TokenService`] could not be built; names the field.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ServiceConfigError {
    /// A setting is invalid.
    #[error("token service `{field}`: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ServiceConfigError {
    ServiceConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Builds a [`TokenService`]: the stores, the issuer and the key set are
/// required; the rest is optional.
pub struct TokenServiceBuilder {
    stores: Arc<Stores>,
    issuer: TokenIssuer,
    keys: Arc<KeySet>,
    public_url: Option<String>,
    login_limiter: Option<RateLimiter>,
    regulation: Regulation,
    anomaly: Option<Arc<AnomalyEngine>>,
    audit: Option<Arc<AuditWriter>>,
    clock: Arc<dyn Clock>,
    client_ip: ClientIpConfig,
    token_cache: TokenCacheConfig,
    max_body_bytes: usize,
    store_budget: Duration,
}

impl std::fmt::Debug for TokenServiceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServiceBuilder")
            .field("issuer", &self.issuer)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl TokenServiceBuilder {
    /// Where the router is reachable from outside, e.g.
    /// `https://auth.example.com/auth` when it is nested under `/auth`
    /// (default: the issuer URL). Discovery advertises endpoints under it.
    #[must_use]
    pub fn public_url(mut self, url: impl Into<String>) -> Self {
        self.public_url = Some(url.into());
        self
    }

    /// Limits login attempts. Rules keyed by `ip` count per client address,
    /// rules keyed by `subject` per attempted account (the case-folded
    /// username); every attempt counts, before the password is checked.
    #[must_use]
    pub fn login_limiter(mut self, limiter: RateLimiter) -> Self {
        self.login_limiter = Some(limiter);
        self
    }

    /// Regulates logins and password-reset redemptions with `regulator`
    /// (failures per client IP and per account at an IP, refused with 429
    /// `auth.too_many_attempts` before any password is checked). Default:
    /// [`RegulationPolicy::default`](portcullis_core::regulation::RegulationPolicy)
    /// in this process.
    #[must_use]
    pub fn regulator(mut self, regulator: Arc<Regulator>) -> Self {
        self.regulation = Regulation::With(regulator);
        self
    }

    /// Turns login regulation off (not advised: passwords can then be
    /// guessed as fast as they hash).
    #[must_use]
    pub fn without_regulation(mut self) -> Self {
        self.regulation = Regulation::Off;
        self
    }

    /// Feeds login failures (`auth_failures`, `distinct_accounts`) and
    /// refresh reuse (`refresh_reuse`) to `engine`, and refuses banned
    /// clients at login and refresh.
    #[must_use]
    pub fn anomaly(mut self, engine: Arc<AnomalyEngine>) -> Self {
        self.anomaly = Some(engine);
        self
    }

    /// Records security events (logins, issued / rotated / revoked tokens,
    /// reuse, API keys) to `writer`.
    #[must_use]
    pub fn audit(mut self, writer: Arc<AuditWriter>) -> Self {
        self.audit = Some(writer);
        self
    }

    /// The clock for verification, records and audit timestamps (default:
    /// the system clock). Give the issuer and the stores the same one.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Which forwarding headers are believed (default: none; the peer is the client).
    #[must_use]
    pub fn client_ip(mut self, config: ClientIpConfig) -> Self {
        self.client_ip = config;
        self
    }

    /// Sizing of the verified-token cache (default [`TokenCacheConfig::default`]).
    #[must_use]
    pub fn token_cache(mut self, config: TokenCacheConfig) -> Self {
        self.token_cache = config;
        self
    }

    /// Largest request body accepted (default 16 KiB; 1 KiB to 1 MiB).
    #[must_use]
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Longest a store call may take before the request is answered 503
    /// `backend.unavailable` (a hung store is a store that is down);
    /// default [`DEFAULT_STORE_BUDGET`], 10 ms to 30 s.
    #[must_use]
    pub fn store_budget(mut self, budget: Duration) -> Self {
        self.store_budget = budget;
        self
    }

    /// Validates the settings and builds the service.
    pub fn build(self) -> Result<TokenService, ServiceConfigError> {
        let issuer_url = self.issuer.config().issuer.clone();
        check_url("issuer", &issuer_url)?;
        let public_url = self
            .public_url
            .unwrap_or_else(|| issuer_url.clone())
            .trim_end_matches('/')
            .to_owned();
        check_url("public_url", &public_url)?;
        if !(1024..=1024 * 1024).contains(&self.max_body_bytes) {
            return Err(invalid("max_body_bytes", "must be between 1 KiB and 1 MiB"));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(30)).contains(&self.store_budget) {
            return Err(invalid("store_budget", "must be between 10 ms and 30 s"));
        }
        let Some(active) = self.keys.active() else {
            return Err(invalid("keys", "the key set has no active signing key"));
        };
        if !active.can_sign() {
            return Err(invalid("keys", "the active key has no private part"));
        }
        let mut validation = Validation::new()
            .with_issuer(issuer_url.clone())
            .with_required_claims(["sub", "jti", "sid"]);
        for aud in &self.issuer.config().audience {
            validation = validation.with_audience(aud.clone());
        }
        let verifier =
            Verifier::new(Arc::clone(&self.keys), validation).with_clock(Arc::clone(&self.clock));
        let verifier = CachedVerifier::with_hook(
            verifier,
            self.token_cache,
            StoresRevocation::new(Arc::clone(&self.stores)),
        );
        let regulator = match self.regulation {
            Regulation::Off => None,
            Regulation::With(r) => Some(r),
            Regulation::Default => Some(Arc::new(
                Regulator::memory(
                    portcullis_core::regulation::RegulationPolicy::default(),
                    Arc::clone(&self.clock),
                )
                .map_err(|e| invalid("regulation", e.to_string()))?,
            )),
        };
        let signing = std::sync::RwLock::new(Arc::new(Signing::new(
            self.issuer,
            &self.keys,
            &issuer_url,
            &public_url,
        )));
        Ok(TokenService {
            inner: Arc::new(Inner {
                stores: self.stores,
                verifier,
                login_limiter: self.login_limiter,
                regulator,
                anomaly: self.anomaly,
                audit: self.audit,
                clock: self.clock,
                client_ip: self.client_ip,
                max_body_bytes: self.max_body_bytes,
                store_budget: self.store_budget,
                issuer_url,
                public_url,
                signing,
            }),
        })
    }
}

/// Whether and how logins are regulated.
enum Regulation {
    /// The default policy, in this process.
    Default,
    /// Not at all.
    Off,
    /// By this regulator (e.g. on the shared Redis).
    With(Arc<Regulator>),
}

/// An absolute `http(s)` URL without query or fragment.
fn check_url(field: &'static str, url: &str) -> Result<(), ServiceConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| invalid(field, format!("`{url}` is not a URL")))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("https" | "http"));
    if !scheme_ok || uri.authority().is_none() || uri.query().is_some() || url.contains('#') {
        return Err(invalid(
            field,
            format!("`{url}` must be an absolute http(s) URL without query or fragment"),
        ));
    }
    Ok(())
}

/// A route of the service, as audit events and detector samples name it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    method: &'static str,
    path: &'static str,
}

impl Route {
    const fn new(method: &'static str, path: &'static str) -> Self {
        Self { method, path }
    }
}

/// What every handler shares.
pub(crate) struct Inner {
    stores: Arc<Stores>,
    verifier: CachedVerifier<StoresRevocation>,
    login_limiter: Option<RateLimiter>,
    regulator: Option<Arc<Regulator>>,
    anomaly: Option<Arc<AnomalyEngine>>,
    audit: Option<Arc<AuditWriter>>,
    clock: Arc<dyn Clock>,
    client_ip: ClientIpConfig,
    max_body_bytes: usize,
    store_budget: Duration,
    issuer_url: String,
    public_url: String,
    /// The issuer and the documents of the current key set, replaced whole
    /// by a key rotation (as the verifier's key set is).
    signing: std::sync::RwLock<Arc<Signing>>,
}

/// What a key set signs with and publishes.
pub(crate) struct Signing {
    pub(crate) issuer: TokenIssuer,
    pub(crate) jwks: String,
    pub(crate) discovery: String,
}

impl Signing {
    /// `issuer`, with `keys` (their public part) published.
    fn new(issuer: TokenIssuer, keys: &KeySet, issuer_url: &str, public_url: &str) -> Self {
        Self {
            jwks: keys.public_jwks().to_string(),
            discovery: discovery::document(issuer_url, public_url, keys).to_string(),
            issuer,
        }
    }
}

impl Inner {
    /// The issuer and documents of the current key set.
    fn signing(&self) -> Arc<Signing> {
        match self.signing.read() {
            Ok(s) => Arc::clone(&s),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn now(&self) -> i64 {
        self.clock.unix_seconds()
    }

    /// A store call within the store budget, behind the stores' circuit
    /// breaker: a store that does not answer in time is down (503
    /// `backend.unavailable`), and once known down it costs nothing.
    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = crate::stores::StoreResult<T>>,
    ) -> crate::stores::StoreResult<T> {
        self.stores.on_request_path(self.store_budget, call).await
    }

    /// A security event of `kind` for `route`, filled with the client.
    fn event(&self, kind: EventKind, route: Route, client: &Client) -> AuditEvent {
        let ts_us = i64::try_from(self.clock.now().as_micros()).unwrap_or(i64::MAX);
        let decision = match kind {
            EventKind::LoginFailed | EventKind::LoginThrottled | EventKind::TokenReuseDetected => {
                Decision::Deny
            }
            _ => Decision::Allow,
        };
        let mut event = AuditEvent::new(kind, ts_us, decision);
        event.client_ip = client.ip_text();
        event.method = Some(route.method.to_owned());
        event.route = Some(route.path.to_owned());
        event.user_agent = client
            .user_agent
            .as_deref()
            .map(portcullis_core::audit::redact::user_agent);
        event
    }

    /// Queues a security notice for the webhooks that opted into `event`
    /// (built only when one did).
    fn notify(
        &self,
        event: crate::anomaly::webhook::SecurityEventKind,
        once_per: std::time::Duration,
        client: &Client,
        subject: Option<&str>,
        target: Option<&str>,
    ) {
        let Some(engine) = &self.anomaly else { return };
        let at_ms = u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX);
        engine.notify(
            || crate::anomaly::webhook::SecurityNotice {
                event,
                at_ms,
                subject: subject.map(|s| bounded(s, 128)),
                client_ip: client.ip_text(),
                target: target.map(|t| bounded(t, 128)),
                detail: None,
            },
            event,
            once_per,
        );
    }

    /// Hands `event` to the audit writer, if there is one.
    async fn record(&self, event: AuditEvent) {
        if let Some(audit) = &self.audit {
            audit.record(event).await;
        }
    }

    /// Feeds `signal` to the detectors (fail open: errors are logged) and
    /// marks `event` with those whose `tag` action fired.
    async fn observe(
        &self,
        signal: Signal<'_>,
        route: Route,
        client: &Client,
        event: &mut AuditEvent,
    ) {
        let Some(engine) = &self.anomaly else { return };
        let ua = client.user_agent.as_deref().unwrap_or_default();
        match engine
            .observe(signal, || SampleRequest::new(route.method, route.path, ua))
            .await
        {
            Ok(observed) => observed.tag_audit(event),
            Err(e) => tracing::warn!(error = %e, "anomaly detection skipped"),
        }
    }
}

/// A JSON answer as the token service gives it: `Cache-Control: no-store`
/// and `Pragma: no-cache` (answers may carry tokens or secrets).
pub fn json_response(status: http::StatusCode, body: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// The token service; cheap to clone. Build with [`TokenService::builder`].
#[derive(Clone)]
pub struct TokenService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("issuer", &self.inner.signing().issuer)
            .finish_non_exhaustive()
    }
}

impl TokenService {
    /// Signs, verifies and publishes with `keys` from now on (a key
    /// rotation): the issuer signs with its active key, the service's
    /// verifier accepts every key in it, and the JWKS and discovery
    /// documents list them. Tokens of keys no longer in the set stop
    /// verifying at once.
    pub fn replace_keys(&self, keys: Arc<KeySet>) {
        let s = &self.inner;
        let next = Arc::new(Signing::new(
            s.signing().issuer.with_keys(Arc::clone(&keys)),
            &keys,
            &s.issuer_url,
            &s.public_url,
        ));
        s.verifier.replace_keys(keys);
        match s.signing.write() {
            Ok(mut current) => *current = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// A builder over `stores`, issuing with `issuer` (which must sign with
    /// `keys`' active key and hash refresh tokens with the stores' pepper)
    /// and publishing `keys`' public part as the JWKS.
    pub fn builder(
        stores: Arc<Stores>,
        issuer: TokenIssuer,
        keys: Arc<KeySet>,
    ) -> TokenServiceBuilder {
        TokenServiceBuilder {
            stores,
            issuer,
            keys,
            public_url: None,
            login_limiter: None,
            regulation: Regulation::Default,
            anomaly: None,
            audit: None,
            clock: Arc::new(SystemClock),
            client_ip: ClientIpConfig::default(),
            token_cache: TokenCacheConfig::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            store_budget: DEFAULT_STORE_BUDGET,
        }
    }

    /// The verifier the service authenticates callers with (our issuer,
    /// our keys, the stores' revocation hook).
    pub fn verifier(&self) -> &CachedVerifier<StoresRevocation> {
        &self.inner.verifier
    }

    /// The router: mount it where [`TokenServiceBuilder::public_url`] says.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/login", post(tokens::login))
            .route("/refresh", post(tokens::refresh))
            .route("/logout", post(tokens::logout))
            .route("/logout-all", post(tokens::logout_all))
            .route("/password/reset", post(tokens::password_reset))
            .route("/sessions", get(sessions::list))
            .route("/sessions/{id}", delete(sessions::revoke))
            .route("/api-keys", post(api_keys::create).get(api_keys::list))
            .route("/api-keys/{id}", delete(api_keys::revoke))
            .route("/.well-known/jwks.json", get(discovery::jwks))
            .route(
                "/.well-known/openid-configuration",
                get(discovery::openid_configuration),
            )
            .with_state(Arc::clone(&self.inner))
    }
}

/// `text` cut to at most `max` bytes on a character boundary, with `…`
/// when cut (what a client typed as an account name is unbounded).
fn bounded(text: &str, max: usize) -> String {
    let mut cut = portcullis_core::audit::redact::truncate(text.to_owned(), max);
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}
