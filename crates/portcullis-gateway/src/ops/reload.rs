//! Configuration reload: on SIGHUP, or `POST /reload` on the ops listener
//! (what `portcullis reload` calls), the gateway reads and validates its
//! configuration file again, builds the new request path (guard, routes,
//! rate rules, roles, upstreams, identity headers, forward-auth) over the
//! same long-lived handles (stores, keys, audit writer, Redis, token
//! service; the rate limiter too while the rate limits are unchanged), then
//! swaps it in atomically. A request runs to its end on the configuration
//! it started on; no request sees a half-built one. A file that does not
//! load or build keeps the running configuration, logged with its file,
//! line and key, and counted in `portcullis_config_reloads_total{result="error"}`.
//!
//! Keys in [`RESTART_ONLY`] take effect only at restart: a reload that
//! changes one keeps the running value and logs a warning naming it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{Method, StatusCode};
use tokio::sync::Mutex;

use crate::config::Config;

/// The keys a reload does not apply (they hold listeners, connections and
/// handles that live as long as the process).
pub const RESTART_ONLY: &[&str] = &[
    "server.listen",
    "server.ops_listen",
    "server.shutdown_timeout",
    "server.pid_file",
    "server.worker_threads",
    "server.tls",
    "server.ops_hosts",
    "server.admin_streams",
    "server.admin_streams_per_key",
    "server.idle_timeout",
    "server.max_connections",
    "server.ops_max_connections",
    "storage",
    "revocation",
    "keys",
    "audit",
    "anomaly",
    "token_service",
    "log",
];

/// Counter of reloads by `result` (`ok` | `error`).
pub const RELOADS_METRIC: &str = "portcullis_config_reloads_total";
/// Gauge: Unix time of the last successful load (the start counts).
pub const LAST_RELOAD_METRIC: &str = "portcullis_config_last_reload_success_timestamp_seconds";

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new configuration serves; the warnings name restart-only keys
    /// that changed and were kept.
    Ok {
        /// One line per kept key.
        warnings: Vec<String>,
    },
    /// The running configuration keeps serving; one line per error.
    Error {
        /// `FILE:LINE:COL: `key`: message` lines.
        errors: Vec<String>,
    },
}

/// The live request path a reload rebuilds. The gateway's assembly
/// (`crate::serve`) implements it over its long-lived handles, so that this
/// module and the ops listener that calls it never reach into the assembly.
pub trait RequestPath: Send + Sync {
    /// Builds the request path of `config` and makes it the live one; or
    /// leaves the running one and says why.
    fn rebuild(&self, config: &Config) -> Result<(), String>;

    /// Rebuilds the request path of the running `config` over the signing
    /// keys now in force (a step of a key rotation); on failure the running
    /// path at least verifies with the new keys.
    fn rebuild_for_keys(&self, config: &Config);
}

/// Reloads one configuration file into the live request path; reloads run
/// one at a time.
pub struct Reloader {
    path: PathBuf,
    current: Mutex<Config>,
    live: Arc<dyn RequestPath>,
    status: std::sync::Mutex<LoadStatus>,
}

/// What the console's Config page shows: the file's text as last loaded
/// with success, when, and how the last reload went.
#[derive(Debug, Clone)]
pub(crate) struct LoadStatus {
    /// The configuration file.
    pub(crate) path: PathBuf,
    /// Its text when last loaded with success (`None`: unreadable then).
    pub(crate) text: Option<Arc<str>>,
    /// Unix seconds of the last successful load (the start counts).
    pub(crate) loaded_at: i64,
    /// The last reload: Unix seconds and outcome (`None`: none since start).
    pub(crate) last_reload: Option<(i64, Outcome)>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn read_text(path: &Path) -> Option<Arc<str>> {
    std::fs::read_to_string(path).ok().map(Arc::from)
}

impl Reloader {
    /// A reloader of `path`, whose `current` configuration `live` serves.
    pub(crate) fn new(path: PathBuf, current: Config, live: Arc<dyn RequestPath>) -> Self {
        record_success();
        let status = std::sync::Mutex::new(LoadStatus {
            text: read_text(&path),
            path: path.clone(),
            loaded_at: unix_now(),
            last_reload: None,
        });
        Self {
            path,
            current: Mutex::new(current),
            live,
            status,
        }
    }

    /// Rebuilds the request path of the running configuration over the
    /// signing keys now in force (a step of a key rotation).
    pub(crate) async fn rebuild_for_keys(&self) {
        let current = self.current.lock().await;
        self.live.rebuild_for_keys(&current);
    }

