//! The live revocation set every replica holds in memory: denied `jti`s,
//! revoked sessions, revoked API keys and disabled users, loaded from the backends' revocation logs at start and
//! followed from then on, so that checking a token is a local lookup and a
//! store outage makes the set staler (within `max_stale`), never refuses
//! at once.
//!
//! The set follows each distinct [`RevocationLog`] of the stores (the
//! sessions' backend and the denylist's, one log when they are the same):
//! a poll every `poll_interval` (100 ms by default) reads the entries after
//! its cursor; a log that can announce appends (PostgreSQL's `LISTEN`)
//! makes it poll at once; and a revocation made through this replica's
//! [`super::Stores`] polls at once, so this replica refuses what it revoked
//! before the call returns. The feed's lag is the age of the last complete poll; past
//! `max_stale` the [`OnStale`] policy decides.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use portcullis_core::Clock;
use tokio::sync::Notify;

use super::{LoggedRevocation, RevocationLog, RevokedKind, StoreError, StoreResult, WatchEvent};

/// How long a revoked session stays in the log and the set: the longest an
/// access token it issued before its revocation can live (the gateway
/// caps `keys.access_ttl` at one day).
pub const SESSION_REVOCATION_TTL: Duration = Duration::from_secs(86_400);

/// Entries read from a log per query.
const PAGE: usize = 5_000;

/// Longest one poll of one log page may take: a hung store is a store
/// that is down, and the next poll tries again.
const POLL_BUDGET: Duration = Duration::from_secs(2);

/// How often expired entries are dropped from the set.
const PURGE_EVERY: Duration = Duration::from_secs(10);

/// Shortest interval between two warnings about the same condition.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What an entry costs beyond its id's bytes: the `Box<str>` (16), the
/// expiry (8), the hash table's control byte and spare capacity (at its
/// 7/8 load factor) and the allocator's rounding of the id.
pub const ENTRY_OVERHEAD_BYTES: usize = 56;

/// What a replica does once its feed is behind by more than `max_stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStale {
    /// Refuse every checked token with `backend.unavailable` (the default:
    /// revocation fails closed).
    #[default]
    Deny,
    /// Keep answering from the set as it is (availability over freshness).
    Allow,
}

/// How the set follows the logs and what staleness means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationPolicy {
    /// Longest the feed may be behind while the set still answers alone
    /// (default 30 s).
    pub max_stale: Duration,
    /// What happens past `max_stale` (default [`OnStale::Deny`]).
    pub on_stale: OnStale,
    /// Time between two polls of the logs (default 100 ms; 10 ms..=1 s).
    pub poll_interval: Duration,
}

impl Default for RevocationPolicy {
    fn default() -> Self {
        Self {
            max_stale: Duration::from_secs(30),
            on_stale: OnStale::Deny,
            poll_interval: Duration::from_millis(100),
        }
    }
}

impl RevocationPolicy {
    /// Checks the bounds: `poll_interval` 10 ms..=1 s (the 1 s revocation
    /// bound), `max_stale` at least 1 s.
    pub fn validate(&self) -> StoreResult<()> {
        if !(Duration::from_millis(10)..=Duration::from_secs(1)).contains(&self.poll_interval) {
            return Err(StoreError::invalid(
                "revocation.poll_interval",
                "must be 10 ms to 1 s (the revocation bound)",
            ));
        }
        if self.max_stale < Duration::from_secs(1) {
            return Err(StoreError::invalid(
                "revocation.max_stale",
                "must be at least 1 s",
            ));
        }
        Ok(())
    }
}

/// Counters of the feed and of the decisions taken while stale.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevocationFeedStats {
    /// Live entries held.
    pub entries: u64,
    /// Estimated bytes they hold (ids + [`ENTRY_OVERHEAD_BYTES`] each).
    pub bytes: u64,
    /// Polls that failed or timed out.
    pub poll_failures: u64,
    /// Checks refused because the feed was past `max_stale` (`deny`).
    pub stale_denied: u64,
    /// Checks answered from a set past `max_stale` (`allow`).
    pub stale_allowed: u64,
    /// Times a log's watch made the feed poll at once: each announced
    /// append and each (re)start of listening.
    pub wakeups: u64,
    /// Appends announced by a log (PostgreSQL: notifications received).
    pub notifications: u64,
    /// Times a log's watch started listening: once at start, then once per
    /// reconnect after its connection was lost.
    pub listens: u64,
    /// Log entries skipped because this build cannot read them
    /// ([`RevokedKind::Unrecognized`]: written by a newer version, or
    /// corrupt).
    pub unrecognized: u64,
}

