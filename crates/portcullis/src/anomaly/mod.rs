//! Anomaly detection at run time: detector windows in memory or on Redis,
//! bans that every replica honours, and alerts sent by the webhook worker.
//!
//! The request path calls [`AnomalyEngine::banned`] early (rejecting with
//! `anomaly.banned`) and [`AnomalyEngine::observe`] with what it saw; neither
//! waits for a webhook.

#[cfg(feature = "redis")]
pub mod batch;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
pub mod webhook;

use std::sync::Arc;

use portcullis_core::Clock;
use portcullis_core::anomaly::window::WindowCount;
use portcullis_core::anomaly::{
    Action, AnomalyEvent, Ban, BanTarget, DetectorConfig, DetectorConfigError, DetectorKind,
    Observation, SampleRequest, Signal, validate_detectors,
};

use self::memory::{MemoryBans, MemoryCounters};
use self::webhook::AlertSender;

/// Where detector windows and bans live.
#[derive(Debug, Clone)]
pub enum AnomalyBackend {
    /// This process only.
    Memory {
        /// Detector windows.
        counters: Arc<MemoryCounters>,
        /// Bans.
        bans: Arc<MemoryBans>,
    },
    /// Shared by every replica through Redis.
    #[cfg(feature = "redis")]
    Redis {
        /// Detector windows.
        counters: redis::RedisCounters,
        /// Bans.
        bans: redis::RedisBans,
    },
}

impl AnomalyBackend {
    /// In-memory state holding at most about `max_keys` windows.
    pub fn memory(max_keys: usize) -> Self {
        Self::Memory {
            counters: Arc::new(MemoryCounters::new(max_keys)),
            bans: Arc::new(MemoryBans::default()),
        }
    }
}

/// Why the engine could not act.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AnomalyError {
    /// The detector configuration is invalid.
    #[error(transparent)]
    Config(#[from] DetectorConfigError),
    /// The shared backend failed (code `backend.unavailable`).
    #[error("anomaly backend unavailable: {0}")]
    Backend(String),
}

/// What one observation led to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Observed {
    /// Detectors that fired.
    pub events: Vec<AnomalyEvent>,
    /// Detectors whose `tag` action marks this request's audit event.
    pub tags: Vec<DetectorKind>,
    /// Bans written by this observation (a key above its threshold is
    /// banned once per its detector's cooldown, not on every event).
    pub bans: Vec<Ban>,
}

impl Observed {
    /// Marks `event` with the detectors whose `tag` action fired, each once,
    /// so the audit log can be searched for them (`anomalies_only`).
    pub fn tag_audit(&self, event: &mut portcullis_core::audit::AuditEvent) {
        for kind in &self.tags {
            let name = kind.as_str();
            if !event.anomaly_flags.iter().any(|f| f == name) {
                event.anomaly_flags.push(name.to_owned());
            }
        }
    }
}

/// Detector updates planned for one signal (see [`AnomalyEngine::pending`]).
#[derive(Debug)]
pub struct Pending<'s, 'e> {
    batch: Vec<(Observation<'s>, &'e DetectorConfig)>,
}

impl<'s, 'e> Pending<'s, 'e> {
    /// No enabled detector watches this signal.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The updates, in the order their counts must be given back.
    pub fn updates(&self) -> &[(Observation<'s>, &'e DetectorConfig)] {
        &self.batch
    }
}

