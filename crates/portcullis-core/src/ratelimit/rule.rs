//! A rate-limit rule: an algorithm with its limits, the key it counts by, and
//! what to do when the shared backend is unreachable. Validated at startup.

use std::time::Duration;

use super::key::{KeyPart, KeySpec};

/// Longest period a rule may have (one week), so that microsecond times and
/// products stay far inside the range both Rust `u64` and Lua doubles hold
/// exactly.
pub const MAX_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);

/// Largest limit of a sliding-window log: it stores one stamp per admitted
/// request, so it is meant for small limits.
pub const MAX_LOG_LIMIT: u64 = 10_000;

/// Largest limit, rate or burst of any rule.
pub const MAX_LIMIT: u64 = 1_000_000_000;

/// How a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Generic cell rate algorithm: `rate` requests per `period` on average,
    /// with up to `burst` at once (token-bucket semantics, one timestamp of
    /// state).
    Gcra {
        /// Requests per period (the refill rate).
        rate: u64,
        /// The period of `rate`.
        period: Duration,
        /// Bucket size: requests admitted at once after a quiet spell.
        burst: u64,
    },
    /// Exact sliding-window log: at most `limit` requests in any `period`.
    SlidingLog {
        /// Requests per window.
        limit: u64,
        /// Window length.
        period: Duration,
    },
    /// Fixed window aligned to the Unix epoch: at most `limit` per window.
    FixedWindow {
        /// Requests per window.
        limit: u64,
        /// Window length.
        period: Duration,
    },
}

impl Algorithm {
    /// The number advertised as the quota (`q`, `X-RateLimit-Limit`).
    pub fn quota(&self) -> u64 {
        match *self {
            Self::Gcra { burst, .. } => burst,
            Self::SlidingLog { limit, .. } | Self::FixedWindow { limit, .. } => limit,
        }
    }

    /// The `RateLimit-Policy` quota and window in whole seconds (`q`, `w`),
    /// stating no more than the rule sustains. Windows: the limit per
    /// period. GCRA: one burst per the time the bucket takes to refill
    /// (`burst * period / rate`, rounded up to whole seconds, at least 1,
    /// with `q` the requests earned in that time), so `q / w` is the
    /// sustained rate and `q` at least the burst. `q = burst; w = period`
    /// would overstate the rate whenever burst > rate.
    pub fn policy(&self) -> (u64, u64) {
        let secs = |us: u128| {
            u64::try_from(us.div_ceil(1_000_000))
                .unwrap_or(u64::MAX)
                .max(1)
        };
        match *self {
            Self::Gcra {
                rate,
                period,
                burst,
            } => {
                let p = super::algorithm::GcraParams::new(rate, period, burst);
                let emission = u128::from(p.emission_us);
                let w = secs(emission * u128::from(p.burst));
                let q = u128::from(w) * 1_000_000 / emission;
                (u64::try_from(q).unwrap_or(u64::MAX), w)
            }
            Self::SlidingLog { limit, period } | Self::FixedWindow { limit, period } => {
                (limit, secs(period.as_micros()))
            }
        }
    }

    /// The period of the rate or window.
    pub fn period(&self) -> Duration {
        match *self {
            Self::Gcra { period, .. }
            | Self::SlidingLog { period, .. }
            | Self::FixedWindow { period, .. } => period,
        }
    }

