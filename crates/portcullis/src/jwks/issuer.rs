//! Remote issuers: key sets fetched from a JWKS URL or through OIDC
//! discovery, cached with a TTL measured on a monotonic clock, refetched
//! single-flight on a key miss (at most once per interval), and served stale
//! for a bounded time while the issuer is down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_core::{
    Clock, ErrorCode, KeySet, ManualClock, Principal, SystemClock, TokenError, Validation, Verifier,
};
use serde::Deserialize;

use super::fetch::{FetchError, Fetcher, HttpFetcher, check_url};
use crate::http_client::TlsTrust;
use crate::token_cache::{DynRevocationHook, RevocationHook};

/// A monotonic time source for key-set ages and fetch throttles: a wall
/// clock that jumps (NTP, a VM resume) must not stretch how long a
/// withdrawn key keeps working.
pub trait Monotonic: Send + Sync {
    /// Time since a fixed origin; never goes backwards.
    fn elapsed(&self) -> Duration;
}

/// [`Monotonic`] on `tokio::time::Instant` (which follows tokio's paused
/// test clock, and `std::time::Instant` otherwise).
#[derive(Debug, Clone, Copy)]
pub struct TokioMonotonic {
    origin: tokio::time::Instant,
}

impl Default for TokioMonotonic {
    fn default() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Monotonic for TokioMonotonic {
    fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A [`ManualClock`] only moves when told to, so tests may use one as both
/// the wall clock and the monotonic source.
impl Monotonic for ManualClock {
    fn elapsed(&self) -> Duration {
        self.now()
    }
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS URL.
    Jwks(String),
    /// `<issuer>/.well-known/openid-configuration` names the `jwks_uri`.
    Discovery,
}

/// How one remote issuer is trusted and cached.
#[derive(Debug, Clone)]
pub struct RemoteIssuerConfig {
    /// The exact `iss` value (and, for discovery, the base URL).
    pub issuer: String,
    /// Where the keys are.
    pub source: KeySource,
    /// Token rules (the issuer is added to them). `validation.audiences`
    /// must not be empty (see [`RemoteIssuerConfig::with_audience`]);
    /// `require_typ` (RFC 9068 `at+jwt`) is off by default, turn it on for
    /// issuers that type their access tokens.
    pub validation: Validation,
    /// How long a fetched key set is fresh (default 10 min).
    pub ttl: Duration,
    /// Least time between fetches caused by unknown kids or failed refreshes (default 30 s).
    pub refetch_interval: Duration,
    /// How long after `ttl` the last good set still serves while the issuer
    /// is down (default 5 min): a withdrawn key works at most `ttl + max_stale`.
    pub max_stale: Duration,
    /// Largest document accepted (default 256 KiB).
    pub max_bytes: usize,
    /// Plain http to loopback hosts allowed (tests, local development only).
    pub allow_http: bool,
    /// Which TLS servers are trusted (Mozilla roots plus extra CAs).
    pub tls: TlsTrust,
    /// Hosts other than the issuer's own that a discovered `jwks_uri` may
    /// name (exact, case-insensitive; default none: same host only).
    pub jwks_hosts: Vec<String>,
}

impl RemoteIssuerConfig {
    /// Defaults for `issuer` with keys from `source`.
    pub fn new(issuer: impl Into<String>, source: KeySource) -> Self {
        Self {
            issuer: issuer.into(),
            source,
            validation: Validation::new(),
            ttl: Duration::from_secs(600),
            refetch_interval: Duration::from_secs(30),
            max_stale: Duration::from_secs(300),
            max_bytes: 256 * 1024,
            allow_http: false,
            tls: TlsTrust::default(),
            jwks_hosts: Vec::new(),
        }
    }

    /// Accepts tokens whose `aud` names `audience` (may be called several
    /// times; at least once, or the issuer refuses to build).
    #[must_use]
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.validation.audiences.push(audience.into());
        self
    }

    /// Checks the settings that need no I/O; errors name the field.
    pub fn validate(&self) -> Result<(), IssuerError> {
        let setting = |field, reason| Err(IssuerError::Setting { field, reason });
        if self.validation.audiences.is_empty() {
            // Without it, any token of this issuer passes: one issued for
            // another API, or an OIDC ID token.
            return setting(
                "validation.audiences",
                "a remote issuer needs at least one audience (the `aud` of tokens meant for this API)",
            );
        }
        if self.validation.audiences.iter().any(String::is_empty) {
            return setting("validation.audiences", "an audience must not be empty");
        }
        if self.ttl.is_zero() {
            return setting("ttl", "must be more than zero");
        }
        match &self.source {
            KeySource::Jwks(url) => check_url(url, self.allow_http)?,
            KeySource::Discovery => check_url(&self.issuer, self.allow_http)?,
        }
        Ok(())
    }
}

/// Why a token from a remote issuer was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerError {
    /// The token is invalid.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// No usable key set (`auth.jwks_unavailable`): the issuer has been
    /// unreachable for longer than `max_stale`, or never answered.
    #[error("keys of `{issuer}` are unavailable: {detail}")]
    Unavailable {
        /// The issuer.
        issuer: String,
        /// The last fetch failure.
        detail: String,
    },
    /// The configuration is refused (URL policy).
    #[error(transparent)]
    Config(#[from] FetchError),
    /// A setting is missing or invalid.
    #[error("remote issuer setting `{field}`: {reason}")]
    Setting {
        /// The field, e.g. `validation.audiences`.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The revocation hook refused the token (`auth.token_revoked`, ...).
    #[error("credential refused: {0}")]
    Revoked(ErrorCode),
}

impl IssuerError {
    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Token(e) => e.code(),
            Self::Revoked(code) => *code,
            Self::Unavailable { .. } | Self::Config(_) | Self::Setting { .. } => {
                ErrorCode::JwksUnavailable
            }
        }
    }
}

