//! `portcullis serve`: wires the engine from the configuration (stores,
//! keys, audit, guard, token service, proxy), runs the public and ops
//! listeners, and shuts down gracefully on SIGTERM / SIGINT.
//!
//! A request on the public listener goes, by path: the token service
//! prefix → the token service router; the forward-auth prefix →
//! [`crate::forward_auth`]; anything else → body limit → `GuardLayer` →
//! [`crate::proxy`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use portcullis::audit::AuditWriter;
use portcullis::http::{GuardLayer, GuardService, PeerAddr};
use portcullis::jwks::{
    FetchError, IssuerError, KeySource, RemoteIssuer, RemoteIssuerConfig, TrustedIssuers,
};
use portcullis::keyring::{KeyRing, KeyRingConfig};
use portcullis::service::TokenService;
use portcullis::stores::Stores;
use portcullis::{Guard, GuardConfig};
use portcullis_core::{IssuerConfig, KeySet, TokenIssuer, Validation, Verifier};
use tokio::net::TcpListener;
use tower_layer::Layer;
use tower_service::Service;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::config::{Config, LogConfig, LogFormat, LogLevel, SignedRequestsConfig};
use crate::deadline::TimedBody;
use crate::forward_auth::ForwardAuth;
use crate::limits::{Acceptor, ConnLimit, ConnPermit};
use crate::proxy::{Proxy, RequestBody, ResponseBody, full};
use crate::reload::Reloader;
use arc_swap::ArcSwap;
use portcullis::authz::{NonceStore, SignedRequestAuthenticator};
use portcullis_core::{AuthMethod, Principal};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration file is invalid.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
    /// A part could not be built or opened; names what and why.
    #[error("{what}: {message}")]
    Start {
        /// What was being started.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
}

/// A start-up failure of `what`, from its message.
pub(crate) fn start(what: &'static str) -> impl Fn(String) -> ServeError {
    move |message| ServeError::Start {
        what,
        message: crate::redact::redact(&message).into_owned(),
    }
}

/// Everything the request path shares; replaced whole by a reload.
pub(crate) struct App {
    token_service: Option<(String, axum::Router)>,
    forward_auth: Option<(String, ForwardAuth)>,
    guarded: GuardService<Proxy>,
    pub(crate) guard: Guard,
    /// This request path explained (`POST /admin/explain`).
    pub(crate) explainer: crate::explain::Explainer,
    /// The canonical form every request is brought to first.
    canonical: crate::canonical::Canonicalizer,
    max_body: u64,
    /// Time a request body gets to arrive whole (`server.request_body_timeout`).
    body_timeout: Duration,
    /// The gateway's public JWKS and where it is served.
    jwks: (String, Bytes),
    /// The per-request metric handles.
    request_metrics: RequestMetrics,
}

/// The request counter and duration histogram, by surface and (common)
/// status, each resolved once on first use: a `metrics::counter!` with
/// labels hashes them and allocates a key in the registry on every call.
#[derive(Default)]
struct RequestMetrics {
    requests: [[std::sync::OnceLock<metrics::Counter>; COMMON_STATUSES.len()]; Surface::ALL.len()],
    durations: [std::sync::OnceLock<metrics::Histogram>; Surface::ALL.len()],
}

impl RequestMetrics {
    fn count(&self, surface: Surface, status: StatusCode) {
        let common = COMMON_STATUSES
            .iter()
            .position(|&(code, _)| code == status.as_u16());
        let Some(i) = common else {
            metrics::counter!(
                "portcullis_gateway_requests_total",
                "surface" => surface.as_str(),
                "status" => status_label(status)
            )
            .increment(1);
            return;
        };
        self.requests[surface as usize][i]
            .get_or_init(|| {
                metrics::counter!(
                    "portcullis_gateway_requests_total",
                    "surface" => surface.as_str(),
                    "status" => status_label(status)
                )
            })
            .increment(1);
    }

    fn time(&self, surface: Surface, elapsed: Duration) {
        self.durations[surface as usize]
            .get_or_init(|| {
                metrics::histogram!("portcullis_gateway_request_duration_seconds", "surface" => surface.as_str())
            })
            .record(elapsed.as_secs_f64());
    }
}

/// What the ops listener reports on.
struct Health {
    ready: AtomicBool,
    stores: Arc<Stores>,
    keyring: Arc<KeyRing>,
    metrics: PrometheusHandle,
    /// The running app: its rate limiter's breaker is sampled at scrape.
    live: Arc<ArcSwap<App>>,
    /// The audit writer: its queue is sampled at scrape.
    audit: Option<Arc<AuditWriter>>,
    /// Whether rate limits count on Redis (so there is a breaker to report).
    redis: bool,
    /// The admin API (`/admin/…`, `/openapi.json`) behind its own guard.
    admin: GuardService<axum::Router>,
    /// The operator console (`/console`), over the admin API.
    console: crate::console::Console,
    /// The `Host` names it answers to; no cross-site state change.
    ops_hosts: crate::ops_guard::OpsHosts,
}