    /// A short stable name (`gcra`, `sliding_log`, `fixed_window`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Gcra { .. } => "gcra",
            Self::SlidingLog { .. } => "sliding_log",
            Self::FixedWindow { .. } => "fixed_window",
        }
    }

    /// Checks the numbers; the error names the offending field.
    pub fn validate(&self) -> Result<(), RuleError> {
        let period = self.period();
        if period < Duration::from_millis(1) || period > MAX_PERIOD {
            return Err(RuleError::Field {
                field: "period",
                reason: "must be between 1 ms and 7 days",
            });
        }
        match *self {
            Self::Gcra { rate, burst, .. } => {
                if rate == 0 || rate > MAX_LIMIT {
                    return Err(RuleError::Field {
                        field: "rate",
                        reason: "must be between 1 and 1e9",
                    });
                }
                if burst == 0 || burst > MAX_LIMIT {
                    return Err(RuleError::Field {
                        field: "burst",
                        reason: "must be between 1 and 1e9",
                    });
                }
                if period.as_micros() < u128::from(rate) {
                    return Err(RuleError::Field {
                        field: "rate",
                        reason: "must leave at least 1 µs between requests (rate <= period in µs)",
                    });
                }
                // The bucket's depth in time must stay exact in a Lua double.
                if (period.as_micros() / u128::from(rate)) * u128::from(burst)
                    > 1_000_000_000_000_000
                {
                    return Err(RuleError::Field {
                        field: "burst",
                        reason: "burst / rate spans more than 30 years; lower burst or raise rate",
                    });
                }
            }
            Self::SlidingLog { limit, .. } => {
                if limit == 0 || limit > MAX_LOG_LIMIT {
                    return Err(RuleError::Field {
                        field: "limit",
                        reason: "a sliding log limit must be between 1 and 10000; use gcra or fixed_window above that",
                    });
                }
            }
            Self::FixedWindow { limit, .. } => {
                if limit == 0 || limit > MAX_LIMIT {
                    return Err(RuleError::Field {
                        field: "limit",
                        reason: "must be between 1 and 1e9",
                    });
                }
            }
        }
        Ok(())
    }
}

/// What a rule does when its shared backend (Redis) cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBackendError {
    /// Fail open: admit the request.
    Allow,
    /// Fail closed: refuse with 503 `backend.unavailable`.
    Deny,
    /// Fall back to this replica's own memory limiter (the default).
    #[default]
    Local,
}

impl OnBackendError {
    /// The configuration spelling (`allow`, `deny`, `local`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Local => "local",
        }
    }
}

impl std::str::FromStr for OnBackendError {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            "local" => Ok(Self::Local),
            _ => Err(RuleError::Field {
                field: "on_backend_error",
                reason: "must be one of allow, deny, local",
            }),
        }
    }
}

/// One rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique name, used in keys and in the `RateLimit` headers.
    pub name: String,
    /// How it counts.
    pub algorithm: Algorithm,
    /// What it counts by.
    pub key: KeySpec,
    /// Behaviour when the shared backend fails.
    pub on_backend_error: OnBackendError,
    /// On a shared backend (Redis): how many tokens of a key a replica may
    /// take in one call and hand out locally (0 or 1: none, every request
    /// is decided by the backend). See `portcullis::ratelimit::lease`.
    pub lease: u32,
}

/// Largest `lease` a rule may set.
pub const MAX_LEASE: u32 = 1_000;

impl Rule {
    /// A rule with the default `on_backend_error` (`local`) and no lease.
    pub fn new(name: impl Into<String>, algorithm: Algorithm, key: KeySpec) -> Self {
        Self {
            name: name.into(),
            algorithm,
            key,
            on_backend_error: OnBackendError::default(),
            lease: 0,
        }
    }

    /// Lets a replica take up to `tokens` of a key per backend call.
    pub fn lease(mut self, tokens: u32) -> Self {
        self.lease = tokens;
        self
    }

    /// Sets the behaviour when the backend fails.
    pub fn on_backend_error(mut self, mode: OnBackendError) -> Self {
        self.on_backend_error = mode;
        self
    }

    /// Validates the rule; the error names the field.
    pub fn validate(&self) -> Result<(), RuleError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !name_ok {
            return Err(RuleError::Field {
                field: "name",
                reason: "must be 1-64 characters of [A-Za-z0-9_.-]",
            });
        }
        self.key.validate()?;
        if self.lease > MAX_LEASE {
            return Err(RuleError::Field {
                field: "lease",
                reason: "must be between 0 and 1000",
            });
        }
        self.algorithm.validate()
    }
}

