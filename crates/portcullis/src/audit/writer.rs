//! The audit writer: the request path only enqueues (never awaits a sink);
//! one batcher task flushes by size or time, spools while the sink is down,
//! replays the spool in order when it returns, and drains on shutdown.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_core::Clock;
use portcullis_core::audit::AuditEvent;
use portcullis_core::audit::time::micros;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use super::spool::Spool;
use super::{AuditError, AuditSink};

/// What `record` does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Wait at most this long for room, then drop (both counted).
    Block(Duration),
    /// Drop the event at once (counted).
    Drop,
}

/// Periodic deletion of old events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrunePolicy {
    /// Delete events older than this.
    pub older_than: Duration,
    /// How often to run.
    pub every: Duration,
}

/// Writer settings; [`AuditWriterConfig::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditWriterConfig {
    /// Events the queue holds (bounds memory). Default 65 536.
    pub queue_capacity: usize,
    /// Flush when this many events are waiting. Default 1 000.
    pub batch_size: usize,
    /// Flush at least this often. Default 100 ms.
    pub flush_interval: Duration,
    /// Full-queue policy. Default `Block(50 ms)`.
    pub full_policy: FullPolicy,
    /// The local spool file used while the sink is down.
    pub spool_path: PathBuf,
    /// Wait between replay attempts while the sink is down. Default 500 ms.
    pub retry_interval: Duration,
    /// Background retention, off by default.
    pub prune: Option<PrunePolicy>,
}

impl AuditWriterConfig {
    /// The defaults, spooling to `spool_path`.
    pub fn new(spool_path: impl Into<PathBuf>) -> Self {
        Self {
            queue_capacity: 65_536,
            batch_size: 1000,
            flush_interval: Duration::from_millis(100),
            full_policy: FullPolicy::Block(Duration::from_millis(50)),
            spool_path: spool_path.into(),
            retry_interval: Duration::from_millis(500),
            prune: None,
        }
    }

    fn validate(&self) -> Result<(), AuditError> {
        let bad = |m: &str| Err(AuditError::Config(m.to_owned()));
        if self.queue_capacity == 0 || self.queue_capacity > 16 * 1024 * 1024 {
            return bad("queue_capacity must be between 1 and 16777216");
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return bad("batch_size must be between 1 and 10000");
        }
        if self.flush_interval.is_zero() || self.retry_interval.is_zero() {
            return bad("flush_interval and retry_interval must be positive");
        }
        if self
            .prune
            .is_some_and(|p| p.every.is_zero() || p.older_than.is_zero())
        {
            return bad("prune.every and prune.older_than must be positive");
        }
        Ok(())
    }
}

/// What happened to one recorded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// In the queue.
    Queued,
    /// Dropped: the queue was full (or the writer shut down); counted.
    Dropped,
}

#[derive(Debug, Default)]
struct Counters {
    enqueued: AtomicU64,
    dropped: AtomicU64,
    blocked: AtomicU64,
    written: AtomicU64,
    spooled: AtomicU64,
    replayed: AtomicU64,
    sink_errors: AtomicU64,
    lost: AtomicU64,
    pruned: AtomicU64,
}

/// A snapshot of the writer's counters (also exported through `metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Events accepted into the queue.
    pub enqueued: u64,
    /// Events dropped because the queue was full or closed.
    pub dropped: u64,
    /// `record` calls that had to wait for room (`block` policy).
    pub blocked: u64,
    /// Events the sink stored (replays included).
    pub written: u64,
    /// Events written to the spool.
    pub spooled: u64,
    /// Events replayed from the spool into the sink.
    pub replayed: u64,
    /// Failed sink writes.
    pub sink_errors: u64,
    /// Events neither stored nor spooled (spool write failed).
    pub lost: u64,
    /// Events deleted by the background prune.
    pub pruned: u64,
}

fn bump(counter: &AtomicU64, name: &'static str, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
    metrics::counter!(name).increment(n);
}