/// Gauge: events waiting in the audit queue, sampled at each scrape.
const AUDIT_QUEUE_DEPTH_METRIC: &str = "portcullis_audit_queue_depth";
/// Counter: audit events dropped (queue full or closed).
const AUDIT_DROPPED_METRIC: &str = "portcullis_audit_dropped_total";
/// Gauge: the rate limiter's Redis circuit breaker, 0 closed, 1 open
/// (calls skipped, one probe per interval), sampled at each scrape.
const BREAKER_STATE_METRIC: &str = "portcullis_ratelimit_breaker_state";

/// Gauge: age of the revocation feed's last complete read of the log, in
/// seconds (how stale the local revocation set may be).
const REVOCATION_LAG_METRIC: &str = "portcullis_revocation_lag_seconds";
/// Gauge: live entries in the local revocation set.
const REVOCATION_ENTRIES_METRIC: &str = "portcullis_revocation_entries";
/// Gauge: estimated bytes the local revocation set holds.
const REVOCATION_BYTES_METRIC: &str = "portcullis_revocation_bytes";
/// Counter: token checks decided while the feed was past `max_stale`, by
/// `decision` (`deny` | `allow`).
const REVOCATION_STALE_METRIC: &str = "portcullis_revocation_stale_decisions_total";
/// Counter: reads of the revocation log that failed or timed out.
const REVOCATION_POLL_FAILURES_METRIC: &str = "portcullis_revocation_poll_failures_total";
/// Counter: immediate reads of the log asked by its watch (PostgreSQL
/// `LISTEN`): each announced append and each (re)start of listening.
const REVOCATION_WAKEUPS_METRIC: &str = "portcullis_revocation_wakeups_total";
/// Counter: appends announced by the log (PostgreSQL `NOTIFY` received).
const REVOCATION_NOTIFICATIONS_METRIC: &str = "portcullis_revocation_notifications_total";
/// Counter: times the log's watch started listening (1, plus one per
/// reconnect after its connection was lost).
const REVOCATION_LISTENS_METRIC: &str = "portcullis_revocation_listens_total";
/// Counter: log entries this build cannot read (a newer version's kind, or
/// corrupt), skipped by the feed.
const REVOCATION_UNRECOGNIZED_METRIC: &str = "portcullis_revocation_unrecognized_total";

/// Latency buckets, in seconds, of every histogram.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The Prometheus recorder, installed once per process.
fn install_metrics() -> Result<PrometheusHandle, ServeError> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .map_err(|e| start("metrics")(e.to_string()))?
        .install_recorder()
        .map_err(|e| start("metrics")(e.to_string()))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Runs the gateway until SIGTERM / SIGINT; `Ok` after a clean drain.
/// SIGHUP reloads `config_path` ([`crate::reload`]).
pub fn run(config_path: &Path) -> Result<(), ServeError> {
    let config = crate::config::load(config_path)?;
    init_logs(&config.log);
    let runtime = runtime(config.server.worker_threads)
        .enable_all()
        .build()
        .map_err(|e| start("tokio runtime")(e.to_string()))?;
    runtime.block_on(serve(config, config_path.to_path_buf()))
}

/// The scheduler for `workers` threads (default: the CPUs this process may
/// run on): one thread gets the single-threaded scheduler (no work-stealing
/// bookkeeping, no cross-thread wake-ups; 19–22 % more requests per CPU in
/// `bench/gateway.sh`'s one-core set-up), more the multi-threaded one.
fn runtime(workers: Option<usize>) -> tokio::runtime::Builder {
    let workers = workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    }
}

/// The long-lived handles a reload keeps: stores, keys, the audit writer,
/// the Redis connection and the token service. Built once at start from
/// the restart-only keys ([`crate::reload::RESTART_ONLY`]).
pub(crate) struct Shared {
    /// Stores, Redis, bans and detectors, the audit writer.
    pub(crate) storage: crate::storage::Storage,
    /// The signing keys in force (configured plus rotated in).
    pub(crate) keyring: Arc<KeyRing>,
    issuer_config: IssuerConfig,
    pub(crate) token_service: Option<(String, axum::Router)>,
    /// The token service itself, to hand it each rotated key set.
    pub(crate) token_service_handle: Option<TokenService>,
    /// Signed-request nonces: outlive reloads, so a reload never forgets
    /// which nonces were spent.
    nonces: Arc<dyn NonceStore>,
    /// `[[keys.trusted_issuers]]` and their cached key sets.
    trusted_issuers: Option<TrustedIssuers>,
    /// The WebSocket tunnels open, counted across reloads.
    tunnels: Arc<crate::deadline::Tunnels>,
    /// Failed logins, resets and console sign-ins (`[token_service.regulation]`).
    pub(crate) regulator: Option<Arc<portcullis::regulation::Regulator>>,
}

