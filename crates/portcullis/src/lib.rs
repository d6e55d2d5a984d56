//! Portcullis runtime library: the I/O shell around `portcullis-core`.
//!
//! - [`anomaly`]: detectors, bans and signed webhook alerts.
//! - [`ratelimit`]: rate limits in memory or on Redis (Cluster), with fallbacks.
//! - `redis_conn`: the shared Redis (single server or Cluster) connection.
//! - [`token_cache`]: a bounded verified-token cache with revocation hooks.

pub mod anomaly;
pub mod ratelimit;
#[cfg(feature = "redis")]
pub mod redis_conn;
pub mod token_cache;

pub use portcullis_core as core;
pub use token_cache::{AuthError, CachedVerifier, NoRevocation, RevocationHook, TokenCacheConfig};
