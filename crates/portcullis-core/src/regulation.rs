//! Login regulation, sans I/O: attempts at a credential (login, password
//! reset redemption, console sign-in) counted per client IP and per
//! (account, client IP) in a window; a key that used up its attempts is
//! refused for a ban time, before any password hash is computed.
//!
//! Every attempt is charged up front ([`FailureRecord::attempt`]), so N
//! concurrent attempts against a limit of N admit exactly N, on one replica
//! or many sharing the state; a success gives its charge back
//! ([`FailureRecord::release`]) and clears the (account, IP) key, so only
//! failures accumulate. The Redis script of the runtime
//! (`portcullis::regulation`) is this same state machine.

use std::time::Duration;

/// How many failed attempts are tolerated, per what, for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegulationPolicy {
    /// Failures of one account from one client IP in `window` before that
    /// pair is refused (default 5).
    pub max_failures_per_account: u32,
    /// Failures from one client IP, over every account, in `window` before
    /// that IP is refused (default 20).
    pub max_failures_per_ip: u32,
    /// The counting window, from a key's first failure (default 5 min).
    pub window: Duration,
    /// How long a key that used up its attempts is refused (default 15 min).
    pub ban_time: Duration,
}

/// The most attempts a key may be given (bounds a key's counter).
pub const MAX_ATTEMPTS: u32 = 10_000;

impl Default for RegulationPolicy {
    fn default() -> Self {
        Self {
            max_failures_per_account: 5,
            max_failures_per_ip: 20,
            window: Duration::from_secs(5 * 60),
            ban_time: Duration::from_secs(15 * 60),
        }
    }
}

/// A policy that cannot work, naming the field.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegulationConfigError {
    /// A limit is zero or above [`MAX_ATTEMPTS`].
    #[error("`{0}` must be between 1 and {MAX_ATTEMPTS}")]
    Limit(&'static str),
    /// A duration is below 1 s or above a day.
    #[error("`{0}` must be between 1s and 24h")]
    Duration(&'static str),
}

impl RegulationPolicy {
    /// Checks the bounds; the error names the field.
    pub fn validate(&self) -> Result<(), RegulationConfigError> {
        for (name, n) in [
            ("max_failures_per_account", self.max_failures_per_account),
            ("max_failures_per_ip", self.max_failures_per_ip),
        ] {
            if n == 0 || n > MAX_ATTEMPTS {
                return Err(RegulationConfigError::Limit(name));
            }
        }
        for (name, d) in [("window", self.window), ("ban_time", self.ban_time)] {
            if d < Duration::from_secs(1) || d > Duration::from_secs(86_400) {
                return Err(RegulationConfigError::Duration(name));
            }
        }
        Ok(())
    }

    /// The window in milliseconds.
    pub fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// The ban time in milliseconds.
    pub fn ban_ms(&self) -> u64 {
        u64::try_from(self.ban_time.as_millis()).unwrap_or(u64::MAX)
    }

    /// The limit of `scope`.
    pub fn limit(&self, scope: Scope) -> u32 {
        match scope {
            Scope::Ip => self.max_failures_per_ip,
            Scope::AccountAtIp => self.max_failures_per_account,
        }
    }
}

/// What a key counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every attempt from one client IP (logins, resets, console sign-ins
    /// each in their own namespace).
    Ip,
    /// Attempts at one account from one client IP: a throttled source
    /// never locks the account out for its owner elsewhere.
    AccountAtIp,
}

/// What is being attempted; keys of different surfaces never mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Token-service logins and password-reset redemptions (one IP budget).
    Login,
    /// Console sign-ins with an admin key.
    Console,
}

impl Surface {
    /// The key namespace.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Console => "console",
        }
    }
}

/// Longest account name kept in a key (longer names are cut; usernames
/// are shorter than this).
pub const MAX_ACCOUNT_KEY: usize = 256;

