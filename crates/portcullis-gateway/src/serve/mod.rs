//! `portcullis serve`: wires the engine from the configuration (stores,
//! keys, audit, guard, token service, proxy), runs the public and ops
//! listeners, and shuts down gracefully on SIGTERM / SIGINT.
//!
//! A request on the public listener goes, by path: the token service
//! prefix → the token service router; the forward-auth prefix →
//! [`crate::forward_auth`]; anything else → body limit → `GuardLayer` →
//! [`crate::proxy`].

mod app;
mod build;
pub mod embed;
mod health;
pub(crate) mod storage;

pub(crate) use app::App;
use build::LivePath;
pub(crate) use build::{Shared, build_app, build_guard};
use health::Health;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use portcullis::http::GuardLayer;
use tokio::net::TcpListener;
use tower_layer::Layer;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::config::{Config, LogConfig, LogFormat, LogLevel};
use crate::listen::limits::{Acceptor, ConnLimit, ConnPermit};
use crate::ops::reload::Reloader;
use crate::proxy::ResponseBody;
use arc_swap::ArcSwap;

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
/// SIGHUP reloads `config_path` ([`crate::ops::reload`]).
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

async fn serve(config: Config, config_path: PathBuf) -> Result<(), ServeError> {
    // Pinned decisions (`[tests]`): a configuration that fails one does not start.
    if let Err(failures) = crate::explain::cases::run_config_tests(&config, &config_path).await {
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
        Arc::new(LivePath {
            shared: Arc::clone(&shared),
            live: Arc::clone(&live),
        }),
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
            let (guard, router) = crate::ops::admin::build(crate::ops::admin::AdminParts {
                stores: Arc::clone(&shared.storage.stores),
                anomaly: shared.storage.anomaly.clone(),
                audit: shared.storage.audit.clone(),
                audit_store: shared.storage.audit_store.clone(),
                client_ip: config.guard.client_ip.clone(),
                token_prefix: shared.token_service.as_ref().map(|(p, _)| p.clone()),
                keyring: Arc::clone(&shared.keyring),
                streams: crate::ops::live_stream::StreamSlots::new(
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
        console: crate::ops::console::Console::new(
            Arc::clone(&shared.storage.stores),
            Arc::clone(&reloader),
        )
        .with_sign_in_guard(
            shared.regulator.clone(),
            shared.storage.audit.clone(),
            config.guard.client_ip.clone(),
        ),
        ops_hosts: crate::ops::hosts::OpsHosts::new(
            config.server.ops_listen,
            &config.server.ops_hosts,
        ),
    });

    // TLS termination: the certificate is loaded now (a bad one stops the
    // start) and re-read on every SIGHUP.
    let tls = match &config.server.tls {
        None => None,
        Some(c) => {
            let tls =
                crate::listen::tls::Tls::load(c).map_err(|e| start("server.tls")(e.to_string()))?;
            tls.reload_on_sighup()
                .map_err(|e| start("server.tls")(format!("SIGHUP handler: {e}")))?;
            Some(tls)
        }
    };
    let public_conns = crate::listen::conn::Public::new(tls.clone(), config.server.idle_timeout);
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
    let pid_file = crate::ops::reload::PidFile::write(config.server.pid_file.as_deref())
        .map_err(start("server.pid_file"))?;
    let sighup = crate::ops::reload::on_sighup(Arc::clone(&reloader));

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
