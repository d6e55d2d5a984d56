//! External issuers: remote JWKS and OIDC discovery, cached, refetched
//! single-flight on key misses, served stale while the issuer is down.

pub mod fetch;
pub mod issuer;

pub use fetch::{FetchError, Fetcher, HttpFetcher, check_url};
pub use issuer::{
    IssuerError, KeySource, Monotonic, RemoteIssuer, RemoteIssuerConfig, TokioMonotonic,
    TrustedIssuers,
};
