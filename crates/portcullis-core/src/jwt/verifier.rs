//! The access-token verifier: JWS verification, then claims, then a Principal.

use std::sync::Arc;

use super::claims::{ParsedClaims, parse_claims};
use super::validation::Validation;
use crate::clock::{Clock, SystemClock};
use crate::error::TokenError;
use crate::jose::jws::{self, TypHeader};
use crate::jose::key::Key;
use crate::jose::keyset::KeySet;
use crate::principal::{AuthMethod, Principal, RawClaims};

/// A verified token: the principal and the key that signed it.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Who the token speaks for.
    pub principal: Principal,
    /// The key whose signature verified.
    pub key: Arc<Key>,
}

/// Verifies access tokens against a key set and a [`Validation`].
pub struct Verifier {
    keys: Arc<KeySet>,
    validation: Validation,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("validation", &self.validation)
            .finish()
    }
}

impl Verifier {
    /// A verifier on the system clock.
    pub fn new(keys: impl Into<Arc<KeySet>>, validation: Validation) -> Self {
        Self {
            keys: keys.into(),
            validation,
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for every time check.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The same rules and clock with another key set (for rotation).
    pub fn with_keys(&self, keys: impl Into<Arc<KeySet>>) -> Self {
        Self {
            keys: keys.into(),
            validation: self.validation.clone(),
            clock: Arc::clone(&self.clock),
        }
    }

    /// The key set.
    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    /// The validation rules.
    pub fn validation(&self) -> &Validation {
        &self.validation
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Verifies `token` as an access token and returns its principal.
    pub fn verify(&self, token: &[u8]) -> Result<Principal, TokenError> {
        self.verify_inner(token).map(|(principal, _)| principal)
    }

    /// Verifies `token` and also returns the key that signed it.
    pub fn verify_detailed(&self, token: &[u8]) -> Result<Verified, TokenError> {
        let (principal, key) = self.verify_inner(token)?;
        Ok(Verified {
            principal,
            key: Arc::clone(key),
        })
    }

    fn verify_inner(&self, token: &[u8]) -> Result<(Principal, &Arc<Key>), TokenError> {
        let v = &self.validation;
        let jws = jws::verify_compact(token, &self.keys, &v.jws)?;
        match jws.typ {
            TypHeader::Other => {
                return Err(TokenError::WrongTokenType(
                    "`typ` header is not JWT or at+jwt",
                ));
            }
            TypHeader::Absent | TypHeader::Jwt if v.require_typ => {
                return Err(TokenError::WrongTokenType("`typ` header is not at+jwt"));
            }
            _ => {}
        }
        let claims = parse_claims(&jws.payload, &v.claim_names)
            .map_err(|_| TokenError::Malformed("claims are not a valid JWT claims object"))?;
        self.check(&claims)?;
        let principal = to_principal(claims);
        Ok((
            Principal {
                claims: RawClaims::new(jws.payload),
                ..principal
            },
            jws.key,
        ))
    }

    /// Checks an already verified token's time claims against the clock; used
    /// by caches that skip the signature on a hit.
    pub fn check_times(&self, expires_at: Option<i64>) -> Result<(), TokenError> {
        self.check_exp(expires_at, self.clock.unix_seconds())
    }

    fn check_exp(&self, expires_at: Option<i64>, now: i64) -> Result<(), TokenError> {
        match expires_at {
            Some(exp) if now >= exp.saturating_add(self.validation.leeway_secs()) => {
                Err(TokenError::Expired)
            }
            None if self.validation.require_exp => Err(TokenError::MissingClaim("exp".into())),
            _ => Ok(()),
        }
    }

    fn check(&self, c: &ParsedClaims<'_>) -> Result<(), TokenError> {
        let v = &self.validation;
        match &c.token_type {
            Some(t) if t.as_str() != v.expected_type => {
                return Err(TokenError::WrongTokenType(
                    "token type claim is not `access`",
                ));
            }
            None if v.require_type_claim => {
                return Err(TokenError::WrongTokenType("token type claim is missing"));
            }
            _ => {}
        }
        if let Some(sub) = &c.sub {
            match &sub.id {
                // An empty subject would name nobody (or everybody).
                Some(id) if !id.is_empty() => {}
                _ => return Err(TokenError::MissingClaim("sub".into())),
            }
        }
        for name in &v.required_claims {
            if !c.has(name, &v.claim_names) {
                return Err(TokenError::MissingClaim(name.clone()));
            }
        }
        let now = self.clock.unix_seconds();
        self.check_exp(c.exp, now)?;
        let leeway = v.leeway_secs();
        if c.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(TokenError::NotYetValid("nbf is in the future"));
        }
        if c.iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
            return Err(TokenError::NotYetValid("iat is in the future"));
        }
        if !v.issuers.is_empty() {
            let iss = c
                .iss
                .as_ref()
                .ok_or_else(|| TokenError::MissingClaim("iss".into()))?;
            if !v.issuers.iter().any(|i| i == iss.as_str()) {
                return Err(TokenError::InvalidIssuer);
            }
        }
        match &c.aud {
            // A token for a named audience is not for a verifier that names none.
            Some(_) if v.audiences.is_empty() => return Err(TokenError::InvalidAudience),
            Some(aud) if !aud.contains_any(&v.audiences) => {
                return Err(TokenError::InvalidAudience);
            }
            None if !v.audiences.is_empty() => {
                return Err(TokenError::MissingClaim("aud".into()));
            }
            _ => {}
        }
        if let Some(max) = v.max_lifetime {
            let iat = c
                .iat
                .ok_or_else(|| TokenError::MissingClaim("iat".into()))?;
            let exp = c
                .exp
                .ok_or_else(|| TokenError::MissingClaim("exp".into()))?;
            let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
            if exp.saturating_sub(iat) > max {
                return Err(TokenError::LifetimeTooLong);
            }
        }
        Ok(())
    }
}

fn to_principal(c: ParsedClaims<'_>) -> Principal {
    let sub = c.sub.unwrap_or_default();
    let opt = |s: Option<crate::jose::json::CowStr<'_>>| s.map(|s| s.0.into_owned());
    Principal {
        subject: sub.id.unwrap_or_default(),
        issuer: opt(c.iss),
        tenant: opt(c.tenant),
        email: opt(c.email).or(sub.email),
        name: opt(c.name).or(sub.name),
        roles: c.roles,
        permissions: c.permissions,
        scopes: c.scopes,
        session_id: opt(c.sid),
        token_id: opt(c.jti),
        auth_method: AuthMethod::Jwt,
        expires_at: c.exp,
        claims: RawClaims::default(),
    }
}
