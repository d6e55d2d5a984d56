//! The gateway's one TOML file: typed with serde (unknown keys are errors),
//! validated at load, every error naming the file, line and key.
//!
//! Loading is in three passes: TOML syntax; the typed structure (every
//! unknown key is reported, each with a "did you mean"; the first other
//! type error ends the pass); then the cross-field checks (every one is
//! reported). The library's `GuardConfig` is `[guard]` as is.
//!
//! This module holds the top `Config`, the entry points that load it and
//! the re-exports of every section's types. Each section lives in its own
//! submodule (`server`, `storage`, `keys`, `upstreams`, …); `env` applies
//! the environment overrides and `*_file` secrets, `errors` locates every
//! error at its line and key, and `validate` runs the cross-field checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis::guard::GuardConfig;
use serde::{Deserialize, Deserializer};
use toml::de::DeTable;

mod anomaly;
mod audit;
mod checks;
mod env;
mod errors;
mod guard;
mod identity;
mod keys;
mod regulation;
mod request;
mod server;
mod services;
mod signed;
mod storage;
mod trusted_issuer;
mod upstreams;
mod validate;

pub use self::anomaly::{AnomalyConfig, WebhookDelivery, WebhookEntry};
pub use self::audit::AuditConfig;
pub use self::checks::{HOP_BY_HOP, valid_host_pattern};
pub use self::env::{ENV_PREFIX, MAX_SECRET_FILE_BYTES, SECRET_KEYS, env_overrides};
pub use self::errors::{ConfigError, ConfigErrors, error_at_key, suggest};
pub use self::identity::{IdentityHeaders, InternalTokenConfig};
pub use self::keys::{KeysConfig, RotationConfig, TrustedIssuerConfig};
pub use self::regulation::RegulationConfig;
pub use self::request::{LowercaseMethods, MethodOverride, RequestConfig};
pub use self::server::{ServerConfig, TlsConfig};
pub use self::services::{ForwardAuthConfig, TokenServiceConfig};
pub use self::signed::{SignedAppConfig, SignedRequestsConfig};
pub use self::storage::{OnStaleConfig, RevocationConfig, StorageConfig, StorageUrl};
pub use self::trusted_issuer::remote_issuer;
pub use self::upstreams::{UpstreamConfig, UpstreamProtocol};

use self::env::{apply_override, read_secret_file};
use self::errors::{
    Locator, key_path, key_span, parse_unknown_field, remove_key_at, unknown_key_message,
};
use self::validate::validate;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners, limits and timeouts.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where users, sessions, API keys and revocations live.
    #[serde(default)]
    pub storage: StorageConfig,
    /// How each replica's local revocation set follows the shared log.
    #[serde(default)]
    pub revocation: RevocationConfig,
    /// The signing keys and the issuer of local tokens.
    pub keys: KeysConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Bans and anomaly detection.
    #[serde(default)]
    pub anomaly: AnomalyConfig,
    /// The identity headers sent to upstreams and forward-auth callers.
    #[serde(default)]
    pub identity: IdentityHeaders,
    /// The signed internal identity token for upstreams that verify.
    #[serde(default)]
    pub internal_token: InternalTokenConfig,
    /// The token service (login, refresh, sessions, API keys, JWKS).
    #[serde(default)]
    pub token_service: TokenServiceConfig,
    /// The forward-auth endpoints for nginx, Traefik, Caddy and Envoy.
    #[serde(default)]
    pub forward_auth: ForwardAuthConfig,
    /// How requests that could mean two things are treated.
    #[serde(default)]
    pub request: RequestConfig,
    /// What the guard enforces: the library's `GuardConfig`.
    #[serde(default)]
    pub guard: GuardConfig,
    /// HMAC-signed service requests (`credentials = ["signed"]`): the
    /// apps trusted and their secrets. Absent: no route may accept them.
    #[serde(default)]
    pub signed_requests: Option<SignedRequestsConfig>,
    /// Where allowed requests go.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Logs on stderr.
    #[serde(default)]
    pub log: LogConfig,
    /// Pinned decisions run by `config check`, start-up and every reload.
    #[serde(default)]
    pub tests: TestsConfig,
}

/// `[tests]`: files of `[[case]]`s (see `portcullis test`) that this
/// configuration must pass; a configuration that fails one is refused like
/// a configuration error.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TestsConfig {
    /// Cases files, relative to the configuration file's directory.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

/// `[log]`: structured logs on stderr.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` (default, for people) or `json` (one object a line).
    #[serde(default)]
    pub format: LogFormat,
    /// The most verbose level written (default `info`).
    #[serde(default)]
    pub level: LogLevel,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Pretty,
    /// One JSON object a line.
    Json,
}