impl Shared {
    pub(crate) async fn open(config: &Config) -> Result<Self, ServeError> {
        // Stores, Redis, bans and detectors, audit.
        let storage = crate::storage::open(config).await?;
        let hasher = storage.hasher.clone();

        // Keys and the local issuer.
        let configured =
            crate::cli::load_key_dir(&config.keys.dir, config.keys.active_kid.as_deref())
                .map_err(|e| start("keys.dir")(e.to_string()))?;
        let keyring = KeyRing::open(
            configured,
            Arc::clone(&storage.stores),
            &hasher,
            keyring_config(config),
        )
        .await
        .map_err(|e| start("keys.rotation")(e.to_string()))?;
        let keys = keyring.keys();
        let mut issuer_config = IssuerConfig::new(config.keys.issuer.clone());
        issuer_config.audience.clone_from(&config.keys.audience);
        issuer_config.access_ttl = config.keys.access_ttl;

        // The token service.
        let regulator = storage.regulator(&config.token_service.regulation)?;
        let token_service_handle = if config.token_service.enabled {
            let issuer = TokenIssuer::new(Arc::clone(&keys), issuer_config.clone(), hasher);
            let public_url = config.token_service.public_url.clone().unwrap_or_else(|| {
                format!(
                    "{}{}",
                    config.keys.issuer.trim_end_matches('/'),
                    config.token_service.prefix
                )
            });
            let mut b =
                TokenService::builder(Arc::clone(&storage.stores), issuer, Arc::clone(&keys))
                    .public_url(public_url)
                    .client_ip(config.guard.client_ip.clone());
            if let Some(engine) = &storage.anomaly {
                b = b.anomaly(Arc::clone(engine));
            }
            if let Some(a) = &storage.audit {
                b = b.audit(Arc::clone(a));
            }
            b = match &regulator {
                Some(r) => b.regulator(Arc::clone(r)),
                None => b.without_regulation(),
            };
            Some(
                b.build()
                    .map_err(|e| start("token_service")(e.to_string()))?,
            )
        } else {
            None
        };
        let token_service = token_service_handle.as_ref().map(|service| {
            let prefix = config.token_service.prefix.clone();
            let router = axum::Router::new().nest(&prefix, service.router());
            (prefix, router)
        });
        let nonces = storage.nonce_store();
        let trusted_issuers = trusted_issuers(config)?;
        Ok(Self {
            nonces,
            trusted_issuers,
            tunnels: Arc::default(),
            regulator,
            storage,
            keyring,
            issuer_config,
            token_service,
            token_service_handle,
        })
    }
}

/// How the key ring of `config` rotates: a rotated-out key verifies for the
/// longest lifetime of a token it signed (access token, or internal token
/// when an upstream gets one), plus the verifier's leeway and one poll of a
/// slow replica.
fn keyring_config(config: &Config) -> KeyRingConfig {
    let it = &config.internal_token;
    let internal = if config.upstreams.iter().any(|u| u.sends_internal_token(it)) {
        it.ttl
    } else {
        Duration::ZERO
    };
    let longest = config.keys.access_ttl.max(internal);
    let rotation = &config.keys.rotation;
    let mut ring = KeyRingConfig::new(longest + Validation::new().leeway + rotation.poll_interval);
    ring.propagation_delay = rotation.propagation_delay;
    ring.poll_interval = rotation.poll_interval;
    ring
}