#[derive(Default)]
struct Cached {
    verifier: Option<Arc<Verifier>>,
    /// Bumped on each successful fetch.
    generation: u64,
    /// Monotonic time of the last successful fetch.
    fetched_at: Duration,
    /// Monotonic time of the last fetch started by a key miss.
    last_forced: Option<Duration>,
    /// Monotonic time of the last attempt of any kind.
    last_attempt: Option<Duration>,
    jwks_uri: Option<String>,
    last_error: Option<String>,
}

struct Inner {
    config: RemoteIssuerConfig,
    validation: Validation,
    fetcher: Arc<dyn Fetcher>,
    /// Wall clock: token times (`exp`, `nbf`, `iat`).
    clock: Arc<dyn Clock>,
    /// Monotonic: key-set ages and fetch throttles.
    ticker: Arc<dyn Monotonic>,
    cached: RwLock<Cached>,
    refresh: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

/// One trusted remote issuer and its cached key set; cheap to clone.
#[derive(Clone)]
pub struct RemoteIssuer {
    inner: Arc<Inner>,
    revocation: Option<Arc<dyn DynRevocationHook>>,
}

impl std::fmt::Debug for RemoteIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteIssuer")
            .field("issuer", &self.inner.config.issuer)
            .field("source", &self.inner.config.source)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

enum RefreshCause {
    /// No keys yet, or past the stale bound: the caller waits.
    Required,
    /// A kid was unknown or a known key did not verify.
    KeyMiss,
    /// The set is past its TTL but may still serve.
    Stale,
}

impl RemoteIssuer {
    /// An issuer fetched with an [`HttpFetcher`] (5 s bound, trusting
    /// `config.tls`) on the system clock. URLs are checked against the policy now.
    pub fn new(config: RemoteIssuerConfig) -> Result<Self, IssuerError> {
        let fetcher = HttpFetcher::new(Duration::from_secs(5), &config.tls)?;
        Self::with_fetcher(config, Arc::new(fetcher), Arc::new(SystemClock))
    }

