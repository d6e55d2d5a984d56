//! Remote issuers: key sets fetched from a JWKS URL or through OIDC
//! discovery, cached with a TTL, refetched single-flight on a key miss (at
//! most once per interval), and served stale for a bounded time while the
//! issuer is down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_core::{
    Clock, ErrorCode, KeySet, Principal, SystemClock, TokenError, Validation, Verifier,
};
use serde::Deserialize;

use super::fetch::{FetchError, Fetcher, HttpFetcher, check_url};
use crate::http_client::TlsTrust;

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
    /// Token rules (the issuer is added to them).
    pub validation: Validation,
    /// How long a fetched key set is fresh (default 10 min).
    pub ttl: Duration,
    /// Least time between fetches caused by unknown kids or failed refreshes (default 30 s).
    pub refetch_interval: Duration,
    /// How long after `ttl` the last good set still serves while the issuer is down (default 1 h).
    pub max_stale: Duration,
    /// Largest document accepted (default 256 KiB).
    pub max_bytes: usize,
    /// Plain http to loopback hosts allowed (tests, local development only).
    pub allow_http: bool,
    /// Which TLS servers are trusted (Mozilla roots plus extra CAs).
    pub tls: TlsTrust,
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
            max_stale: Duration::from_secs(3600),
            max_bytes: 256 * 1024,
            allow_http: false,
            tls: TlsTrust::default(),
        }
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
}

impl IssuerError {
    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Token(e) => e.code(),
            Self::Unavailable { .. } | Self::Config(_) => ErrorCode::JwksUnavailable,
        }
    }
}

#[derive(Default)]
struct Cached {
    verifier: Option<Arc<Verifier>>,
    /// Bumped on each successful fetch.
    generation: u64,
    /// Clock time of the last successful fetch.
    fetched_at: Duration,
    /// Clock time of the last fetch started by a miss or a failed refresh.
    last_forced: Option<Duration>,
    /// Clock time of the last attempt of any kind.
    last_attempt: Option<Duration>,
    jwks_uri: Option<String>,
    last_error: Option<String>,
}

struct Inner {
    config: RemoteIssuerConfig,
    validation: Validation,
    fetcher: Arc<dyn Fetcher>,
    clock: Arc<dyn Clock>,
    cached: RwLock<Cached>,
    refresh: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

/// One trusted remote issuer and its cached key set; cheap to clone.
#[derive(Clone)]
pub struct RemoteIssuer {
    inner: Arc<Inner>,
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

    /// An issuer with its own fetcher and clock.
    pub fn with_fetcher(
        config: RemoteIssuerConfig,
        fetcher: Arc<dyn Fetcher>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, IssuerError> {
        match &config.source {
            KeySource::Jwks(url) => check_url(url, config.allow_http)?,
            KeySource::Discovery => check_url(&config.issuer, config.allow_http)?,
        }
        let mut validation = config.validation.clone();
        validation.issuers = vec![config.issuer.clone()];
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                validation,
                fetcher,
                clock,
                cached: RwLock::new(Cached::default()),
                refresh: tokio::sync::Mutex::new(()),
                fetches: AtomicU64::new(0),
            }),
        })
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
        let now = self.inner.clock.now();
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
        let now = self.inner.clock.now();
        match verifier {
            Some(v) if now.saturating_sub(fetched_at) < c.ttl.saturating_add(c.max_stale) => {
                Ok((v, generation))
            }
            _ => Err(self.unavailable()),
        }
    }

    /// Verifies `token` with this issuer's keys, refetching once on a key miss.
    pub async fn verify(&self, token: &[u8]) -> Result<Principal, IssuerError> {
        let (verifier, generation) = self.current().await?;
        match verifier.verify(token) {
            Err(TokenError::UnknownKey(_) | TokenError::InvalidSignature)
                if self.refresh(generation, RefreshCause::KeyMiss).await =>
            {
                let (verifier, _) = self.current().await?;
                Ok(verifier.verify(token)?)
            }
            other => Ok(other?),
        }
    }

    /// Single-flight refresh. Returns whether a newer key set than
    /// `seen_generation` is now installed.
    async fn refresh(&self, seen_generation: u64, why: RefreshCause) -> bool {
        let _guard = self.inner.refresh.lock().await;
        let now = self.inner.clock.now();
        let interval = self.inner.config.refetch_interval;
        {
            let Ok(c) = self.inner.cached.read() else {
                return false;
            };
            if c.generation != seen_generation {
                return true; // another caller fetched while we waited
            }
            let recent = |t: Option<Duration>| t.is_some_and(|t| now.saturating_sub(t) < interval);
            let failed_recently = recent(c.last_attempt) && c.last_error.is_some();
            let throttled = match why {
                RefreshCause::KeyMiss => recent(c.last_forced) || failed_recently,
                RefreshCause::Stale => recent(c.last_attempt),
                // Nothing usable: try unless a fetch just failed.
                RefreshCause::Required => failed_recently,
            };
            if throttled {
                return false;
            }
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
                    c.fetched_at = self.inner.clock.now();
                    c.last_error = None;
                }
                tracing::info!(issuer = %self.inner.config.issuer, "fetched remote key set");
                true
            }
            Err(e) => {
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
        let (mut keys, warnings) = KeySet::from_jwks_json(&body).map_err(|e| bad(e.to_string()))?;
        for w in &warnings {
            tracing::warn!(issuer = %self.inner.config.issuer, kid = ?w.kid, error = %w.error, "skipped JWKS entry");
        }
        // A published symmetric key would let anyone forge tokens.
        let symmetric: Vec<String> = keys
            .iter()
            .filter(|k| k.is_symmetric() || k.can_sign())
            .map(|k| k.kid().to_owned())
            .collect();
        for kid in symmetric {
            tracing::warn!(issuer = %self.inner.config.issuer, kid, "dropped a secret key from a public JWKS");
            keys.remove(&kid);
        }
        if keys.is_empty() {
            return Err(bad("JWKS has no usable public key".into()));
        }
        Ok(keys)
    }
}

/// Several trusted issuers; a token goes to the one its `iss` names.
#[derive(Debug, Clone, Default)]
pub struct TrustedIssuers {
    issuers: HashMap<String, RemoteIssuer>,
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

    /// The issuer named `iss`.
    pub fn get(&self, iss: &str) -> Option<&RemoteIssuer> {
        self.issuers.get(iss)
    }

    /// Verifies `token` with the keys of the issuer its `iss` names.
    pub async fn verify(&self, token: &[u8]) -> Result<Principal, IssuerError> {
        let iss = peek_issuer(token).ok_or(TokenError::Malformed("token has no readable `iss`"))?;
        let issuer = self.issuers.get(&iss).ok_or(TokenError::InvalidIssuer)?;
        issuer.verify(token).await
    }
}
