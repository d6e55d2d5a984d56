//! Issuance of access tokens (JWT) and opaque refresh tokens.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::clock::{Clock, SystemClock};
use crate::error::KeyError;
use crate::jose::b64_encode;
use crate::jose::jws::sign_compact;
use crate::jose::keyset::KeySet;
use crate::opaque::{self, SecretHasher};

/// The prefix of every refresh token.
pub const REFRESH_PREFIX: &str = "pcr_";

/// Claims an issuer sets itself; custom claims may not override them.
pub const RESERVED_CLAIMS: [&str; 9] = [
    "sub", "iss", "aud", "iat", "exp", "nbf", "jti", "sid", "type",
];

/// Why a token could not be issued.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The key set has no active signing key, or signing failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A custom claim tried to override a reserved one.
    #[error("custom claim `{0}` is reserved")]
    ReservedClaim(String),
    /// The subject is empty; verifiers refuse such a token.
    #[error("the subject must not be empty")]
    EmptySubject,
}

/// Lifetimes and names for issued tokens.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// `iss` of issued access tokens.
    pub issuer: String,
    /// `aud` of issued access tokens (omitted when empty).
    pub audience: Vec<String>,
    /// Access-token lifetime (default 15 minutes).
    pub access_ttl: Duration,
    /// Refresh-token lifetime (default 7 days).
    pub refresh_ttl: Duration,
    /// Refresh-token lifetime with remember-me (default 30 days).
    pub remember_me_ttl: Duration,
}

