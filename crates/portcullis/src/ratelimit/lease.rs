//! Token leases for rate limits on Redis, opt-in per rule (`lease = N`).
//!
//! A rule with a lease lets a replica take up to `N` of a key's tokens in
//! one script call and admit the key's next requests from them without
//! calling Redis. The tokens are taken in Redis first, so a lease never
//! admits more than the rule allows over its period. What it trades, as
//! bounds:
//!
//! - **How much it takes.** A grant is at most a quarter of what the key
//!   has left beyond the request that asked (so near the limit every call
//!   takes one token: exact where it matters), and at most twice what this
//!   replica used of its previous lease (a key seen once takes one).
//! - **How long it holds.** Tokens not handed out within [`LEASE_TTL`] (or
//!   by the end of a fixed window or a sliding log's period, if sooner) are
//!   dropped: they stay counted, so the key admits up to that many fewer
//!   requests until they would have been refilled, at most `N` per replica.
//! - **When they are used.** A token is counted at the time it was granted
//!   and handed out up to [`LEASE_TTL`] later, so in a window shorter than
//!   that a key may see up to `N` per replica more requests than the rule's
//!   instantaneous rate; over any full period the total holds.
//! - **Refusals are remembered** until their `Retry-After`: other replicas
//!   can only take tokens, never give them back, so a refusal stays true
//!   until then (an admin reset on this replica forgets it at once).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_core::ratelimit::{Algorithm, Decision};

/// Longest a leased token is held before it is dropped.
pub const LEASE_TTL: Duration = Duration::from_millis(250);

/// Most keys with lease state; past it, expired entries are swept, then
/// new keys are decided by Redis alone.
const MAX_KEYS: usize = 100_000;

/// A key's lease on this replica.
#[derive(Debug, Clone)]
struct Lease {
    /// Tokens left to hand out.
    tokens: u64,
    /// Tokens granted by the last call, and handed out of them so far.
    granted: u64,
    used: u64,
    /// Tokens are not handed out after this.
    until: Instant,
    /// Redis's `remaining`, `limit` and reset time at the grant.
    remaining: u64,
    limit: u64,
    reset_at: Instant,
    /// A refusal, known to hold until then.
    refused_until: Option<Instant>,
}

/// What this replica can answer for one rule's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// A leased token was taken: the request is admitted by this rule.
    Token(Decision),
    /// The key is known to be refused until the decision's retry time.
    Refused(Decision),
    /// Redis must decide; ask for this many tokens.
    Ask(u64),
}

/// Lease state of one limiter.
#[derive(Debug, Default)]
pub struct Leases {
    map: Mutex<HashMap<String, Lease>>,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a token of `key` (a rule with `lease` = `max`) if one is held.
    pub fn take(&self, key: &str, max: u32, now: Instant) -> Local {
        let mut map = self.lock();
        let Some(l) = map.get_mut(key) else {
            return Local::Ask(1);
        };
        if let Some(until) = l.refused_until {
            if now < until {
                return Local::Refused(Decision {
                    allowed: false,
                    limit: l.limit,
                    remaining: 0,
                    reset_after_us: us(l.reset_at.saturating_duration_since(now)),
                    retry_after_us: us(until.saturating_duration_since(now)).max(1),
                });
            }
            l.refused_until = None;
        }
        if l.tokens > 0 && now < l.until {
            l.tokens -= 1;
            l.used += 1;
            return Local::Token(Decision {
                allowed: true,
                limit: l.limit,
                remaining: l.remaining + l.tokens,
                reset_after_us: us(l.reset_at.saturating_duration_since(now)),
                retry_after_us: 0,
            });
        }
        // The lease is spent or expired: ask for twice what was used of it
        // when all of it went, else for what was used.
        let want = if l.used >= l.granted {
            l.granted.saturating_mul(2)
        } else {
            l.used
        };
        Local::Ask(want.clamp(1, u64::from(max.max(1))))
    }

    /// Gives back a token [`Self::take`] handed out for a request another
    /// rule then refused.
    pub fn give_back(&self, key: &str) {
        if let Some(l) = self.lock().get_mut(key) {
            l.tokens += 1;
            l.used = l.used.saturating_sub(1);
        }
    }

    /// Records a grant of `granted` tokens (one of them for the request that
    /// asked) with the rule's `decision` at `now`.
    pub fn granted(
        &self,
        key: &str,
        algorithm: &Algorithm,
        granted: u64,
        decision: &Decision,
        now: Instant,
    ) {
        let mut map = self.lock();
        if !map.contains_key(key) && map.len() >= MAX_KEYS {
            map.retain(|_, l| {
                (l.tokens > 0 && now < l.until) || l.refused_until.is_some_and(|u| now < u)
            });
            if map.len() >= MAX_KEYS {
                return;
            }
        }
        let hold = match *algorithm {
            Algorithm::Gcra { .. } => LEASE_TTL,
            // A window's tokens are not used past its end, nor a log's
            // entries past their period: they would no longer be counted.
            Algorithm::FixedWindow { .. } => {
                LEASE_TTL.min(Duration::from_micros(decision.reset_after_us))
            }
            Algorithm::SlidingLog { period, .. } => LEASE_TTL.min(period),
        };
        let granted = granted.max(1);
        map.insert(
            key.to_owned(),
            Lease {
                tokens: granted - 1,
                granted,
                used: 1,
                until: now + hold,
                remaining: decision.remaining,
                limit: decision.limit,
                reset_at: now + Duration::from_micros(decision.reset_after_us),
                refused_until: None,
            },
        );
    }

