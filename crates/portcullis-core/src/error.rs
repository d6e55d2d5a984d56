//! Stable error codes shared by every layer, and the errors of the token engine.

use std::fmt;

/// A stable, documented error code (see DESIGN.md). Never renamed once published.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No credentials were presented where some are required.
    MissingCredentials,
    /// The token is not a well-formed compact JWS / JWT.
    MalformedToken,
    /// The `alg` is not allowed, or does not fit the selected key.
    UnsupportedAlgorithm,
    /// No key in the key set matches the token.
    UnknownKey,
    /// The signature does not verify.
    InvalidSignature,
    /// The token's `exp` has passed.
    TokenExpired,
    /// The token's `nbf` or `iat` lies in the future.
    TokenNotYetValid,
    /// The token's `iss` is not trusted.
    InvalidIssuer,
    /// The token's `aud` does not name us.
    InvalidAudience,
    /// A required claim is absent.
    MissingClaim,
    /// The token is of another type (e.g. a refresh token used as an access token).
    WrongTokenType,
    /// The token was revoked.
    TokenRevoked,
    /// The token's session was revoked.
    SessionRevoked,
    /// The API key is unknown, revoked or malformed.
    InvalidApiKey,
    /// The app credentials are wrong.
    InvalidAppCredentials,
    /// The signed service request does not verify.
    InvalidSignatureRequest,
    /// Login failed.
    InvalidCredentials,
    /// A refresh token was presented again after rotation.
    RefreshReused,
    /// A remote key set could not be fetched.
    JwksUnavailable,
    /// Authorization denied.
    Denied,
    /// A rate limit was exceeded.
    RateLimitExceeded,
    /// The caller is banned.
    Banned,
    /// A backend needed for the decision is unavailable.
    BackendUnavailable,
    /// The request body is larger than accepted, or could not be read (413).
    BodyTooLarge,
    /// The request has no single meaning (a lower-case method, a Host that
    /// differs from the authority, an encoded `/`...): refused (400) rather
    /// than passed on for the next hop to read differently.
    MalformedRequest,
}

impl ErrorCode {
    /// Every code, in declaration order ([`Self::index`] is the position here).
    pub const ALL: [Self; 25] = [
        Self::MissingCredentials,
        Self::MalformedToken,
        Self::UnsupportedAlgorithm,
        Self::UnknownKey,
        Self::InvalidSignature,
        Self::TokenExpired,
        Self::TokenNotYetValid,
        Self::InvalidIssuer,
        Self::InvalidAudience,
        Self::MissingClaim,
        Self::WrongTokenType,
        Self::TokenRevoked,
        Self::SessionRevoked,
        Self::InvalidApiKey,
        Self::InvalidAppCredentials,
        Self::InvalidSignatureRequest,
        Self::InvalidCredentials,
        Self::RefreshReused,
        Self::JwksUnavailable,
        Self::Denied,
        Self::RateLimitExceeded,
        Self::Banned,
        Self::BackendUnavailable,
        Self::BodyTooLarge,
        Self::MalformedRequest,
    ];