    /// An issuer with its own fetcher and wall clock (key-set ages on
    /// [`TokioMonotonic`]).
    pub fn with_fetcher(
        config: RemoteIssuerConfig,
        fetcher: Arc<dyn Fetcher>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, IssuerError> {
        Self::with_clocks(config, fetcher, clock, Arc::new(TokioMonotonic::default()))
    }

    /// An issuer with its own fetcher, wall clock (token times) and
    /// monotonic source (key-set ages, throttles).
    pub fn with_clocks(
        config: RemoteIssuerConfig,
        fetcher: Arc<dyn Fetcher>,
        clock: Arc<dyn Clock>,
        ticker: Arc<dyn Monotonic>,
    ) -> Result<Self, IssuerError> {
        config.validate()?;
        let mut validation = config.validation.clone();
        validation.issuers = vec![config.issuer.clone()];
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                validation,
                fetcher,
                clock,
                ticker,
                cached: RwLock::new(Cached::default()),
                refresh: tokio::sync::Mutex::new(()),
                fetches: AtomicU64::new(0),
            }),
            revocation: None,
        })
    }

    /// Runs `hook` on every token this issuer verified (e.g.
    /// `StoresRevocation::jti_only`): a refusal is [`IssuerError::Revoked`].
    #[must_use]
    pub fn with_revocation(mut self, hook: impl RevocationHook + 'static) -> Self {
        self.revocation = Some(Arc::new(hook));
        self
    }

    /// The issuer (`iss`).
    pub fn issuer(&self) -> &str {
        &self.inner.config.issuer
    }

    /// How many key-set fetches were attempted (discovery not counted).
    pub fn fetch_count(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> (Option<Arc<Verifier>>, u64, Duration) {
        match self.inner.cached.read() {
            Ok(c) => (c.verifier.clone(), c.generation, c.fetched_at),
            Err(_) => (None, 0, Duration::ZERO),
        }
    }

    fn attempted_within(&self, now: Duration, interval: Duration) -> bool {
        self.inner.cached.read().is_ok_and(|c| {
            c.last_attempt
                .is_some_and(|t| now.saturating_sub(t) < interval)
        })
    }

    fn unavailable(&self) -> IssuerError {
        let detail = self
            .inner
            .cached
            .read()
            .ok()
            .and_then(|c| c.last_error.clone())
            .unwrap_or_else(|| "no key set has been fetched".into());
        IssuerError::Unavailable {
            issuer: self.inner.config.issuer.clone(),
            detail,
        }
    }

    /// A usable verifier: fresh, or stale within `max_stale` (then refreshed
    /// in the background), or freshly fetched.
    async fn current(&self) -> Result<(Arc<Verifier>, u64), IssuerError> {
        let c = &self.inner.config;
        let now = self.inner.ticker.elapsed();
        let (verifier, generation, fetched_at) = self.snapshot();
        if let Some(v) = verifier {
            let age = now.saturating_sub(fetched_at);
            if age < c.ttl {
                return Ok((v, generation));
            }
            if age < c.ttl.saturating_add(c.max_stale) {
                // Without a tokio runtime there is no background refresh; the
                // set then refreshes inline once it is past `max_stale`.
                if !self.attempted_within(now, c.refetch_interval)
                    && let Ok(runtime) = tokio::runtime::Handle::try_current()
                {
                    let this = self.clone();
                    runtime.spawn(async move {
                        this.refresh(generation, RefreshCause::Stale).await;
                    });
                }
                return Ok((v, generation));
            }
        }
        self.refresh(generation, RefreshCause::Required).await;
        let (verifier, generation, fetched_at) = self.snapshot();
        let now = self.inner.ticker.elapsed();
        match verifier {
            Some(v) if now.saturating_sub(fetched_at) < c.ttl.saturating_add(c.max_stale) => {
                Ok((v, generation))
            }
            _ => Err(self.unavailable()),
        }
    }

    /// Verifies `token` with this issuer's keys, refetching once on a key
    /// miss, then runs the revocation hook, if any.
    pub async fn verify(&self, token: &[u8]) -> Result<Principal, IssuerError> {
        let principal = self.verify_keys(token).await?;
        if let Some(hook) = &self.revocation {
            hook.check_dyn(&principal)
                .await
                .map_err(IssuerError::Revoked)?;
        }
        Ok(principal)
    }

    async fn verify_keys(&self, token: &[u8]) -> Result<Principal, IssuerError> {
        let (verifier, generation) = self.current().await?;
        match verifier.verify(token) {
            Err(TokenError::UnknownKey(_) | TokenError::InvalidSignature)
                if kid_may_refetch(token)
                    && self.refresh(generation, RefreshCause::KeyMiss).await =>
            {
                let (verifier, _) = self.current().await?;
                Ok(verifier.verify(token)?)
            }
            other => Ok(other?),
        }
    }

    /// Whether a fetch for `why` must wait: `Some(true)` when a newer set
    /// than `seen_generation` is already installed, `Some(false)` when
    /// throttled, `None` when a fetch may go ahead.
    fn settled(&self, seen_generation: u64, why: &RefreshCause, now: Duration) -> Option<bool> {
        let interval = self.inner.config.refetch_interval;
        let Ok(c) = self.inner.cached.read() else {
            return Some(false);
        };
        if c.generation != seen_generation {
            return Some(true); // another caller fetched meanwhile
        }
        let recent = |t: Option<Duration>| t.is_some_and(|t| now.saturating_sub(t) < interval);
        let failed_recently = recent(c.last_attempt) && c.last_error.is_some();
        let throttled = match why {
            RefreshCause::KeyMiss => recent(c.last_forced) || failed_recently,
            RefreshCause::Stale => recent(c.last_attempt),
            // Nothing usable: try unless a fetch just failed.
            RefreshCause::Required => failed_recently,
        };
        throttled.then_some(false)
    }

    /// Single-flight refresh. Returns whether a newer key set than
    /// `seen_generation` is now installed.
    async fn refresh(&self, seen_generation: u64, why: RefreshCause) -> bool {
        // Throttle first: a miss within the interval must not queue behind
        // an in-flight fetch (up to the fetch timeout) only to be refused.
        if !matches!(why, RefreshCause::Required)
            && let Some(done) = self.settled(seen_generation, &why, self.inner.ticker.elapsed())
        {
            return done;
        }
        let _guard = self.inner.refresh.lock().await;
        let now = self.inner.ticker.elapsed();
        if let Some(done) = self.settled(seen_generation, &why, now) {
            return done;
        }
        if let Ok(mut c) = self.inner.cached.write() {
            c.last_attempt = Some(now);
            if matches!(why, RefreshCause::KeyMiss) {
                c.last_forced = Some(now);
            }
        }
        match self.fetch_keys().await {
            Ok(keys) => {
                let verifier = match self.snapshot().0 {
                    Some(v) => v.with_keys(keys),
                    None => Verifier::new(keys, self.inner.validation.clone())
                        .with_clock(Arc::clone(&self.inner.clock)),
                };
                if let Ok(mut c) = self.inner.cached.write() {
                    c.verifier = Some(Arc::new(verifier));
                    c.generation = c.generation.wrapping_add(1);
                    c.fetched_at = self.inner.ticker.elapsed();
                    c.last_error = None;
                }
                metrics::counter!(JWKS_FETCHES_METRIC, "result" => "ok").increment(1);
                tracing::info!(issuer = %self.inner.config.issuer, "fetched remote key set");
                true
            }
            Err(e) => {
                metrics::counter!(JWKS_FETCHES_METRIC, "result" => "error").increment(1);
                tracing::warn!(issuer = %self.inner.config.issuer, error = %e, "key set fetch failed");
                if let Ok(mut c) = self.inner.cached.write() {
                    c.last_error = Some(e.to_string());
                    // Re-discover next time: the jwks_uri may have moved.
                    if self.inner.config.source == KeySource::Discovery {
                        c.jwks_uri = None;
                    }
                }
                false
            }
        }
    }

    async fn jwks_uri(&self) -> Result<String, FetchError> {
        let c = &self.inner.config;
        match &c.source {
            KeySource::Jwks(url) => Ok(url.clone()),
            KeySource::Discovery => {
                if let Some(uri) = self
                    .inner
                    .cached
                    .read()
                    .ok()
                    .and_then(|c| c.jwks_uri.clone())
                {
                    return Ok(uri);
                }
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    c.issuer.trim_end_matches('/')
                );
                let body = self.inner.fetcher.get(&url, c.max_bytes).await?;
                let doc: Discovery = serde_json::from_slice(&body).map_err(|_| FetchError::Io {
                    url: url.clone(),
                    detail: "discovery document is not JSON with `issuer` and `jwks_uri`".into(),
                })?;
                if doc.issuer != c.issuer {
                    return Err(FetchError::Io {
                        url,
                        detail: format!(
                            "discovery names issuer `{}`, expected `{}`",
                            doc.issuer, c.issuer
                        ),
                    });
                }
                check_url(&doc.jwks_uri, c.allow_http)?;
                check_jwks_host(&c.issuer, &doc.jwks_uri, &c.jwks_hosts)?;
                if let Ok(mut cached) = self.inner.cached.write() {
                    cached.jwks_uri = Some(doc.jwks_uri.clone());
                }
                Ok(doc.jwks_uri)
            }
        }
    }

    async fn fetch_keys(&self) -> Result<KeySet, FetchError> {
        let url = self.jwks_uri().await?;
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let body = self
            .inner
            .fetcher
            .get(&url, self.inner.config.max_bytes)
            .await?;
        let bad = |detail: String| FetchError::Io {
            url: url.clone(),
            detail,
        };
        // A published secret or private key would let anyone forge tokens:
        // such entries are dropped before keys are indexed by kid, so one
        // listed first cannot push out the real public key.
        let (keys, warnings) =
            KeySet::from_public_jwks_json(&body).map_err(|e| bad(e.to_string()))?;
        for w in &warnings {
            tracing::warn!(issuer = %self.inner.config.issuer, kid = ?w.kid, error = %w.error, "skipped JWKS entry");
        }
        if keys.is_empty() {
            return Err(bad("JWKS has no usable public key".into()));
        }
        Ok(keys)
    }
}