    /// Records a refusal of `key` by Redis at `now`.
    pub fn refused(&self, key: &str, decision: &Decision, now: Instant) {
        let mut map = self.lock();
        if !map.contains_key(key) && map.len() >= MAX_KEYS {
            return;
        }
        let l = map.entry(key.to_owned()).or_insert_with(|| Lease {
            tokens: 0,
            granted: 1,
            used: 0,
            until: now,
            remaining: 0,
            limit: decision.limit,
            reset_at: now,
            refused_until: None,
        });
        // At the limit: the next ask, once it ends, is for one token.
        l.tokens = 0;
        l.granted = 1;
        l.used = 0;
        l.limit = decision.limit;
        l.reset_at = now + Duration::from_micros(decision.reset_after_us);
        l.refused_until = Some(now + Duration::from_micros(decision.retry_after_us));
    }

    /// Forgets `key` (its Redis state was reset).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Tokens held now, over every key.
    #[cfg(test)]
    fn held(&self) -> u64 {
        self.lock().values().map(|l| l.tokens).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcra() -> Algorithm {
        Algorithm::Gcra {
            rate: 10,
            period: Duration::from_secs(1),
            burst: 10,
        }
    }

    fn admitted(remaining: u64) -> Decision {
        Decision {
            allowed: true,
            limit: 10,
            remaining,
            reset_after_us: 500_000,
            retry_after_us: 0,
        }
    }

    #[test]
    fn a_lease_hands_out_its_tokens_then_asks_for_twice_as_many() {
        let leases = Leases::default();
        let t = Instant::now();
        assert_eq!(leases.take("k", 8, t), Local::Ask(1));
        leases.granted("k", &gcra(), 3, &admitted(5), t);
        assert!(matches!(leases.take("k", 8, t), Local::Token(d) if d.remaining == 6));
        assert!(matches!(leases.take("k", 8, t), Local::Token(d) if d.remaining == 5));
        assert_eq!(leases.take("k", 8, t), Local::Ask(6));
        leases.granted("k", &gcra(), 8, &admitted(0), t);
        assert_eq!(leases.held(), 7);
        // Capped by the rule's lease.
        for _ in 0..7 {
            assert!(matches!(leases.take("k", 8, t), Local::Token(_)));
        }
        assert_eq!(leases.take("k", 8, t), Local::Ask(8));
    }

    #[test]
    fn unused_tokens_expire_and_the_next_ask_shrinks_to_what_was_used() {
        let leases = Leases::default();
        let t = Instant::now();
        leases.granted("k", &gcra(), 8, &admitted(0), t);
        assert!(matches!(leases.take("k", 8, t), Local::Token(_)));
        let later = t + LEASE_TTL;
        assert_eq!(leases.take("k", 8, later), Local::Ask(2));
    }

    #[test]
    fn a_window_lease_ends_with_its_window() {
        let leases = Leases::default();
        let t = Instant::now();
        let window = Algorithm::FixedWindow {
            limit: 100,
            period: Duration::from_secs(60),
        };
        let mut d = admitted(50);
        d.reset_after_us = 10_000;
        leases.granted("k", &window, 5, &d, t);
        assert!(matches!(
            leases.take("k", 8, t + Duration::from_millis(9)),
            Local::Token(_)
        ));
        assert!(matches!(
            leases.take("k", 8, t + Duration::from_millis(10)),
            Local::Ask(_)
        ));
    }

    #[test]
    fn a_refusal_holds_until_its_retry_time_and_a_token_can_be_given_back() {
        let leases = Leases::default();
        let t = Instant::now();
        let refused = Decision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset_after_us: 1_000_000,
            retry_after_us: 100_000,
        };
        leases.refused("k", &refused, t);
        assert!(matches!(
            leases.take("k", 8, t + Duration::from_millis(50)),
            Local::Refused(d) if !d.allowed && d.retry_after_us == 50_000
        ));
        assert!(matches!(
            leases.take("k", 8, t + Duration::from_millis(100)),
            Local::Ask(1)
        ));
        leases.granted("k", &gcra(), 2, &admitted(3), t);
        assert!(matches!(leases.take("k", 8, t), Local::Token(_)));
        assert_eq!(leases.held(), 0);
        leases.give_back("k");
        assert_eq!(leases.held(), 1);
        leases.forget("k");
        assert_eq!(leases.held(), 0);
    }
}