    /// This code's position in [`Self::ALL`]: a dense index for tables
    /// keyed by code (per-code metric handles, counters).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The stable string form, e.g. `auth.token_expired`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MissingCredentials => "auth.missing_credentials",
            Self::MalformedToken => "auth.malformed_token",
            Self::UnsupportedAlgorithm => "auth.unsupported_algorithm",
            Self::UnknownKey => "auth.unknown_key",
            Self::InvalidSignature => "auth.invalid_signature",
            Self::TokenExpired => "auth.token_expired",
            Self::TokenNotYetValid => "auth.token_not_yet_valid",
            Self::InvalidIssuer => "auth.invalid_issuer",
            Self::InvalidAudience => "auth.invalid_audience",
            Self::MissingClaim => "auth.missing_claim",
            Self::WrongTokenType => "auth.wrong_token_type",
            Self::TokenRevoked => "auth.token_revoked",
            Self::SessionRevoked => "auth.session_revoked",
            Self::InvalidApiKey => "auth.invalid_api_key",
            Self::InvalidAppCredentials => "auth.invalid_app_credentials",
            Self::InvalidSignatureRequest => "auth.invalid_signature_request",
            Self::InvalidCredentials => "auth.invalid_credentials",
            Self::RefreshReused => "auth.refresh_reused",
            Self::JwksUnavailable => "auth.jwks_unavailable",
            Self::Denied => "authz.denied",
            Self::RateLimitExceeded => "rate_limit.exceeded",
            Self::Banned => "anomaly.banned",
            Self::BackendUnavailable => "backend.unavailable",
            Self::BodyTooLarge => "request.body_too_large",
            Self::MalformedRequest => "request.malformed",
        }
    }

    /// The HTTP status this code is answered with.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::Denied | Self::Banned => 403,
            Self::RateLimitExceeded => 429,
            Self::BackendUnavailable | Self::JwksUnavailable => 503,
            Self::BodyTooLarge => 413,
            Self::MalformedRequest => 400,
            _ => 401,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token was rejected. Each variant maps to exactly one [`ErrorCode`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token's structure or encoding is invalid.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The algorithm is not allowed, or does not fit the key.
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(&'static str),
    /// No key matches.
    #[error("unknown key: {0}")]
    UnknownKey(&'static str),
    /// The signature does not verify.
    #[error("invalid signature")]
    InvalidSignature,
    /// `exp` has passed (leeway included).
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` is in the future (leeway included).
    #[error("token not yet valid: {0}")]
    NotYetValid(&'static str),
    /// `iss` is not one of the trusted issuers.
    #[error("issuer is not trusted")]
    InvalidIssuer,
    /// `aud` does not contain an accepted audience.
    #[error("audience is not accepted")]
    InvalidAudience,
    /// A required claim is absent.
    #[error("missing claim `{0}`")]
    MissingClaim(String),
    /// The token is not an access token.
    #[error("wrong token type: {0}")]
    WrongTokenType(&'static str),
    /// `exp - iat` exceeds the configured maximum lifetime.
    #[error("token lifetime exceeds the allowed maximum")]
    LifetimeTooLong,
}

impl TokenError {
    /// The stable code of this rejection.
    pub const fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed(_) => ErrorCode::MalformedToken,
            Self::UnsupportedAlgorithm(_) => ErrorCode::UnsupportedAlgorithm,
            Self::UnknownKey(_) => ErrorCode::UnknownKey,
            Self::InvalidSignature => ErrorCode::InvalidSignature,
            Self::Expired => ErrorCode::TokenExpired,
            Self::NotYetValid(_) => ErrorCode::TokenNotYetValid,
            Self::InvalidIssuer => ErrorCode::InvalidIssuer,
            Self::InvalidAudience => ErrorCode::InvalidAudience,
            Self::MissingClaim(_) => ErrorCode::MissingClaim,
            Self::WrongTokenType(_) => ErrorCode::WrongTokenType,
            // Not malformed JSON, but claims this verifier will not accept.
            Self::LifetimeTooLong => ErrorCode::MalformedToken,
        }
    }
}

/// Why a key could not be loaded, generated or used.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// An HMAC secret is shorter than 32 bytes.
    #[error("HMAC secret is {0} bytes; at least 32 are required")]
    WeakHmacSecret(usize),
    /// An RSA modulus is shorter than 2048 bits.
    #[error("RSA key is {0} bits; at least 2048 are required")]
    WeakRsaKey(usize),
    /// The key type, curve or algorithm is not supported.
    #[error("unsupported key: {0}")]
    Unsupported(String),
    /// The key material could not be parsed.
    #[error("malformed key: {0}")]
    Malformed(String),
    /// The operation needs a private key, but only the public part is loaded.
    #[error("key `{0}` has no private part and cannot sign")]
    NotASigningKey(String),
    /// The key set has no key with this id.
    #[error("no key with id `{0}`")]
    NoSuchKey(String),
    /// Two keys in one set share an id.
    #[error("duplicate key id `{0}`")]
    DuplicateKid(String),
    /// The crypto library failed (e.g. the random generator).
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
}

#[cfg(test)]
mod all_codes {
    use super::ErrorCode;

    #[test]
    fn all_lists_every_code_once_at_its_index() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.index(), i, "{}", code.as_str());
        }
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
