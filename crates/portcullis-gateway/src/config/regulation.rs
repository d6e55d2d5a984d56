//! `[token_service.regulation]`: failed logins, password-reset redemptions
//! and console sign-ins per client IP and per (account, client IP).

use std::time::Duration;

use portcullis_core::regulation::RegulationPolicy;
use serde::Deserialize;

use super::duration;

/// `[token_service.regulation]` (see `docs/config.md`). On by default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegulationConfig {
    /// Whether attempts are regulated (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failures at one account from one client IP in `window` before that
    /// pair is refused (default 5).
    #[serde(default = "default_per_account")]
    pub max_failures_per_account: u32,
    /// Failures from one client IP in `window`, over every account, before
    /// the IP is refused (default 20).
    #[serde(default = "default_per_ip")]
    pub max_failures_per_ip: u32,
    /// Counting window, from a key's first failure (default `5m`, 1s to 24h).
    #[serde(default = "default_window", deserialize_with = "duration")]
    pub window: Duration,
    /// How long a refused key stays refused (default `15m`, 1s to 24h).
    #[serde(default = "default_ban_time", deserialize_with = "duration")]
    pub ban_time: Duration,
}

fn yes() -> bool {
    true
}
fn default_per_account() -> u32 {
    RegulationPolicy::default().max_failures_per_account
}
fn default_per_ip() -> u32 {
    RegulationPolicy::default().max_failures_per_ip
}
fn default_window() -> Duration {
    RegulationPolicy::default().window
}
fn default_ban_time() -> Duration {
    RegulationPolicy::default().ban_time
}

impl Default for RegulationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_failures_per_account: default_per_account(),
            max_failures_per_ip: default_per_ip(),
            window: default_window(),
            ban_time: default_ban_time(),
        }
    }
}

impl RegulationConfig {
    /// The policy these settings describe.
    pub fn policy(&self) -> RegulationPolicy {
        RegulationPolicy {
            max_failures_per_account: self.max_failures_per_account,
            max_failures_per_ip: self.max_failures_per_ip,
            window: self.window,
            ban_time: self.ban_time,
        }
    }

    /// Checks the bounds: `Err((key, message))` names the key.
    pub fn check(&self) -> Result<(), (String, String)> {
        self.policy().validate().map_err(|e| {
            let field = match e {
                portcullis_core::regulation::RegulationConfigError::Limit(f)
                | portcullis_core::regulation::RegulationConfigError::Duration(f) => f,
                _ => "",
            };
            (
                format!("token_service.regulation.{field}")
                    .trim_end_matches('.')
                    .to_owned(),
                e.to_string(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_on_and_bad_values_name_their_key() {
        let c: RegulationConfig = toml::from_str("").expect("empty");
        assert_eq!(c, RegulationConfig::default());
        assert!(c.enabled);
        let c: RegulationConfig =
            toml::from_str("max_failures_per_ip = 0\nwindow = \"10m\"").expect("parses");
        assert_eq!(c.window, Duration::from_secs(600));
        let (key, _) = c.check().expect_err("zero");
        assert_eq!(key, "token_service.regulation.max_failures_per_ip");
    }
}
