//! The in-process limiter: 64 shards, each a mutex over a hash map from a
//! 64-bit key hash to a compact per-key state; no global lock, no
//! allocation on the check path (except a sliding log's stamps), idle keys
//! swept, memory bounded in keys and in bytes.
//!
//! Memory: a key costs one map slot of 32 bytes (8-byte hash + 24-byte
//! state) plus a control byte, at a load factor between 7/16 and 7/8, so
//! 37-75 bytes (counted as [`KEY_BYTES`]); a sliding-log key adds its stamps
//! (8 bytes each, up to the limit, plus a 32-byte header), counted by
//! capacity. One million GCRA or fixed-window keys fit in about 70 MB (test
//! `memory_one_million_keys_fit_and_idle_keys_are_swept`).
//!
//! When a shard is full (in keys or bytes) after idle keys are swept, the
//! least useful keys are evicted first: those whose state limits their
//! client least (the smallest used fraction of their quota), so a bucket
//! that is throttling someone right now is the last to go and a client
//! cannot reset its own by flooding the limiter with fresh keys.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use portcullis_core::ratelimit::algorithm::{GcraParams, fixed_window, gcra, micros, sliding_log};
use portcullis_core::ratelimit::{Algorithm, Decision, MAX_RULES, RequestFacts, Rule};

use super::outcome::{Outcome, RuleSet};

const SHARDS: usize = 64;
/// A shard is swept for idle keys when it grows past this many keys (and
/// then again each time it doubles).
const FIRST_SWEEP: usize = 1024;
/// Bytes counted per key (map slot, control byte, load-factor slack).
pub const KEY_BYTES: usize = 64;
/// Bytes of the memory bound per allowed key when none is set
/// ([`MemoryLimiter::new`]): 128 MB for the default million keys.
pub const DEFAULT_BYTES_PER_KEY: usize = 128;
/// Smallest byte bound of one shard: room for one full sliding log (10 000
/// stamps, 16 384 of capacity) and then some.
const MIN_SHARD_BYTES: usize = 256 * 1024;
/// A full shard is evicted down to this fraction (in eighths) of its bounds,
/// so that eviction, which sorts the shard, runs rarely.
const EVICT_TO_EIGHTHS: usize = 7;
/// Pressure (used fraction of the quota) is in units of 1/65 536.
const FULL: u64 = 1 << 16;

/// One key's state: 24 bytes.
#[derive(Debug)]
enum Slot {
    Gcra {
        rule: u8,
        tat: u64,
    },
    Fixed {
        rule: u8,
        start: u64,
        count: u64,
    },
    // Boxed so that a slot stays 24 bytes (a bare VecDeque is 32).
    #[allow(clippy::box_collection)]
    Log {
        rule: u8,
        log: Box<VecDeque<u64>>,
    },
}

impl Slot {
    fn fresh(rule: u8, algorithm: &Algorithm) -> Self {
        match algorithm {
            Algorithm::Gcra { .. } => Self::Gcra { rule, tat: 0 },
            Algorithm::FixedWindow { .. } => Self::Fixed {
                rule,
                start: 0,
                count: 0,
            },
            Algorithm::SlidingLog { .. } => Self::Log {
                rule,
                log: Box::default(),
            },
        }
    }

    fn rule(&self) -> usize {
        match self {
            Self::Gcra { rule, .. } | Self::Fixed { rule, .. } | Self::Log { rule, .. } => {
                usize::from(*rule)
            }
        }
    }

    /// The bytes this key is counted for.
    fn bytes(&self) -> usize {
        match self {
            Self::Log { log, .. } => KEY_BYTES + 32 + 8 * log.capacity(),
            _ => KEY_BYTES,
        }
    }
}

/// A rule with its numbers precomputed.
#[derive(Debug, Clone, Copy)]
struct Compiled {
    algorithm: Algorithm,
    gcra: GcraParams,
    period_us: u64,
    limit: u64,
}

