//! Detector windows on Redis, updated in batches: a request adds its event
//! to a local count and is judged from the window's last shared count plus
//! the events this replica saw since; a background flush sends those events
//! to Redis every [`FLUSH_INTERVAL`], one script call per hash tag (one per
//! flush on a single server), and brings back the shared count.
//!
//! So a busy key costs Redis one call per interval instead of one per
//! request, and what another replica saw reaches this one's counts within
//! about two intervals. The first event of a key, or one whose shared count
//! is older than [`FRESH_FOR`] (a key that went quiet), is recorded at once
//! instead (the exact path), so a count never rests on a stale window.
//!
//! Only count detectors (`burst`, `auth_failures`, `denied_spike`) are
//! batched. A distinct-count detector (`distinct_accounts`) must not count
//! a name twice, which a local guess could, so its updates take the exact
//! path.
//!
//! What the batching costs, as bounds:
//! - a key's count on this replica lags what other replicas saw in the last
//!   [`FRESH_FOR`] at most, so a burst split across replicas may fire that
//!   much later than one seen by a single replica (never earlier);
//! - the shared count it starts from may still include events that left the
//!   window within the last [`FRESH_FOR`];
//! - events of a failed flush are sent with the next one; at most
//!   `threshold` are kept per key (the window holds no more). A flush
//!   stops at its first failed call, so a hung Redis costs each flush one
//!   call budget, not one per hash tag.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use portcullis_core::Clock;
use portcullis_core::anomaly::DetectorConfig;
use portcullis_core::anomaly::window::WindowCount;

use super::redis::{RedisCounters, WindowUpdate, unique_event_id};

/// How often this replica's batched events are sent to Redis.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// How long a shared count is used after it was read; past it the next
/// event of the key is recorded at once.
pub const FRESH_FOR: Duration = Duration::from_millis(300);

/// Most windows held; past it new keys take the exact path.
const MAX_WINDOWS: usize = 100_000;

/// Windows per script call on a single server (a script blocks Redis).
const KEYS_PER_CALL: usize = 100;

/// One window's shared count and the events not yet in it.
#[derive(Debug)]
struct Window {
    window_ms: u64,
    threshold: u32,
    /// The count Redis returned, and its oldest entry.
    shared: WindowCount,
    /// When `shared` was read (this process's clock, Unix ms).
    synced_ms: u64,
    /// Events seen here since, not yet sent.
    pending: u64,
    /// Events being sent by the flush in flight.
    inflight: u64,
}

impl Window {
    fn estimate(&self, now_ms: u64) -> WindowCount {
        let count =
            (self.shared.count + self.inflight + self.pending).min(u64::from(self.threshold));
        WindowCount {
            count,
            first_seen_ms: if self.shared.count > 0 {
                self.shared.first_seen_ms
            } else {
                now_ms
            },
        }
    }
}

/// Counters for the batched detector windows of one engine.
pub struct Batcher {
    counters: RedisCounters,
    clock: Arc<dyn Clock>,
    windows: Mutex<HashMap<String, Window>>,
    flusher: AtomicBool,
    flushes: AtomicU64,
    failures: AtomicU64,
}

