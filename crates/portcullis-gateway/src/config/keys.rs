//! `[keys]`: the signing keys, the issuer, `[keys.rotation]` and
//! `[[keys.trusted_issuers]]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// `[keys]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Directory of `*.pem` / `*.jwk.json` keys as `portcullis keys generate` writes them.
    pub dir: PathBuf,
    /// The kid that signs new tokens (default: the first private key by file name).
    #[serde(default)]
    pub active_kid: Option<String>,
    /// `iss` of the tokens the gateway issues and accepts, an absolute URL.
    pub issuer: String,
    /// `aud` of issued tokens, required of accepted ones.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Verified-token cache: most tokens kept (default 10 000); `0` turns
    /// it off, so every request's signature is checked.
    #[serde(default = "default_token_cache_entries")]
    pub token_cache_entries: u64,
    /// Lifetime of the access tokens the token service issues (default
    /// `15m`, 5s to 24h); a rotated-out key verifies this long (plus
    /// leeway) after its successor activates.
    #[serde(default = "default_access_ttl", deserialize_with = "duration")]
    pub access_ttl: Duration,
    /// `[keys.rotation]`: signing-key rotation through the admin API.
    #[serde(default)]
    pub rotation: RotationConfig,
    /// `[[keys.trusted_issuers]]`: outside identity providers (Auth0,
    /// Keycloak, Entra ID, another Portcullis) whose JWTs the `jwt`
    /// credential also accepts, verified against their published JWKS.
    #[serde(default)]
    pub trusted_issuers: Vec<TrustedIssuerConfig>,
}

/// One `[[keys.trusted_issuers]]` entry: an identity provider whose access
/// tokens are accepted, checked against the keys it publishes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerConfig {
    /// The exact `iss` of its tokens (for discovery also the base URL).
    pub issuer: String,
    /// Its JWKS URL; when unset, `<issuer>/.well-known/openid-configuration`
    /// names it (OIDC discovery).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// `aud` values accepted (at least one: without it any token of the
    /// issuer would pass, one meant for another API or an ID token).
    #[serde(default)]
    pub audience: Vec<String>,
    /// Require `typ: at+jwt` (RFC 9068), for issuers that type access tokens.
    #[serde(default)]
    pub require_typ: bool,
    /// How long a fetched key set is fresh (default `10m`).
    #[serde(default = "default_issuer_ttl", deserialize_with = "duration")]
    pub ttl: Duration,
    /// Least time between fetches caused by an unknown `kid` or a failed
    /// refresh (default `30s`): a flood of made-up kids cannot flood the issuer.
    #[serde(default = "default_issuer_refetch", deserialize_with = "duration")]
    pub refetch_interval: Duration,
    /// How long past `ttl` the last good key set still serves while the
    /// issuer is unreachable (default `5m`).
    #[serde(default = "default_issuer_max_stale", deserialize_with = "duration")]
    pub max_stale: Duration,
    /// Extra CA certificates (PEM) trusted for its HTTPS besides the
    /// Mozilla roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Hosts other than the issuer's own that a discovered `jwks_uri` may name.
    #[serde(default)]
    pub jwks_hosts: Vec<String>,
    /// Plain `http://` to a loopback host (local development and tests only).
    #[serde(default)]
    pub allow_http: bool,
}

fn default_issuer_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_issuer_refetch() -> Duration {
    Duration::from_secs(30)
}
fn default_issuer_max_stale() -> Duration {
    Duration::from_secs(300)
}

fn default_token_cache_entries() -> u64 {
    10_000
}
fn default_access_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

/// `[keys.rotation]`: how rotated-in signing keys (`POST /admin/keys/rotate`,
/// `portcullis keys rotate`) reach every replica before they sign.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RotationConfig {
    /// Between publishing a new key (JWKS, every replica's verifier) and
    /// signing with it (default `10m`, at least twice `poll_interval`):
    /// longer than outside verifiers cache the JWKS (5 minutes).
    #[serde(default = "default_propagation_delay", deserialize_with = "duration")]
    pub propagation_delay: Duration,
    /// How often each replica reads the stored keys (default `5s`, 100ms to 5m).
    #[serde(default = "default_rotation_poll", deserialize_with = "duration")]
    pub poll_interval: Duration,
}

fn default_propagation_delay() -> Duration {
    Duration::from_secs(600)
}
fn default_rotation_poll() -> Duration {
    Duration::from_secs(5)
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            propagation_delay: default_propagation_delay(),
            poll_interval: default_rotation_poll(),
        }
    }
}