impl Compiled {
    fn new(algorithm: Algorithm) -> Self {
        let (rate, burst) = match algorithm {
            Algorithm::Gcra { rate, burst, .. } => (rate, burst),
            _ => (1, 1),
        };
        Self {
            algorithm,
            gcra: GcraParams::new(rate, algorithm.period(), burst),
            period_us: micros(algorithm.period()),
            limit: algorithm.quota(),
        }
    }

    fn apply(&self, slot: &mut Slot, now: u64, consume: bool) -> Decision {
        match slot {
            Slot::Gcra { tat, .. } => gcra(tat, &self.gcra, now, consume),
            Slot::Fixed { start, count, .. } => {
                let mut s = (*start, *count);
                let d = fixed_window(&mut s, self.limit, self.period_us, now, consume);
                (*start, *count) = s;
                d
            }
            Slot::Log { log, .. } => sliding_log(log, self.limit, self.period_us, now, consume),
        }
    }

    fn idle_at(&self, slot: &Slot) -> u64 {
        match slot {
            Slot::Gcra { tat, .. } => *tat,
            Slot::Fixed { start, .. } => start.saturating_add(self.period_us),
            Slot::Log { log, .. } => log.back().map_or(0, |t| t.saturating_add(self.period_us)),
        }
    }

    /// How much of its quota the key has used at `now`, in 1/65 536: what
    /// forgetting it would give its client back. 0 for an idle key, 65 536
    /// for one that is refusing requests.
    fn pressure(&self, slot: &Slot, now: u64) -> u64 {
        let fraction = |used: u64, of: u64| {
            u64::try_from(u128::from(used) * u128::from(FULL) / u128::from(of.max(1)))
                .unwrap_or(FULL)
                .min(FULL)
        };
        match slot {
            Slot::Gcra { tat, .. } => fraction(tat.saturating_sub(now), self.gcra.tolerance_us),
            Slot::Fixed { start, count, .. } => {
                if start.saturating_add(self.period_us) <= now {
                    0
                } else {
                    fraction(*count, self.limit)
                }
            }
            Slot::Log { log, .. } => {
                let live = log
                    .iter()
                    .rev()
                    .take_while(|&&t| t.saturating_add(self.period_us) > now)
                    .count();
                fraction(live as u64, self.limit)
            }
        }
    }
}

/// Hashes an already well-mixed 64-bit key: one multiply.
#[derive(Debug, Default, Clone, Copy)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        (self.0 ^ (self.0 >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct MixState;

impl BuildHasher for MixState {
    type Hasher = MixHasher;
    fn build_hasher(&self) -> MixHasher {
        MixHasher(0)
    }
}

#[derive(Debug)]
struct Shard {
    map: HashMap<u64, Slot, MixState>,
    next_sweep: usize,
    /// Bytes counted for the keys held (see [`Slot::bytes`]).
    bytes: usize,
}

/// A shard's lock on cache lines of its own, so that two threads working
/// on neighbouring shards do not slow each other (false sharing).
#[derive(Debug)]
#[repr(align(128))]
struct PaddedShard(Mutex<Shard>);

/// In-process rate-limit state for a fixed set of rules.
#[derive(Debug)]
pub struct MemoryLimiter {
    rules: Arc<[Rule]>,
    compiled: Box<[Compiled]>,
    shards: Box<[PaddedShard]>,
    max_per_shard: usize,
    max_bytes_per_shard: usize,
    hasher: foldhash::fast::RandomState,
}

impl MemoryLimiter {
    /// State for `rules` (already validated), holding at most about
    /// `max_keys` keys and `max_keys * 128` bytes.
    pub fn new(rules: Arc<[Rule]>, max_keys: usize) -> Self {
        Self::with_max_bytes(
            rules,
            max_keys,
            max_keys.saturating_mul(DEFAULT_BYTES_PER_KEY),
        )
    }

