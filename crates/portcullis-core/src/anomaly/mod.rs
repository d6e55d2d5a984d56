//! Anomaly detection math: detectors, their windows, detections and the
//! signed webhook payloads that report them. Pure: state in, decision out.
//!
//! A detector counts one kind of [`Signal`] per key in a sliding window and
//! fires when the count reaches its threshold. The runtime (`portcullis`)
//! keeps the per-key [`window`] state in memory or on Redis and carries out
//! the [`Action`]s.

pub mod webhook;
pub mod window;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a detector watches.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// Requests per client IP in a short window.
    Burst,
    /// Failed authentications per client IP and per attempted account.
    AuthFailures,
    /// Distinct accounts tried from one client IP.
    DistinctAccounts,
    /// A refresh-token reuse reported by the stores: fires at once.
    RefreshReuse,
    /// 403 responses for one subject.
    DeniedSpike,
}

impl DetectorKind {
    /// Every detector, in a stable order.
    pub const ALL: [DetectorKind; 5] = [
        DetectorKind::Burst,
        DetectorKind::AuthFailures,
        DetectorKind::DistinctAccounts,
        DetectorKind::RefreshReuse,
        DetectorKind::DeniedSpike,
    ];

    /// The detector's configuration and audit name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Burst => "burst",
            Self::AuthFailures => "auth_failures",
            Self::DistinctAccounts => "distinct_accounts",
            Self::RefreshReuse => "refresh_reuse",
            Self::DeniedSpike => "denied_spike",
        }
    }

    /// A small dense index, for per-detector tables.
    pub fn index(self) -> usize {
        match self {
            Self::Burst => 0,
            Self::AuthFailures => 1,
            Self::DistinctAccounts => 2,
            Self::RefreshReuse => 3,
            Self::DeniedSpike => 4,
        }
    }
}

/// What to do when a detector fires.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Send a webhook alert (de-duplicated per detector and key).
    Alert,
    /// Mark the request's audit event with the detector's flag.
    Tag,
    /// Ban the key (client IP or subject) for the detector's ban duration.
    Ban,
}

/// One detector's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// Which detector.
    pub kind: DetectorKind,
    /// The count at which it fires (at least 1).
    pub threshold: u32,
    /// The sliding window the count covers.
    #[serde(with = "duration_secs")]
    pub window: Duration,
    /// What it does when it fires.
    pub actions: Vec<Action>,
    /// How long a ban lasts.
    #[serde(with = "duration_secs", default = "default_ban")]
    pub ban_for: Duration,
    /// Alerts for one (detector, key) are sent at most once per cooldown.
    #[serde(with = "duration_secs", default = "default_cooldown")]
    pub cooldown: Duration,
}

/// How long `auth_failures` bans by default: short, since a shared address
/// (an office's NAT) may hold one guessing client among many honest ones.
pub const AUTH_FAILURES_BAN: Duration = Duration::from_secs(5 * 60);

fn default_ban() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_cooldown() -> Duration {
    Duration::from_secs(60)
}

/// Detector thresholds and windows are bounded so one key's state is bounded.
pub const MAX_THRESHOLD: u32 = 10_000;

