//! `[identity]` and `[internal_token]`: how the caller's identity reaches
//! upstreams, as headers or as a signed token.

use std::time::Duration;

use serde::Deserialize;

use super::{KeysConfig, duration, yes};

/// `[identity]`: names of the identity headers. Inbound copies are always
/// stripped before the guard's principal is written into them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeaders {
    /// Default `x-portcullis-subject`.
    #[serde(default = "h_subject")]
    pub subject: String,
    /// Default `x-portcullis-roles` (comma separated).
    #[serde(default = "h_roles")]
    pub roles: String,
    /// Default `x-portcullis-permissions` (comma separated).
    #[serde(default = "h_permissions")]
    pub permissions: String,
    /// Default `x-portcullis-tenant`.
    #[serde(default = "h_tenant")]
    pub tenant: String,
    /// Default `x-portcullis-session`.
    #[serde(default = "h_session")]
    pub session: String,
    /// Default `x-portcullis-auth-method`.
    #[serde(default = "h_auth_method")]
    pub auth_method: String,
    /// Whether the credential the caller presented (`Authorization`, the
    /// API-key header, the app id and secret headers) is removed before
    /// proxying (default true); an upstream may override it.
    #[serde(default = "yes")]
    pub strip_credentials: bool,
}

fn h_subject() -> String {
    "x-portcullis-subject".into()
}
fn h_roles() -> String {
    "x-portcullis-roles".into()
}
fn h_permissions() -> String {
    "x-portcullis-permissions".into()
}
fn h_tenant() -> String {
    "x-portcullis-tenant".into()
}
fn h_session() -> String {
    "x-portcullis-session".into()
}
fn h_auth_method() -> String {
    "x-portcullis-auth-method".into()
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            subject: h_subject(),
            roles: h_roles(),
            permissions: h_permissions(),
            tenant: h_tenant(),
            session: h_session(),
            auth_method: h_auth_method(),
            strip_credentials: true,
        }
    }
}

/// `[internal_token]`: a short-lived JWT signed with the gateway's active
/// key, sent to upstreams that verify the caller instead of trusting
/// headers (the library's `InternalTokenLayer`, PyJWT against the JWKS).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InternalTokenConfig {
    /// Sent to every upstream (default false); an upstream may override it.
    #[serde(default)]
    pub enabled: bool,
    /// The request header carrying it (default `x-portcullis-identity`).
    #[serde(default = "default_internal_header")]
    pub header: String,
    /// Its lifetime (default `60s`, at most `1h`).
    #[serde(default = "default_internal_ttl", deserialize_with = "duration")]
    pub ttl: Duration,
    /// Its `iss` (default: `keys.issuer` followed by `/internal`); never
    /// `keys.issuer` itself, so an internal token is never accepted as a
    /// caller's access token by the gateway.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Where the public listener serves the gateway's JWKS (default
    /// `/.well-known/portcullis/jwks.json`), whether or not the token
    /// service is enabled.
    #[serde(default = "default_internal_jwks_path")]
    pub jwks_path: String,
}

fn default_internal_header() -> String {
    portcullis::http::INTERNAL_TOKEN_HEADER.as_str().to_owned()
}
fn default_internal_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_internal_jwks_path() -> String {
    "/.well-known/portcullis/jwks.json".into()
}

impl Default for InternalTokenConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            header: default_internal_header(),
            ttl: default_internal_ttl(),
            issuer: None,
            jwks_path: default_internal_jwks_path(),
        }
    }
}

impl InternalTokenConfig {
    /// The `iss` of internal tokens.
    pub fn issuer(&self, keys: &KeysConfig) -> String {
        self.issuer
            .clone()
            .unwrap_or_else(|| format!("{}/internal", keys.issuer.trim_end_matches('/')))
    }
}

impl IdentityHeaders {
    /// Every configured name with its key, for validation.
    pub fn named(&self) -> [(&'static str, &str); 6] {
        [
            ("subject", &self.subject),
            ("roles", &self.roles),
            ("permissions", &self.permissions),
            ("tenant", &self.tenant),
            ("session", &self.session),
            ("auth_method", &self.auth_method),
        ]
    }
}