/// The state key of `scope` for a client IP (and account): `login:ip:<ip>`,
/// `login:acct:<ip>:<account>`. The account is the case-folded username.
pub fn key(surface: Surface, ip: &str, account: Option<&str>) -> String {
    match account {
        None => format!("{}:ip:{ip}", surface.as_str()),
        Some(a) => {
            let mut end = a.len().min(MAX_ACCOUNT_KEY);
            while !a.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}:acct:{ip}:{}", surface.as_str(), &a[..end])
        }
    }
}

/// One key's state. Times are Unix milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureRecord {
    /// Attempts charged in the current window.
    pub count: u32,
    /// When the current window started (its first charged attempt).
    pub window_start_ms: u64,
    /// Refused until then (0: not refused).
    pub locked_until_ms: u64,
}

/// The answer to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Go on (the attempt is charged).
    Admitted,
    /// Refused: retry after this many milliseconds (at least 1).
    Refused {
        /// Until the refusal ends.
        retry_after_ms: u64,
    },
}

impl Attempt {
    /// Whole seconds to wait, rounded up, at least 1 (`Retry-After`).
    pub fn retry_after_secs(self) -> Option<u64> {
        match self {
            Self::Admitted => None,
            Self::Refused { retry_after_ms } => Some(retry_after_ms.div_ceil(1000).max(1)),
        }
    }
}

impl FailureRecord {
    /// Whether this record holds nothing that matters at `now_ms` (it can
    /// be dropped).
    pub fn is_idle(&self, now_ms: u64, window_ms: u64) -> bool {
        self.locked_until_ms <= now_ms
            && (self.count == 0 || now_ms >= self.window_start_ms.saturating_add(window_ms))
    }

    /// Whether the key is refused at `now_ms`, and for how long.
    pub fn locked(&self, now_ms: u64) -> Option<u64> {
        (self.locked_until_ms > now_ms).then(|| self.locked_until_ms - now_ms)
    }

    /// One attempt at `now_ms` against `limit` attempts per `window_ms`:
    /// refused while locked; refused (and locked for `ban_ms`) when the
    /// window's attempts are used up; else charged.
    pub fn attempt(&mut self, now_ms: u64, limit: u32, window_ms: u64, ban_ms: u64) -> Attempt {
        if let Some(retry_after_ms) = self.locked(now_ms) {
            return Attempt::Refused { retry_after_ms };
        }
        if self.count == 0 || now_ms >= self.window_start_ms.saturating_add(window_ms) {
            self.count = 0;
            self.window_start_ms = now_ms;
        }
        if self.count >= limit {
            self.locked_until_ms = now_ms.saturating_add(ban_ms.max(1));
            self.count = 0;
            return Attempt::Refused {
                retry_after_ms: ban_ms.max(1),
            };
        }
        self.count += 1;
        Attempt::Admitted
    }

    /// Gives back the charge of an attempt that succeeded.
    pub fn release(&mut self) {
        self.count = self.count.saturating_sub(1);
    }
}

