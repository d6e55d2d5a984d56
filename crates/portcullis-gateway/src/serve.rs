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
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use portcullis::audit::sqlite::SqliteAudit;
use portcullis::audit::{AuditWriter, AuditWriterConfig};
use portcullis::http::{GuardLayer, GuardService, PeerAddr};
use portcullis::service::TokenService;
use portcullis::stores::{Backends, Stores, StoresConfig};
use portcullis::{Guard, GuardConfig};
use portcullis_core::{
    IssuerConfig, KeySet, SecretHasher, SystemClock, TokenIssuer, Validation, Verifier,
};
use tokio::net::TcpListener;
use tower_layer::Layer;
use tower_service::Service;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::config::{Config, LogConfig, LogFormat, LogLevel, StorageUrl};
use crate::forward_auth::ForwardAuth;
use crate::proxy::{Proxy, RequestBody, ResponseBody, full};

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

fn start(what: &'static str) -> impl Fn(String) -> ServeError {
    move |message| ServeError::Start { what, message }
}

/// Everything the request path shares.
struct App {
    token_service: Option<(String, axum::Router)>,
    forward_auth: Option<(String, ForwardAuth)>,
    guarded: GuardService<Proxy>,
    max_body: u64,
}

/// What the ops listener reports on.
struct Health {
    ready: AtomicBool,
    stores: Arc<Stores>,
    keys: Arc<KeySet>,
    metrics: PrometheusHandle,
}

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
pub fn run(config_path: &Path) -> Result<(), ServeError> {
    let config = crate::config::load(config_path)?;
    init_logs(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| start("tokio runtime")(e.to_string()))?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> Result<(), ServeError> {
    serve_until(config, shutdown_signal(), |_| {}).await
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

/// The gateway on an in-memory `config`: `ready` is called once both
/// listeners are bound, and `shutdown` completing starts the graceful drain
/// (`portcullis serve` passes SIGTERM / SIGINT; `portcullis demo --check`
/// its own end). The process's logs and metrics recorder are the caller's
/// to set up once ([`init_logs`]; the recorder is installed here).
pub async fn serve_until(
    config: Config,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(Bound),
) -> Result<(), ServeError> {
    let metrics = install_metrics()?;

    // Storage.
    let pepper = match &config.storage.pepper_file {
        Some(path) => std::fs::read(path)
            .map_err(|e| start("storage.pepper_file")(format!("{}: {e}", path.display())))?,
        None => {
            let mut random = vec![0u8; 32];
            portcullis_core::opaque::fill_random(&mut random)
                .map_err(|e| start("pepper")(e.to_string()))?;
            random
        }
    };
    let hasher =
        SecretHasher::new(&pepper).map_err(|e| start("storage.pepper_file")(e.to_string()))?;
    let backends = match StorageUrl::parse(&config.storage.url).map_err(start("storage.url"))? {
        StorageUrl::Memory => {
            Backends::all(Arc::new(portcullis::stores::memory::MemoryStores::new()))
        }
        StorageUrl::Sqlite(path) => Backends::all(Arc::new(
            portcullis::stores::sqlite::SqliteStores::open(&path)
                .await
                .map_err(|e| start("storage.url")(e.to_string()))?,
        )),
        StorageUrl::Postgres(url) => Backends::all(Arc::new(
            portcullis::stores::postgres::PostgresStores::connect(&url, 16)
                .await
                .map_err(|e| start("storage.url")(e.to_string()))?,
        )),
    };
    let stores = Arc::new(
        Stores::new(backends, StoresConfig::new(hasher.clone()))
            .map_err(|e| start("storage")(e.to_string()))?,
    );

    // Keys and the local issuer.
    let keys = Arc::new(
        crate::cli::load_key_dir(&config.keys.dir, config.keys.active_kid.as_deref())
            .map_err(|e| start("keys.dir")(e.to_string()))?,
    );
    let mut issuer_config = IssuerConfig::new(config.keys.issuer.clone());
    issuer_config.audience.clone_from(&config.keys.audience);
    let verifier = Verifier::new(
        Arc::clone(&keys),
        Validation::for_local_issuer(&issuer_config),
    );

    // Audit.
    let audit = match &config.audit.sqlite {
        None => None,
        Some(path) => {
            let db = SqliteAudit::open(path, Duration::from_secs(5))
                .await
                .map_err(|e| start("audit.sqlite")(e.to_string()))?;
            let spool = config
                .audit
                .spool_dir
                .clone()
                .unwrap_or_else(|| path.with_extension("spool"));
            let writer = AuditWriter::start(
                Arc::new(db),
                AuditWriterConfig::new(spool),
                Arc::new(SystemClock),
            )
            .map_err(|e| start("audit")(e.to_string()))?;
            Some(Arc::new(writer))
        }
    };

    // The guard.
    let guard_config: GuardConfig = config.guard.clone();
    let client_ip = guard_config.client_ip.clone();
    let mut builder = Guard::builder(guard_config)
        .local_keys(verifier)
        .stores(Arc::clone(&stores));
    if let Some(url) = &config.storage.redis {
        // Rate-limit counters shared by every replica.
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            portcullis::redis_conn::RedisConnection::single(url),
        )
        .await
        .map_err(|_| start("storage.redis")(format!("{url}: no answer within 10 s")))?
        .map_err(|e| start("storage.redis")(format!("{url}: {e}")))?;
        let prefix = format!("{}:ratelimit", config.storage.redis_prefix);
        builder = builder
            .rate_limiter(portcullis::ratelimit::RateLimiter::builder().redis(conn, &prefix));
    }
    if let Some(a) = &audit {
        builder = builder.audit(Arc::clone(a));
    }
    let guard = builder.build().map_err(|e| start("guard")(e.to_string()))?;

    // The token service.
    let token_service = if config.token_service.enabled {
        let issuer = TokenIssuer::new(Arc::clone(&keys), issuer_config.clone(), hasher);
        let public_url = config.token_service.public_url.clone().unwrap_or_else(|| {
            format!(
                "{}{}",
                config.keys.issuer.trim_end_matches('/'),
                config.token_service.prefix
            )
        });
        let mut b = TokenService::builder(Arc::clone(&stores), issuer, Arc::clone(&keys))
            .public_url(public_url)
            .client_ip(client_ip);
        if let Some(a) = &audit {
            b = b.audit(Arc::clone(a));
        }
        let service = b
            .build()
            .map_err(|e| start("token_service")(e.to_string()))?;
        let prefix = config.token_service.prefix.clone();
        Some((
            prefix.clone(),
            axum::Router::new().nest(&prefix, service.router()),
        ))
    } else {
        None
    };

    let proxy = Proxy::new(&config).map_err(|e| start("upstreams")(e.to_string()))?;
    let forward_auth = config.forward_auth.enabled.then(|| {
        (
            config.forward_auth.prefix.clone(),
            ForwardAuth::new(
                guard.clone(),
                proxy.identity().clone(),
                config.guard.client_ip.clone(),
            ),
        )
    });
    let app = Arc::new(App {
        token_service,
        forward_auth,
        guarded: GuardLayer::new(guard).layer(proxy),
        max_body: config.server.max_body_bytes,
    });
    let health = Arc::new(Health {
        ready: AtomicBool::new(true),
        stores: Arc::clone(&stores),
        keys: Arc::clone(&keys),
        metrics,
    });

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
        "portcullis gateway listening"
    );
    ready(bound);

    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = public.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let app = Arc::clone(&app);
                let svc = hyper::service::service_fn(move |req| {
                    let app = Arc::clone(&app);
                    async move { Ok::<_, Infallible>(app.handle(req, peer).await) }
                });
                serve_connection(&graceful, stream, svc);
            }
            accepted = ops.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let health = Arc::clone(&health);
                let svc = hyper::service::service_fn(move |req| {
                    let health = Arc::clone(&health);
                    async move { Ok::<_, Infallible>(health.handle(&req).await) }
                });
                serve_connection(&graceful, stream, svc);
            }
        }
    }

    // Readiness fails first, the public listener stops accepting, in-flight
    // requests drain. The ops listener keeps answering (503 ready) until the
    // drain ends, so a load balancer sees the gateway leave.
    health.ready.store(false, Ordering::SeqCst);
    drop(public);
    let ops_during_drain = {
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = ops.accept().await else {
                    continue;
                };
                let health = Arc::clone(&health);
                let svc = hyper::service::service_fn(move |req| {
                    let health = Arc::clone(&health);
                    async move { Ok::<_, Infallible>(health.handle(&req).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), svc),
                );
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
    drop(app);
    if let Some(a) = audit {
        a.shutdown().await;
    }
    tracing::info!("stopped; audit queue flushed");
    Ok(())
}

fn serve_connection<S>(graceful: &GracefulShutdown, stream: tokio::net::TcpStream, svc: S)
where
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

/// Whether `path` is `prefix` or under it.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Which part of the public listener answered, for metrics.
#[derive(Debug, Clone, Copy)]
enum Surface {
    TokenService,
    ForwardAuth,
    Proxy,
}

impl Surface {
    fn as_str(self) -> &'static str {
        match self {
            Self::TokenService => "token_service",
            Self::ForwardAuth => "forward_auth",
            Self::Proxy => "proxy",
        }
    }
}

