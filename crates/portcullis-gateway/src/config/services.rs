//! `[token_service]` and `[forward_auth]`: the endpoints the gateway
//! serves itself.

use serde::Deserialize;

use super::{RegulationConfig, yes};

/// `[token_service]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenServiceConfig {
    /// Whether the token service is mounted (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where it is mounted on the public listener (default `/auth`).
    #[serde(default = "default_auth_prefix")]
    pub prefix: String,
    /// Where it is reachable from outside, for discovery (default: issuer + prefix).
    #[serde(default)]
    pub public_url: Option<String>,
    /// `[token_service.regulation]`: failed logins, resets and console
    /// sign-ins per client IP and account (on by default).
    #[serde(default)]
    pub regulation: RegulationConfig,
}

fn default_auth_prefix() -> String {
    "/auth".into()
}

impl Default for TokenServiceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prefix: default_auth_prefix(),
            public_url: None,
            regulation: RegulationConfig::default(),
        }
    }
}

/// `[forward_auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthConfig {
    /// Whether the endpoints answer (default false: a client that reaches
    /// them through a load balancer could ask the guard about any request
    /// it forges; turn them on when nginx, Traefik, Caddy or Envoy in
    /// front asks, and list that proxy in `guard.client_ip.trusted_proxies`).
    #[serde(default)]
    pub enabled: bool,
    /// Their prefix on the public listener (default `/_portcullis/auth`).
    #[serde(default = "default_forward_auth_prefix")]
    pub prefix: String,
}

fn default_forward_auth_prefix() -> String {
    "/_portcullis/auth".into()
}

impl Default for ForwardAuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            prefix: default_forward_auth_prefix(),
        }
    }
}
