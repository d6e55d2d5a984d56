//! Portcullis runtime library: the I/O shell around `portcullis-core`.
//!
//! - [`anomaly`]: detectors, bans and signed webhook alerts.
//! - [`http`]: tower layers around the guard, problem+json refusals, axum extractors,
//!   and the verifier of the gateway's internal identity token.
//! - `graphql` (feature `graphql`): `async-graphql` field guards from the same `Principal`.
//! - [`http_client`]: the outbound HTTP(S) client (rustls, Mozilla roots + extra CAs).
//! - [`guard`]: the one decision per request: bans, authentication, revocation,
//!   rate limits, authorization, anomaly signals, audit.
//! - [`authz`]: route rules with custom async policies; signed service requests and nonce stores.
//! - [`jwks`]: trusted external issuers (remote JWKS, OIDC discovery).
//! - [`keyring`]: signing keys that rotate on a stored schedule every replica follows.
//! - [`ratelimit`]: rate limits in memory or on Redis (Cluster), with fallbacks.
//! - [`regulation`]: login, reset and console attempts per client IP and account.
//! - [`audit`]: the batched, spooled audit writer, its sinks and queryable stores.
//! - `redis_conn`: the shared Redis (single server or Cluster) connection.
//! - [`stores`]: users, sessions, refresh families, denylist, API keys, apps.
//! - `service` (feature `service`): the token service router (login, refresh, sessions, API keys, JWKS).
//! - [`token_cache`]: a bounded verified-token cache with revocation hooks.

pub mod anomaly;
pub mod audit;
pub mod authz;
#[cfg(feature = "graphql")]
pub mod graphql;
pub mod guard;
pub mod http;
pub mod http_client;
pub mod jwks;
pub mod keyring;
pub mod ratelimit;
#[cfg(feature = "redis")]
pub mod redis_conn;
pub mod regulation;
#[cfg(feature = "service")]
pub mod service;
pub mod stores;
pub mod token_cache;

pub use guard::{Decision, Guard, GuardBuilder, GuardConfig, Refusal, RouteConfig};
pub use portcullis_core as core;
pub use token_cache::{
    AuthError, CachedVerifier, DynRevocationHook, NoRevocation, RevocationHook, TokenCacheConfig,
};