/// The stricter of two answers (the longer refusal).
pub fn stricter(a: Attempt, b: Attempt) -> Attempt {
    match (a, b) {
        (Attempt::Admitted, x) | (x, Attempt::Admitted) => x,
        (Attempt::Refused { retry_after_ms: x }, Attempt::Refused { retry_after_ms: y }) => {
            Attempt::Refused {
                retry_after_ms: x.max(y),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Clock, ManualClock};

    fn ms(clock: &ManualClock) -> u64 {
        u64::try_from(clock.now().as_millis()).expect("ms")
    }

    #[test]
    fn the_nth_plus_one_attempt_is_refused_for_the_ban_time_then_admitted() {
        let clock = ManualClock::at_unix_seconds(1_000);
        let mut r = FailureRecord::default();
        for _ in 0..5 {
            assert_eq!(r.attempt(ms(&clock), 5, 60_000, 300_000), Attempt::Admitted);
            clock.advance(Duration::from_secs(1));
        }
        let refused = r.attempt(ms(&clock), 5, 60_000, 300_000);
        assert_eq!(
            refused,
            Attempt::Refused {
                retry_after_ms: 300_000
            }
        );
        assert_eq!(refused.retry_after_secs(), Some(300));
        // Still refused, counting down, whatever the window does.
        clock.advance(Duration::from_secs(120));
        assert_eq!(
            r.attempt(ms(&clock), 5, 60_000, 300_000),
            Attempt::Refused {
                retry_after_ms: 180_000
            }
        );
        clock.advance(Duration::from_secs(180));
        assert_eq!(r.attempt(ms(&clock), 5, 60_000, 300_000), Attempt::Admitted);
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_lock() {
        let clock = ManualClock::at_unix_seconds(1_000);
        let mut r = FailureRecord::default();
        for _ in 0..50 {
            assert_eq!(r.attempt(ms(&clock), 3, 10_000, 60_000), Attempt::Admitted);
            clock.advance(Duration::from_secs(4));
            assert_eq!(r.attempt(ms(&clock), 3, 10_000, 60_000), Attempt::Admitted);
            // The window (10 s from its first attempt) ends before a third.
            clock.advance(Duration::from_secs(7));
        }
    }

    #[test]
    fn a_released_charge_is_not_a_failure() {
        let mut r = FailureRecord::default();
        for i in 0..100 {
            assert_eq!(r.attempt(1_000 + i, 2, 60_000, 60_000), Attempt::Admitted);
            r.release();
        }
        assert_eq!(r.count, 0);
    }

    #[test]
    fn idle_records_can_be_dropped_and_locked_ones_cannot() {
        let mut r = FailureRecord::default();
        assert!(r.is_idle(5, 1_000));
        r.attempt(10, 1, 1_000, 5_000);
        assert!(!r.is_idle(500, 1_000));
        assert!(r.is_idle(1_010, 1_000));
        r.attempt(20, 1, 1_000, 5_000); // refused: locked until 5 020
        assert!(!r.is_idle(4_000, 1_000));
        assert!(r.is_idle(5_020, 1_000));
    }

    #[test]
    fn the_stricter_answer_is_the_longer_refusal() {
        let a = Attempt::Refused { retry_after_ms: 10 };
        let b = Attempt::Refused { retry_after_ms: 20 };
        assert_eq!(stricter(a, b), b);
        assert_eq!(stricter(Attempt::Admitted, a), a);
        assert_eq!(stricter(b, Attempt::Admitted), b);
        assert_eq!(
            stricter(Attempt::Admitted, Attempt::Admitted),
            Attempt::Admitted
        );
    }

    #[test]
    fn keys_separate_surfaces_scopes_and_bound_the_account() {
        assert_eq!(key(Surface::Login, "10.0.0.1", None), "login:ip:10.0.0.1");
        assert_eq!(
            key(Surface::Login, "10.0.0.1", Some("alice")),
            "login:acct:10.0.0.1:alice"
        );
        assert_eq!(
            key(Surface::Console, "10.0.0.1", None),
            "console:ip:10.0.0.1"
        );
        let long = "é".repeat(400);
        assert!(key(Surface::Login, "::1", Some(&long)).len() <= 256 + 20);
    }

    #[test]
    fn the_policy_is_validated_field_by_field() {
        assert_eq!(RegulationPolicy::default().validate(), Ok(()));
        let mut p = RegulationPolicy {
            max_failures_per_ip: 0,
            ..RegulationPolicy::default()
        };
        assert_eq!(
            p.validate(),
            Err(RegulationConfigError::Limit("max_failures_per_ip"))
        );
        p.max_failures_per_ip = 20;
        p.ban_time = Duration::from_millis(10);
        assert_eq!(
            p.validate(),
            Err(RegulationConfigError::Duration("ban_time"))
        );
    }
}