/// A configuration that cannot work, naming the field.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectorConfigError {
    /// `threshold` is 0 or above [`MAX_THRESHOLD`].
    #[error("detector `{0}`: threshold must be between 1 and {MAX_THRESHOLD}")]
    Threshold(&'static str),
    /// `window` is zero or longer than a day.
    #[error("detector `{0}`: window must be between 1 ms and 24 h")]
    Window(&'static str),
    /// `ban` is an action but `ban_for` is zero.
    #[error("detector `{0}`: ban_for must be positive when `ban` is an action")]
    BanDuration(&'static str),
    /// Two entries configure the same detector.
    #[error("detector `{0}` is configured twice")]
    Duplicate(&'static str),
}

impl DetectorConfig {
    /// The documented starting defaults for `kind`.
    pub fn default_for(kind: DetectorKind) -> Self {
        let (threshold, window, actions) = match kind {
            DetectorKind::Burst => (50, 10, vec![Action::Alert, Action::Tag]),
            // Repeated failures from one address: past the login
            // regulation's per-IP budget (20) and then some, so reached by
            // a source that keeps guessing while throttled, or that sprays
            // forged tokens or keys at the guard; banned for a short time.
            // Stale credentials (an expired or revoked token a client has
            // not replaced yet) are not failures here (see the guard).
            DetectorKind::AuthFailures => (50, 60, vec![Action::Alert, Action::Tag, Action::Ban]),
            // Credential stuffing: above the login regulation's per-IP
            // budget (20), so reached by a source that keeps trying new
            // accounts while throttled; banned, not only reported.
            DetectorKind::DistinctAccounts => {
                (30, 300, vec![Action::Alert, Action::Tag, Action::Ban])
            }
            DetectorKind::RefreshReuse => (1, 1, vec![Action::Alert, Action::Tag]),
            DetectorKind::DeniedSpike => (20, 60, vec![Action::Alert, Action::Tag]),
        };
        let ban_for = match kind {
            DetectorKind::AuthFailures => AUTH_FAILURES_BAN,
            _ => default_ban(),
        };
        Self {
            kind,
            threshold,
            window: Duration::from_secs(window),
            actions,
            ban_for,
            cooldown: default_cooldown(),
        }
    }

    /// Checks the bounds; the error names the detector and the field.
    pub fn validate(&self) -> Result<(), DetectorConfigError> {
        let name = self.kind.as_str();
        if self.threshold == 0 || self.threshold > MAX_THRESHOLD {
            return Err(DetectorConfigError::Threshold(name));
        }
        if self.window < Duration::from_millis(1) || self.window > Duration::from_secs(86_400) {
            return Err(DetectorConfigError::Window(name));
        }
        if self.has(Action::Ban) && self.ban_for.is_zero() {
            return Err(DetectorConfigError::BanDuration(name));
        }
        Ok(())
    }

    /// Whether `action` is configured.
    pub fn has(&self, action: Action) -> bool {
        self.actions.contains(&action)
    }

    /// The window in milliseconds.
    pub fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Validates a whole detector list: each valid, none twice.
pub fn validate_detectors(configs: &[DetectorConfig]) -> Result<(), DetectorConfigError> {
    let mut seen = [false; DetectorKind::ALL.len()];
    for c in configs {
        c.validate()?;
        let slot = &mut seen[c.kind.index()];
        if *slot {
            return Err(DetectorConfigError::Duplicate(c.kind.as_str()));
        }
        *slot = true;
    }
    Ok(())
}

/// What the request path reports to the detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal<'a> {
    /// Any request from a client IP (`burst`).
    Request {
        /// Client IP, as the rate limiter resolved it.
        ip: &'a str,
    },
    /// A failed authentication (`auth_failures`, `distinct_accounts`).
    AuthFailure {
        /// Client IP.
        ip: &'a str,
        /// The account the caller tried, when there was one.
        account: Option<&'a str>,
    },
    /// A refresh-token reuse (`refresh_reuse`).
    RefreshReuse {
        /// Client IP.
        ip: &'a str,
        /// The token family's subject.
        subject: &'a str,
    },
    /// A request denied by authorization (`denied_spike`).
    Denied {
        /// The denied subject.
        subject: &'a str,
    },
}

/// What a detector counts under, as stored: `ip:<addr>`, `account:<name>` or
/// `subject:<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DetectionKey<'a> {
    /// A client IP.
    Ip(&'a str),
    /// An attempted account name.
    Account(&'a str),
    /// An authenticated subject.
    Subject(&'a str),
}

/// Longest detection-key value kept verbatim; a longer one (an attempted
/// account name is whatever the client typed) is stored as `#` and 32 hex
/// digits of its SHA-256, as the rate limiter does for key values.
pub const MAX_KEY_VALUE_LEN: usize = 128;

/// `value`, or `#<128-bit SHA-256 prefix in hex>` when it is longer than
/// [`MAX_KEY_VALUE_LEN`] bytes.
pub fn capped(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_KEY_VALUE_LEN {
        return std::borrow::Cow::Borrowed(value);
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
    let mut out = String::with_capacity(33);
    out.push('#');
    for b in &digest.as_ref()[..16] {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
    }
    std::borrow::Cow::Owned(out)
}

impl DetectionKey<'_> {
    /// The stored form, e.g. `ip:203.0.113.7`; values over
    /// [`MAX_KEY_VALUE_LEN`] bytes are hashed (see [`capped`]).
    pub fn render(&self) -> String {
        match self {
            Self::Ip(v) => format!("ip:{}", capped(v)),
            Self::Account(v) => format!("account:{}", capped(v)),
            Self::Subject(v) => format!("subject:{}", capped(v)),
        }
    }

    /// The value without its kind.
    pub fn value(&self) -> &str {
        match self {
            Self::Ip(v) | Self::Account(v) | Self::Subject(v) => v,
        }
    }

    /// What a ban on this key blocks: IPs and subjects can be banned;
    /// an attempted account name is not a caller and cannot.
    pub fn ban_target(&self) -> Option<BanTarget> {
        match self {
            Self::Ip(v) => Some(BanTarget::Ip((*v).to_owned())),
            Self::Subject(v) => Some(BanTarget::Subject((*v).to_owned())),
            Self::Account(_) => None,
        }
    }
}

/// One counter update a signal causes: which detector, under which key, and
/// for `distinct_accounts` the account whose distinctness counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation<'a> {
    /// The detector.
    pub kind: DetectorKind,
    /// The key it counts under.
    pub key: DetectionKey<'a>,
    /// For `distinct_accounts`: the member whose distinct count is taken.
    pub member: Option<&'a str>,
}

impl<'a> Signal<'a> {
    /// The counter updates this signal causes, at most three.
    pub fn observations(&self) -> impl Iterator<Item = Observation<'a>> {
        let mut out: [Option<Observation<'a>>; 3] = [None; 3];
        let obs = |kind, key, member| Some(Observation { kind, key, member });
        match *self {
            Signal::Request { ip } => {
                out[0] = obs(DetectorKind::Burst, DetectionKey::Ip(ip), None);
            }
            Signal::AuthFailure { ip, account } => {
                out[0] = obs(DetectorKind::AuthFailures, DetectionKey::Ip(ip), None);
                if let Some(account) = account {
                    out[1] = obs(
                        DetectorKind::AuthFailures,
                        DetectionKey::Account(account),
                        None,
                    );
                    out[2] = obs(
                        DetectorKind::DistinctAccounts,
                        DetectionKey::Ip(ip),
                        Some(account),
                    );
                }
            }
            Signal::RefreshReuse { subject, .. } => {
                out[0] = obs(
                    DetectorKind::RefreshReuse,
                    DetectionKey::Subject(subject),
                    None,
                );
            }
            Signal::Denied { subject } => {
                out[0] = obs(
                    DetectorKind::DeniedSpike,
                    DetectionKey::Subject(subject),
                    None,
                );
            }
        }
        out.into_iter().flatten()
    }
}

/// The request that tipped a detector over, for the alert.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleRequest {
    /// HTTP method.
    pub method: String,
    /// Path, with secret query parameters already removed by the caller.
    pub path: String,
    /// User agent, truncated to [`MAX_SAMPLE_USER_AGENT`] bytes.
    pub user_agent: String,
}

/// Longest user agent kept in a sample.
pub const MAX_SAMPLE_USER_AGENT: usize = 256;

impl SampleRequest {
    /// A sample with the user agent truncated on a character boundary.
    pub fn new(method: &str, path: &str, user_agent: &str) -> Self {
        let mut end = user_agent.len().min(MAX_SAMPLE_USER_AGENT);
        while !user_agent.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            user_agent: user_agent[..end].to_owned(),
        }
    }
}

/// A detector fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyEvent {
    /// Which detector.
    pub detector: DetectorKind,
    /// The key it counted under, e.g. `ip:203.0.113.7`.
    pub key: String,
    /// The count in the window when it fired.
    pub count: u64,
    /// The window, in seconds (fractional for sub-second windows).
    pub window_secs: f64,
    /// First event in the window, Unix milliseconds.
    pub first_seen_ms: u64,
    /// The event that fired, Unix milliseconds.
    pub last_seen_ms: u64,
    /// The request that tipped it over.
    pub sample: SampleRequest,
}

/// Who a ban blocks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum BanTarget {
    /// A client IP (as the rate limiter groups it: IPv6 by prefix).
    Ip(String),
    /// An authenticated subject.
    Subject(String),
}