#[derive(Debug, Default)]
struct Entries {
    jtis: HashMap<Box<str>, i64>,
    sessions: HashMap<Box<str>, i64>,
    api_keys: HashMap<Box<str>, i64>,
    disabled_users: HashMap<Box<str>, i64>,
    disabled_apps: HashMap<Box<str>, i64>,
    id_bytes: usize,
}

impl Entries {
    /// The map of a kind the set holds (`None`: [`RevokedKind::UserEnabled`],
    /// which only cancels).
    fn map(&self, kind: RevokedKind) -> Option<&HashMap<Box<str>, i64>> {
        match kind {
            RevokedKind::Jti => Some(&self.jtis),
            RevokedKind::Session => Some(&self.sessions),
            RevokedKind::ApiKey => Some(&self.api_keys),
            RevokedKind::UserDisabled => Some(&self.disabled_users),
            RevokedKind::AppDisabled => Some(&self.disabled_apps),
            RevokedKind::UserEnabled | RevokedKind::AppEnabled | RevokedKind::Unrecognized(_) => {
                None
            }
        }
    }

    fn insert(&mut self, kind: RevokedKind, subject: &str, expires_at: i64) {
        let map = match kind {
            RevokedKind::Jti => &mut self.jtis,
            RevokedKind::Session => &mut self.sessions,
            RevokedKind::ApiKey => &mut self.api_keys,
            RevokedKind::UserDisabled => &mut self.disabled_users,
            RevokedKind::AppDisabled => &mut self.disabled_apps,
            // Skipped (and counted) by `apply`.
            RevokedKind::Unrecognized(_) => return,
            RevokedKind::UserEnabled | RevokedKind::AppEnabled => {
                // Applied in log order: cancels the disable before it.
                let disabled = if kind == RevokedKind::UserEnabled {
                    &mut self.disabled_users
                } else {
                    &mut self.disabled_apps
                };
                if let Some((id, _)) = disabled.remove_entry(subject) {
                    self.id_bytes = self.id_bytes.saturating_sub(id.len());
                }
                return;
            }
        };
        match map.get_mut(subject) {
            Some(e) => *e = (*e).max(expires_at),
            None => {
                map.insert(subject.into(), expires_at);
                self.id_bytes += subject.len();
            }
        }
    }

    fn purge(&mut self, now: i64) {
        let mut dropped = 0;
        for map in [
            &mut self.jtis,
            &mut self.sessions,
            &mut self.api_keys,
            &mut self.disabled_users,
            &mut self.disabled_apps,
        ] {
            map.retain(|id, exp| {
                let keep = *exp > now;
                if !keep {
                    dropped += id.len();
                }
                keep
            });
        }
        self.id_bytes = self.id_bytes.saturating_sub(dropped);
    }

    fn len(&self) -> usize {
        self.jtis.len()
            + self.sessions.len()
            + self.api_keys.len()
            + self.disabled_users.len()
            + self.disabled_apps.len()
    }
}

struct Inner {
    entries: RwLock<Entries>,
    logs: Vec<Arc<dyn RevocationLog>>,
    /// One cursor per log; held for the whole of a poll (polls never overlap).
    cursors: tokio::sync::Mutex<Vec<u64>>,
    /// When the set was made: `synced_at` counts from it.
    base: Instant,
    /// When the last complete poll started, in microseconds after `base`
    /// plus one (0: not loaded yet). An atomic: every check reads it.
    synced_at: AtomicU64,
    loaded: AtomicBool,
    loaded_signal: Notify,
    policy: RevocationPolicy,
    clock: Arc<dyn Clock>,
    feed: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The logs' [`RevocationLog::watch`] tasks, aborted with the set.
    watchers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    wakeups: AtomicU64,
    notifications: AtomicU64,
    listens: AtomicU64,
    wake: Arc<Notify>,
    last_purge: Mutex<Option<Instant>>,
    poll_failures: AtomicU64,
    stale_denied: AtomicU64,
    stale_allowed: AtomicU64,
    unrecognized: AtomicU64,
    last_warned: Mutex<Option<Instant>>,
    last_stale_logged: Mutex<Option<Instant>>,
    last_unrecognized_logged: Mutex<Option<Instant>>,
}

