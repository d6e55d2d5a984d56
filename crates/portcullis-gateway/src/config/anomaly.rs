//! `[anomaly]`: bans, detectors and the alert webhooks.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::env::read_secret;
use super::{duration, yes};

/// `[anomaly]`: bans (checked on every request) and the detectors that
/// feed them. On Redis when `storage.redis` / `storage.redis_cluster` is
/// set (every replica sees every ban and counts into the same windows),
/// else in this process.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Whether bans are enforced and detectors run (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The detectors (default: the five documented ones, each tagging the
    /// audit event of a request that trips it). A list given here replaces
    /// the defaults.
    #[serde(default = "default_detectors")]
    pub detectors: Vec<portcullis_core::anomaly::DetectorConfig>,
    /// Most detector windows kept in memory (default 100 000; memory only).
    #[serde(default = "default_anomaly_max_keys")]
    pub max_keys: usize,
    /// Where the detectors' `alert` action posts (none by default).
    #[serde(default)]
    pub webhooks: Vec<WebhookEntry>,
    /// How deliveries are made, for every webhook.
    #[serde(default)]
    pub webhook_delivery: WebhookDelivery,
}

/// `[[anomaly.webhooks]]`: one receiver of alerts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookEntry {
    /// `https://…` (plain `http://` only to a loopback host).
    pub url: String,
    /// File holding the Standard Webhooks secret (`whsec_…`) the deliveries
    /// are signed with; required for `format = "standard"`. Never inline.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// `standard` (Standard Webhooks JSON, signed) or `slack` (a Slack
    /// incoming-webhook message; the URL is the secret).
    #[serde(default)]
    pub format: portcullis_core::anomaly::webhook::PayloadFormat,
    /// The detectors whose alerts it receives (default: all of them; `[]`:
    /// none, for a webhook of security events only).
    #[serde(default)]
    pub detectors: Option<Vec<portcullis_core::anomaly::DetectorKind>>,
    /// The security events it receives, each opt-in (default: none):
    /// `signing_key.rotated`, `admin_key.created`, `token.reuse_detected`,
    /// `login.throttled`.
    #[serde(default)]
    pub events: Vec<portcullis_core::anomaly::webhook::SecurityEventKind>,
}

/// `[anomaly.webhook_delivery]`: one queue and one retry policy for every
/// webhook.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookDelivery {
    /// Longest one attempt may take (default 5 s).
    #[serde(default = "default_webhook_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Attempts per delivery, the first included (default 6; exponential
    /// back-off from 500 ms with full jitter, at most 60 s apart).
    #[serde(default = "default_webhook_attempts")]
    pub max_attempts: u32,
    /// Alerts waiting to be sent; beyond it alerts are dropped and counted
    /// (default 1024).
    #[serde(default = "default_webhook_queue")]
    pub queue: usize,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_webhook_attempts() -> u32 {
    6
}
fn default_webhook_queue() -> usize {
    1024
}

impl Default for WebhookDelivery {
    fn default() -> Self {
        Self {
            timeout: default_webhook_timeout(),
            max_attempts: default_webhook_attempts(),
            queue: default_webhook_queue(),
        }
    }
}

impl AnomalyConfig {
    /// The sender settings of `[[anomaly.webhooks]]` (secrets read from
    /// their files), or `None` when there is none; the error names the key.
    pub fn webhook_config(
        &self,
    ) -> Result<Option<portcullis::anomaly::webhook::WebhookConfig>, (String, String)> {
        use portcullis::anomaly::webhook::{WebhookConfig, WebhookEndpoint};
        use portcullis_core::anomaly::webhook::{PayloadFormat, WebhookSecret};
        if self.webhooks.is_empty() {
            return Ok(None);
        }
        let mut endpoints = Vec::with_capacity(self.webhooks.len());
        for (i, w) in self.webhooks.iter().enumerate() {
            let key = |field: &str| format!("anomaly.webhooks[{i}].{field}");
            portcullis::jwks::check_url(&w.url, true).map_err(|e| (key("url"), e.to_string()))?;
            let url = w
                .url
                .parse::<http::Uri>()
                .map_err(|e| (key("url"), e.to_string()))?;
            let secret = match (&w.secret_file, w.format) {
                (Some(path), _) => {
                    let text = read_secret(path).map_err(|m| (key("secret_file"), m))?;
                    WebhookSecret::parse(text.trim()).map_err(|e| {
                        (
                            key("secret_file"),
                            format!("`{}`: {e} (a `whsec_…` secret)", path.display()),
                        )
                    })?
                }
                (None, PayloadFormat::Slack) => {
                    // Slack does not check signatures: a random key signs.
                    WebhookSecret::generate()
                        .map_err(|e| (key("secret_file"), e.to_string()))?
                        .0
                }
                (None, _) => {
                    return Err((
                        key("secret_file"),
                        "required for format \"standard\": the `whsec_…` secret the receiver verifies each delivery with".into(),
                    ));
                }
            };
            endpoints.push(WebhookEndpoint {
                url,
                secret,
                format: w.format,
                detectors: w.detectors.clone(),
                events: w.events.clone(),
            });
        }
        let d = self.webhook_delivery;
        let config = WebhookConfig {
            endpoints,
            timeout: d.timeout,
            max_attempts: d.max_attempts,
            queue_capacity: d.queue,
            // Plain http passed `check_url` only for loopback hosts.
            allow_http: true,
            ..WebhookConfig::default()
        };
        config
            .validate()
            .map_err(|e| ("anomaly.webhook_delivery".to_owned(), e.to_string()))?;
        Ok(Some(config))
    }
}

fn default_detectors() -> Vec<portcullis_core::anomaly::DetectorConfig> {
    portcullis_core::anomaly::DetectorKind::ALL
        .into_iter()
        .map(portcullis_core::anomaly::DetectorConfig::default_for)
        .collect()
}
fn default_anomaly_max_keys() -> usize {
    100_000
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            detectors: default_detectors(),
            max_keys: default_anomaly_max_keys(),
            webhooks: Vec::new(),
            webhook_delivery: WebhookDelivery::default(),
        }
    }
}
