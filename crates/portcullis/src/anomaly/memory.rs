//! In-process detector state, bans and alert de-duplication: sharded maps,
//! no global lock, idle keys swept, the number of keys bounded.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;

use portcullis_core::anomaly::window::{DistinctSet, SlidingLog, WindowCount};
use portcullis_core::anomaly::{Ban, BanTarget, DetectionKey, DetectorConfig, Observation};

const SHARDS: usize = 64;

/// One key's window.
#[derive(Debug)]
enum Window {
    Log(SlidingLog),
    Distinct(DistinctSet),
}

#[derive(Debug)]
struct Entry {
    window: Window,
    window_ms: u64,
}

type Shard = HashMap<u64, Entry, foldhash::fast::FixedState>;

/// Detector windows for every (detector, key) of this process.
#[derive(Debug)]
pub struct MemoryCounters {
    shards: Box<[Mutex<Shard>]>,
    max_per_shard: usize,
    hasher: foldhash::fast::RandomState,
}

impl MemoryCounters {
    /// Holds at most about `max_keys` (detector, key) windows; when full, idle
    /// windows are swept first, then the oldest half of a shard is dropped.
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            max_per_shard: (max_keys / SHARDS).max(16),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn slot(&self, obs: &Observation<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        obs.kind.index().hash(&mut h);
        match obs.key {
            DetectionKey::Ip(v) => (0u8, v).hash(&mut h),
            DetectionKey::Account(v) => (1u8, v).hash(&mut h),
            DetectionKey::Subject(v) => (2u8, v).hash(&mut h),
        }
        h.finish()
    }

    /// Records one observation at `now_ms` under `config`'s window.
    pub fn record(
        &self,
        obs: &Observation<'_>,
        config: &DetectorConfig,
        now_ms: u64,
    ) -> WindowCount {
        let slot = self.slot(obs);
        let member = obs.member.map(|m| self.hasher.hash_one(m));
        let shard = &self.shards[(slot as usize) % SHARDS];
        // A poisoned shard only means another thread panicked mid-update of
        // plain counters; the data is still usable.
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        let window_ms = config.window_ms();
        if map.len() >= self.max_per_shard && !map.contains_key(&slot) {
            sweep(&mut map, now_ms, self.max_per_shard);
        }
        let entry = map.entry(slot).or_insert_with(|| Entry {
            window: match member {
                Some(_) => Window::Distinct(DistinctSet::default()),
                None => Window::Log(SlidingLog::default()),
            },
            window_ms,
        });
        entry.window_ms = window_ms;
        match (&mut entry.window, member) {
            (Window::Distinct(set), Some(m)) => set.record(m, now_ms, window_ms, config.threshold),
            (Window::Log(log), _) => log.record(now_ms, window_ms, config.threshold),
            // A slot hash collision between a count and a distinct window:
            // start the window afresh rather than mix the two.
            (window @ Window::Distinct(_), None) => {
                let mut log = SlidingLog::default();
                let c = log.record(now_ms, window_ms, config.threshold);
                *window = Window::Log(log);
                c
            }
        }
    }

    /// Windows currently held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether no window is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn sweep(map: &mut Shard, now_ms: u64, cap: usize) {
    map.retain(|_, e| match &e.window {
        Window::Log(l) => !l.is_idle(now_ms, e.window_ms),
        Window::Distinct(d) => !d.is_idle(now_ms, e.window_ms),
    });
    if map.len() >= cap {
        // Still full of live keys: drop half, arbitrarily. Detection on the
        // dropped keys restarts from zero; memory stays bounded.
        let mut keep = true;
        map.retain(|_, _| {
            keep = !keep;
            keep
        });
    }
}

/// Active bans of this process, by IP and by subject. Expired bans are
/// dropped when met and purged whenever the maps have doubled since the
/// last purge, so they do not pile up until someone lists them.
#[derive(Debug, Default)]
pub struct MemoryBans {
    inner: Mutex<BanMaps>,
}

#[derive(Debug, Default)]
struct BanMaps {
    ips: HashMap<String, Ban>,
    subjects: HashMap<String, Ban>,
    /// Purge expired bans when this many are held.
    purge_at: usize,
}