    /// When the running configuration was loaded and how the last reload went.
    pub(crate) fn status(&self) -> LoadStatus {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn record(&self, outcome: &Outcome, text: Option<Arc<str>>) {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = unix_now();
        if matches!(outcome, Outcome::Ok { .. }) {
            status.loaded_at = now;
            status.text = text;
        }
        status.last_reload = Some((now, outcome.clone()));
    }

    /// Builds `next` and makes it the running configuration: the warnings,
    /// or why it cannot serve.
    fn swap(&self, current: &mut Config, mut next: Config) -> Result<Vec<String>, Vec<String>> {
        let warnings = keep_restart_only(current, &mut next);
        match self.live.rebuild(&next) {
            Ok(()) => {
                *current = next;
                Ok(warnings)
            }
            Err(e) => Err(vec![format!("{}: {e}", self.path.display())]),
        }
    }

    /// Reads, validates and builds the file, then swaps it in; or keeps the
    /// running configuration and says why. Logged and counted either way.
    pub async fn reload(&self) -> Outcome {
        let mut current = self.current.lock().await;
        let path = self.path.clone();
        let loaded =
            tokio::task::spawn_blocking(move || (crate::config::load(&path), read_text(&path)))
                .await;
        let (loaded, text) = match loaded {
            Ok((loaded, text)) => (Ok(loaded), text),
            Err(e) => (Err(e), None),
        };
        let outcome = match loaded {
            Err(e) => Err(vec![format!(
                "{}: the reload task failed: {e}",
                self.path.display()
            )]),
            Ok(Err(errors)) => Err(errors.0.iter().map(ToString::to_string).collect()),
            Ok(Ok(next)) if !next.tests.files.is_empty() => {
                // Pinned decisions: a configuration that fails one is refused.
                match crate::explain::cases::run_config_tests(&next, &self.path).await {
                    Ok(_) => self.swap(&mut current, next),
                    Err(failures) => Err(failures),
                }
            }
            Ok(Ok(next)) => self.swap(&mut current, next),
        };
        // No credential of any URL reaches the answer, the console or the log.
        let redacted = |lines: Vec<String>| -> Vec<String> {
            lines
                .into_iter()
                .map(|l| crate::redact::redact(&l).into_owned())
                .collect()
        };
        let outcome = outcome.map(redacted).map_err(redacted);
        match outcome {
            Ok(warnings) => {
                for w in &warnings {
                    tracing::warn!(file = %self.path.display(), "{w}");
                }
                metrics::counter!(RELOADS_METRIC, "result" => "ok").increment(1);
                record_success();
                tracing::info!(
                    file = %self.path.display(),
                    routes = current.guard.routes.len(),
                    upstreams = current.upstreams.len(),
                    "configuration reloaded"
                );
                let outcome = Outcome::Ok { warnings };
                self.record(&outcome, text);
                outcome
            }
            Err(errors) => {
                metrics::counter!(RELOADS_METRIC, "result" => "error").increment(1);
                for e in &errors {
                    tracing::error!(
                        "configuration reload failed, the running configuration keeps serving: {e}"
                    );
                }
                let outcome = Outcome::Error { errors };
                self.record(&outcome, None);
                outcome
            }
        }
    }
}

fn record_success() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(LAST_RELOAD_METRIC).set(now);
}

/// Puts the running values of the restart-only keys back into `next`; one
/// warning per key that differed.
fn keep_restart_only(current: &Config, next: &mut Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut keep = |key: &str, changed: bool| {
        debug_assert!(RESTART_ONLY.contains(&key), "{key} is not listed");
        if changed {
            warnings.push(format!(
                "`{key}` changed, but it takes effect only at restart; the running value is kept"
            ));
        }
    };
    let (c, n) = (&current.server, &mut next.server);
    keep("server.listen", c.listen != n.listen);
    keep("server.ops_listen", c.ops_listen != n.ops_listen);
    keep(
        "server.shutdown_timeout",
        c.shutdown_timeout != n.shutdown_timeout,
    );
    keep("server.pid_file", c.pid_file != n.pid_file);
    keep(
        "server.worker_threads",
        c.worker_threads != n.worker_threads,
    );
    n.worker_threads = c.worker_threads;
    // The certificate files are re-read on SIGHUP; their paths and the
    // handshake limits are the listener's.
    keep("server.tls", c.tls != n.tls);
    n.tls.clone_from(&c.tls);
    // The listeners' caps and the connections' idle timeout are theirs.
    keep("server.idle_timeout", c.idle_timeout != n.idle_timeout);
    keep(
        "server.max_connections",
        c.max_connections != n.max_connections,
    );
    keep(
        "server.ops_max_connections",
        c.ops_max_connections != n.ops_max_connections,
    );
    n.idle_timeout = c.idle_timeout;
    n.max_connections = c.max_connections;
    n.ops_max_connections = c.ops_max_connections;
    n.listen = c.listen;
    n.ops_listen = c.ops_listen;
    n.shutdown_timeout = c.shutdown_timeout;
    n.pid_file.clone_from(&c.pid_file);
    // The ops listener's names and stream caps are built once, with it.
    keep("server.ops_hosts", c.ops_hosts != n.ops_hosts);
    keep("server.admin_streams", c.admin_streams != n.admin_streams);
    keep(
        "server.admin_streams_per_key",
        c.admin_streams_per_key != n.admin_streams_per_key,
    );
    n.ops_hosts.clone_from(&c.ops_hosts);
    n.admin_streams = c.admin_streams;
    n.admin_streams_per_key = c.admin_streams_per_key;
    keep("storage", current.storage != next.storage);
    keep("revocation", current.revocation != next.revocation);
    keep("keys", current.keys != next.keys);
    keep("audit", current.audit != next.audit);
    keep("anomaly", current.anomaly != next.anomaly);
    keep("token_service", current.token_service != next.token_service);
    keep("log", current.log != next.log);
    next.storage = current.storage.clone();
    next.revocation = current.revocation.clone();
    next.keys = current.keys.clone();
    next.audit = current.audit.clone();
    next.anomaly = current.anomaly.clone();
    next.token_service = current.token_service.clone();
    next.log = current.log.clone();
    warnings
}

/// Reloads on every SIGHUP until aborted.
pub(crate) fn on_sighup(reloader: Arc<Reloader>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload with POST /reload on the ops listener");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            reloader.reload().await;
        }
    })
}