/// The most verbose level written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Lifecycle events, warnings, errors.
    #[default]
    Info,
    /// Per-request decisions too.
    Debug,
    /// Everything.
    Trace,
}

/// A duration written `250ms`, `5s`, `2m`, `1h` (the core's one syntax,
/// shared with the commands).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    portcullis_core::duration::parse_duration(&text).map_err(serde::de::Error::custom)
}

fn yes() -> bool {
    true
}

/// Reads, parses and validates `path` for the gateway.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_for(Host::Gateway, path)
}

/// Parses and validates `text`, the contents of `file`, without overrides.
#[cfg(test)]
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    parse_with(file, text, &[])
}

/// Like [`parse`], with environment `overrides` (see [`env_overrides`])
/// applied over the file: each replaces (or adds) one key.
pub fn parse_with(
    file: &Path,
    text: &str,
    overrides: &[(String, String)],
) -> Result<Config, ConfigErrors> {
    parse_for(Host::Gateway, file, text, overrides)
}

/// Who runs the configuration: what is required depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// `portcullis serve`: every allowed route needs an upstream to serve it.
    Gateway,
    /// The engine inside the application's own process (the Python
    /// package): the application serves every route, `[[upstreams]]` are
    /// not used.
    InProcess,
}

/// Reads, parses and validates `path` for `host`, with the environment's
/// `PORTCULLIS_…` overrides (what [`load`] does for the gateway).
pub fn load_for(host: Host, path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read the configuration file: {e}"),
        }])
    })?;
    let overrides = env_overrides(std::env::vars());
    parse_for(host, path, &text, &overrides)
}

/// Parses and validates `text`, the contents of `file`, for `host`, with
/// environment `overrides` applied over it.
pub fn parse_for(
    host: Host,
    file: &Path,
    text: &str,
    overrides: &[(String, String)],
) -> Result<Config, ConfigErrors> {
    let locate = Locator {
        file,
        text,
        overrides,
    };
    let mut doc = DeTable::parse(text)
        .map_err(|e| ConfigErrors(vec![locate.error(e.span(), None, e.message().to_owned())]))?;
    let mut errors = Vec::new();
    for (i, (name, value)) in overrides.iter().enumerate() {
        // Keys and values from the environment get spans past the end of
        // the file, one per variable, so errors name the variable.
        let span = text.len() + i..text.len() + i + 1;
        if let Err(message) = apply_override(doc.get_mut(), name, value, span.clone()) {
            errors.push(locate.error(Some(span), None, message));
        }
    }
    for key in SECRET_KEYS {
        if let Err((span, key, message)) = read_secret_file(doc.get_mut(), key) {
            errors.push(locate.error(span, Some(key), message));
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
        return Err(ConfigErrors(errors));
    }
    // Every unknown key is reported: each is removed and the document read again.
    let config = loop {
        match Config::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(config) => break Some(config),
            Err(e) => {
                let span = e.span();
                let key = span.as_ref().and_then(|s| key_path(doc.get_ref(), s.start));
                let unknown = parse_unknown_field(e.message());
                let message = match &unknown {
                    Some((field, expected)) => unknown_key_message(field, expected),
                    None => e.message().to_owned(),
                };
                errors.push(locate.error(span.clone(), key.clone(), message));
                let removed = unknown.is_some()
                    && span.is_some_and(|s| remove_key_at(doc.get_mut(), s.start));
                if !removed || errors.len() >= 50 {
                    break None;
                }
            }
        }
    };
    let Some(config) = config else {
        errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
        return Err(ConfigErrors(errors));
    };
    for (key, message) in validate(&config, host) {
        let span = key_span(doc.get_ref(), &key);
        errors.push(locate.error(span, Some(key), message));
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
        Err(ConfigErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_is_reported_with_its_line() {
        let text = "[server]\nlisen = \"127.0.0.1:1\"\n\n[keys]\ndir = \"/nonexistent\"\nissuer = \"https://i.test\"\nisuer2 = 1\n";
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        // Both unknown keys, then (the structure being sound) the missing key directory.
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert_eq!(errs[0].line, Some(2));
        assert!(
            errs[0].message.contains("did you mean `listen`"),
            "{}",
            errs[0].message
        );
        assert_eq!(errs[0].key.as_deref(), Some("server.lisen"));
        assert_eq!(errs[1].key.as_deref(), Some("keys.dir"));
        assert_eq!(errs[2].line, Some(7));
        assert!(errs[2].message.contains("did you mean `issuer`"));
    }
}
