//! `[storage]` and `[revocation]`: where state lives, and how each
//! replica's revocation set follows the shared log.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// `[storage]`. `url` and `redis` may carry passwords: each can come from a
/// file instead (`url_file`, `redis_file`, see [`SECRET_KEYS`](super::SECRET_KEYS)).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `memory`, `sqlite://PATH` or `postgres://…` (default `memory`).
    #[serde(default = "default_storage_url")]
    pub url: String,
    /// One Redis server shared by every replica (`redis://…`): the hot
    /// shared state (rate-limit counters, bans and detector windows, the
    /// jti denylist) lives there. Optional.
    #[serde(default)]
    pub redis: Option<String>,
    /// A Redis Cluster instead of one server: its seed nodes
    /// (`["redis://host:7000", …]`). Excludes `redis`.
    #[serde(default)]
    pub redis_cluster: Vec<String>,
    /// Prefix of the gateway's Redis keys (default `portcullis`); replicas
    /// of one deployment share it, other deployments on the same Redis must not.
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// File holding the pepper (at least 32 bytes) that keys the stored
    /// hashes of refresh tokens and API keys. Required unless `url = "memory"`.
    #[serde(default)]
    pub pepper_file: Option<PathBuf>,
}

fn default_storage_url() -> String {
    "memory".into()
}
fn default_redis_prefix() -> String {
    "portcullis".into()
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: default_storage_url(),
            redis: None,
            redis_cluster: Vec::new(),
            redis_prefix: default_redis_prefix(),
            pepper_file: None,
        }
    }
}

/// `[revocation]`: each replica holds the live revocations (denied `jti`s,
/// revoked sessions) in memory, following the log in `storage.url`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// Longest the feed may be behind while the local set answers alone
    /// (default `30s`).
    #[serde(default = "default_max_stale", deserialize_with = "duration")]
    pub max_stale: Duration,
    /// Past `max_stale`: `deny` (default: tokens refused, 503
    /// `backend.unavailable`) or `allow` (the set answers as it is).
    #[serde(default)]
    pub on_stale: OnStaleConfig,
    /// Time between two reads of the log (default `100ms`; 10 ms to 1 s).
    #[serde(default = "default_poll_interval", deserialize_with = "duration")]
    pub poll_interval: Duration,
}

/// `revocation.on_stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStaleConfig {
    /// Refuse tokens with 503 `backend.unavailable`.
    #[default]
    Deny,
    /// Answer from the local set as it is.
    Allow,
}

fn default_max_stale() -> Duration {
    Duration::from_secs(30)
}
fn default_poll_interval() -> Duration {
    Duration::from_millis(100)
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self {
            max_stale: default_max_stale(),
            on_stale: OnStaleConfig::Deny,
            poll_interval: default_poll_interval(),
        }
    }
}

impl RevocationConfig {
    /// The library's policy.
    pub fn policy(&self) -> portcullis::stores::RevocationPolicy {
        portcullis::stores::RevocationPolicy {
            max_stale: self.max_stale,
            on_stale: match self.on_stale {
                OnStaleConfig::Deny => portcullis::stores::OnStale::Deny,
                OnStaleConfig::Allow => portcullis::stores::OnStale::Allow,
            },
            poll_interval: self.poll_interval,
        }
    }
}

/// The storage backend a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// In process; nothing persists.
    Memory,
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL server.
    Postgres(String),
}

impl StorageUrl {
    /// Parses `memory`, `sqlite://PATH` or `postgres://…`.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url == "memory" {
            Ok(Self::Memory)
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                Err(
                    "`sqlite://` needs a file path, e.g. sqlite:///var/lib/portcullis/stores.db"
                        .into(),
                )
            } else {
                Ok(Self::Sqlite(PathBuf::from(path)))
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_owned()))
        } else {
            Err(format!(
                "`{url}` is not a storage URL; use \"memory\", \"sqlite://PATH\" or \"postgres://USER@HOST/DB\""
            ))
        }
    }
}