/// Counter of remote key-set fetches (discovery included) by `result`
/// (`ok` | `error`).
pub const JWKS_FETCHES_METRIC: &str = "portcullis_jwks_fetches_total";

/// The longest `kid` that may cause a forced refetch.
const MAX_REFETCH_KID_LEN: usize = 128;

/// Whether a key miss on `token` may force a refetch: no `kid`, or a `kid`
/// that looks like one (base64/base64url, hex, UUID, thumbprint
/// characters, at most 128, nothing path-like). Junk kids cannot spend the
/// refetch window.
fn kid_may_refetch(token: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct KidOnly {
        kid: Option<String>,
    }
    let header = token.split(|&b| b == b'.').next().unwrap_or_default();
    let Some(json) = portcullis_core::jose::b64_decode(header) else {
        return false;
    };
    match serde_json::from_slice::<KidOnly>(&json) {
        Ok(KidOnly { kid: None }) => true,
        Ok(KidOnly { kid: Some(kid) }) => {
            !kid.is_empty()
                && kid.len() <= MAX_REFETCH_KID_LEN
                && kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=:".contains(&b))
                // Path-like junk (`../..`), which no issuer uses as a kid.
                && !kid.contains("..")
                && !kid.contains("//")
        }
        Err(_) => false,
    }
}