/// The replica's copy of the live revocations, fed by the backends' logs.
/// Cheap to clone (shared).
#[derive(Clone)]
pub struct RevocationSet {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RevocationSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationSet")
            .field("logs", &self.inner.logs.len())
            .field("policy", &self.inner.policy)
            .field("stats", &self.stats())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// True (and the stamp renewed) when nothing was logged within [`LOG_EVERY`].
fn due(stamp: &Mutex<Option<Instant>>) -> bool {
    let mut last = lock(stamp);
    if last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

impl RevocationSet {
    /// A set following `logs` (deduplicated by identity), not started: the
    /// feed starts on the first [`Self::ready`] or check.
    pub fn new(
        logs: Vec<Arc<dyn RevocationLog>>,
        policy: RevocationPolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let mut distinct: Vec<Arc<dyn RevocationLog>> = Vec::new();
        for log in logs {
            let same =
                |l: &Arc<dyn RevocationLog>| std::ptr::addr_eq(Arc::as_ptr(l), Arc::as_ptr(&log));
            if !distinct.iter().any(same) {
                distinct.push(log);
            }
        }
        let n = distinct.len();
        Self {
            inner: Arc::new(Inner {
                entries: RwLock::new(Entries::default()),
                logs: distinct,
                cursors: tokio::sync::Mutex::new(vec![0; n]),
                base: Instant::now(),
                synced_at: AtomicU64::new(0),
                loaded: AtomicBool::new(false),
                loaded_signal: Notify::new(),
                policy,
                clock,
                feed: Mutex::new(None),
                watchers: Mutex::new(Vec::new()),
                wakeups: AtomicU64::new(0),
                notifications: AtomicU64::new(0),
                listens: AtomicU64::new(0),
                wake: Arc::new(Notify::new()),
                last_purge: Mutex::new(None),
                poll_failures: AtomicU64::new(0),
                stale_denied: AtomicU64::new(0),
                stale_allowed: AtomicU64::new(0),
                unrecognized: AtomicU64::new(0),
                last_warned: Mutex::new(None),
                last_stale_logged: Mutex::new(None),
                last_unrecognized_logged: Mutex::new(None),
            }),
        }
    }

    /// The policy it follows.
    pub fn policy(&self) -> RevocationPolicy {
        self.inner.policy
    }

    /// The distinct logs followed.
    pub fn logs(&self) -> &[Arc<dyn RevocationLog>] {
        &self.inner.logs
    }

    /// Whether the initial load has completed.
    pub fn is_loaded(&self) -> bool {
        self.inner.loaded.load(Ordering::Acquire)
    }

    /// How far behind the logs the set may be: the age of the last
    /// complete poll (`None` before the initial load).
    pub fn lag(&self) -> Option<Duration> {
        self.inner.lag()
    }

    /// Whether the feed is behind by more than `max_stale` (or not loaded).
    pub fn is_stale(&self) -> bool {
        self.lag()
            .is_none_or(|lag| lag > self.inner.policy.max_stale)
    }

    /// The counters.
    pub fn stats(&self) -> RevocationFeedStats {
        let (entries, id_bytes) = {
            let e = self
                .inner
                .entries
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (e.len(), e.id_bytes)
        };
        RevocationFeedStats {
            entries: entries as u64,
            bytes: (id_bytes + entries * ENTRY_OVERHEAD_BYTES) as u64,
            poll_failures: self.inner.poll_failures.load(Ordering::Relaxed),
            stale_denied: self.inner.stale_denied.load(Ordering::Relaxed),
            stale_allowed: self.inner.stale_allowed.load(Ordering::Relaxed),
            wakeups: self.inner.wakeups.load(Ordering::Relaxed),
            notifications: self.inner.notifications.load(Ordering::Relaxed),
            listens: self.inner.listens.load(Ordering::Relaxed),
            unrecognized: self.inner.unrecognized.load(Ordering::Relaxed),
        }
    }

    /// Starts the feed (once, and again if its runtime went away), then
    /// waits at most `wait` for the initial load; [`StoreError::Unavailable`]
    /// when it has not completed by then.
    pub async fn ready(&self, wait: Duration) -> StoreResult<()> {
        // Fresh: the feed runs (the check every request makes, lock-free).
        if self.is_loaded() && !self.is_stale() {
            return Ok(());
        }
        self.start_feed();
        if self.is_loaded() {
            return Ok(());
        }
        let loaded = async {
            loop {
                let signal = self.inner.loaded_signal.notified();
                if self.is_loaded() {
                    return;
                }
                signal.await;
            }
        };
        tokio::time::timeout(wait, loaded).await.map_err(|_| {
            StoreError::Unavailable("the revocation set has not been loaded yet".into())
        })
    }

    /// Whether the set answers now: `Ok` while fresh or when `on_stale =
    /// "allow"`; [`StoreError::Unavailable`] when the feed is past
    /// `max_stale` and the policy is `deny`. Counts and (once per 10 s) logs
    /// each decision taken while stale.
    pub fn admit_staleness(&self) -> StoreResult<()> {
        if !self.is_stale() {
            return Ok(());
        }
        let lag = self.lag();
        match self.inner.policy.on_stale {
            OnStale::Deny => {
                self.inner.stale_denied.fetch_add(1, Ordering::Relaxed);
                if due(&self.inner.last_stale_logged) {
                    tracing::warn!(
                        ?lag,
                        max_stale = ?self.inner.policy.max_stale,
                        "revocation feed is stale; refusing tokens (revocation.on_stale = \"deny\")"
                    );
                }
                Err(StoreError::Unavailable(
                    "the revocation set is stale past revocation.max_stale".into(),
                ))
            }
            OnStale::Allow => {
                self.inner.stale_allowed.fetch_add(1, Ordering::Relaxed);
                if due(&self.inner.last_stale_logged) {
                    tracing::warn!(
                        ?lag,
                        max_stale = ?self.inner.policy.max_stale,
                        "revocation feed is stale; answering from the local set (revocation.on_stale = \"allow\")"
                    );
                }
                Ok(())
            }
        }
    }

    /// Whether `subject` is revoked as `kind` at the stores' clock (never
    /// for [`RevokedKind::UserEnabled`] / [`RevokedKind::AppEnabled`]).
    pub fn contains(&self, kind: RevokedKind, subject: &str) -> bool {
        let now = self.inner.clock.unix_seconds();
        let entries = self
            .inner
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .map(kind)
            .and_then(|map| map.get(subject))
            .is_some_and(|&exp| exp > now)
    }

    /// Adds an entry this replica just wrote to the backend (the feed
    /// brings it too; this makes it visible before the call returns).
    pub fn insert(&self, kind: RevokedKind, subject: &str, expires_at: i64) {
        self.inner
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(kind, subject, expires_at);
    }

    /// Polls the logs now (after a revocation through this replica);
    /// a failure is logged and left to the feed.
    pub async fn catch_up(&self) {
        if self.inner.logs.is_empty() {
            return;
        }
        if let Err(e) = self.inner.poll().await {
            tracing::debug!(error = %e, "revocation catch-up poll failed; the feed retries");
        }
    }

    /// Starts following the logs (in the current tokio runtime), unless the
    /// feed already runs; a no-op outside a runtime.
    pub fn start_feed(&self) {
        let mut feed = lock(&self.inner.feed);
        if feed.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let wake = Arc::clone(&self.inner.wake);
        let every = self.inner.policy.poll_interval;
        *feed = Some(runtime.spawn(follow(weak, wake, every)));
        let mut watchers = lock(&self.inner.watchers);
        if watchers.iter().all(tokio::task::JoinHandle::is_finished) {
            watchers.clear();
            for log in &self.inner.logs {
                let weak = Arc::downgrade(&self.inner);
                let signal: super::AppendSignal = Arc::new(move |event| {
                    if let Some(inner) = weak.upgrade() {
                        match event {
                            WatchEvent::Appended => &inner.notifications,
                            WatchEvent::Listening => &inner.listens,
                        }
                        .fetch_add(1, Ordering::Relaxed);
                        inner.wakeups.fetch_add(1, Ordering::Relaxed);
                        inner.wake.notify_one();
                    }
                });
                if let Some(task) = log.watch(signal) {
                    watchers.push(runtime.spawn(task));
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for watcher in lock(&self.watchers).drain(..) {
            watcher.abort();
        }
    }
}

/// The feed: polls every `every` until the set is dropped.
async fn follow(weak: Weak<Inner>, wake: Arc<Notify>, every: Duration) {
    loop {
        {
            let Some(inner) = weak.upgrade() else { return };
            if let Err(e) = inner.poll().await {
                inner.poll_failures.fetch_add(1, Ordering::Relaxed);
                if due(&inner.last_warned) {
                    tracing::warn!(
                        error = %e,
                        lag = ?inner.lag(),
                        "revocation feed cannot read the log; the local set grows staler"
                    );
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = wake.notified() => {}
        }
    }
}

impl Inner {
    /// The age of the last complete poll (`None` before the first).
    fn lag(&self) -> Option<Duration> {
        match self.synced_at.load(Ordering::Acquire) {
            0 => None,
            stamp => {
                let at = self.base + Duration::from_micros(stamp - 1);
                Some(Instant::now().saturating_duration_since(at))
            }
        }
    }

    /// Reads every log past its cursor; on success the set is current as of
    /// the moment this poll started.
    async fn poll(&self) -> StoreResult<()> {
        let mut cursors = self.cursors.lock().await;
        let started = Instant::now();
        let now = self.clock.unix_seconds();
        for (log, cursor) in self.logs.iter().zip(cursors.iter_mut()) {
            loop {
                let page =
                    tokio::time::timeout(POLL_BUDGET, log.revocations_after(*cursor, now, PAGE))
                        .await
                        .map_err(|_| {
                            StoreError::Unavailable(format!(
                                "revocation log: no answer within {} ms",
                                POLL_BUDGET.as_millis()
                            ))
                        })??;
                if page.head < *cursor {
                    // The log was reset (a store restored or restarted
                    // empty): read it again from the start; what the set
                    // holds stays until it expires.
                    tracing::warn!(
                        head = page.head,
                        cursor = *cursor,
                        "revocation log is behind this replica's cursor; reloading it"
                    );
                    *cursor = 0;
                    continue;
                }
                let full = page.entries.len() >= PAGE;
                let before = *cursor;
                self.apply(&page.entries, cursor, now);
                // A full page that does not move the cursor (a log breaking
                // its own order) would be read again forever.
                if !full || *cursor == before {
                    break;
                }
            }
        }
        let micros =
            u64::try_from(started.duration_since(self.base).as_micros()).unwrap_or(u64::MAX - 1);
        self.synced_at.fetch_max(micros + 1, Ordering::AcqRel);
        if !self.loaded.swap(true, Ordering::AcqRel) {
            self.loaded_signal.notify_waiters();
        }
        let purge_due = {
            let mut last = lock(&self.last_purge);
            let due = last.is_none_or(|t| t.elapsed() >= PURGE_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if purge_due {
            self.entries
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .purge(now);
        }
        Ok(())
    }

    /// Adds a page's live entries and moves the cursor past all of them
    /// (a log may return entries already expired: they refuse nothing).
    fn apply(&self, page: &[LoggedRevocation], cursor: &mut u64, now: i64) {
        if page.is_empty() {
            return;
        }
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut unrecognized = 0u64;
        for e in page {
            if let RevokedKind::Unrecognized(tag) = e.kind {
                unrecognized += 1;
                if due(&self.last_unrecognized_logged) {
                    tracing::warn!(
                        seq = e.seq,
                        tag,
                        "revocation log entry this build cannot read (a newer version's kind, or corrupt); skipped"
                    );
                }
            } else if e.expires_at > now {
                entries.insert(e.kind, &e.subject, e.expires_at);
            }
            *cursor = (*cursor).max(e.seq);
        }
        if unrecognized > 0 {
            self.unrecognized.fetch_add(unrecognized, Ordering::Relaxed);
        }
    }
}

/// The expiry of an entry for a session, an API key or a user's status
/// written at `now`: a day, past any token or cached record it refuses.
pub(crate) fn session_entry_expiry(now: i64) -> i64 {
    now.saturating_add(i64::try_from(SESSION_REVOCATION_TTL.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::memory::MemoryStores;
    use crate::stores::{BoxFuture, Denylist, RevocationPage};

    fn set_over(logs: Vec<Arc<dyn RevocationLog>>, policy: RevocationPolicy) -> RevocationSet {
        RevocationSet::new(logs, policy, Arc::new(portcullis_core::SystemClock))
    }

    #[test]
    fn an_entry_counts_its_id_and_the_overhead_once() {
        let set = set_over(Vec::new(), RevocationPolicy::default());
        set.insert(RevokedKind::Jti, "abcd", i64::MAX);
        set.insert(RevokedKind::Jti, "abcd", i64::MAX);
        assert_eq!(set.stats().entries, 1);
        assert_eq!(set.stats().bytes, (4 + ENTRY_OVERHEAD_BYTES) as u64);
        assert!(set.contains(RevokedKind::Jti, "abcd"));
        assert!(!set.contains(RevokedKind::Session, "abcd"));
    }

    #[test]
    fn an_expired_entry_refuses_nothing() {
        let set = set_over(Vec::new(), RevocationPolicy::default());
        set.insert(RevokedKind::Session, "gone", 1);
        assert!(!set.contains(RevokedKind::Session, "gone"));
    }

    #[tokio::test]
    async fn the_feed_loads_what_was_revoked_before_and_follows_what_comes_after() {
        let backend = Arc::new(MemoryStores::new());
        let log = Arc::clone(&backend)
            .revocation_log()
            .expect("memory keeps a log");
        let far = i64::MAX / 2;
        backend.deny("before", far).await.expect("deny");
        let set = set_over(vec![log], RevocationPolicy::default());
        assert!(!set.is_loaded());
        assert!(set.lag().is_none());
        set.ready(Duration::from_secs(5)).await.expect("loaded");
        assert!(set.contains(RevokedKind::Jti, "before"));
        backend.deny("after", far).await.expect("deny");
        // The feed polls every 100 ms by itself.
        let started = Instant::now();
        while !set.contains(RevokedKind::Jti, "after") {
            assert!(started.elapsed() < Duration::from_secs(1), "not followed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A log that fails while `down` is set.
    struct Flaky {
        down: AtomicBool,
    }

    impl RevocationLog for Flaky {
        fn revocations_after(
            &self,
            after: u64,
            _now: i64,
            _limit: usize,
        ) -> BoxFuture<'_, StoreResult<RevocationPage>> {
            let r = if self.down.load(Ordering::SeqCst) {
                Err(StoreError::Unavailable("down".into()))
            } else {
                Ok(RevocationPage {
                    entries: Vec::new(),
                    head: after,
                })
            };
            Box::pin(std::future::ready(r))
        }

        fn purge_revocations(&self, _now: i64) -> BoxFuture<'_, StoreResult<u64>> {
            Box::pin(std::future::ready(Ok(0)))
        }
    }

    async fn stale_after_an_outage(
        on_stale: OnStale,
    ) -> (RevocationSet, Arc<Flaky>, StoreResult<()>) {
        let flaky = Arc::new(Flaky {
            down: AtomicBool::new(false),
        });
        let policy = RevocationPolicy {
            max_stale: Duration::from_secs(1),
            on_stale,
            ..RevocationPolicy::default()
        };
        let set = set_over(vec![flaky.clone() as Arc<dyn RevocationLog>], policy);
        set.ready(Duration::from_secs(5)).await.expect("loaded");
        assert!(set.admit_staleness().is_ok(), "fresh");
        flaky.down.store(true, Ordering::SeqCst);
        // Within max_stale the set answers alone.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(set.admit_staleness().is_ok(), "within max_stale");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(set.is_stale());
        assert!(set.stats().poll_failures > 0);
        let decision = set.admit_staleness();
        (set, flaky, decision)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_max_stale_deny_refuses_and_recovery_answers_again() {
        let (set, flaky, decision) = stale_after_an_outage(OnStale::Deny).await;
        assert!(matches!(decision, Err(StoreError::Unavailable(_))));
        assert_eq!(set.stats().stale_denied, 1);
        flaky.down.store(false, Ordering::SeqCst);
        set.catch_up().await;
        assert!(set.admit_staleness().is_ok(), "fresh again");
        assert!(set.lag().expect("loaded") < Duration::from_secs(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_max_stale_allow_answers_and_counts() {
        let (set, _flaky, decision) = stale_after_an_outage(OnStale::Allow).await;
        assert!(decision.is_ok());
        assert_eq!(set.stats().stale_allowed, 1);
        assert_eq!(set.stats().stale_denied, 0);
    }

    #[test]
    fn the_policy_bounds_are_checked() {
        let mut policy = RevocationPolicy::default();
        assert!(policy.validate().is_ok());
        policy.poll_interval = Duration::from_secs(2);
        assert!(policy.validate().is_err());
        policy.poll_interval = Duration::from_millis(100);
        policy.max_stale = Duration::from_millis(10);
        assert!(policy.validate().is_err());
    }
}
