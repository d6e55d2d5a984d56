//! What a JWT must satisfy to be accepted as an access token.

use std::time::Duration;

use crate::jose::jws::JwsPolicy;

/// Where the claims a [`crate::Principal`] needs are found. `sub`, `iss`,
/// `aud`, `exp`, `nbf`, `iat`, `jti` and `sid` are fixed by RFC 7519.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimNames {
    /// Tenant claim (default `tenant`; e.g. `qx:tenant`, `tenant_id`).
    pub tenant: String,
    /// Roles claim, a string or an array (default `roles`).
    pub roles: String,
    /// Permissions claim, a string or an array (default `permissions`).
    pub permissions: String,
    /// Space-separated scope string (default `scope`).
    pub scope: String,
    /// Scope array (default `scp`).
    pub scp: String,
    /// E-mail claim (default `email`).
    pub email: String,
    /// Display-name claim (default `name`).
    pub name: String,
    /// Token-type claim (default `type`).
    pub token_type: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            tenant: "tenant".into(),
            roles: "roles".into(),
            permissions: "permissions".into(),
            scope: "scope".into(),
            scp: "scp".into(),
            email: "email".into(),
            name: "name".into(),
            token_type: "type".into(),
        }
    }
}

/// Rules for accepting a token; build with [`Validation::new`] and the `with_` methods.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Structural and algorithm policy of the JWS.
    pub jws: JwsPolicy,
    /// Trusted issuers; empty means `iss` is not checked.
    pub issuers: Vec<String>,
    /// Accepted audiences; empty means `aud` is not checked.
    pub audiences: Vec<String>,
    /// Whether `exp` must be present (default true).
    pub require_exp: bool,
    /// Claims that must be present (default `sub`).
    pub required_claims: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (default 30 s).
    pub leeway: Duration,
    /// The value the token-type claim must have when present (default `access`).
    pub expected_type: String,
    /// Claim names.
    pub claim_names: ClaimNames,
}

impl Default for Validation {
    fn default() -> Self {
        Self {
            jws: JwsPolicy::default(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            require_exp: true,
            required_claims: vec!["sub".into()],
            leeway: Duration::from_secs(30),
            expected_type: "access".into(),
            claim_names: ClaimNames::default(),
        }
    }
}

impl Validation {
    /// Defaults: `exp` and `sub` required, 30 s leeway, any issuer and audience.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `issuer` (may be called several times).
    #[must_use]
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuers.push(issuer.into());
        self
    }

    /// Accepts `audience` (may be called several times).
    #[must_use]
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Sets the leeway.
    #[must_use]
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Restricts the accepted algorithms.
    #[must_use]
    pub fn with_algorithms(mut self, algorithms: crate::AlgorithmSet) -> Self {
        self.jws.algorithms = algorithms;
        self
    }

    /// Sets the claims that must be present.
    #[must_use]
    pub fn with_required_claims<I, S>(mut self, claims: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.required_claims = claims.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the claim names.
    #[must_use]
    pub fn with_claim_names(mut self, names: ClaimNames) -> Self {
        self.claim_names = names;
        self
    }

    pub(crate) fn leeway_secs(&self) -> i64 {
        i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX)
    }
}
