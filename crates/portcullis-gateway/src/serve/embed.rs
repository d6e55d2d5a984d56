//! The engine of `portcullis serve` without its listeners, for hosts that
//! decide requests in their own process (the Python package): the same
//! configuration file, stores, keys, guard, token service and audit log,
//! built by the same code as the gateway's, so a decision, an error code or
//! an audit event is exactly the gateway's.
//!
//! What the gateway adds around it — listeners, the proxy, forward-auth,
//! the ops endpoints, SIGHUP reloads — is not opened here.

use std::path::Path;
use std::sync::Arc;

use portcullis::Guard;
use portcullis::stores::Stores;

use crate::config::{Config, Host};
use crate::serve::{ServeError, Shared};

/// The engine of one configuration. Open it inside a tokio runtime; the
/// tasks it starts (the audit batcher, purges) run on that runtime.
pub struct Engine {
    shared: Shared,
    guard: Guard,
    /// Follows signing-key rotations into the guard and the token service.
    keys: tokio::task::JoinHandle<()>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.keys.abort();
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Reads, validates and opens the configuration at `path` (with the
    /// `PORTCULLIS_…` environment overrides, as `portcullis serve` does; the
    /// application serves every route, so `[[upstreams]]` are not needed).
    pub async fn open_file(path: &Path) -> Result<Self, ServeError> {
        let config = crate::config::load_for(Host::InProcess, path)?;
        Self::open(&config).await
    }

    /// Like [`Self::open_file`] for configuration `text`; `path` names it
    /// in errors.
    pub async fn open_text(path: &Path, text: &str) -> Result<Self, ServeError> {
        let overrides = crate::config::env_overrides(std::env::vars());
        let config = crate::config::parse_for(Host::InProcess, path, text, &overrides)?;
        Self::open(&config).await
    }

    /// Opens the stores, Redis, keys, audit writer, guard and token service
    /// `config` names; fails naming the key when a backend is unreachable.
    pub async fn open(config: &Config) -> Result<Self, ServeError> {
        let shared = Shared::open(config).await?;
        let guard = crate::serve::build_guard(config, &shared, None)?;
        let keys = {
            let guard = guard.clone();
            shared.follow_keys(move |keys| {
                guard.replace_local_keys(keys);
                std::future::ready(())
            })
        };
        Ok(Self {
            shared,
            guard,
            keys,
        })
    }

    /// The guard: one decision per request.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The stores (users, sessions, API keys, revocation).
    pub fn stores(&self) -> &Arc<Stores> {
        &self.shared.storage.stores
    }

    /// Bans and detectors, unless `anomaly.enabled = false`.
    pub fn anomaly(&self) -> Option<&Arc<portcullis::anomaly::AnomalyEngine>> {
        self.shared.storage.anomaly.as_ref()
    }

    /// The token service, when enabled: its path prefix and its router
    /// (which expects full paths, prefix included, and the caller's address
    /// as an `axum::extract::ConnectInfo<SocketAddr>` request extension).
    pub fn token_service(&self) -> Option<(&str, &axum::Router)> {
        self.shared
            .token_service
            .as_ref()
            .map(|(prefix, router)| (prefix.as_str(), router))
    }

    /// Writes out the audit queue; call it before the process exits.
    pub async fn close(&self) {
        if let Some(audit) = &self.shared.storage.audit {
            audit.shutdown().await;
        }
    }
}
