//! Portcullis core: the sans-I/O security engine.
//!
//! Everything here is a pure function of its inputs and an injected [`Clock`]:
//! JOSE keys and signatures ([`jose`]), access-token verification and issuance
//! ([`jwt`]), opaque secrets ([`opaque`]), the [`Principal`] and the stable
//! [`ErrorCode`]s.
//!
//! - [`authz`]: wildcard permissions, roles, route rules, signed service requests.
//! - [`ratelimit`]: GCRA, sliding-log and fixed-window math, client IPs, headers.
//! - [`audit`]: audit event types, redaction, queries and timestamps.

pub mod anomaly;
pub mod audit;
pub mod authz;
pub mod canonical;
pub mod clock;
pub mod duration;
pub mod error;
pub mod jose;
pub mod jwt;
pub mod opaque;
pub mod principal;
pub mod ratelimit;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ErrorCode, KeyError, TokenError};
pub use jose::algorithm::{Algorithm, AlgorithmSet, KeyFamily};
pub use jose::jws::{JwsPolicy, VerifiedJws};
pub use jose::key::Key;
pub use jose::keyset::{JwkWarning, KeySet};
pub use jose::rotation::{KeySource, KeyState, KeyStatus, Schedule, ScheduledKey};
pub use jose::seal::KeySealer;
pub use jwt::issue::{
    AccessRequest, IssueError, IssuedAccess, IssuedRefresh, IssuerConfig, TokenIssuer, TokenPair,
};
pub use jwt::validation::{ClaimNames, Validation};
pub use jwt::verifier::{Verified, Verifier};
pub use opaque::SecretHasher;
pub use principal::{AuthMethod, Principal, RawClaims};