/// Handle the request path records through. Share it with an `Arc`.
pub struct AuditWriter {
    tx: mpsc::Sender<AuditEvent>,
    policy: FullPolicy,
    counters: Arc<Counters>,
    shutdown: Arc<Notify>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("policy", &self.policy)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl AuditWriter {
    /// Opens the spool and starts the batcher on the current tokio runtime.
    /// Batches left in the spool by an earlier run are replayed first.
    pub fn start(
        sink: Arc<dyn AuditSink>,
        config: AuditWriterConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuditError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            AuditError::Config("AuditWriter::start must be called inside a tokio runtime".into())
        })?;
        let spool = Spool::open(&config.spool_path)?;
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let counters = Arc::new(Counters::default());
        let shutdown = Arc::new(Notify::new());
        let batcher = Batcher {
            rx,
            sink,
            spool,
            next_retry: Instant::now(),
            next_prune: Instant::now(),
            counters: Arc::clone(&counters),
            shutdown: Arc::clone(&shutdown),
            clock,
            config: config.clone(),
        };
        let task = runtime.spawn(batcher.run());
        Ok(Self {
            tx,
            policy: config.full_policy,
            counters,
            shutdown,
            task: Mutex::new(Some(task)),
        })
    }

    /// Enqueues without ever waiting: a full queue drops the event (counted)
    /// whatever the policy. For callers that cannot await.
    pub fn try_record(&self, event: AuditEvent) -> Recorded {
        match self.tx.try_send(event) {
            Ok(()) => {
                bump(
                    &self.counters.enqueued,
                    "portcullis_audit_enqueued_total",
                    1,
                );
                Recorded::Queued
            }
            Err(_) => {
                bump(&self.counters.dropped, "portcullis_audit_dropped_total", 1);
                Recorded::Dropped
            }
        }
    }

    /// Enqueues, applying the full-queue policy. Never awaits a sink: only a
    /// full queue under the `block` policy waits, for a bounded time.
    pub async fn record(&self, event: AuditEvent) -> Recorded {
        let event = match self.tx.try_send(event) {
            Ok(()) => {
                bump(
                    &self.counters.enqueued,
                    "portcullis_audit_enqueued_total",
                    1,
                );
                return Recorded::Queued;
            }
            Err(mpsc::error::TrySendError::Full(e)) => e,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                bump(&self.counters.dropped, "portcullis_audit_dropped_total", 1);
                return Recorded::Dropped;
            }
        };
        if let FullPolicy::Block(wait) = self.policy {
            bump(&self.counters.blocked, "portcullis_audit_blocked_total", 1);
            if let Ok(Ok(())) = tokio::time::timeout(wait, self.tx.send(event)).await {
                bump(
                    &self.counters.enqueued,
                    "portcullis_audit_enqueued_total",
                    1,
                );
                return Recorded::Queued;
            }
        }
        bump(&self.counters.dropped, "portcullis_audit_dropped_total", 1);
        Recorded::Dropped
    }

    /// The counters so far.
    pub fn stats(&self) -> AuditStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AuditStats {
            enqueued: l(&c.enqueued),
            dropped: l(&c.dropped),
            blocked: l(&c.blocked),
            written: l(&c.written),
            spooled: l(&c.spooled),
            replayed: l(&c.replayed),
            sink_errors: l(&c.sink_errors),
            lost: l(&c.lost),
            pruned: l(&c.pruned),
        }
    }

    /// Events waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Stops accepting events, writes every queued one (to the sink, or to
    /// the spool when the sink is down; spooled events replay on next start)
    /// and waits for the batcher to finish. Idempotent.
    pub async fn shutdown(&self) {
        self.shutdown.notify_one();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "audit batcher ended abnormally");
        }
    }
}

struct Batcher {
    rx: mpsc::Receiver<AuditEvent>,
    sink: Arc<dyn AuditSink>,
    spool: Spool,
    next_retry: Instant,
    next_prune: Instant,
    counters: Arc<Counters>,
    shutdown: Arc<Notify>,
    clock: Arc<dyn Clock>,
    config: AuditWriterConfig,
}