/// `POST /reload` on the ops listener, an admin route (an admin key with
/// `admin.config.write`, checked by the admin guard), and only from a
/// loopback peer (the ops listener may be exposed for metrics; reloading
/// stays local). 200
/// `{"status":"ok","warnings":[…]}` or 422 `{"status":"error","errors":[…]}`.
pub(crate) async fn handle_request(
    reloader: &Reloader,
    method: &Method,
    peer: SocketAddr,
) -> (StatusCode, serde_json::Value) {
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"status": "error", "errors": ["use POST /reload"]}),
        );
    }
    if !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            serde_json::json!({"status": "error", "errors": ["reload is accepted from loopback only"]}),
        );
    }
    match reloader.reload().await {
        Outcome::Ok { warnings } => (
            StatusCode::OK,
            serde_json::json!({"status": "ok", "warnings": warnings}),
        ),
        Outcome::Error { errors } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"status": "error", "errors": errors}),
        ),
    }
}

/// The pid file `server.pid_file` names: written at start, removed when dropped.
pub(crate) struct PidFile(Option<PathBuf>);

impl PidFile {
    /// Writes this process's id to `path` (nothing when `None`).
    pub(crate) fn write(path: Option<&Path>) -> Result<Self, String> {
        let Some(path) = path else {
            return Ok(Self(None));
        };
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self(Some(path.to_path_buf())))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let dir = std::env::temp_dir();
        let full = format!(
            "[keys]\ndir = \"{}\"\nissuer = \"https://i.test\"\n{text}",
            dir.display()
        );
        let doc = toml::de::DeTable::parse(&full).unwrap();
        serde::Deserialize::deserialize(toml::de::Deserializer::from(doc)).unwrap()
    }

    #[test]
    fn restart_only_keys_keep_their_running_value_and_warn() {
        let current = config("[server]\nlisten = \"127.0.0.1:1\"\nmax_body_bytes = 10\n");
        let mut next = config(
            "[server]\nlisten = \"127.0.0.1:2\"\nmax_body_bytes = 20\n[storage]\nurl = \"sqlite:///x\"\n",
        );
        let warnings = keep_restart_only(&current, &mut next);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("`server.listen`"), "{}", warnings[0]);
        assert!(warnings[1].contains("`storage`"), "{}", warnings[1]);
        assert_eq!(next.server.listen.port(), 1);
        assert_eq!(next.storage.url, "memory");
        // Reloadable keys take the new value.
        assert_eq!(next.server.max_body_bytes, 20);
        let mut same = current.clone();
        assert!(keep_restart_only(&current, &mut same).is_empty());
    }
}