impl Shared {
    /// Follows the key ring: each new key set goes to the token service
    /// (issuer, verifier, JWKS) and to `on_change` (the gateway rebuilds its
    /// request path; the in-process engine swaps its guard's keys). Runs
    /// until aborted.
    pub(crate) fn follow_keys<F, Fut>(&self, on_change: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Arc<KeySet>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let ring = self.keyring.spawn();
        let mut changes = self.keyring.subscribe();
        let service = self.token_service_handle.clone();
        tokio::spawn(async move {
            let _ring = AbortOnDrop(ring);
            while changes.changed().await.is_ok() {
                let keys = Arc::clone(&changes.borrow_and_update());
                if let Some(service) = &service {
                    service.replace_keys(Arc::clone(&keys));
                }
                on_change(keys).await;
            }
        })
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The guard of `config` over the long-lived handles of `shared`: local
/// keys through the verified-token cache, the stores (revocation), the
/// shared rate limiter, bans and detectors, audit and signed requests.
/// `previous` is the app being replaced by a reload: its rate limiter is
/// kept when the rate limits are unchanged.
pub(crate) fn build_guard(
    config: &Config,
    shared: &Shared,
    previous: Option<&App>,
) -> Result<Guard, ServeError> {
    let verifier = Verifier::new(
        shared.keyring.keys(),
        Validation::for_local_issuer(&shared.issuer_config),
    );
    let guard_config: GuardConfig = config.guard.clone();
    let mut builder = Guard::builder(guard_config)
        .local_keys_cached(
            verifier,
            portcullis::TokenCacheConfig {
                max_entries: config.keys.token_cache_entries,
                ..portcullis::TokenCacheConfig::default()
            },
        )
        .stores(Arc::clone(&shared.storage.stores))
        // Admin keys work on the ops listener only.
        .refuse_api_key_owners(crate::admin::ADMIN_OWNER_PREFIX);
    if let Some(limiter) = shared.storage.rate_limiter() {
        // Rate-limit counters shared by every replica.
        builder = builder.rate_limiter(limiter);
    }
    if let Some(engine) = &shared.storage.anomaly {
        builder = builder.anomaly(Arc::clone(engine));
    }
    if let Some(limiter) = previous.and_then(|p| p.guard.rate_limiter()) {
        builder = builder.reuse_rate_limiter(limiter.clone());
    }
    if let Some(a) = &shared.storage.audit {
        builder = builder.audit(Arc::clone(a));
    }
    if let Some(signed) = &config.signed_requests {
        builder = builder.signed_requests(signed_authenticator(signed, &shared.nonces)?);
    }
    if let Some(issuers) = &shared.trusted_issuers {
        builder = builder.trusted_issuers(issuers.clone());
    }
    builder.build().map_err(|e| start("guard")(e.to_string()))
}

/// The issuer of one `[[keys.trusted_issuers]]` entry (no I/O but reading
/// its `ca_file`); an error names the entry's field and says why.
pub(crate) fn remote_issuer(
    c: &crate::config::TrustedIssuerConfig,
) -> Result<RemoteIssuer, (&'static str, String)> {
    let source = match &c.jwks_url {
        Some(url) => KeySource::Jwks(url.clone()),
        None => KeySource::Discovery,
    };
    let mut settings = RemoteIssuerConfig::new(c.issuer.clone(), source);
    settings.validation.audiences = c.audience.clone();
    settings.validation.require_typ = c.require_typ;
    settings.ttl = c.ttl;
    settings.refetch_interval = c.refetch_interval;
    settings.max_stale = c.max_stale;
    settings.allow_http = c.allow_http;
    settings.jwks_hosts = c.jwks_hosts.clone();
    if let Some(path) = &c.ca_file {
        settings.tls.extra_roots_pem =
            std::fs::read(path).map_err(|e| ("ca_file", format!("{}: {e}", path.display())))?;
    }
    let url_field = if c.jwks_url.is_some() {
        "jwks_url"
    } else {
        "issuer"
    };
    RemoteIssuer::new(settings).map_err(|e| match e {
        IssuerError::Setting { field, reason } => {
            let field = match field {
                "validation.audiences" => "audience",
                "ttl" => "ttl",
                "refetch_interval" => "refetch_interval",
                "max_stale" => "max_stale",
                _ => url_field,
            };
            (field, reason.to_owned())
        }
        IssuerError::Config(FetchError::Tls(detail)) => ("ca_file", detail),
        other => (url_field, other.to_string()),
    })
}

/// Every `[[keys.trusted_issuers]]` entry, built once at start: their
/// fetched key sets outlive reloads and key rotations.
fn trusted_issuers(config: &Config) -> Result<Option<TrustedIssuers>, ServeError> {
    if config.keys.trusted_issuers.is_empty() {
        return Ok(None);
    }
    let mut issuers = TrustedIssuers::new();
    for (i, c) in config.keys.trusted_issuers.iter().enumerate() {
        let issuer = remote_issuer(c).map_err(|(field, message)| {
            start("keys.trusted_issuers")(format!("[{i}].{field}: {message}"))
        })?;
        issuers = issuers.with(issuer);
    }
    Ok(Some(issuers))
}

/// The request path of `config`: guard, proxy, forward-auth, over the
/// long-lived handles of `shared` (see [`build_guard`] for `previous`).
pub(crate) fn build_app(
    config: &Config,
    shared: &Shared,
    previous: Option<&App>,
) -> Result<App, ServeError> {
    let guard = build_guard(config, shared, previous)?;

    let outbound = crate::identity::Outbound::new(config, shared.keyring.keys())
        .map_err(|e| start("internal_token")(e.to_string()))?;
    let jwks = (outbound.jwks_path().to_owned(), outbound.jwks());
    let proxy = Proxy::new(config, outbound, Arc::clone(&shared.tunnels))
        .map_err(|e| start("upstreams")(e.to_string()))?;
    let canonical = crate::canonical::Canonicalizer::new(config)
        .map_err(|e| start("request")(e.to_string()))?;
    let forward_auth = config.forward_auth.enabled.then(|| {
        (
            config.forward_auth.prefix.clone(),
            ForwardAuth::new(
                guard.clone(),
                proxy.identity().clone(),
                config.guard.client_ip.clone(),
                canonical.clone(),
            ),
        )
    });
    let explainer = crate::explain::Explainer::live(config, guard.clone(), proxy.clone())
        .map_err(start("explain"))?;
    Ok(App {
        explainer,
        token_service: shared.token_service.clone(),
        forward_auth,
        guarded: GuardLayer::new(guard.clone()).layer(proxy),
        guard,
        canonical,
        max_body: config.server.max_body_bytes,
        body_timeout: config.server.request_body_timeout,
        jwks,
        request_metrics: RequestMetrics::default(),
    })
}

/// The apps of `[signed_requests]`, their secrets read now (so a reload
/// picks up a rotated secret), over the process's nonce store.
fn signed_authenticator(
    signed: &SignedRequestsConfig,
    nonces: &Arc<dyn NonceStore>,
) -> Result<SignedRequestAuthenticator<SharedNonces>, ServeError> {
    signed_authenticator_over(signed, SharedNonces(Arc::clone(nonces)))
}

/// The apps of `[signed_requests]` over a nonce store of their own (an
/// offline explain: no nonce is shared with a running gateway).
pub(crate) fn offline_signed_authenticator<N: NonceStore>(
    signed: &SignedRequestsConfig,
    nonces: N,
) -> Result<SignedRequestAuthenticator<N>, String> {
    signed_authenticator_over(signed, nonces).map_err(|e| e.to_string())
}

fn signed_authenticator_over<N: NonceStore>(
    signed: &SignedRequestsConfig,
    nonces: N,
) -> Result<SignedRequestAuthenticator<N>, ServeError> {
    let mut auth = SignedRequestAuthenticator::new(nonces).with_window(signed.window);
    for app in &signed.apps {
        let secret = app.read_secret().map_err(|m| {
            start("signed_requests.apps.secret_file")(format!("app `{}`: {m}", app.id))
        })?;
        let mut principal = Principal::new(app.id.clone(), AuthMethod::SignedRequest);
        principal.roles.clone_from(&app.roles);
        principal.permissions.clone_from(&app.permissions);
        principal.tenant.clone_from(&app.tenant);
        auth = auth
            .with_app_principal(&secret, principal)
            .map_err(|e| start("signed_requests.apps")(e.to_string()))?;
    }
    Ok(auth)
}

/// The process's one nonce store, shared by every guard a reload builds.
struct SharedNonces(Arc<dyn NonceStore>);

impl NonceStore for SharedNonces {
    fn remember<'a>(
        &'a self,
        app: &'a str,
        nonce: &'a str,
        ttl: Duration,
    ) -> portcullis::authz::BoxFuture<'a, Result<bool, portcullis::authz::NonceStoreError>> {
        self.0.remember(app, nonce, ttl)
    }
}