/// Detectors, their state and their actions.
pub struct AnomalyEngine {
    detectors: [Option<DetectorConfig>; DetectorKind::ALL.len()],
    backend: AnomalyBackend,
    /// Opens after consecutive Redis failures (timeouts included), so a
    /// hung Redis costs the request path nothing until a probe succeeds.
    #[cfg(feature = "redis")]
    breaker: crate::ratelimit::fallback::CircuitBreaker,
    alerts: Option<AlertSender>,
    clock: Arc<dyn Clock>,
    /// (detector, target) bans this process wrote, within their cooldown.
    recent_bans: memory::MemoryDedup,
    /// The latest detections of this process, newest last (at most
    /// [`RECENT_DETECTIONS`]); locked only when a detector fires.
    recent: std::sync::Mutex<std::collections::VecDeque<AnomalyEvent>>,
    /// (detector, key) firings fully reported lately (a seeded 64-bit hash
    /// of both -> until when, Unix ms): see [`FULL_REPORT_EVERY`].
    reported: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
    reported_hasher: foldhash::fast::RandomState,
    /// `portcullis_anomaly_detections_total` per detector, resolved on
    /// first use (a firing detector counts on every event of its key).
    detections: [std::sync::OnceLock<metrics::Counter>; DetectorKind::ALL.len()],
    /// Redis ban answers per target (`ip:…` / `subject:…`), for
    /// [`BAN_CACHE_TTL`]: a request checks its IP and subject from memory.
    #[cfg(feature = "redis")]
    ban_cache: moka::sync::Cache<String, Option<Ban>>,
    /// Ban lookups that went to Redis (cache misses).
    #[cfg(feature = "redis")]
    ban_lookups: std::sync::atomic::AtomicU64,
    /// Count detectors' events on Redis, sent in batches.
    #[cfg(feature = "redis")]
    batcher: Option<Arc<batch::Batcher>>,
}

/// How many detections [`AnomalyEngine::recent_detections`] keeps.
pub const RECENT_DETECTIONS: usize = 256;

/// A detector keeps firing on every event while its key is over the
/// threshold (an abusive client trips `burst` on each request). The first
/// firing is reported in full (an [`AnomalyEvent`] with its sample, the
/// alert, the ban, the recent detections); later firings of the same
/// detector and key within this long (or within its cooldown or ban, if
/// shorter) only tag the request and count the metric: building the event
/// again would cost each such request a redacted sample and several
/// allocations for a report that de-duplication then drops.
pub const FULL_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Most (detector, key) pairs remembered as reported.
const MAX_REPORTED: usize = 100_000;

/// How long a replica answers a ban check on Redis from memory: a ban
/// written by another replica (or `portcullis bans`) is enforced here
/// within this; one written or lifted by this replica at once. Bans react
/// to abuse over seconds or minutes; the round trip it saves was one per
/// check, two per request.
#[cfg(feature = "redis")]
pub const BAN_CACHE_TTL: std::time::Duration = std::time::Duration::from_millis(250);

/// Most ban answers held (targets beyond it are asked of Redis again).
#[cfg(feature = "redis")]
const BAN_CACHE_ENTRIES: u64 = 100_000;

impl std::fmt::Debug for AnomalyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnomalyEngine")
            .field("detectors", &self.detectors)
            .field("backend", &self.backend)
            .finish()
    }
}