/// The host of `url`, lower-cased, brackets kept off IPv6 literals.
fn host_of(url: &str) -> Option<String> {
    let uri = url.parse::<http::Uri>().ok()?;
    let host = uri.host()?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase(),
    )
}

/// A discovered `jwks_uri` must be on the issuer's own host, or on a host
/// allowed by `jwks_hosts`: a discovery document must not point the fetcher
/// at private or link-local addresses (SSRF) or at someone else's keys.
fn check_jwks_host(issuer: &str, jwks_uri: &str, allowed: &[String]) -> Result<(), FetchError> {
    let host = host_of(jwks_uri);
    let ok = host.as_deref().is_some_and(|h| {
        host_of(issuer).as_deref() == Some(h)
            || allowed.iter().any(|a| {
                a.trim_start_matches('[')
                    .trim_end_matches(']')
                    .eq_ignore_ascii_case(h)
            })
    });
    if ok {
        Ok(())
    } else {
        Err(FetchError::Url {
            url: jwks_uri.to_owned(),
            reason: "discovered jwks_uri is not on the issuer's host; list its host in jwks_hosts to trust it",
        })
    }
}

/// Several trusted issuers; a token goes to the one its `iss` names.
#[derive(Clone, Default)]
pub struct TrustedIssuers {
    issuers: HashMap<String, RemoteIssuer>,
    revocation: Option<Arc<dyn DynRevocationHook>>,
}