/// What the flush has done so far (for tests and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchStats {
    /// Flush calls that succeeded.
    pub flushes: u64,
    /// Flush calls that failed (their events wait for the next).
    pub failures: u64,
    /// Windows held now.
    pub windows: usize,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("counters", &self.counters)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// Batched windows on `counters`' Redis.
    pub fn new(counters: RedisCounters, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            counters,
            clock,
            windows: Mutex::new(HashMap::new()),
            flusher: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one event of the window `key` locally and returns its
    /// estimated count, when the window's shared count is fresh; `None`
    /// when the event must be recorded at once ([`Self::synced`] after).
    pub fn add(&self, key: &str, now_ms: u64) -> Option<WindowCount> {
        let fresh = u64::try_from(FRESH_FOR.as_millis()).unwrap_or(u64::MAX);
        let mut windows = self.lock();
        let w = windows.get_mut(key)?;
        if now_ms.saturating_sub(w.synced_ms) > fresh {
            return None;
        }
        w.pending = (w.pending + 1).min(u64::from(w.threshold));
        Some(w.estimate(now_ms))
    }

    /// Takes the shared count `count` of `key` read at `now_ms` (an event
    /// recorded at once), keeping the events still to send.
    pub fn synced(&self, key: &str, config: &DetectorConfig, count: WindowCount, now_ms: u64) {
        let mut windows = self.lock();
        if let Some(w) = windows.get_mut(key) {
            w.shared = count;
            w.synced_ms = now_ms;
            return;
        }
        if windows.len() >= MAX_WINDOWS {
            return;
        }
        windows.insert(
            key.to_owned(),
            Window {
                window_ms: config.window_ms(),
                threshold: config.threshold,
                shared: count,
                synced_ms: now_ms,
                pending: 0,
                inflight: 0,
            },
        );
    }

    /// Starts the flush task on the current Tokio runtime, once; it ends
    /// when the batcher is dropped.
    pub fn start(self: &Arc<Self>) {
        if self.flusher.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.flusher.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(batcher) = weak.upgrade() else {
                    return;
                };
                batcher.flush().await;
            }
        });
    }

    /// Sends every window's pending events, reads back the shared counts,
    /// and drops windows that have been quiet for longer than they span.
    pub async fn flush(&self) {
        let now = self.now_ms();
        let mut batch: Vec<WindowUpdate> = Vec::new();
        {
            let mut windows = self.lock();
            windows.retain(|_, w| {
                w.pending > 0
                    || w.inflight > 0
                    || now.saturating_sub(w.synced_ms) <= w.window_ms.max(1_000)
            });
            for (key, w) in windows.iter_mut() {
                if w.pending == 0 || w.inflight > 0 {
                    continue;
                }
                let n = w.pending;
                w.inflight = n;
                w.pending = 0;
                batch.push(WindowUpdate {
                    key: key.clone(),
                    window_ms: w.window_ms,
                    threshold: w.threshold,
                    members: (0..n).map(|_| unique_event_id()).collect(),
                });
            }
        }
        if batch.is_empty() {
            return;
        }
        let cluster = self.counters.is_cluster();
        crate::redis_conn::sort_for_calls(&mut batch, cluster, |u| &u.key);
        let mut calls = crate::redis_conn::script_calls(&batch, cluster, KEYS_PER_CALL, |u| &u.key);
        while let Some(call) = calls.next() {
            if !self.send(call).await {
                // Redis failed (or hung past its budget): the other calls
                // wait for the next flush instead of each paying the budget.
                for rest in calls {
                    self.put_back(rest);
                }
                return;
            }
        }
    }

    /// Returns `group`'s events to their windows' pending counts.
    fn put_back(&self, group: &[WindowUpdate]) {
        let mut windows = self.lock();
        for u in group {
            if let Some(w) = windows.get_mut(&u.key) {
                w.pending = (w.pending + u.members.len() as u64).min(u64::from(w.threshold));
                w.inflight = 0;
            }
        }
    }

    /// Sends one call's updates; whether Redis took them.
    async fn send(&self, group: &[WindowUpdate]) -> bool {
        let answer = self.counters.record_updates(group).await;
        let now = self.now_ms();
        match answer {
            Ok((counts, _)) => {
                self.flushes.fetch_add(1, Ordering::Relaxed);
                let mut windows = self.lock();
                for (u, count) in group.iter().zip(counts) {
                    if let Some(w) = windows.get_mut(&u.key) {
                        w.shared = count;
                        w.synced_ms = now;
                        w.inflight = 0;
                    }
                }
                true
            }
            Err(e) => {
                if self
                    .failures
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(100)
                {
                    tracing::warn!(error = %e, "anomaly window flush failed; its events wait for the next");
                }
                metrics::counter!("portcullis_anomaly_flush_failures_total").increment(1);
                self.put_back(group);
                false
            }
        }
    }

    /// What the flush has done so far.
    pub fn stats(&self) -> BatchStats {
        BatchStats {
            flushes: self.flushes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            windows: self.lock().len(),
        }
    }
}