impl AnomalyEngine {
    /// An engine running `detectors` on `backend`; alerts go to `alerts`.
    pub fn new(
        detectors: Vec<DetectorConfig>,
        backend: AnomalyBackend,
        alerts: Option<AlertSender>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AnomalyError> {
        validate_detectors(&detectors)?;
        let mut table: [Option<DetectorConfig>; DetectorKind::ALL.len()] = Default::default();
        for d in detectors {
            let i = d.kind.index();
            table[i] = Some(d);
        }
        #[cfg(feature = "redis")]
        let batcher = match &backend {
            AnomalyBackend::Redis { counters, .. } => {
                Some(batch::Batcher::new(counters.clone(), Arc::clone(&clock)))
            }
            AnomalyBackend::Memory { .. } => None,
        };
        Ok(Self {
            detectors: table,
            backend,
            #[cfg(feature = "redis")]
            breaker: crate::ratelimit::fallback::CircuitBreaker::new(
                crate::ratelimit::fallback::DEFAULT_FAILURE_THRESHOLD,
                crate::ratelimit::fallback::DEFAULT_PROBE_INTERVAL,
            )
            .named("anomaly"),
            alerts,
            clock,
            recent_bans: memory::MemoryDedup::default(),
            recent: std::sync::Mutex::new(std::collections::VecDeque::new()),
            reported: std::sync::Mutex::new(std::collections::HashMap::new()),
            reported_hasher: foldhash::fast::RandomState::default(),
            detections: Default::default(),
            #[cfg(feature = "redis")]
            ban_cache: moka::sync::Cache::builder()
                .max_capacity(BAN_CACHE_ENTRIES)
                .time_to_live(BAN_CACHE_TTL)
                .build(),
            #[cfg(feature = "redis")]
            ban_lookups: std::sync::atomic::AtomicU64::new(0),
            #[cfg(feature = "redis")]
            batcher,
        })
    }

    /// The webhook sender, when webhooks are configured: security notices
    /// (key rotation, admin key creation, ...) go through it too.
    pub fn alerts(&self) -> Option<&AlertSender> {
        self.alerts.as_ref()
    }

    /// Queues a security notice for the webhooks that opted into its event
    /// (nothing when none did, or no webhook is configured).
    pub fn notify(
        &self,
        notice: impl FnOnce() -> webhook::SecurityNotice,
        event: webhook::SecurityEventKind,
        once_per: std::time::Duration,
    ) {
        if let Some(alerts) = &self.alerts
            && alerts.wants(event)
        {
            alerts.notify(notice(), once_per);
        }
    }

    /// The latest detections of this process (each replica keeps its own),
    /// newest first, at most [`RECENT_DETECTIONS`]; repeated firings of a
    /// detector for one key show as one entry with the latest count and time.
    pub fn recent_detections(&self) -> Vec<AnomalyEvent> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().cloned().collect()
    }

