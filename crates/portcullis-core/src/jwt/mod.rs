//! JWT access tokens: claim validation, the verifier, and issuance.

mod claims;
pub mod issue;
pub mod validation;
pub mod verifier;
