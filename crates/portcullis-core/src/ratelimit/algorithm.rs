//! The three algorithms as pure functions of stored state and the time now
//! (Unix microseconds). The Redis script (`portcullis/src/ratelimit/redis.lua`)
//! is a line-by-line port of these, so both backends decide alike.
//!
//! Every function takes `consume`: `false` answers what a request would get
//! without recording it (peek).

use std::collections::VecDeque;
use std::time::Duration;

use super::rule::Algorithm;

/// The answer of one rule for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the rule admits the request.
    pub allowed: bool,
    /// The rule's quota (GCRA burst, or window limit).
    pub limit: u64,
    /// Requests still admitted right after this one.
    pub remaining: u64,
    /// Microseconds until the quota is whole again.
    pub reset_after_us: u64,
    /// Microseconds until a request would be admitted (0 when admitted).
    pub retry_after_us: u64,
}

impl Decision {
    /// Time until the quota is whole again.
    pub fn reset_after(&self) -> Duration {
        Duration::from_micros(self.reset_after_us)
    }

    /// Time until a retry may succeed; `None` when admitted.
    pub fn retry_after(&self) -> Option<Duration> {
        (!self.allowed).then(|| Duration::from_micros(self.retry_after_us))
    }

    /// A decision that admits without knowing the state (fail-open).
    pub fn unknown_allowed(limit: u64) -> Self {
        Self {
            allowed: true,
            limit,
            remaining: limit,
            reset_after_us: 0,
            retry_after_us: 0,
        }
    }

    /// Whether `self` is more restrictive than `other`: denied beats
    /// admitted, then the longer wait, then fewer remaining, then the longer
    /// reset.
    pub fn more_restrictive_than(&self, other: &Decision) -> bool {
        match (self.allowed, other.allowed) {
            (false, true) => true,
            (true, false) => false,
            (false, false) => self.retry_after_us > other.retry_after_us,
            (true, true) => {
                self.remaining < other.remaining
                    || (self.remaining == other.remaining
                        && self.reset_after_us > other.reset_after_us)
            }
        }
    }
}

/// Microseconds of a duration, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// GCRA parameters in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraParams {
    /// Time between two requests at the sustained rate.
    pub emission_us: u64,
    /// Bucket depth in time: `emission_us * burst`.
    pub tolerance_us: u64,
    /// The burst (quota).
    pub burst: u64,
}

impl GcraParams {
    /// From a rate per period and a burst (both at least 1; see
    /// [`Algorithm::validate`]).
    pub fn new(rate: u64, period: Duration, burst: u64) -> Self {
        let emission_us = (micros(period) / rate.max(1)).max(1);
        let burst = burst.max(1);
        Self {
            emission_us,
            tolerance_us: emission_us.saturating_mul(burst),
            burst,
        }
    }
}

/// GCRA: `tat` is the stored theoretical arrival time (0 when fresh).
pub fn gcra(tat: &mut u64, p: &GcraParams, now: u64, consume: bool) -> Decision {
    let base = (*tat).max(now);
    let new_tat = base.saturating_add(p.emission_us);
    let horizon = now.saturating_add(p.tolerance_us);
    if new_tat <= horizon {
        if consume {
            *tat = new_tat;
        }
        Decision {
            allowed: true,
            limit: p.burst,
            remaining: (horizon - new_tat) / p.emission_us,
            reset_after_us: new_tat - now,
            retry_after_us: 0,
        }
    } else {
        Decision {
            allowed: false,
            limit: p.burst,
            remaining: 0,
            reset_after_us: base - now,
            retry_after_us: new_tat - horizon,
        }
    }
}

/// When a GCRA state is back to fresh (can be forgotten).
pub fn gcra_idle_at(tat: u64) -> u64 {
    tat
}

/// Sliding-window log: `log` holds the stamps of admitted requests, oldest
/// first, never more than `limit`. The window is `(now - period, now]`.
pub fn sliding_log(
    log: &mut VecDeque<u64>,
    limit: u64,
    period_us: u64,
    now: u64,
    consume: bool,
) -> Decision {
    let now = log.back().map_or(now, |&newest| now.max(newest));
    while log
        .front()
        .is_some_and(|&t| t.saturating_add(period_us) <= now)
    {
        log.pop_front();
    }
    let len = log.len() as u64;
    if len < limit {
        if consume {
            log.push_back(now);
        }
        let oldest = log.front().copied().unwrap_or(now);
        let used = len + 1;
        Decision {
            allowed: true,
            limit,
            remaining: limit - used,
            reset_after_us: oldest.saturating_add(period_us) - now,
            retry_after_us: 0,
        }
    } else {
        let oldest = log.front().copied().unwrap_or(now);
        let newest = log.back().copied().unwrap_or(now);
        let wait = oldest.saturating_add(period_us) - now;
        Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset_after_us: newest.saturating_add(period_us) - now,
            retry_after_us: wait,
        }
    }
}