impl IssuerConfig {
    /// Defaults for `issuer`: 15 min access, 7 d refresh, 30 d remember-me.
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: Vec::new(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            remember_me_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// What an access token is issued for.
#[derive(Debug, Clone, Default)]
pub struct AccessRequest {
    /// `sub`.
    pub subject: String,
    /// `sid`; a new one is generated for a new pair when absent.
    pub session_id: Option<String>,
    /// Overrides the configured audience.
    pub audience: Option<Vec<String>>,
    /// Overrides the configured lifetime.
    pub ttl: Option<Duration>,
    /// Custom claims (roles, permissions, tenant, ...).
    pub claims: Map<String, Value>,
}

/// An issued access token.
#[derive(Debug, Clone)]
pub struct IssuedAccess {
    /// The compact JWT.
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// Its `sid`, when it has one.
    pub session_id: Option<String>,
    /// Its `exp`.
    pub expires_at: i64,
}

/// An issued refresh token and what the store must keep of it.
#[derive(Debug, Clone)]
pub struct IssuedRefresh {
    /// The secret, shown to the client once; never stored.
    pub token: String,
    /// The keyed hash to store.
    pub hash: [u8; 32],
    /// The rotation family.
    pub family: String,
    /// Position in the family (0 for a fresh login).
    pub generation: u32,
    /// The session it belongs to.
    pub session_id: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: i64,
    /// Whether the long lifetime applies (kept across rotations).
    pub remember_me: bool,
}

/// An access token and its refresh token.
#[derive(Debug, Clone)]
pub struct TokenPair {
    /// The access token.
    pub access: IssuedAccess,
    /// The refresh token.
    pub refresh: IssuedRefresh,
}

/// Issues tokens with the active key of a key set.
pub struct TokenIssuer {
    keys: Arc<KeySet>,
    config: IssuerConfig,
    hasher: SecretHasher,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("config", &self.config)
            .finish()
    }
}

fn random_id(bytes: usize) -> Result<String, KeyError> {
    let mut buf = [0u8; 32];
    let buf = &mut buf[..bytes.min(32)];
    aws_lc_rs::rand::fill(buf).map_err(|_| KeyError::Crypto("random"))?;
    Ok(b64_encode(buf))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl TokenIssuer {
    /// An issuer signing with `keys`' active key and hashing refresh tokens
    /// with `hasher`, on the system clock.
    pub fn new(keys: impl Into<Arc<KeySet>>, config: IssuerConfig, hasher: SecretHasher) -> Self {
        Self {
            keys: keys.into(),
            config,
            hasher,
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for `iat` and `exp`.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// The same issuer signing with `keys`' active key (a key rotation),
    /// as [`crate::Verifier::with_keys`] does for verification.
    pub fn with_keys(&self, keys: impl Into<Arc<KeySet>>) -> Self {
        Self {
            keys: keys.into(),
            config: self.config.clone(),
            hasher: self.hasher.clone(),
            clock: Arc::clone(&self.clock),
        }
    }

    /// The key set tokens are signed from.
    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    /// Issues an access token.
    pub fn issue_access(&self, req: &AccessRequest) -> Result<IssuedAccess, IssueError> {
        let key = self
            .keys
            .active()
            .ok_or_else(|| KeyError::NoSuchKey("(active signing key)".into()))?;
        if req.subject.is_empty() {
            return Err(IssueError::EmptySubject);
        }
        if let Some(reserved) = req
            .claims
            .keys()
            .find(|k| RESERVED_CLAIMS.contains(&k.as_str()))
        {
            return Err(IssueError::ReservedClaim(reserved.clone()));
        }
        let now = self.clock.unix_seconds();
        let exp = now.saturating_add(secs(req.ttl.unwrap_or(self.config.access_ttl)));
        let jti = random_id(16)?;
        let mut claims = req.claims.clone();
        claims.insert("sub".into(), req.subject.clone().into());
        claims.insert("iss".into(), self.config.issuer.clone().into());
        let aud = req.audience.as_ref().unwrap_or(&self.config.audience);
        match aud.as_slice() {
            [] => {}
            [one] => {
                claims.insert("aud".into(), one.clone().into());
            }
            many => {
                claims.insert("aud".into(), many.to_vec().into());
            }
        }
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), exp.into());
        claims.insert("jti".into(), jti.clone().into());
        if let Some(sid) = &req.session_id {
            claims.insert("sid".into(), sid.clone().into());
        }
        claims.insert("type".into(), "access".into());
        let payload =
            serde_json::to_vec(&claims).map_err(|_| KeyError::Crypto("claims encoding"))?;
        let token = sign_compact(key, Some("at+jwt"), &payload)?;
        Ok(IssuedAccess {
            token,
            jti,
            session_id: req.session_id.clone(),
            expires_at: exp,
        })
    }

    /// Issues a new access + refresh pair for a fresh login (new session and family).
    pub fn issue_pair(
        &self,
        req: &AccessRequest,
        remember_me: bool,
    ) -> Result<TokenPair, IssueError> {
        let mut req = req.clone();
        let sid = match &req.session_id {
            Some(sid) => sid.clone(),
            None => random_id(16)?,
        };
        req.session_id = Some(sid.clone());
        let access = self.issue_access(&req)?;
        let refresh = self.issue_refresh(sid, random_id(16)?, 0, remember_me)?;
        Ok(TokenPair { access, refresh })
    }

    /// Issues the successor in a refresh family: same family and session,
    /// next generation, the remember-me choice carried over.
    pub fn rotate(
        &self,
        req: &AccessRequest,
        previous: &IssuedRefreshRef<'_>,
    ) -> Result<TokenPair, IssueError> {
        let mut req = req.clone();
        req.session_id = Some(previous.session_id.to_owned());
        let access = self.issue_access(&req)?;
        let refresh = self.issue_refresh(
            previous.session_id.to_owned(),
            previous.family.to_owned(),
            previous.generation.saturating_add(1),
            previous.remember_me,
        )?;
        Ok(TokenPair { access, refresh })
    }

    fn issue_refresh(
        &self,
        session_id: String,
        family: String,
        generation: u32,
        remember_me: bool,
    ) -> Result<IssuedRefresh, IssueError> {
        let token = opaque::generate(REFRESH_PREFIX)?;
        let ttl = if remember_me {
            self.config.remember_me_ttl
        } else {
            self.config.refresh_ttl
        };
        Ok(IssuedRefresh {
            hash: self.hasher.hash(&token),
            token,
            family,
            generation,
            session_id,
            expires_at: self.clock.unix_seconds().saturating_add(secs(ttl)),
            remember_me,
        })
    }

    /// Whether `token` looks like a refresh token (prefix and checksum), before any lookup.
    pub fn is_well_formed_refresh(token: &str) -> bool {
        opaque::is_well_formed(REFRESH_PREFIX, token)
    }

    /// The keyed hash under which a presented refresh token is looked up.
    pub fn refresh_hash(&self, token: &str) -> [u8; 32] {
        self.hasher.hash(token)
    }
}

/// What rotation needs to know of the refresh token being replaced (as stored).
#[derive(Debug, Clone, Copy)]
pub struct IssuedRefreshRef<'a> {
    /// Its family.
    pub family: &'a str,
    /// Its generation.
    pub generation: u32,
    /// Its session.
    pub session_id: &'a str,
    /// Its remember-me flag.
    pub remember_me: bool,
}
