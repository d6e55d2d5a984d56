//! Webhook alerts signed per the Standard Webhooks convention
//! (<https://www.standardwebhooks.com/>): headers `webhook-id`,
//! `webhook-timestamp` and `webhook-signature`, the last being
//! `v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`.

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use super::AnomalyEvent;
use crate::error::KeyError;
use crate::opaque::{ct_eq, fill_random};

/// Header carrying the message id (the same on every retry).
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the send time, Unix seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the space-separated `v1,<base64>` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// The secret's textual prefix.
pub const SECRET_PREFIX: &str = "whsec_";

/// A webhook signing secret: `whsec_` followed by the base64 of 24 to 64 bytes.
#[derive(Clone)]
pub struct WebhookSecret {
    key: hmac::Key,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// Why a secret was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookSecretError {
    /// Not `whsec_<base64>`.
    #[error("webhook secret must be `whsec_` followed by base64")]
    Format,
    /// Decoded length outside 24..=64 bytes.
    #[error("webhook secret must decode to 24 to 64 bytes, not {0}")]
    Length(usize),
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, WebhookSecretError> {
        let b64 = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(WebhookSecretError::Format)?;
        let bytes = STANDARD
            .decode(b64.trim())
            .map_err(|_| WebhookSecretError::Format)?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(WebhookSecretError::Length(bytes.len()));
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// A new random 32-byte secret and its `whsec_` text (show it once).
    pub fn generate() -> Result<(Self, String), KeyError> {
        let mut bytes = [0u8; 32];
        fill_random(&mut bytes)?;
        let text = format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes));
        Ok((Self::from_bytes(&bytes), text))
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// The `webhook-signature` value for one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.tag(msg_id, timestamp, body)))
    }

    fn tag(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(msg_id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        ctx.sign()
    }

    /// Verifies a received message as a receiver should: one of the
    /// signatures in `header` matches and the timestamp is within
    /// `tolerance_secs` of `now`.
    pub fn verify(
        &self,
        msg_id: &str,
        timestamp: i64,
        body: &[u8],
        header: &str,
        now: i64,
        tolerance_secs: i64,
    ) -> bool {
        if now.abs_diff(timestamp) > tolerance_secs.unsigned_abs() {
            return false;
        }
        let expected = self.tag(msg_id, timestamp, body);
        header.split(' ').any(|sig| {
            sig.strip_prefix("v1,")
                .and_then(|b64| STANDARD.decode(b64).ok())
                .is_some_and(|got| ct_eq(&got, expected.as_ref()))
        })
    }
}

/// A new message id, `msg_` and 22 base64url characters.
pub fn message_id() -> Result<String, KeyError> {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes)?;
    Ok(format!(
        "msg_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The body format a webhook endpoint expects.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// `{"type": "anomaly.detected", "timestamp": ..., "data": {event}}`.
    #[default]
    Standard,
    /// A Slack-compatible `{"text": ...}` message.
    Slack,
}

#[derive(Serialize)]
struct StandardBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    data: &'a AnomalyEvent,
}

#[derive(Serialize)]
struct SlackBody {
    text: String,
}

/// The JSON body for `event` in `format`.
pub fn payload(event: &AnomalyEvent, format: PayloadFormat) -> Vec<u8> {
    let result = match format {
        PayloadFormat::Standard => serde_json::to_vec(&StandardBody {
            kind: "anomaly.detected",
            timestamp: rfc3339_millis(event.last_seen_ms),
            data: event,
        }),
        PayloadFormat::Slack => serde_json::to_vec(&SlackBody {
            text: format!(
                ":rotating_light: Portcullis anomaly `{}` on `{}`: {} events in {}s (sample: {} {})",
                event.detector.as_str(),
                slack_escape(&event.key),
                event.count,
                event.window_secs,
                slack_escape(&event.sample.method),
                slack_escape(&event.sample.path),
            ),
        }),
    };
    // Serializing these plain structs cannot fail; an empty body would be
    // rejected by the receiver rather than panic here.
    result.unwrap_or_default()
}

/// A security event a webhook can opt into (`events = [...]`), beside the
/// detectors' alerts. Stable names, as in audit events.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, Serialize)]
pub enum SecurityEventKind {
    /// A new signing key was rotated in (it signs from its activation).
    #[serde(rename = "signing_key.rotated")]
    SigningKeyRotated,
    /// An API key holding an `admin.*` permission (or owned by an admin)
    /// was created.
    #[serde(rename = "admin_key.created")]
    AdminKeyCreated,
    /// A rotated refresh token was presented again; its family was revoked.
    #[serde(rename = "token.reuse_detected")]
    TokenReuseDetected,
    /// A login or password reset at the token service was refused because
    /// its client used up its attempts (one notice per client and account
    /// a minute).
    #[serde(rename = "login.throttled")]
    LoginThrottled,
}

impl SecurityEventKind {
    /// Every kind.
    pub const ALL: &'static [Self] = &[
        Self::SigningKeyRotated,
        Self::AdminKeyCreated,
        Self::TokenReuseDetected,
        Self::LoginThrottled,
    ];

    /// The stable name, e.g. `signing_key.rotated`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SigningKeyRotated => "signing_key.rotated",
            Self::AdminKeyCreated => "admin_key.created",
            Self::TokenReuseDetected => "token.reuse_detected",
            Self::LoginThrottled => "login.throttled",
        }
    }
}