    /// State for `rules` holding at most about `max_keys` keys and
    /// `max_bytes` bytes (at least 256 KiB per shard, 16 MiB in all, so
    /// that a full sliding log fits).
    pub fn with_max_bytes(rules: Arc<[Rule]>, max_keys: usize, max_bytes: usize) -> Self {
        let compiled = rules.iter().map(|r| Compiled::new(r.algorithm)).collect();
        Self {
            rules,
            compiled,
            shards: (0..SHARDS)
                .map(|_| {
                    PaddedShard(Mutex::new(Shard {
                        map: HashMap::with_hasher(MixState),
                        next_sweep: FIRST_SWEEP,
                        bytes: 0,
                    }))
                })
                .collect(),
            max_per_shard: (max_keys / SHARDS).max(FIRST_SWEEP),
            max_bytes_per_shard: (max_bytes / SHARDS).max(MIN_SHARD_BYTES),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The rules.
    pub fn rules(&self) -> &Arc<[Rule]> {
        &self.rules
    }

    fn key_hash(&self, rule: usize, facts: &RequestFacts<'_>) -> Option<u64> {
        let mut h = self.hasher.build_hasher();
        h.write_usize(rule);
        self.rules[rule]
            .key
            .hash_into(facts, &mut h)
            .then(|| h.finish())
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // A poisoned shard only means another thread panicked mid-update of
        // plain integers; the data is still usable.
        self.shards[shard]
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Checks the rules in `set` that apply to `facts` at `now_us` (Unix µs);
    /// records the request in every rule only when all admit it
    /// (`consume`), otherwise records nothing.
    pub fn check(
        &self,
        facts: &RequestFacts<'_>,
        set: RuleSet,
        now_us: u64,
        consume: bool,
    ) -> Outcome {
        let mut keys = [(0usize, 0u64); MAX_RULES];
        let mut n = 0;
        for rule in 0..self.rules.len().min(MAX_RULES) {
            if !set.contains(rule) {
                continue;
            }
            if let Some(h) = self.key_hash(rule, facts) {
                keys[n] = (rule, h);
                n += 1;
            }
        }
        let keys = &keys[..n];
        let mut outcome = Outcome::empty();
        match keys {
            [] => {}
            [(rule, h)] => {
                let mut shard = self.lock(shard_of(*h));
                let d = self.check_one(&mut shard, *rule, *h, now_us, consume);
                outcome.push(*rule, d);
            }
            _ => {
                // Lock every shard involved, in ascending order (no
                // deadlock), so all rules decide on one consistent state.
                let mut order = [0usize; MAX_RULES];
                for (i, (_, h)) in keys.iter().enumerate() {
                    order[i] = shard_of(*h);
                }
                let order = &mut order[..n];
                order.sort_unstable();
                let mut guards: [Option<MutexGuard<'_, Shard>>; MAX_RULES] = Default::default();
                let mut last = usize::MAX;
                for (i, &s) in order.iter().enumerate() {
                    if s != last {
                        guards[i] = Some(self.lock(s));
                        last = s;
                    }
                }
                let guard_of = |shard: usize| order.iter().position(|&s| s == shard);
                // Phase 1: decide without recording.
                let mut all = true;
                for &(rule, h) in keys {
                    let Some(g) = guard_of(shard_of(h)).and_then(|i| guards[i].as_mut()) else {
                        continue;
                    };
                    let d = self.check_one(g, rule, h, now_us, false);
                    all &= d.allowed;
                    outcome.push(rule, d);
                }
                // Phase 2: record in every rule, only if all admitted.
                if consume && all {
                    outcome = Outcome::empty();
                    for &(rule, h) in keys {
                        let Some(g) = guard_of(shard_of(h)).and_then(|i| guards[i].as_mut()) else {
                            continue;
                        };
                        let d = self.check_one(g, rule, h, now_us, true);
                        outcome.push(rule, d);
                    }
                }
            }
        }
        outcome.finish();
        outcome
    }

    fn check_one(
        &self,
        shard: &mut Shard,
        rule: usize,
        h: u64,
        now: u64,
        consume: bool,
    ) -> Decision {
        let compiled = &self.compiled[rule];
        if let Some(slot) = shard.map.get_mut(&h)
            && slot.rule() == rule
        {
            let Slot::Log { log, .. } = slot else {
                return compiled.apply(slot, now, consume);
            };
            // A sliding log grows and shrinks: keep its bytes counted.
            let before = log.capacity();
            let d = sliding_log(log, compiled.limit, compiled.period_us, now, consume);
            if log.capacity() > 64 && log.len() < log.capacity() / 4 {
                log.shrink_to(log.len() * 2);
            }
            let after = log.capacity();
            shard.bytes = (shard.bytes + 8 * after).saturating_sub(8 * before);
            if shard.bytes > self.max_bytes_per_shard {
                self.sweep_shard(shard, now);
            }
            return d;
        }
        let mut fresh = Slot::fresh(u8::try_from(rule).unwrap_or(u8::MAX), &compiled.algorithm);
        let d = compiled.apply(&mut fresh, now, consume);
        if consume && d.allowed {
            if shard.map.len() >= shard.next_sweep
                || shard.bytes + fresh.bytes() > self.max_bytes_per_shard
            {
                self.sweep_shard(shard, now);
            }
            shard.bytes += fresh.bytes();
            if let Some(old) = shard.map.insert(h, fresh) {
                // A 64-bit hash collision with another rule's key.
                shard.bytes = shard.bytes.saturating_sub(old.bytes());
            }
        }
        d
    }

    /// Drops the idle keys of a shard; if it is still full (in keys or
    /// bytes), evicts the least useful keys (lowest pressure, the largest
    /// first among equals) down to 7/8 of its bounds.
    fn sweep_shard(&self, shard: &mut Shard, now: u64) {
        let compiled = &self.compiled;
        let mut freed = 0;
        shard.map.retain(|_, slot| {
            let live = compiled
                .get(slot.rule())
                .is_some_and(|c| c.idle_at(slot) > now);
            if !live {
                freed += slot.bytes();
            }
            live
        });
        shard.bytes = shard.bytes.saturating_sub(freed);
        if shard.map.len() >= self.max_per_shard || shard.bytes > self.max_bytes_per_shard {
            let keep_keys = self.max_per_shard / 8 * EVICT_TO_EIGHTHS;
            let keep_bytes = self.max_bytes_per_shard / 8 * EVICT_TO_EIGHTHS;
            let mut order: Vec<(u64, std::cmp::Reverse<usize>, u64)> = shard
                .map
                .iter()
                .map(|(&h, slot)| {
                    let pressure = compiled
                        .get(slot.rule())
                        .map_or(0, |c| c.pressure(slot, now));
                    (pressure, std::cmp::Reverse(slot.bytes()), h)
                })
                .collect();
            order.sort_unstable();
            for (_, std::cmp::Reverse(bytes), h) in order {
                if shard.map.len() <= keep_keys && shard.bytes <= keep_bytes {
                    break;
                }
                shard.map.remove(&h);
                shard.bytes = shard.bytes.saturating_sub(bytes);
            }
        }
        shard.next_sweep = (shard.map.len() * 2).clamp(FIRST_SWEEP, self.max_per_shard);
    }

    /// Drops every idle key (state back to fresh at `now_us`); call it from
    /// a periodic task to return memory after a burst of distinct keys.
    pub fn sweep(&self, now_us: u64) {
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            self.sweep_shard(&mut shard, now_us);
        }
    }

    /// Forgets `rule`'s state for the key `facts` make; whether there was any.
    pub fn reset(&self, rule: usize, facts: &RequestFacts<'_>) -> bool {
        let Some(h) = self.key_hash(rule, facts) else {
            return false;
        };
        let mut shard = self.lock(shard_of(h));
        match shard.map.remove(&h) {
            Some(slot) => {
                shard.bytes = shard.bytes.saturating_sub(slot.bytes());
                true
            }
            None => false,
        }
    }

    /// Bytes counted for the keys held (see the module docs).
    pub fn bytes(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).bytes).sum()
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).map.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn shard_of(h: u64) -> usize {
    (h >> 58) as usize % SHARDS
}