/// Fixed window aligned to the Unix epoch: `state` is (window start, count).
pub fn fixed_window(
    state: &mut (u64, u64),
    limit: u64,
    period_us: u64,
    now: u64,
    consume: bool,
) -> Decision {
    let period_us = period_us.max(1);
    let start_now = now - now % period_us;
    let (mut start, mut count) = *state;
    if start_now > start {
        start = start_now;
        count = 0;
    }
    let reset = start.saturating_add(period_us).saturating_sub(now);
    if count < limit {
        count += 1;
        if consume {
            *state = (start, count);
        }
        Decision {
            allowed: true,
            limit,
            remaining: limit - count,
            reset_after_us: reset,
            retry_after_us: 0,
        }
    } else {
        if consume {
            *state = (start, count);
        }
        Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset_after_us: reset,
            retry_after_us: reset,
        }
    }
}

/// The state of one rule for one key, for backends that keep it in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// GCRA theoretical arrival time.
    Gcra(u64),
    /// Fixed window start and count.
    Fixed(u64, u64),
    /// Sliding-window stamps.
    Log(VecDeque<u64>),
}

impl State {
    /// Fresh state for an algorithm.
    pub fn fresh(algorithm: &Algorithm) -> Self {
        match algorithm {
            Algorithm::Gcra { .. } => Self::Gcra(0),
            Algorithm::FixedWindow { .. } => Self::Fixed(0, 0),
            Algorithm::SlidingLog { .. } => Self::Log(VecDeque::new()),
        }
    }

    /// Unix µs after which this state equals a fresh one and may be dropped.
    pub fn idle_at(&self, algorithm: &Algorithm) -> u64 {
        let period = micros(algorithm.period());
        match self {
            Self::Gcra(tat) => gcra_idle_at(*tat),
            Self::Fixed(start, _) => start.saturating_add(period),
            Self::Log(log) => log.back().map_or(0, |t| t.saturating_add(period)),
        }
    }
}

/// Applies `algorithm` to `state` (which must have been made by
/// [`State::fresh`] for the same algorithm; a mismatch is reset).
pub fn apply(algorithm: &Algorithm, state: &mut State, now: u64, consume: bool) -> Decision {
    match *algorithm {
        Algorithm::Gcra {
            rate,
            period,
            burst,
        } => {
            let p = GcraParams::new(rate, period, burst);
            if !matches!(state, State::Gcra(_)) {
                *state = State::Gcra(0);
            }
            match state {
                State::Gcra(tat) => gcra(tat, &p, now, consume),
                _ => Decision::unknown_allowed(burst),
            }
        }
        Algorithm::SlidingLog { limit, period } => {
            if !matches!(state, State::Log(_)) {
                *state = State::Log(VecDeque::new());
            }
            match state {
                State::Log(log) => sliding_log(log, limit, micros(period), now, consume),
                _ => Decision::unknown_allowed(limit),
            }
        }
        Algorithm::FixedWindow { limit, period } => {
            if !matches!(state, State::Fixed(..)) {
                *state = State::Fixed(0, 0);
            }
            match state {
                State::Fixed(start, count) => {
                    let mut s = (*start, *count);
                    let d = fixed_window(&mut s, limit, micros(period), now, consume);
                    *start = s.0;
                    *count = s.1;
                    d
                }
                _ => Decision::unknown_allowed(limit),
            }
        }
    }
}

/// The most restrictive of several decisions (see
/// [`Decision::more_restrictive_than`]); its index.
pub fn most_restrictive<'a>(decisions: impl IntoIterator<Item = &'a Decision>) -> Option<usize> {
    let mut best: Option<(usize, &Decision)> = None;
    for (i, d) in decisions.into_iter().enumerate() {
        match best {
            Some((_, b)) if !d.more_restrictive_than(b) => {}
            _ => best = Some((i, d)),
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_burst_then_rate() {
        let p = GcraParams::new(10, Duration::from_secs(1), 20);
        let mut tat = 0;
        let now = 1_000_000_000;
        for i in 0..20 {
            let d = gcra(&mut tat, &p, now, true);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 19 - i);
        }
        let d = gcra(&mut tat, &p, now, true);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_us, 100_000);
        assert!(gcra(&mut tat, &p, now + 100_000, true).allowed);
    }

    #[test]
    fn peek_does_not_consume() {
        let p = GcraParams::new(1, Duration::from_secs(1), 1);
        let mut tat = 0;
        assert!(gcra(&mut tat, &p, 5, false).allowed);
        assert!(gcra(&mut tat, &p, 5, true).allowed);
        assert!(!gcra(&mut tat, &p, 5, false).allowed);
    }

    #[test]
    fn fixed_window_resets_at_boundary() {
        let mut s = (0, 0);
        for _ in 0..3 {
            assert!(fixed_window(&mut s, 3, 1000, 1500, true).allowed);
        }
        let d = fixed_window(&mut s, 3, 1000, 1999, true);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_us, 1);
        assert!(fixed_window(&mut s, 3, 1000, 2000, true).allowed);
    }

    #[test]
    fn sliding_log_is_exact() {
        let mut log = VecDeque::new();
        assert!(sliding_log(&mut log, 2, 1000, 100, true).allowed);
        assert!(sliding_log(&mut log, 2, 1000, 600, true).allowed);
        let d = sliding_log(&mut log, 2, 1000, 1099, true);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_us, 1);
        assert!(sliding_log(&mut log, 2, 1000, 1100, true).allowed);
        assert!(!sliding_log(&mut log, 2, 1000, 1599, true).allowed);
    }
}
