//! Portcullis runtime library: the I/O shell around `portcullis-core`.
//!
//! - [`anomaly`]: detectors, bans and signed webhook alerts.
//! - [`audit`]: the batched, spooled audit writer, its sinks and queryable stores.
//! - `redis_conn`: the shared Redis (single server or Cluster) connection.
//! - [`token_cache`]: a bounded verified-token cache with revocation hooks.

pub mod anomaly;
pub mod audit;
#[cfg(feature = "redis")]
pub mod redis_conn;
pub mod token_cache;

pub use portcullis_core as core;
pub use token_cache::{AuthError, CachedVerifier, NoRevocation, RevocationHook, TokenCacheConfig};