    /// Keeps `event` among the recent detections. A detector keeps firing
    /// on every event while its window is over the threshold (a burst fires
    /// it per request): a firing for the same detector and key as one of
    /// the latest entries updates that entry in place (no copy, no
    /// allocation), so one busy key does not flush the others out.
    fn remember(&self, event: &AnomalyEvent) {
        const SCAN: usize = 16;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(same) = recent
            .iter_mut()
            .rev()
            .take(SCAN)
            .find(|e| e.detector == event.detector && e.key == event.key)
        {
            same.count = event.count;
            same.last_seen_ms = event.last_seen_ms;
            return;
        }
        if recent.len() == RECENT_DETECTIONS {
            recent.pop_front();
        }
        recent.push_back(event.clone());
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request-path Redis call behind the breaker: refused at once while
    /// it is open; its failure (a timeout included) counts toward opening.
    #[cfg(feature = "redis")]
    async fn guarded<T, E: std::fmt::Display>(
        &self,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, AnomalyError> {
        if !self.breaker.allow() {
            return Err(AnomalyError::Backend(
                "anomaly backend circuit breaker open".into(),
            ));
        }
        match call.await {
            Ok(v) => {
                self.breaker.success();
                Ok(v)
            }
            Err(e) => {
                self.breaker.failure();
                Err(AnomalyError::Backend(e.to_string()))
            }
        }
    }

    /// The ban blocking this caller right now, if any.
    pub async fn banned(
        &self,
        ip: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Option<Ban>, AnomalyError> {
        let now = self.now_ms();
        match &self.backend {
            AnomalyBackend::Memory { bans, .. } => Ok(bans.banned(ip, subject, now)),
            #[cfg(feature = "redis")]
            AnomalyBackend::Redis { bans, .. } => {
                let targets = ip
                    .map(|v| BanTarget::Ip(v.to_owned()))
                    .into_iter()
                    .chain(subject.map(|v| BanTarget::Subject(v.to_owned())));
                for target in targets {
                    let key = target.render();
                    let answer = match self.ban_cache.get(&key) {
                        Some(answer) => answer,
                        None => {
                            self.ban_lookups
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let (ip, subject) = match &target {
                                BanTarget::Ip(v) => (Some(v.as_str()), None),
                                BanTarget::Subject(v) => (None, Some(v.as_str())),
                            };
                            let answer = self.guarded(bans.banned(ip, subject, now)).await?;
                            self.ban_cache.insert(key, answer.clone());
                            answer
                        }
                    };
                    if let Some(ban) = answer.filter(|b| b.until_ms > now) {
                        return Ok(Some(ban));
                    }
                }
                Ok(None)
            }
        }
    }

    /// Ban checks that asked Redis (the others were answered from the
    /// replica's [`BAN_CACHE_TTL`] cache); 0 without Redis.
    pub fn ban_backend_lookups(&self) -> u64 {
        #[cfg(feature = "redis")]
        {
            self.ban_lookups.load(std::sync::atomic::Ordering::Relaxed)
        }
        #[cfg(not(feature = "redis"))]
        {
            0
        }
    }

    /// Bans `target` for `duration` (manual bans use reason `manual`).
    pub async fn ban(
        &self,
        target: BanTarget,
        duration: std::time::Duration,
        reason: &str,
    ) -> Result<Ban, AnomalyError> {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let ban = Ban {
            target,
            until_ms: self.now_ms().saturating_add(ms),
            reason: reason.to_owned(),
        };
        self.store_ban(&ban).await?;
        Ok(ban)
    }

    async fn store_ban(&self, ban: &Ban) -> Result<(), AnomalyError> {
        match &self.backend {
            AnomalyBackend::Memory { bans, .. } => {
                bans.ban(ban.clone(), self.now_ms());
                Ok(())
            }
            #[cfg(feature = "redis")]
            AnomalyBackend::Redis { bans, .. } => {
                bans.ban(ban)
                    .await
                    .map_err(|e| AnomalyError::Backend(e.to_string()))?;
                self.ban_cache
                    .insert(ban.target.render(), Some(ban.clone()));
                Ok(())
            }
        }
    }

    /// Active bans, soonest to expire first.
    pub async fn list_bans(&self) -> Result<Vec<Ban>, AnomalyError> {
        let now = self.now_ms();
        match &self.backend {
            AnomalyBackend::Memory { bans, .. } => Ok(bans.list(now)),
            #[cfg(feature = "redis")]
            AnomalyBackend::Redis { bans, .. } => bans
                .list(now)
                .await
                .map_err(|e| AnomalyError::Backend(e.to_string())),
        }
    }

    /// Lifts a ban everywhere; whether one was active.
    pub async fn lift_ban(&self, target: &BanTarget) -> Result<bool, AnomalyError> {
        match &self.backend {
            AnomalyBackend::Memory { bans, .. } => Ok(bans.lift(target)),
            #[cfg(feature = "redis")]
            AnomalyBackend::Redis { bans, .. } => {
                let lifted = bans
                    .lift(target)
                    .await
                    .map_err(|e| AnomalyError::Backend(e.to_string()))?;
                self.ban_cache.invalidate(&target.render());
                Ok(lifted)
            }
        }
    }

    /// Feeds one signal to the detectors and carries out the actions of
    /// those that fire. `sample` is called only when one fires.
    ///
    /// On a backend failure detection is skipped for this signal (fail open:
    /// the request itself is never refused because a detector is down) and
    /// the error is returned for the caller to count.
    pub async fn observe(
        &self,
        signal: Signal<'_>,
        sample: impl FnOnce() -> SampleRequest,
    ) -> Result<Observed, AnomalyError> {
        let pending = self.pending(signal);
        if pending.is_empty() {
            return Ok(Observed::default());
        }
        let (counts, now) = self.record(&pending.batch).await?;
        self.conclude(&pending, counts, now, sample).await
    }

    /// The detector updates `signal` calls for, for a caller that records
    /// them itself and then hands the counts to [`Self::conclude`].
    pub fn pending<'s>(&self, signal: Signal<'s>) -> Pending<'s, '_> {
        let batch = signal
            .observations()
            .filter_map(|obs| {
                self.detectors[obs.kind.index()]
                    .as_ref()
                    .map(|config| (obs, config))
            })
            .collect();
        Pending { batch }
    }

    /// What the batched detector windows on Redis have done (`None` in
    /// memory).
    #[cfg(feature = "redis")]
    pub fn batch_stats(&self) -> Option<batch::BatchStats> {
        self.batcher.as_ref().map(|b| b.stats())
    }

    /// Carries out the actions of the detectors in `pending` whose recorded
    /// `counts` (one per update, in order; `now_ms` the recording time)
    /// reached their thresholds.
    pub async fn conclude(
        &self,
        pending: &Pending<'_, '_>,
        counts: Vec<WindowCount>,
        now: u64,
        sample: impl FnOnce() -> SampleRequest,
    ) -> Result<Observed, AnomalyError> {
        let batch = &pending.batch;
        if counts.len() != batch.len() {
            return Err(AnomalyError::Backend(format!(
                "{} counts for {} detector updates",
                counts.len(),
                batch.len()
            )));
        }
        let mut out = Observed::default();
        let mut sample = Some(sample);
        let mut sample_value: Option<SampleRequest> = None;
        for ((obs, config), count) in batch.iter().zip(counts) {
            if !count.reached(config.threshold) {
                continue;
            }
            if self.reported_lately(obs, config, now) {
                self.count_detection(obs.kind);
                if config.has(Action::Tag) && !out.tags.contains(&obs.kind) {
                    out.tags.push(obs.kind);
                }
                continue;
            }
            let s = match (&sample_value, sample.take()) {
                (Some(s), _) => s.clone(),
                (None, Some(f)) => {
                    let s = f();
                    sample_value = Some(s.clone());
                    s
                }
                (None, None) => SampleRequest::default(),
            };
            let event = AnomalyEvent {
                detector: obs.kind,
                key: obs.key.render(),
                count: count.count,
                window_secs: config.window.as_secs_f64(),
                first_seen_ms: count.first_seen_ms,
                last_seen_ms: now,
                sample: s,
            };
            self.count_detection(obs.kind);
            if config.has(Action::Tag) && !out.tags.contains(&obs.kind) {
                out.tags.push(obs.kind);
            }
            if config.has(Action::Ban)
                && let Some(target) = obs.key.ban_target()
            {
                // Once per cooldown (or sooner if the ban has ended): every
                // further event would only extend it by a few ms, at the cost
                // of a write and a round trip per request.
                let ms = u64::try_from(config.ban_for.as_millis()).unwrap_or(u64::MAX);
                let cooldown = u64::try_from(config.cooldown.as_millis()).unwrap_or(u64::MAX);
                let id = format!("{}:{}", obs.kind.as_str(), target.render());
                if self.recent_bans.claim(&id, cooldown.min(ms), now) {
                    let ban = Ban {
                        target,
                        until_ms: now.saturating_add(ms),
                        reason: obs.kind.as_str().to_owned(),
                    };
                    let stored = match &self.backend {
                        AnomalyBackend::Memory { .. } => self.store_ban(&ban).await,
                        #[cfg(feature = "redis")]
                        AnomalyBackend::Redis { bans, .. } => {
                            let stored = self.guarded(bans.ban(&ban)).await;
                            if stored.is_ok() {
                                self.ban_cache
                                    .insert(ban.target.render(), Some(ban.clone()));
                            }
                            stored
                        }
                    };
                    if let Err(e) = stored {
                        self.recent_bans.release(&id);
                        return Err(e);
                    }
                    out.bans.push(ban);
                }
            }
            if config.has(Action::Alert)
                && let Some(alerts) = &self.alerts
            {
                alerts.alert(event.clone(), config.cooldown);
            }
            self.remember(&event);
            out.events.push(event);
        }
        Ok(out)
    }

    fn count_detection(&self, kind: DetectorKind) {
        self.detections[kind.index()]
            .get_or_init(|| {
                metrics::counter!("portcullis_anomaly_detections_total", "detector" => kind.as_str())
            })
            .increment(1);
    }

    /// Whether `obs`'s detector and key were fully reported within
    /// [`FULL_REPORT_EVERY`] (or the detector's cooldown or ban, if
    /// shorter) of `now`; if not, they count as reported from now on.
    fn reported_lately(&self, obs: &Observation<'_>, config: &DetectorConfig, now: u64) -> bool {
        use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
        let mut every = FULL_REPORT_EVERY.min(config.cooldown);
        if config.has(Action::Ban) {
            every = every.min(config.ban_for);
        }
        let every = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        if every == 0 {
            return false;
        }
        let mut h = self.reported_hasher.build_hasher();
        obs.kind.index().hash(&mut h);
        obs.key.hash(&mut h);
        let id = h.finish();
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if reported.get(&id).is_some_and(|&until| until > now) {
            return true;
        }
        if reported.len() >= MAX_REPORTED {
            reported.retain(|_, until| *until > now);
        }
        if reported.len() < MAX_REPORTED {
            reported.insert(id, now.saturating_add(every));
        }
        false
    }

    async fn record(
        &self,
        batch: &[(Observation<'_>, &DetectorConfig)],
    ) -> Result<(Vec<WindowCount>, u64), AnomalyError> {
        match &self.backend {
            AnomalyBackend::Memory { counters, .. } => {
                let now = self.now_ms();
                let counts = batch
                    .iter()
                    .map(|(obs, config)| counters.record(obs, config, now))
                    .collect();
                Ok((counts, now))
            }
            #[cfg(feature = "redis")]
            AnomalyBackend::Redis { counters, .. } => {
                let local_now = self.now_ms();
                let mut counts: Vec<Option<WindowCount>> = vec![None; batch.len()];
                // Count detectors with a fresh shared count are judged here
                // (see `batch`); the others are recorded at once: one script
                // call on a single server, one per hash tag on a Cluster (a
                // plain request's keys share one: at most one call).
                let mut exact: Vec<(usize, redis::WindowUpdate)> = Vec::new();
                for (i, (obs, config)) in batch.iter().enumerate() {
                    // A batched event needs only its window's key; the
                    // exact path also a member (a fresh event id).
                    if obs.member.is_none()
                        && let Some(batcher) = &self.batcher
                        && let Some(count) = batcher.add(&counters.key(obs), local_now)
                    {
                        counts[i] = Some(count);
                        continue;
                    }
                    exact.push((i, counters.update(obs, config)));
                }
                let mut now = local_now;
                let cluster = counters.is_cluster();
                crate::redis_conn::sort_for_calls(&mut exact, cluster, |(_, u)| &u.key);
                let (slots, updates): (Vec<usize>, Vec<redis::WindowUpdate>) =
                    exact.into_iter().unzip();
                let mut start = 0;
                for call in
                    crate::redis_conn::script_calls(&updates, cluster, usize::MAX, |u| &u.key)
                {
                    let (call_counts, server_now) =
                        self.guarded(counters.record_updates(call)).await?;
                    now = now.max(server_now);
                    for ((&i, update), c) in slots[start..].iter().zip(call).zip(call_counts) {
                        counts[i] = Some(c);
                        if batch[i].0.member.is_none()
                            && let Some(batcher) = &self.batcher
                        {
                            batcher.synced(&update.key, batch[i].1, c, local_now);
                            batcher.start();
                        }
                    }
                    start += call.len();
                }
                let counts = counts
                    .into_iter()
                    .map(|c| {
                        c.unwrap_or(WindowCount {
                            count: 0,
                            first_seen_ms: now,
                        })
                    })
                    .collect();
                Ok((counts, now))
            }
        }
    }
}
