//! The answer of a limiter for one request: the verdict, each applying
//! rule's decision (no allocation: a fixed array), and the response fields.

use portcullis_core::ErrorCode;
use portcullis_core::ratelimit::headers::{ceil_secs, problem_body, response_headers};
use portcullis_core::ratelimit::{Decision, MAX_RULES, Rule, RuleReport};

/// A set of rule indices (a bit mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSet(u16);

impl RuleSet {
    /// Every rule.
    pub const ALL: RuleSet = RuleSet(u16::MAX);
    /// No rule.
    pub const NONE: RuleSet = RuleSet(0);

    /// Only rule `i`.
    pub fn only(i: usize) -> Self {
        Self::NONE.with(i)
    }

    /// This set plus rule `i`.
    pub fn with(self, i: usize) -> Self {
        Self(
            self.0
                | 1u16
                    .checked_shl(u32::try_from(i).unwrap_or(u32::MAX))
                    .unwrap_or(0),
        )
    }

    /// Whether rule `i` is in the set.
    pub fn contains(self, i: usize) -> bool {
        u32::try_from(i).is_ok_and(|i| i < 16 && self.0 & (1 << i) != 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// What the limiter decided for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every applying rule admits it (or no rule applies).
    Admitted,
    /// A rule refuses it: answer 429 `rate_limit.exceeded`.
    Limited,
    /// The backend failed and a rule with `on_backend_error = "deny"`
    /// applies: answer 503 `backend.unavailable`.
    Unavailable,
}

/// A [`Decision`] in 24 bytes, all-zero when empty, so an [`Outcome`]
/// stays small and cheap to create and return (limits and remaining
/// counts are at most 1e9, see `MAX_LIMIT`).
#[derive(Debug, Clone, Copy, Default)]
struct Packed {
    reset_after_us: u64,
    retry_after_us: u64,
    /// Bit 31: allowed; bits 0-30: the limit.
    limit_allowed: u32,
    remaining: u32,
}

const ALLOWED_BIT: u32 = 1 << 31;

impl Packed {
    fn pack(d: Decision) -> Self {
        let limit = u32::try_from(d.limit.min(u64::from(ALLOWED_BIT - 1))).unwrap_or(0);
        Self {
            reset_after_us: d.reset_after_us,
            retry_after_us: d.retry_after_us,
            limit_allowed: limit | if d.allowed { ALLOWED_BIT } else { 0 },
            remaining: u32::try_from(d.remaining).unwrap_or(u32::MAX),
        }
    }

    fn unpack(self) -> Decision {
        Decision {
            allowed: self.limit_allowed & ALLOWED_BIT != 0,
            limit: u64::from(self.limit_allowed & !ALLOWED_BIT),
            remaining: u64::from(self.remaining),
            reset_after_us: self.reset_after_us,
            retry_after_us: self.retry_after_us,
        }
    }
}

/// The decisions of the rules that applied to one request.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    decisions: [Packed; MAX_RULES],
    rules: [u8; MAX_RULES],
    len: u8,
    primary: u8,
    verdict: Verdict,
    degraded: bool,
}

impl Outcome {
    pub(crate) fn empty() -> Self {
        Self {
            verdict: Verdict::Admitted,
            rules: [0; MAX_RULES],
            decisions: [Packed::default(); MAX_RULES],
            len: 0,
            primary: 0,
            degraded: false,
        }
    }

    pub(crate) fn push(&mut self, rule: usize, decision: Decision) {
        let i = usize::from(self.len);
        if i < MAX_RULES {
            self.rules[i] = u8::try_from(rule).unwrap_or(u8::MAX);
            self.decisions[i] = Packed::pack(decision);
            self.len += 1;
        }
    }

    /// Sets the verdict and the most restrictive decision from the decisions.
    pub(crate) fn finish(&mut self) {
        let mut primary: Option<(usize, Decision)> = None;
        let mut refused = false;
        for (i, d) in self.decisions[..usize::from(self.len)].iter().enumerate() {
            let d = d.unpack();
            refused |= !d.allowed;
            if primary.is_none_or(|(_, p)| d.more_restrictive_than(&p)) {
                primary = Some((i, d));
            }
        }
        self.primary = primary.map_or(0, |(i, _)| u8::try_from(i).unwrap_or(0));
        if self.verdict == Verdict::Admitted && refused {
            self.verdict = Verdict::Limited;
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_unavailable(&mut self) {
        self.verdict = Verdict::Unavailable;
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_degraded(&mut self) {
        self.degraded = true;
    }

    /// How many rules applied.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether no rule applied.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The verdict.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Whether the request may proceed.
    pub fn admitted(&self) -> bool {
        self.verdict == Verdict::Admitted
    }

    /// Whether a backend failure was handled by a fallback for this request.
    pub fn degraded(&self) -> bool {
        self.degraded
    }

    /// `(rule index, decision)` of every rule that applied.
    pub fn decisions(&self) -> impl Iterator<Item = (usize, Decision)> + '_ {
        self.rules[..usize::from(self.len)]
            .iter()
            .zip(&self.decisions[..usize::from(self.len)])
            .map(|(r, d)| (usize::from(*r), d.unpack()))
    }

    /// The most restrictive `(rule index, decision)`, if any rule applied.
    pub fn primary(&self) -> Option<(usize, Decision)> {
        (self.len > 0).then(|| {
            let i = usize::from(self.primary);
            (usize::from(self.rules[i]), self.decisions[i].unpack())
        })
    }

    /// The HTTP status to answer with when not admitted.
    pub fn status(&self) -> u16 {
        match self.verdict {
            Verdict::Admitted => 200,
            Verdict::Limited => ErrorCode::RateLimitExceeded.http_status(),
            Verdict::Unavailable => ErrorCode::BackendUnavailable.http_status(),
        }
    }

    /// Response fields (`RateLimit-Policy`, `RateLimit`, optionally
    /// `X-RateLimit-*`, and `Retry-After` when limited), lower-case names.
    pub fn headers(&self, rules: &[Rule], legacy: bool) -> Vec<(&'static str, String)> {
        let mut reports = Vec::with_capacity(usize::from(self.len));
        let mut primary = 0;
        for (i, (rule, decision)) in self.decisions().enumerate() {
            if let Some(rule) = rules.get(rule) {
                if i == usize::from(self.primary) {
                    primary = reports.len();
                }
                reports.push(RuleReport { rule, decision });
            }
        }
        let mut out = response_headers(&reports, primary, legacy);
        if self.verdict == Verdict::Unavailable && !out.iter().any(|(n, _)| *n == "retry-after") {
            out.push(("retry-after", "1".to_owned()));
        }
        out
    }

    /// The `application/problem+json` body when not admitted.
    pub fn problem_body(&self, rules: &[Rule]) -> Option<String> {
        match self.verdict {
            Verdict::Admitted => None,
            Verdict::Limited => {
                let (rule, d) = self.primary()?;
                let name = rules.get(rule).map_or("", |r| r.name.as_str());
                Some(problem_body(name, ceil_secs(d.retry_after_us).max(1)))
            }
            Verdict::Unavailable => Some(
                serde_json::json!({
                    "type": "about:blank",
                    "title": "Service Unavailable",
                    "status": 503,
                    "code": ErrorCode::BackendUnavailable.as_str(),
                    "detail": "the rate-limit backend is unavailable and this limit fails closed; retry shortly",
                })
                .to_string(),
            ),
        }
    }
}