async fn serve(config: Config, config_path: PathBuf) -> Result<(), ServeError> {
    // Pinned decisions (`[tests]`): a configuration that fails one does not start.
    if let Err(failures) = crate::cases::run_config_tests(&config, &config_path).await {
        return Err(start("tests")(failures.join("; ")));
    }
    serve_until(config, config_path, shutdown_signal(), |_| {}).await
}

/// The addresses the listeners bound (port 0 in the configuration becomes
/// the port the system chose).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The public listener.
    pub public: SocketAddr,
    /// The ops listener.
    pub ops: SocketAddr,
}

/// The gateway on `config`, read from `config_path` (which SIGHUP and
/// `portcullis reload` read again): `ready` is called once both listeners
/// are bound, and `shutdown` completing starts the graceful drain
/// (`portcullis serve` passes SIGTERM / SIGINT; `portcullis demo --check`
/// its own end). The process's logs are the caller's to set up once
/// ([`init_logs`]; the metrics recorder is installed here).
pub async fn serve_until(
    config: Config,
    config_path: PathBuf,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(Bound),
) -> Result<(), ServeError> {
    let metrics = install_metrics()?;
    let shared = Arc::new(Shared::open(&config).await?);
    // Imported bcrypt hashes already stored make every login check pay
    // bcrypt too (unknown users included): no timing tells them apart.
    let stores = Arc::clone(&shared.storage.stores);
    tokio::spawn(async move {
        match stores.note_stored_password_hashes().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                bcrypt_hashes = n,
                "imported bcrypt password hashes present: every login check pays bcrypt too"
            ),
            Err(e) => tracing::warn!(error = %e, "could not read the stored password hashes"),
        }
    });
    let live = Arc::new(ArcSwap::from_pointee(build_app(&config, &shared, None)?));
    let reloader = Arc::new(Reloader::new(
        config_path,
        config.clone(),
        Arc::clone(&shared),
        Arc::clone(&live),
    ));
    // Each step of a signing-key rotation rebuilds the request path over
    // the new key set (guard verifier, internal-token signer, JWKS).
    let key_follower = {
        let reloader = Arc::clone(&reloader);
        shared.follow_keys(move |_| {
            let reloader = Arc::clone(&reloader);
            async move { reloader.rebuild_for_keys().await }
        })
    };
    let health = Arc::new(Health {
        ready: AtomicBool::new(true),
        stores: Arc::clone(&shared.storage.stores),
        keyring: Arc::clone(&shared.keyring),
        metrics,
        live: Arc::clone(&live),
        audit: shared.storage.audit.clone(),
        redis: shared.storage.redis.is_some(),
        admin: {
            let (guard, router) = crate::admin::build(crate::admin::AdminParts {
                stores: Arc::clone(&shared.storage.stores),
                anomaly: shared.storage.anomaly.clone(),
                audit: shared.storage.audit.clone(),
                audit_store: shared.storage.audit_store.clone(),
                client_ip: config.guard.client_ip.clone(),
                token_prefix: shared.token_service.as_ref().map(|(p, _)| p.clone()),
                keyring: Arc::clone(&shared.keyring),
                streams: crate::live_stream::StreamSlots::new(
                    config.server.admin_streams,
                    config.server.admin_streams_per_key,
                ),
                reloader: Some(Arc::clone(&reloader)),
                // Granted roles mean what the live public guard's role table says.
                roles: Some({
                    let live = Arc::clone(&live);
                    Arc::new(move || live.load().guard.clone())
                }),
                explainer: Some({
                    let live = Arc::clone(&live);
                    Arc::new(move || live.load().explainer.clone())
                }),
            })
            .map_err(start("admin"))?;
            GuardLayer::new(guard).layer(router)
        },
        console: crate::console::Console::new(
            Arc::clone(&shared.storage.stores),
            Arc::clone(&reloader),
        )
        .with_sign_in_guard(
            shared.regulator.clone(),
            shared.storage.audit.clone(),
            config.guard.client_ip.clone(),
        ),
        ops_hosts: crate::ops_guard::OpsHosts::new(
            config.server.ops_listen,
            &config.server.ops_hosts,
        ),
    });

    // TLS termination: the certificate is loaded now (a bad one stops the
    // start) and re-read on every SIGHUP.
    let tls = match &config.server.tls {
        None => None,
        Some(c) => {
            let tls = crate::tls::Tls::load(c).map_err(|e| start("server.tls")(e.to_string()))?;
            tls.reload_on_sighup()
                .map_err(|e| start("server.tls")(format!("SIGHUP handler: {e}")))?;
            Some(tls)
        }
    };
    let public_conns = crate::conn::Public::new(tls.clone(), config.server.idle_timeout);
    // Each listener's connection cap, and its accept loop's back-off.
    let public_limit = ConnLimit::new("public", config.server.max_connections);
    let ops_limit = ConnLimit::new("ops", config.server.ops_max_connections);
    let mut public_accept = Acceptor::new("public");
    let mut ops_accept = Acceptor::new("ops");

    let public = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| start("server.listen")(format!("{}: {e}", config.server.listen)))?;
    let ops = TcpListener::bind(config.server.ops_listen)
        .await
        .map_err(|e| start("server.ops_listen")(format!("{}: {e}", config.server.ops_listen)))?;
    let bound = Bound {
        public: public.local_addr().map_or(config.server.listen, |a| a),
        ops: ops.local_addr().map_or(config.server.ops_listen, |a| a),
    };
    tracing::info!(
        public = %bound.public,
        ops = %bound.ops,
        routes = config.guard.routes.len(),
        upstreams = config.upstreams.len(),
        tls = tls.is_some(),
        "portcullis gateway listening"
    );
    ready(bound);
    let pid_file = crate::reload::PidFile::write(config.server.pid_file.as_deref())
        .map_err(start("server.pid_file"))?;
    let sighup = crate::reload::on_sighup(Arc::clone(&reloader));

    let graceful = GracefulShutdown::new();
    // Turns true at shutdown: connections still in their TLS handshake or
    // before their first bytes are dropped rather than awaited.
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            (stream, peer) = public_accept.accept(&public) => {
                // Over the cap the connection is dropped: closed at once.
                let Some(permit) = public_limit.admit() else { continue };
                let live = Arc::clone(&live);
                let make = move |secure: bool| {
                    hyper::service::service_fn(move |mut req: Request<Incoming>| {
                        if secure {
                            req.extensions_mut().insert(crate::proxy::ClientTls);
                        }
                        // Each request runs on the configuration current when it
                        // arrives, to its end, even if a reload swaps it meanwhile.
                        let app = live.load_full();
                        // Boxed: hyper moves the future it is given (into the
                        // connection's in-flight slot), and the whole request
                        // path's state machine is several KiB; a box is one
                        // allocation instead of copies of all of it.
                        Box::pin(async move { Ok::<_, Infallible>(app.handle(req, peer).await) })
                    })
                };
                public_conns.spawn(stream, permit, graceful.watcher(), stopping_rx.clone(), make);
            }
            (stream, peer) = ops_accept.accept(&ops) => {
                let Some(permit) = ops_limit.admit() else { continue };
                let health = Arc::clone(&health);
                let svc = hyper::service::service_fn(move |req| {
                    let health = Arc::clone(&health);
                    async move { Ok::<_, Infallible>(health.handle(req, peer).await) }
                });
                serve_connection(&graceful, stream, permit, svc);
            }
        }
    }

    // Readiness fails first, the public listener stops accepting, in-flight
    // requests drain. The ops listener keeps answering (503 ready) until the
    // drain ends, so a load balancer sees the gateway leave.
    health.ready.store(false, Ordering::SeqCst);
    drop(public);
    let _ = stopping.send(true);
    let ops_during_drain = {
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = ops_accept.accept(&ops).await;
                let Some(permit) = ops_limit.admit() else {
                    continue;
                };
                let health = Arc::clone(&health);
                let svc = hyper::service::service_fn(move |req| {
                    let health = Arc::clone(&health);
                    async move { Ok::<_, Infallible>(health.handle(req, peer).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = conn.await;
                });
            }
        })
    };
    tracing::info!(
        "shutdown signal: readiness fails, listener closed, draining in-flight requests"
    );
    if tokio::time::timeout(config.server.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout = ?config.server.shutdown_timeout,
            "in-flight requests still running at the shutdown deadline; closing them"
        );
    }
    ops_during_drain.abort();
    sighup.abort();
    key_follower.abort();
    drop(health);
    drop(reloader);
    drop(live);
    if let Some(a) = &shared.storage.audit {
        a.shutdown().await;
    }
    drop(pid_file);
    tracing::info!("stopped; audit queue flushed");
    Ok(())
}