impl BanTarget {
    /// The stored form: `ip:<addr>` or `subject:<id>`.
    pub fn render(&self) -> String {
        match self {
            Self::Ip(v) => format!("ip:{v}"),
            Self::Subject(v) => format!("subject:{v}"),
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once(':')? {
            ("ip", v) if !v.is_empty() => Some(Self::Ip(v.to_owned())),
            ("subject", v) if !v.is_empty() => Some(Self::Subject(v.to_owned())),
            _ => None,
        }
    }
}

/// An active ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// Who is banned.
    pub target: BanTarget,
    /// Until when, Unix milliseconds.
    pub until_ms: u64,
    /// Why: the detector name, or `manual`.
    pub reason: String,
}

mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failure_with_account_counts_three_ways() {
        let obs: Vec<_> = Signal::AuthFailure {
            ip: "198.51.100.1",
            account: Some("alice"),
        }
        .observations()
        .collect();
        assert_eq!(obs.len(), 3);
        assert_eq!(obs[1].key, DetectionKey::Account("alice"));
        assert_eq!(obs[2].kind, DetectorKind::DistinctAccounts);
        assert_eq!(obs[2].member, Some("alice"));
        let obs: Vec<_> = Signal::AuthFailure {
            ip: "198.51.100.1",
            account: None,
        }
        .observations()
        .collect();
        assert_eq!(obs.len(), 1);
    }

    #[test]
    fn config_validation_names_the_detector() {
        let mut c = DetectorConfig::default_for(DetectorKind::Burst);
        assert!(c.validate().is_ok());
        c.threshold = 0;
        assert_eq!(c.validate(), Err(DetectorConfigError::Threshold("burst")));
        let mut c = DetectorConfig::default_for(DetectorKind::DeniedSpike);
        c.actions.push(Action::Ban);
        c.ban_for = Duration::ZERO;
        assert_eq!(
            c.validate(),
            Err(DetectorConfigError::BanDuration("denied_spike"))
        );
        let twice = [
            DetectorConfig::default_for(DetectorKind::Burst),
            DetectorConfig::default_for(DetectorKind::Burst),
        ];
        assert_eq!(
            validate_detectors(&twice),
            Err(DetectorConfigError::Duplicate("burst"))
        );
    }

    #[test]
    fn config_parses_from_json_and_rejects_unknown_fields() {
        let c: DetectorConfig = serde_json::from_str(
            r#"{"kind":"burst","threshold":50,"window":10,"actions":["alert","ban"],"ban_for":600}"#,
        )
        .unwrap();
        assert_eq!(c.window, Duration::from_secs(10));
        assert_eq!(c.cooldown, Duration::from_secs(60));
        assert!(c.has(Action::Ban));
        assert!(
            serde_json::from_str::<DetectorConfig>(
                r#"{"kind":"burst","threshold":5,"window":1,"actions":[],"treshold":3}"#
            )
            .is_err()
        );
        assert!(
            serde_json::from_str::<DetectorConfig>(
                r#"{"kind":"burst","threshold":5,"window":-1,"actions":[]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn ban_targets_round_trip_and_accounts_cannot_be_banned() {
        for t in [
            BanTarget::Ip("2001:db8::/64".into()),
            BanTarget::Subject("u:1".into()),
        ] {
            assert_eq!(BanTarget::parse(&t.render()), Some(t));
        }
        assert_eq!(BanTarget::parse("account:x"), None);
        assert_eq!(BanTarget::parse("ip:"), None);
        assert_eq!(DetectionKey::Account("a").ban_target(), None);
    }

    #[test]
    fn sample_user_agent_is_truncated_on_a_char_boundary() {
        let ua = "é".repeat(200);
        let s = SampleRequest::new("GET", "/x", &ua);
        assert!(s.user_agent.len() <= MAX_SAMPLE_USER_AGENT);
        assert!(s.user_agent.chars().all(|c| c == 'é'));
    }
}