impl std::fmt::Debug for TrustedIssuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedIssuers")
            .field("issuers", &self.issuers)
            .field("revocation", &self.revocation.is_some())
            .finish()
    }
}

/// The largest token whose `iss` is peeked at.
const MAX_PEEK_BYTES: usize = 16 * 1024;

#[derive(Deserialize)]
struct IssOnly {
    iss: Option<String>,
}

/// The unverified `iss` of a compact JWT, to pick the issuer's keys.
fn peek_issuer(token: &[u8]) -> Option<String> {
    if token.len() > MAX_PEEK_BYTES {
        return None;
    }
    let mut parts = token.split(|&b| b == b'.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let json = portcullis_core::jose::b64_decode(payload)?;
    serde_json::from_slice::<IssOnly>(&json).ok()?.iss
}

impl TrustedIssuers {
    /// No issuer trusted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `issuer`.
    #[must_use]
    pub fn with(mut self, issuer: RemoteIssuer) -> Self {
        self.issuers.insert(issuer.issuer().to_owned(), issuer);
        self
    }

    /// Runs `hook` on every token any of these issuers verified (e.g.
    /// `StoresRevocation::jti_only`), after the issuer's own hook, if any.
    #[must_use]
    pub fn with_revocation(mut self, hook: impl RevocationHook + 'static) -> Self {
        self.revocation = Some(Arc::new(hook));
        self
    }

    /// The issuer named `iss`.
    pub fn get(&self, iss: &str) -> Option<&RemoteIssuer> {
        self.issuers.get(iss)
    }

    /// Whether `token`'s (unverified) `iss` names one of these issuers.
    pub fn names_issuer_of(&self, token: &[u8]) -> bool {
        peek_issuer(token).is_some_and(|iss| self.issuers.contains_key(&iss))
    }

    /// Verifies `token` with the keys of the issuer its `iss` names, then
    /// runs the revocation hook.
    pub async fn verify(&self, token: &[u8]) -> Result<Principal, IssuerError> {
        let iss = peek_issuer(token).ok_or(TokenError::Malformed("token has no readable `iss`"))?;
        let issuer = self.issuers.get(&iss).ok_or(TokenError::InvalidIssuer)?;
        let principal = issuer.verify(token).await?;
        if let Some(hook) = &self.revocation {
            hook.check_dyn(&principal)
                .await
                .map_err(IssuerError::Revoked)?;
        }
        Ok(principal)
    }
}