/// One security event as a webhook receives it. Never holds a secret: keys
/// and tokens are named by their ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityNotice {
    /// What happened.
    pub event: SecurityEventKind,
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// Who acted or was acted for: the admin key or user, the account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The client's IP, when a request caused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// What it concerns: the new key's `kid`, the created key's id, the
    /// revoked family.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// More, in words (e.g. the permissions a created key holds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Serialize)]
struct NoticeBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    timestamp: String,
    data: &'a SecurityNotice,
}

/// The JSON body for `notice` in `format`: Standard Webhooks type
/// `security.<event>` (e.g. `security.signing_key.rotated`).
pub fn notice_payload(notice: &SecurityNotice, format: PayloadFormat) -> Vec<u8> {
    let result = match format {
        PayloadFormat::Standard => serde_json::to_vec(&NoticeBody {
            kind: format!("security.{}", notice.event.as_str()),
            timestamp: rfc3339_millis(notice.at_ms),
            data: notice,
        }),
        PayloadFormat::Slack => {
            let mut text = format!(
                ":warning: Portcullis security event `{}`",
                notice.event.as_str()
            );
            for (label, value) in [
                ("subject", &notice.subject),
                ("client", &notice.client_ip),
                ("target", &notice.target),
                ("detail", &notice.detail),
            ] {
                if let Some(v) = value {
                    text.push_str(&format!(", {label} `{}`", slack_escape(v)));
                }
            }
            serde_json::to_vec(&SlackBody { text })
        }
    };
    result.unwrap_or_default()
}

/// Escapes the three characters Slack's message format treats as control
/// (`&`, `<`, `>`), so attacker text such as `<!channel>` or `<url|text>`
/// shows as typed instead of pinging a channel or rendering a link.
pub fn slack_escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['&', '<', '>']) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

pub use crate::audit::time::rfc3339_millis;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::{DetectorKind, SampleRequest};

    #[test]
    fn signature_matches_the_standard_webhooks_reference_vector() {
        // The reference example from the Standard Webhooks specification.
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(secret.verify(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            body,
            &format!("v1,bogus {sig}"),
            1_614_265_400,
            300
        ));
    }

    #[test]
    fn tampering_or_staleness_fails_verification() {
        let (secret, text) = WebhookSecret::generate().unwrap();
        assert!(text.starts_with(SECRET_PREFIX));
        let sig = secret.sign("msg_1", 1_000, b"{}");
        assert!(secret.verify("msg_1", 1_000, b"{}", &sig, 1_000, 300));
        assert!(!secret.verify("msg_1", 1_000, b"{ }", &sig, 1_000, 300));
        assert!(!secret.verify("msg_2", 1_000, b"{}", &sig, 1_000, 300));
        assert!(!secret.verify("msg_1", 1_001, b"{}", &sig, 1_000, 300));
        assert!(!secret.verify("msg_1", 1_000, b"{}", &sig, 1_301, 300));
        let (other, _) = WebhookSecret::generate().unwrap();
        assert!(!other.verify("msg_1", 1_000, b"{}", &sig, 1_000, 300));
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert_eq!(
            WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            WebhookSecretError::Format
        );
        assert_eq!(
            WebhookSecret::parse("whsec_!!").unwrap_err(),
            WebhookSecretError::Format
        );
        assert_eq!(
            WebhookSecret::parse("whsec_AAAA").unwrap_err(),
            WebhookSecretError::Length(3)
        );
    }

    #[test]
    fn a_security_notice_names_its_event_and_escapes_slack_text() {
        let notice = SecurityNotice {
            event: SecurityEventKind::AdminKeyCreated,
            at_ms: 1_779_500_000_000,
            subject: Some("admin:root".into()),
            client_ip: None,
            target: Some("key_1".into()),
            detail: Some("permissions <!channel> admin.*".into()),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&notice_payload(&notice, PayloadFormat::Standard)).unwrap();
        assert_eq!(v["type"], "security.admin_key.created");
        assert_eq!(v["data"]["event"], "admin_key.created");
        assert_eq!(v["data"]["target"], "key_1");
        assert!(v["data"].get("client_ip").is_none());
        let slack: serde_json::Value =
            serde_json::from_slice(&notice_payload(&notice, PayloadFormat::Slack)).unwrap();
        let text = slack["text"].as_str().unwrap();
        assert!(
            text.contains("admin_key.created") && text.contains("&lt;!channel&gt;"),
            "{text}"
        );
        for kind in SecurityEventKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str());
        }
    }

    #[test]
    fn payloads_carry_the_event() {
        let event = AnomalyEvent {
            detector: DetectorKind::Burst,
            key: "ip:203.0.113.7".into(),
            count: 50,
            window_secs: 10.0,
            first_seen_ms: 1_779_500_000_000,
            last_seen_ms: 1_779_500_009_500,
            sample: SampleRequest::new("GET", "/login", "curl/8"),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&payload(&event, PayloadFormat::Standard)).unwrap();
        assert_eq!(v["type"], "anomaly.detected");
        assert_eq!(v["data"]["detector"], "burst");
        assert_eq!(v["data"]["key"], "ip:203.0.113.7");
        assert_eq!(v["timestamp"], "2026-05-23T01:33:29.500Z");
        let v: serde_json::Value =
            serde_json::from_slice(&payload(&event, PayloadFormat::Slack)).unwrap();
        assert!(
            v["text"]
                .as_str()
                .unwrap()
                .contains("`burst` on `ip:203.0.113.7`")
        );
    }

    #[test]
    fn rfc3339_handles_leap_years_and_the_epoch() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(4_107_542_399_999),
            "2100-02-28T23:59:59.999Z"
        );
    }
}
