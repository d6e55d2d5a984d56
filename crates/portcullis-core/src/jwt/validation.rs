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
    /// Accepted audiences. Empty means no audience is configured: a token
    /// *carrying* `aud` is then refused (`auth.invalid_audience`), since it
    /// was issued for someone else (as PyJWT and jsonwebtoken do).
    pub audiences: Vec<String>,
    /// Whether `exp` must be present (default true).
    pub require_exp: bool,
    /// Claims that must be present (default `sub`).
    pub required_claims: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (default 30 s).
    pub leeway: Duration,
    /// The value the token-type claim must have when present (default `access`).
    pub expected_type: String,
    /// Whether the `typ` header must be `at+jwt` (RFC 9068). Default false:
    /// absent, `JWT` and `at+jwt` are accepted. Refuses OIDC ID tokens and
    /// other JWTs that do not declare themselves access tokens.
    pub require_typ: bool,
    /// Whether the token-type claim must be present (and equal
    /// `expected_type`). Default false: checked only when present.
    pub require_type_claim: bool,
    /// Longest accepted lifetime, `exp - iat`; when set, `iat` is required
    /// too. Default none.
    pub max_lifetime: Option<Duration>,
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
            require_typ: false,
            require_type_claim: false,
            max_lifetime: None,
            claim_names: ClaimNames::default(),
        }
    }
}

impl Validation {
    /// Defaults: `exp` and `sub` required, 30 s leeway, any issuer, no
    /// audience (a token with `aud` is refused until one is configured).
    pub fn new() -> Self {
        Self::default()
    }

    /// The rules for tokens signed by this deployment's own
    /// [`crate::TokenIssuer`] with `config`: its issuer and audience, and
    /// both type markers it always writes (`typ: at+jwt`, `type=access`)
    /// required, so no other kind of JWT signed by the same key passes.
    pub fn for_local_issuer(config: &crate::IssuerConfig) -> Self {
        Self {
            issuers: vec![config.issuer.clone()],
            audiences: config.audience.clone(),
            require_typ: true,
            require_type_claim: true,
            ..Self::default()
        }
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

    /// Requires the `typ` header to be `at+jwt` (RFC 9068).
    #[must_use]
    pub fn with_require_typ(mut self, require: bool) -> Self {
        self.require_typ = require;
        self
    }

    /// Requires the token-type claim (`type` by default) to be present.
    #[must_use]
    pub fn with_require_type_claim(mut self, require: bool) -> Self {
        self.require_type_claim = require;
        self
    }

    /// Refuses tokens whose `exp - iat` exceeds `max` (and tokens without `iat`).
    #[must_use]
    pub fn with_max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = Some(max);
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
