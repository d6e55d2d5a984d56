//! Per-key sliding-window state: an exact event log for counts and a set of
//! recently seen members for distinct counts, both bounded by the threshold.
//!
//! Both are exact up to the threshold, which is all a detector asks: "did
//! this key reach N events (or N distinct members) in the last W?". Beyond
//! the threshold the oldest entries are dropped, so a key never holds more
//! than `threshold` timestamps. Times are Unix milliseconds.

use std::collections::VecDeque;

/// The result of one update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCount {
    /// Events (or distinct members) in the window, saturating at the threshold.
    pub count: u64,
    /// The oldest event still in the window.
    pub first_seen_ms: u64,
}

impl WindowCount {
    /// Whether the count reached `threshold`.
    pub fn reached(&self, threshold: u32) -> bool {
        self.count >= u64::from(threshold)
    }
}

/// An exact log of event times in the window.
#[derive(Debug, Clone, Default)]
pub struct SlidingLog {
    stamps: VecDeque<u64>,
}

impl SlidingLog {
    /// Records an event at `now_ms` and counts the window `(now - window, now]`.
    pub fn record(&mut self, now_ms: u64, window_ms: u64, threshold: u32) -> WindowCount {
        self.expire(now_ms, window_ms);
        self.stamps.push_back(now_ms);
        let cap = threshold.max(1) as usize;
        while self.stamps.len() > cap {
            self.stamps.pop_front();
        }
        WindowCount {
            count: self.stamps.len() as u64,
            first_seen_ms: self.stamps.front().copied().unwrap_or(now_ms),
        }
    }

    /// Drops events at or before `now - window`.
    pub fn expire(&mut self, now_ms: u64, window_ms: u64) {
        let Some(horizon) = now_ms.checked_sub(window_ms) else {
            return;
        };
        while self.stamps.front().is_some_and(|&t| t <= horizon) {
            self.stamps.pop_front();
        }
    }

    /// Whether nothing is left in the window (the key can be evicted).
    pub fn is_idle(&self, now_ms: u64, window_ms: u64) -> bool {
        self.stamps
            .back()
            .is_none_or(|&t| now_ms >= window_ms && t <= now_ms - window_ms)
    }
}

/// Members seen in the window, each with the last time it was seen.
#[derive(Debug, Clone, Default)]
pub struct DistinctSet {
    members: Vec<(u64, u64)>,
}

impl DistinctSet {
    /// Records `member` (a hash of it) at `now_ms` and counts distinct members
    /// seen in `(now - window, now]`.
    pub fn record(
        &mut self,
        member: u64,
        now_ms: u64,
        window_ms: u64,
        threshold: u32,
    ) -> WindowCount {
        let horizon = now_ms.saturating_sub(window_ms);
        let live = |t: u64| now_ms < window_ms || t > horizon;
        self.members.retain(|&(_, t)| live(t));
        match self.members.iter_mut().find(|(m, _)| *m == member) {
            Some(entry) => entry.1 = now_ms,
            None => {
                let cap = threshold.max(1) as usize;
                if self.members.len() >= cap
                    && let Some(oldest) = self
                        .members
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, (_, t))| *t)
                        .map(|(i, _)| i)
                {
                    self.members.swap_remove(oldest);
                }
                self.members.push((member, now_ms));
            }
        }
        WindowCount {
            count: self.members.len() as u64,
            first_seen_ms: self.members.iter().map(|&(_, t)| t).min().unwrap_or(now_ms),
        }
    }

    /// Whether no member is left in the window.
    pub fn is_idle(&self, now_ms: u64, window_ms: u64) -> bool {
        self.members
            .iter()
            .all(|&(_, t)| now_ms >= window_ms && t <= now_ms - window_ms)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn fires_at_the_threshold_not_one_below() {
        let mut log = SlidingLog::default();
        for i in 0..49 {
            assert!(!log.record(1_000_000 + i * 10, 10_000, 50).reached(50));
        }
        let c = log.record(1_000_490, 10_000, 50);
        assert!(c.reached(50));
        assert_eq!(c.first_seen_ms, 1_000_000);
    }

    #[test]
    fn events_leave_the_window() {
        let mut log = SlidingLog::default();
        log.record(1_000, 100, 3);
        log.record(1_050, 100, 3);
        // 1_000 is at the horizon of 1_100 and no longer counts.
        assert_eq!(log.record(1_100, 100, 3).count, 2);
        assert!(!log.is_idle(1_150, 100));
        assert!(log.is_idle(1_200, 100));
    }

    #[test]
    fn distinct_members_count_once() {
        let mut set = DistinctSet::default();
        assert_eq!(set.record(1, 1_000, 1_000, 5).count, 1);
        assert_eq!(set.record(1, 1_001, 1_000, 5).count, 1);
        assert_eq!(set.record(2, 1_002, 1_000, 5).count, 2);
        // Member 1 was last seen at 1_001: gone by 2_001.
        assert_eq!(set.record(3, 2_001, 1_000, 5).count, 2);
        assert!(set.is_idle(3_001, 1_000));
    }

    proptest! {
        /// Up to the threshold, the count equals a brute-force count of the
        /// events in the window.
        #[test]
        fn log_matches_a_reference_count(
            gaps in proptest::collection::vec(0u64..50, 1..200),
            window in 1u64..300,
            threshold in 1u32..40,
        ) {
            let mut log = SlidingLog::default();
            let mut times = Vec::new();
            let mut now = 10_000u64;
            for g in gaps {
                now += g;
                times.push(now);
                let got = log.record(now, window, threshold);
                let expected = times.iter().filter(|&&t| t + window > now).count() as u64;
                prop_assert_eq!(got.count, expected.min(u64::from(threshold)));
                prop_assert_eq!(got.reached(threshold), expected >= u64::from(threshold));
            }
        }

        #[test]
        fn distinct_matches_a_reference_count(
            events in proptest::collection::vec((0u64..50, 0u64..8), 1..200),
            window in 1u64..300,
            threshold in 1u32..10,
        ) {
            let mut set = DistinctSet::default();
            let mut seen: Vec<(u64, u64)> = Vec::new();
            let mut now = 10_000u64;
            for (g, member) in events {
                now += g;
                seen.push((member, now));
                let got = set.record(member, now, window, threshold);
                let mut live: Vec<u64> = seen
                    .iter()
                    .filter(|&&(_, t)| t + window > now)
                    .map(|&(m, _)| m)
                    .collect();
                live.sort_unstable();
                live.dedup();
                let expected = live.len() as u64;
                prop_assert_eq!(got.reached(threshold), expected >= u64::from(threshold));
                prop_assert_eq!(got.count, expected.min(u64::from(threshold)));
            }
        }
    }
}