/// Bans held before the first purge of expired ones.
const FIRST_BAN_PURGE: usize = 1024;

impl BanMaps {
    fn len(&self) -> usize {
        self.ips.len() + self.subjects.len()
    }

    fn purge(&mut self, now_ms: u64) {
        self.ips.retain(|_, b| b.until_ms > now_ms);
        self.subjects.retain(|_, b| b.until_ms > now_ms);
        self.purge_at = (self.len() * 2).max(FIRST_BAN_PURGE);
    }
}

impl BanMaps {
    fn map<'a>(&'a mut self, target: &'a BanTarget) -> (&'a mut HashMap<String, Ban>, &'a str) {
        match target {
            BanTarget::Ip(v) => (&mut self.ips, v),
            BanTarget::Subject(v) => (&mut self.subjects, v),
        }
    }
}

impl MemoryBans {
    fn lock(&self) -> std::sync::MutexGuard<'_, BanMaps> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or extends a ban (a longer existing ban is kept); `now_ms` is
    /// the time now, for purging expired bans.
    pub fn ban(&self, ban: Ban, now_ms: u64) {
        let mut maps = self.lock();
        if maps.len() >= maps.purge_at.max(FIRST_BAN_PURGE) {
            maps.purge(now_ms);
        }
        let target = ban.target.clone();
        let (map, key) = maps.map(&target);
        match map.get(key) {
            Some(existing) if existing.until_ms >= ban.until_ms => {}
            _ => {
                map.insert(key.to_owned(), ban);
            }
        }
    }

    /// The ban blocking `ip` or `subject` at `now_ms`, if any.
    pub fn banned(&self, ip: Option<&str>, subject: Option<&str>, now_ms: u64) -> Option<Ban> {
        let mut guard = self.lock();
        let maps = &mut *guard;
        let mut found = None;
        for (map, key) in [(&mut maps.ips, ip), (&mut maps.subjects, subject)] {
            let Some(key) = key else { continue };
            match map.get(key) {
                Some(b) if b.until_ms > now_ms => {
                    found.get_or_insert_with(|| b.clone());
                }
                // Met expired: drop it now.
                Some(_) => {
                    map.remove(key);
                }
                None => {}
            }
        }
        found
    }

    /// Bans held, expired ones not yet purged included.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no ban is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Active bans, soonest to expire first; expired ones are dropped.
    pub fn list(&self, now_ms: u64) -> Vec<Ban> {
        let mut maps = self.lock();
        maps.purge(now_ms);
        let mut out: Vec<Ban> = maps
            .ips
            .values()
            .chain(maps.subjects.values())
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            a.until_ms
                .cmp(&b.until_ms)
                .then_with(|| a.target.render().cmp(&b.target.render()))
        });
        out
    }

    /// Lifts a ban; whether one was active.
    pub fn lift(&self, target: &BanTarget) -> bool {
        let mut maps = self.lock();
        let (map, key) = maps.map(target);
        map.remove(key).is_some()
    }
}

/// Alert de-duplication for one process: a (detector, key) alerts at most
/// once per cooldown. Bounded: past [`MAX_DEDUP_ENTRIES`] live entries it
/// stops remembering (and lets alerts through; the queue is bounded).
#[derive(Debug, Default)]
pub struct MemoryDedup {
    until: Mutex<HashMap<String, u64>>,
}

/// Most (detector, key) cooldowns one [`MemoryDedup`] remembers.
pub const MAX_DEDUP_ENTRIES: usize = 100_000;

impl MemoryDedup {
    /// Whether this is the first alert for `id` in its cooldown (and claims it).
    pub fn claim(&self, id: &str, cooldown_ms: u64, now_ms: u64) -> bool {
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(id) {
            Some(&until) if until > now_ms => false,
            _ => {
                if map.len() >= MAX_DEDUP_ENTRIES {
                    map.retain(|_, until| *until > now_ms);
                }
                if map.len() < MAX_DEDUP_ENTRIES {
                    map.insert(id.to_owned(), now_ms.saturating_add(cooldown_ms));
                }
                true
            }
        }
    }

    /// Forgets a claim (the alert could not be queued after all).
    pub fn release(&self, id: &str) {
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }
}