/// Checks a set of rules: each valid, names unique, at most
/// [`MAX_RULES`] of them.
pub fn validate_rules(rules: &[Rule]) -> Result<(), RuleError> {
    if rules.len() > MAX_RULES {
        return Err(RuleError::Field {
            field: "rules",
            reason: "at most 8 rules may apply to one limiter",
        });
    }
    for (i, rule) in rules.iter().enumerate() {
        rule.validate().map_err(|e| e.in_rule(&rule.name))?;
        if rules[..i].iter().any(|r| r.name == rule.name) {
            return Err(RuleError::DuplicateName(rule.name.clone()));
        }
    }
    Ok(())
}

/// Most rules one limiter checks per request.
pub const MAX_RULES: usize = 8;

/// A rule that cannot be used, naming the field to fix.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A field has a value out of range.
    #[error("rate limit field `{field}`: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: &'static str,
    },
    /// The same error inside a named rule.
    #[error("rate limit rule `{rule}`: {source}")]
    InRule {
        /// The rule's name.
        rule: String,
        /// The error.
        #[source]
        source: Box<RuleError>,
    },
    /// Two rules share a name.
    #[error("rate limit rule name `{0}` is used twice; names must be unique")]
    DuplicateName(String),
}

impl RuleError {
    fn in_rule(self, rule: &str) -> Self {
        Self::InRule {
            rule: rule.to_owned(),
            source: Box::new(self),
        }
    }
}

/// A rule as written in configuration (JSON / TOML), e.g.
/// `{"name": "per_ip", "algorithm": "gcra", "rate": 10, "period": 1,
/// "burst": 20, "key": ["ip"], "on_backend_error": "local"}`.
/// `period` is in seconds (fractions allowed); `key` parts are `ip`,
/// `subject`, `api_key_id`, `app_id`, `tenant`, `route` or
/// `header:<name>`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The rule's name.
    pub name: String,
    /// `gcra`, `sliding_log` or `fixed_window`.
    pub algorithm: String,
    /// GCRA: requests per period.
    #[serde(default)]
    pub rate: Option<u64>,
    /// GCRA: bucket size (default: `rate`).
    #[serde(default)]
    pub burst: Option<u64>,
    /// Windows: requests per period.
    #[serde(default)]
    pub limit: Option<u64>,
    /// Period in seconds.
    pub period: f64,
    /// Key parts.
    pub key: Vec<String>,
    /// `allow`, `deny` or `local` (default).
    #[serde(default)]
    pub on_backend_error: Option<String>,
    /// Tokens a replica may take per Redis call (default 0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u32>,
}

