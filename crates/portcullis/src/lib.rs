//! Portcullis runtime library: the I/O shell around `portcullis-core`.
//!
//! - [`anomaly`]: detectors, bans and signed webhook alerts.
//! - `redis_conn`: the shared Redis (single server or Cluster) connection.
//! - [`stores`]: users, sessions, refresh families, denylist, API keys, apps.
//! - [`token_cache`]: a bounded verified-token cache with revocation hooks.

pub mod anomaly;
#[cfg(feature = "redis")]
pub mod redis_conn;
pub mod stores;
pub mod token_cache;

pub use portcullis_core as core;
pub use token_cache::{AuthError, CachedVerifier, NoRevocation, RevocationHook, TokenCacheConfig};