fn serve_connection<S>(
    graceful: &GracefulShutdown,
    stream: tokio::net::TcpStream,
    permit: ConnPermit,
    svc: S,
) where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ResponseBody>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _ = stream.set_nodelay(true);
    // A client gets 30 s to send a request head (slow-loris bound).
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), svc);
    let watched = graceful.watch(conn);
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(e) = watched.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}

/// Logs on stderr, as `[log]` says.
pub fn init_logs(log: &LogConfig) {
    use tracing_subscriber::filter::LevelFilter;
    let level = match log.level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(false);
    let _ = match log.format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A status as a metric label: the common ones without allocating.
/// The statuses whose label needs no allocation (and whose request
/// counters are held, see `RequestMetrics`).
const COMMON_STATUSES: [(u16, &str); 16] = [
    (200, "200"),
    (201, "201"),
    (204, "204"),
    (301, "301"),
    (302, "302"),
    (304, "304"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (413, "413"),
    (429, "429"),
    (500, "500"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];

fn status_label(status: StatusCode) -> metrics::SharedString {
    match COMMON_STATUSES
        .iter()
        .find(|&&(code, _)| code == status.as_u16())
    {
        Some(&(_, label)) => metrics::SharedString::const_str(label),
        None => metrics::SharedString::from(status.as_str().to_owned()),
    }
}

/// Whether `path` is `prefix` or under it.
pub(crate) fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Which part of the public listener answered, for metrics.
#[derive(Debug, Clone, Copy)]
enum Surface {
    TokenService,
    ForwardAuth,
    Jwks,
    Proxy,
}

impl Surface {
    const ALL: [Surface; 4] = [
        Self::TokenService,
        Self::ForwardAuth,
        Self::Jwks,
        Self::Proxy,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::TokenService => "token_service",
            Self::ForwardAuth => "forward_auth",
            Self::Jwks => "jwks",
            Self::Proxy => "proxy",
        }
    }
}

impl App {
    /// 400 for a request with no single meaning, audited by the guard.
    fn refuse_malformed(
        &self,
        parts: &http::request::Parts,
        peer: SocketAddr,
        why: portcullis_core::canonical::NonCanonical,
    ) -> Response<ResponseBody> {
        metrics::counter!("portcullis_gateway_noncanonical_refused_total", "reason" => why.code())
            .increment(1);
        let mut decision =
            self.guard
                .malformed(parts, Some(peer.ip()), why.code(), &why.to_string());
        let response = crate::canonical::refusal(why, &decision.request_id);
        decision.finish(response.status());
        response
    }

    /// One request on the public listener, counted and timed by surface and status.
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        let started = std::time::Instant::now();
        // The body is due whole within the deadline, on every surface;
        // whatever answer a late body caused becomes a 408.
        let version = req.version();
        let grpc = crate::grpc::is_grpc(req.headers());
        let (req, expired) = TimedBody::wrap(req, self.body_timeout);
        let (surface, mut response) = self.dispatch(req, peer).await;
        if expired.fired() {
            response = crate::deadline::request_timeout(
                response,
                version,
                self.body_timeout,
                surface.as_str(),
            );
        }
        self.request_metrics.count(surface, response.status());
        self.request_metrics.time(surface, started.elapsed());
        // A gRPC client reads a status, not problem+json: the gateway's own
        // refusals on the proxy are answered as one (counted above, and
        // audited by the guard, with their HTTP status).
        if grpc && matches!(surface, Surface::Proxy) {
            response = crate::grpc::answer_own_refusal(response);
        }
        response
    }

    async fn dispatch(
        &self,
        mut req: Request<TimedBody>,
        peer: SocketAddr,
    ) -> (Surface, Response<ResponseBody>) {
        req.extensions_mut().insert(PeerAddr(peer));
        // One request, one meaning: every surface sees the canonical form.
        let (mut parts, body) = req.into_parts();
        let tls = parts.extensions.get::<crate::proxy::ClientTls>().is_some();
        // An HTTP/2 WebSocket (extended CONNECT) is decided as the GET of
        // an HTTP/1.1 handshake.
        if let Err(e) = crate::websocket::from_extended_connect(&mut parts) {
            return (
                Surface::Proxy,
                crate::proxy::problem(
                    StatusCode::NOT_IMPLEMENTED,
                    "gateway.protocol_unsupported",
                    &e.to_string(),
                    None,
                ),
            );
        }
        if let Err(crate::canonical::Refused(why)) =
            self.canonical.apply(&mut parts, peer.ip(), tls)
        {
            return (Surface::Proxy, self.refuse_malformed(&parts, peer, why));
        }
        let mut req = Request::from_parts(parts, body);
        let path = req.uri().path();
        if path == self.jwks.0 {
            return (
                Surface::Jwks,
                crate::identity::jwks_response(&req, &self.jwks.1),
            );
        }
        if let Some((prefix, router)) = &self.token_service
            && under(path, prefix)
        {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let mut router = router.clone();
            let response = match router.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            return (
                Surface::TokenService,
                response.map(|b| {
                    b.map_err(|e| Box::new(e) as crate::proxy::BoxError)
                        .boxed_unsync()
                }),
            );
        }
        if let Some((prefix, fa)) = &self.forward_auth
            && under(path, prefix)
        {
            let rest = path[prefix.len()..].to_owned();
            return (Surface::ForwardAuth, fa.handle(req, peer, &rest).await);
        }
        // The body limit: a declared length over it is refused before any work.
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            crate::proxy::linger(req.into_body());
            return (Surface::Proxy, crate::proxy::too_large(self.max_body));
        }
        let req = req.map(|body| RequestBody::limited(body, self.max_body));
        let mut guarded = self.guarded.clone();
        let response = match guarded.call(req).await {
            Ok(response) => response.map(|b| b.map_err(Into::into).boxed_unsync()),
            Err(never) => match never {},
        };
        (Surface::Proxy, response)
    }
}