impl App {
    /// One request on the public listener, counted and timed by surface and status.
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        let started = std::time::Instant::now();
        let (surface, response) = self.dispatch(req, peer).await;
        let surface = surface.as_str();
        metrics::counter!(
            "portcullis_gateway_requests_total",
            "surface" => surface,
            "status" => response.status().as_str().to_owned()
        )
        .increment(1);
        metrics::histogram!("portcullis_gateway_request_duration_seconds", "surface" => surface)
            .record(started.elapsed().as_secs_f64());
        response
    }

    async fn dispatch(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> (Surface, Response<ResponseBody>) {
        req.extensions_mut().insert(PeerAddr(peer));
        let path = req.uri().path();
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
    async fn handle(&self, req: &Request<Incoming>) -> Response<ResponseBody> {
        let (status, body) = match req.uri().path() {
            "/health/live" => (StatusCode::OK, serde_json::json!({"status": "live"})),
            "/health/ready" => self.readiness().await,
            "/metrics" => {
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

    async fn readiness(&self) -> (StatusCode, serde_json::Value) {
        if !self.ready.load(Ordering::SeqCst) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "shutting down"}),
            );
        }
        let keys = self.keys.active().is_some();
        let storage = tokio::time::timeout(
            Duration::from_secs(2),
            self.stores.is_jti_revoked("portcullis-readiness-probe"),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        let ok = keys && storage;
        (
            if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            serde_json::json!({"status": if ok { "ready" } else { "not ready" }, "storage": storage, "keys": keys}),
        )
    }
}
