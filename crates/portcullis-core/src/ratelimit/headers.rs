//! Response fields for rate limits: the IETF `RateLimit-Policy` and
//! `RateLimit` structured fields (draft-ietf-httpapi-ratelimit-headers-10/11
//! form: `"name";q=100;w=60` and `"name";r=42;t=17`), the legacy
//! `X-RateLimit-*` fields, `Retry-After`, and the RFC 9457 problem body
//! with code `rate_limit.exceeded`.

use std::fmt::Write as _;

use super::algorithm::Decision;
use super::rule::Rule;
use crate::ErrorCode;

/// Media type of the problem body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Whole seconds, rounded up (a client must not retry early).
pub fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// One rule's decision for one request, as reported in the response.
#[derive(Debug, Clone, Copy)]
pub struct RuleReport<'a> {
    /// The rule.
    pub rule: &'a Rule,
    /// Its decision.
    pub decision: Decision,
}

/// The response fields for the rules that applied to a request; `primary`
/// is the index of the most restrictive. `legacy` adds `X-RateLimit-*`.
pub fn response_headers(
    reports: &[RuleReport<'_>],
    primary: usize,
    legacy: bool,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(6);
    let Some(main) = reports.get(primary) else {
        return out;
    };
    let mut policy = String::new();
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            policy.push_str(", ");
        }
        let (q, w) = r.rule.algorithm.policy();
        let _ = write!(policy, "\"{}\";q={q};w={w}", r.rule.name);
    }
    out.push(("ratelimit-policy", policy));
    let d = &main.decision;
    let t = if d.allowed {
        ceil_secs(d.reset_after_us)
    } else {
        ceil_secs(d.retry_after_us).max(1)
    };
    out.push((
        "ratelimit",
        format!("\"{}\";r={};t={}", main.rule.name, d.remaining, t),
    ));
    if legacy {
        out.push(("x-ratelimit-limit", d.limit.to_string()));
        out.push(("x-ratelimit-remaining", d.remaining.to_string()));
        out.push(("x-ratelimit-reset", t.to_string()));
    }
    if !d.allowed {
        out.push((
            "retry-after",
            ceil_secs(d.retry_after_us).max(1).to_string(),
        ));
    }
    out
}

/// The RFC 9457 body of a 429 answer.
pub fn problem_body(rule_name: &str, retry_after_secs: u64) -> String {
    serde_json::json!({
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": ErrorCode::RateLimitExceeded.http_status(),
        "code": ErrorCode::RateLimitExceeded.as_str(),
        "detail": format!("rate limit `{rule_name}` exceeded; retry after {retry_after_secs} s"),
        "retry_after": retry_after_secs,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{Algorithm, KeySpec};
    use std::time::Duration;

    #[test]
    fn denied_response_fields() {
        let per_ip = Rule::new(
            "per_ip",
            Algorithm::Gcra {
                rate: 10,
                period: Duration::from_secs(1),
                burst: 20,
            },
            KeySpec::ip(),
        );
        let hourly = Rule::new(
            "hourly",
            Algorithm::FixedWindow {
                limit: 1000,
                period: Duration::from_secs(3600),
            },
            KeySpec::subject(),
        );
        let reports = [
            RuleReport {
                rule: &per_ip,
                decision: Decision {
                    allowed: false,
                    limit: 20,
                    remaining: 0,
                    reset_after_us: 2_000_000,
                    retry_after_us: 100_000,
                },
            },
            RuleReport {
                rule: &hourly,
                decision: Decision {
                    allowed: true,
                    limit: 1000,
                    remaining: 900,
                    reset_after_us: 1_000_000,
                    retry_after_us: 0,
                },
            },
        ];
        let h = response_headers(&reports, 0, true);
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(
            get("ratelimit-policy"),
            Some("\"per_ip\";q=20;w=2, \"hourly\";q=1000;w=3600")
        );
        assert_eq!(get("ratelimit"), Some("\"per_ip\";r=0;t=1"));
        assert_eq!(get("retry-after"), Some("1"));
        assert_eq!(get("x-ratelimit-limit"), Some("20"));
        let body: serde_json::Value = serde_json::from_str(&problem_body("per_ip", 1)).unwrap();
        assert_eq!(body["code"], "rate_limit.exceeded");
        assert_eq!(body["status"], 429);
    }
}