impl Health {
    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        // DNS rebinding (a foreign `Host`: 421) and cross-site state
        // changes (403) are refused before any route.
        if let Err((status, code, detail)) =
            self.ops_hosts.check(req.method(), req.uri(), req.headers())
        {
            tracing::warn!(%peer, method = %req.method(), path = %req.uri().path(), code, "ops listener request refused");
            return portcullis::service::problem(portcullis::service::Problem::new(
                status, code, detail,
            ))
            .map(|b| b.map_err(crate::proxy::BoxError::from).boxed_unsync());
        }
        let path = req.uri().path();
        if crate::console::owns(path) {
            return self.console.handle(req, peer, &self.admin).await;
        }
        // `/reload` is an admin route: an admin key with
        // `admin.config.write`, checked by the admin guard.
        if path.starts_with("/admin/") || path == "/openapi.json" || path == "/reload" {
            req.extensions_mut().insert(PeerAddr(peer));
            let mut admin = self.admin.clone();
            let req = req.map(axum::body::Body::new);
            let response = match admin.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            return response.map(|b| b.map_err(crate::proxy::BoxError::from).boxed_unsync());
        }
        let (status, body) = match req.uri().path() {
            "/health/live" => (StatusCode::OK, serde_json::json!({"status": "live"})),
            "/health/ready" => self.readiness().await,
            "/metrics" => {
                self.sample();
                let mut response = Response::new(full(self.metrics.render()));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                return response;
            }
            _ => (
                StatusCode::NOT_FOUND,
                serde_json::json!({"status": "not found"}),
            ),
        };
        let mut response = Response::new(full(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }

    /// Sets the gauges that are read rather than counted: the audit
    /// queue's depth and drops, the Redis breaker's state.
    fn sample(&self) {
        let set = self.stores.revocations();
        let stats = set.stats();
        metrics::gauge!(REVOCATION_LAG_METRIC)
            .set(set.lag().map_or(f64::INFINITY, |lag| lag.as_secs_f64()));
        metrics::gauge!(REVOCATION_ENTRIES_METRIC).set(stats.entries as f64);
        metrics::gauge!(REVOCATION_BYTES_METRIC).set(stats.bytes as f64);
        metrics::counter!(REVOCATION_STALE_METRIC, "decision" => "deny")
            .absolute(stats.stale_denied);
        metrics::counter!(REVOCATION_STALE_METRIC, "decision" => "allow")
            .absolute(stats.stale_allowed);
        metrics::counter!(REVOCATION_POLL_FAILURES_METRIC).absolute(stats.poll_failures);
        metrics::counter!(REVOCATION_WAKEUPS_METRIC).absolute(stats.wakeups);
        metrics::counter!(REVOCATION_NOTIFICATIONS_METRIC).absolute(stats.notifications);
        metrics::counter!(REVOCATION_LISTENS_METRIC).absolute(stats.listens);
        metrics::counter!(REVOCATION_UNRECOGNIZED_METRIC).absolute(stats.unrecognized);
        if let Some(audit) = &self.audit {
            let depth = u32::try_from(audit.queued()).unwrap_or(u32::MAX);
            metrics::gauge!(AUDIT_QUEUE_DEPTH_METRIC).set(f64::from(depth));
            // The writer counts drops as they happen; this makes the series
            // exist (at 0) before the first one.
            metrics::counter!(AUDIT_DROPPED_METRIC).absolute(audit.stats().dropped);
        }
        if self.redis
            && let Some(limiter) = self.live.load().guard.rate_limiter()
        {
            let open = if limiter.backend_down() { 1.0 } else { 0.0 };
            metrics::gauge!(BREAKER_STATE_METRIC).set(open);
        }
    }

    async fn readiness(&self) -> (StatusCode, serde_json::Value) {
        if !self.ready.load(Ordering::SeqCst) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "shutting down"}),
            );
        }
        let keys = self.keyring.keys().active().is_some();
        // Ready once the revocation set is loaded, and while it answers:
        // fresh, or stale under `on_stale = "allow"`. A store outage
        // within `max_stale` leaves the replica ready.
        let set = self.stores.revocations();
        // A watchdog: restarts the feed if its task ended (a panic); a
        // no-op while it runs. storage.rs starts it at open.
        set.start_feed();
        let storage = set.is_loaded()
            && (!set.is_stale() || set.policy().on_stale == portcullis::stores::OnStale::Allow);
        let lag_ms = set
            .lag()
            .map(|lag| u64::try_from(lag.as_millis()).unwrap_or(u64::MAX));
        let ok = keys && storage;
        (
            if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            serde_json::json!({
                "status": if ok { "ready" } else { "not ready" },
                "storage": storage,
                "keys": keys,
                "revocation": {"loaded": set.is_loaded(), "lag_ms": lag_ms},
            }),
        )
    }
}