impl TryFrom<RuleConfig> for Rule {
    type Error = RuleError;
    fn try_from(c: RuleConfig) -> Result<Self, RuleError> {
        let name = c.name.clone();
        let inner = || -> Result<Rule, RuleError> {
            if !(c.period.is_finite() && c.period > 0.0 && c.period <= MAX_PERIOD.as_secs_f64()) {
                return Err(RuleError::Field {
                    field: "period",
                    reason: "must be seconds between 0.001 and 604800",
                });
            }
            let period = Duration::from_secs_f64(c.period);
            let need = |v: Option<u64>, field: &'static str| {
                v.ok_or(RuleError::Field {
                    field,
                    reason: "is required for this algorithm",
                })
            };
            let algorithm = match c.algorithm.as_str() {
                "gcra" => {
                    let rate = need(c.rate, "rate")?;
                    Algorithm::Gcra {
                        rate,
                        period,
                        burst: c.burst.unwrap_or(rate),
                    }
                }
                "sliding_log" => Algorithm::SlidingLog {
                    limit: need(c.limit, "limit")?,
                    period,
                },
                "fixed_window" => Algorithm::FixedWindow {
                    limit: need(c.limit, "limit")?,
                    period,
                },
                _ => {
                    return Err(RuleError::Field {
                        field: "algorithm",
                        reason: "must be one of gcra, sliding_log, fixed_window",
                    });
                }
            };
            let mut parts = Vec::with_capacity(c.key.len());
            for p in &c.key {
                parts.push(match p.as_str() {
                    "ip" => KeyPart::Ip,
                    "subject" => KeyPart::Subject,
                    "api_key_id" => KeyPart::ApiKeyId,
                    "app_id" => KeyPart::AppId,
                    "tenant" => KeyPart::Tenant,
                    "route" => KeyPart::Route,
                    other => match other.strip_prefix("header:") {
                        Some(h) => KeyPart::Header(h.to_ascii_lowercase()),
                        None => {
                            return Err(RuleError::Field {
                                field: "key",
                                reason: "parts are ip, subject, api_key_id, app_id, tenant, route or header:<name>",
                            });
                        }
                    },
                });
            }
            let rule = Rule {
                name: c.name.clone(),
                algorithm,
                key: KeySpec::new(parts),
                on_backend_error: match &c.on_backend_error {
                    Some(m) => m.parse()?,
                    None => OnBackendError::default(),
                },
                lease: c.lease.unwrap_or(0),
            };
            rule.validate()?;
            Ok(rule)
        };
        inner().map_err(|e| match e {
            RuleError::InRule { .. } => e,
            other => other.in_rule(&name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Rule, String> {
        let c: RuleConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Rule::try_from(c).map_err(|e| e.to_string())
    }

    #[test]
    fn config_parses_and_errors_name_the_rule_and_field() {
        let r = parse(r#"{"name":"per_ip","algorithm":"gcra","rate":10,"period":1,"burst":20,"key":["ip"],"on_backend_error":"deny"}"#).unwrap();
        assert_eq!(r.algorithm.quota(), 20);
        assert_eq!(r.on_backend_error, OnBackendError::Deny);
        let r = parse(r#"{"name":"t","algorithm":"fixed_window","limit":5,"period":0.5,"key":["subject","header:X-Team"]}"#).unwrap();
        assert_eq!(r.key.parts()[1], KeyPart::Header("x-team".into()));
        let e = parse(
            r#"{"name":"bad","algorithm":"sliding_log","limit":50000,"period":1,"key":["ip"]}"#,
        )
        .unwrap_err();
        assert!(e.contains("`bad`") && e.contains("limit"), "{e}");
        let e = parse(r#"{"name":"m","algorithm":"gcra","rate":1,"period":1,"key":["ip"],"on_backend_error":"maybe"}"#).unwrap_err();
        assert!(e.contains("on_backend_error"), "{e}");
        let e = parse(r#"{"name":"k","algorithm":"gcra","rate":1,"period":1,"key":["cookie"]}"#)
            .unwrap_err();
        assert!(e.contains("key"), "{e}");
        assert!(
            parse(r#"{"name":"u","algorithm":"gcra","rate":1,"period":1,"key":["ip"],"extra":1}"#)
                .is_err()
        );
        assert!(
            parse(r#"{"name":"p","algorithm":"gcra","rate":1,"period":-1,"key":["ip"]}"#)
                .unwrap_err()
                .contains("period")
        );
        let r =
            parse(r#"{"name":"l","algorithm":"gcra","rate":9,"period":1,"key":["ip"],"lease":64}"#)
                .unwrap();
        assert_eq!(r.lease, 64);
        assert_eq!(
            parse(r#"{"name":"l","algorithm":"gcra","rate":9,"period":1,"key":["ip"]}"#)
                .unwrap()
                .lease,
            0
        );
        let e = parse(
            r#"{"name":"l","algorithm":"gcra","rate":9,"period":1,"key":["ip"],"lease":1001}"#,
        )
        .unwrap_err();
        assert!(e.contains("`l`") && e.contains("lease"), "{e}");
    }
}