/// Spool records replayed per loop turn, so the queue keeps draining meanwhile.
const REPLAY_PER_TURN: usize = 8;

impl Batcher {
    async fn run(mut self) {
        let size = self.config.batch_size;
        let mut batch = Vec::with_capacity(size);
        let mut closing = false;
        let mut done = false;
        if let Some(p) = self.config.prune {
            self.next_prune = Instant::now() + p.every;
        }
        while !done {
            let deadline = Instant::now() + self.config.flush_interval;
            while batch.len() < size {
                let room = size - batch.len();
                tokio::select! {
                    biased;
                    () = self.shutdown.notified(), if !closing => {
                        closing = true;
                        self.rx.close();
                    }
                    n = self.rx.recv_many(&mut batch, room) => {
                        if n == 0 {
                            done = true;
                            break;
                        }
                    }
                    () = sleep_until(deadline), if !closing => break,
                }
            }
            if !batch.is_empty() {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(size));
                self.deliver(full).await;
            }
            self.replay(if done { usize::MAX } else { REPLAY_PER_TURN }, done)
                .await;
            if !done {
                self.prune().await;
            }
        }
    }

    async fn deliver(&mut self, batch: Vec<AuditEvent>) {
        let n = batch.len() as u64;
        if !self.spool.pending() {
            match self.sink.write_batch(&batch).await {
                Ok(()) => {
                    bump(&self.counters.written, "portcullis_audit_written_total", n);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, events = n, "audit sink write failed; spooling");
                    bump(
                        &self.counters.sink_errors,
                        "portcullis_audit_sink_errors_total",
                        1,
                    );
                    self.next_retry = Instant::now() + self.config.retry_interval;
                }
            }
        }
        match self.spool.append(&batch).await {
            Ok(()) => bump(&self.counters.spooled, "portcullis_audit_spooled_total", n),
            Err(e) => {
                tracing::error!(error = %e, events = n, "audit spool write failed; events lost");
                bump(&self.counters.lost, "portcullis_audit_lost_total", n);
            }
        }
    }

    /// Replays up to `max` spooled batches, in order, when a retry is due
    /// (always when `force`).
    async fn replay(&mut self, max: usize, force: bool) {
        if !self.spool.pending() || (!force && Instant::now() < self.next_retry) {
            return;
        }
        for _ in 0..max {
            let (events, next) = match self.spool.peek().await {
                Ok(Some(found)) => found,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the audit spool");
                    self.next_retry = Instant::now() + self.config.retry_interval;
                    return;
                }
            };
            if let Err(e) = self.sink.write_batch(&events).await {
                tracing::warn!(error = %e, "audit sink still unavailable; replay later");
                bump(
                    &self.counters.sink_errors,
                    "portcullis_audit_sink_errors_total",
                    1,
                );
                self.next_retry = Instant::now() + self.config.retry_interval;
                return;
            }
            let n = events.len() as u64;
            bump(&self.counters.written, "portcullis_audit_written_total", n);
            bump(
                &self.counters.replayed,
                "portcullis_audit_replayed_total",
                n,
            );
            if let Err(e) = self.spool.advance(next).await {
                tracing::error!(error = %e, "cannot advance the audit spool");
                return;
            }
        }
    }

    async fn prune(&mut self) {
        let Some(policy) = self.config.prune else {
            return;
        };
        if Instant::now() < self.next_prune {
            return;
        }
        self.next_prune = Instant::now() + policy.every;
        let before = micros(self.clock.now().saturating_sub(policy.older_than));
        match self.sink.prune(before).await {
            Ok(n) => bump(&self.counters.pruned, "portcullis_audit_pruned_total", n),
            Err(e) => tracing::warn!(error = %e, "audit prune failed; retrying next period"),
        }
    }
}
