//! The audit writer: the request path only enqueues (never awaits a sink);
//! one batcher task flushes by size or time under a write deadline, spools
//! while the sink is down or hangs, replays the spool in order when it
//! returns, moves batches the sink keeps rejecting to a dead-letter file,
//! and drains on shutdown within a deadline. Retention runs in a task of
//! its own beside the batcher.

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
    /// Longest a sink write may take before the batch is spooled instead
    /// (a hung database is a database that is down). Default 5 s.
    pub write_timeout: Duration,
    /// Longest [`AuditWriter::shutdown`] takes: queued events the sink has
    /// not taken by then are spooled. Default 10 s.
    pub shutdown_timeout: Duration,
    /// Cap on the spool file, and separately on its dead-letter file, in
    /// bytes; batches that would pass it are dropped (counted in
    /// `spool_overflow` and `lost`, logged). Default 1 GiB.
    pub spool_max_bytes: u64,
    /// Times the sink may reject the oldest spooled batch's content before
    /// the events it keeps rejecting move to the dead-letter file. Default 3.
    pub dead_letter_after: u32,
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
            write_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            spool_max_bytes: 1 << 30,
            dead_letter_after: 3,
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
        if self.write_timeout.is_zero() || self.shutdown_timeout.is_zero() {
            return bad("write_timeout and shutdown_timeout must be positive");
        }
        if self.spool_max_bytes < 1 << 20 {
            return bad("spool_max_bytes must be at least 1048576");
        }
        if self.dead_letter_after == 0 {
            return bad("dead_letter_after must be at least 1");
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
    dead_lettered: AtomicU64,
    spool_overflow: AtomicU64,
    sink_timeouts: AtomicU64,
    set_aside: AtomicU64,
}

/// A snapshot of the writer's counters (also exported through `metrics`).
#[non_exhaustive]
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
    /// Events neither stored nor spooled nor dead-lettered (spool write
    /// failed, spool at its cap, shutdown deadline missed by the spool).
    pub lost: u64,
    /// Events deleted by the background prune.
    pub pruned: u64,
    /// Events the sink kept rejecting, moved to the dead-letter file.
    pub dead_lettered: u64,
    /// Events dropped because the spool was at `spool_max_bytes` (also in `lost`).
    pub spool_overflow: u64,
    /// Sink writes that missed `write_timeout` (also in `sink_errors`).
    pub sink_timeouts: u64,
    /// Spool records moved aside: corrupt files (`.corrupt-*`) and records
    /// this build cannot decode (to the dead-letter file).
    pub set_aside: u64,
}

fn bump(counter: &AtomicU64, name: &'static str, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
    metrics::counter!(name).increment(n);
}

/// An event the batcher builds from what the request path captured (the
/// allocating and redacting happen there, off the request path).
pub(crate) trait DeferredEvent: Send {
    /// The event.
    fn build(self: Box<Self>) -> AuditEvent;
}

impl<F: FnOnce() -> AuditEvent + Send> DeferredEvent for F {
    fn build(self: Box<Self>) -> AuditEvent {
        (*self)()
    }
}

/// An event in the queue: built, or to be built by the batcher.
enum Queued {
    /// Boxed: a queue slot is 16 bytes, not the 400 of an event.
    Ready(Box<AuditEvent>),
    Deferred(Box<dyn DeferredEvent>),
}

impl Queued {
    fn into_event(self) -> AuditEvent {
        match self {
            Self::Ready(e) => *e,
            Self::Deferred(build) => build.build(),
        }
    }
}

/// Events the batcher builds before it yields to other tasks.
const BUILD_SLICE: usize = 64;

/// Handle the request path records through. Share it with an `Arc`.
pub struct AuditWriter {
    tx: mpsc::Sender<Queued>,
    /// Wakes the batcher once a whole batch is queued (it does not wake per
    /// event: that cross-thread wake-up cost more than the rest of a request).
    full: Arc<Notify>,
    batch_size: usize,
    policy: FullPolicy,
    counters: Arc<Counters>,
    shutdown: Arc<Notify>,
    shutdown_timeout: Duration,
    task: Mutex<Option<JoinHandle<()>>>,
    prune_task: Mutex<Option<JoinHandle<()>>>,
    live: Arc<Live>,
}

/// Most events a live subscriber may fall behind by: a slower one skips
/// what it missed (it is told how many) and the writer never waits for it.
pub const LIVE_BUFFER: usize = 1024;

/// The live feed of events as the batcher builds them
/// ([`AuditWriter::subscribe`]).
struct Live {
    sender: tokio::sync::broadcast::Sender<Arc<AuditEvent>>,
    /// Open subscriptions: while there are none nothing is published and
    /// the request path wakes no one per event.
    watching: std::sync::atomic::AtomicUsize,
}

impl Live {
    fn watching(&self) -> bool {
        self.watching.load(std::sync::atomic::Ordering::Relaxed) > 0
    }
}

/// A live subscription: every event from now on, as soon as it is built
/// (the batcher is woken per event while one is open). Dropping it ends it.
pub struct LiveEvents {
    rx: tokio::sync::broadcast::Receiver<Arc<AuditEvent>>,
    live: Arc<Live>,
}

/// What [`LiveEvents::next`] gives.
#[derive(Debug)]
pub enum LiveEvent {
    /// The next event.
    Event(Arc<AuditEvent>),
    /// This many events were skipped: the subscriber fell more than
    /// [`LIVE_BUFFER`] events behind.
    Skipped(u64),
    /// The writer is gone.
    Closed,
}

impl LiveEvents {
    /// The next event, waiting for it.
    pub async fn next(&mut self) -> LiveEvent {
        use tokio::sync::broadcast::error::RecvError;
        match self.rx.recv().await {
            Ok(e) => LiveEvent::Event(e),
            Err(RecvError::Lagged(n)) => LiveEvent::Skipped(n),
            Err(RecvError::Closed) => LiveEvent::Closed,
        }
    }
}

impl std::fmt::Debug for LiveEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveEvents").finish_non_exhaustive()
    }
}

impl Drop for LiveEvents {
    fn drop(&mut self) {
        self.live
            .watching
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
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
        let spool = Spool::open_capped(&config.spool_path, config.spool_max_bytes)?;
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let counters = Arc::new(Counters::default());
        let set_aside = spool.set_aside();
        if set_aside > 0 {
            bump(
                &counters.set_aside,
                "portcullis_audit_set_aside_total",
                set_aside,
            );
        }
        let shutdown = Arc::new(Notify::new());
        let full = Arc::new(Notify::new());
        let live = Arc::new(Live {
            sender: tokio::sync::broadcast::channel(LIVE_BUFFER).0,
            watching: std::sync::atomic::AtomicUsize::new(0),
        });
        let prune_task = config.prune.map(|policy| {
            runtime.spawn(prune_loop(
                Arc::clone(&sink),
                policy,
                clock,
                Arc::clone(&counters),
            ))
        });
        let batcher = Batcher {
            rx,
            sink,
            spool,
            next_retry: Instant::now(),
            backoff: config.retry_interval,
            head_rejections: 0,
            seen_set_aside: set_aside,
            spool_full_logged: false,
            deadline: None,
            counters: Arc::clone(&counters),
            shutdown: Arc::clone(&shutdown),
            full: Arc::clone(&full),
            live: Arc::clone(&live),
            config: config.clone(),
        };
        let task = runtime.spawn(batcher.run());
        Ok(Self {
            tx,
            full,
            batch_size: config.batch_size,
            policy: config.full_policy,
            counters,
            shutdown,
            shutdown_timeout: config.shutdown_timeout,
            task: Mutex::new(Some(task)),
            prune_task: Mutex::new(prune_task),
            live,
        })
    }

    /// Wakes the batcher when at least a batch is queued, or at once while
    /// someone watches the live feed.
    fn wake_if_full(&self) {
        if self.live.watching() || self.tx.max_capacity() - self.tx.capacity() >= self.batch_size {
            self.full.notify_one();
        }
    }

    /// Every event from now on as the batcher builds it (within
    /// milliseconds of the request while subscribed), before it is written.
    /// A subscriber more than [`LIVE_BUFFER`] events behind skips ahead;
    /// nothing ever waits for it.
    pub fn subscribe(&self) -> LiveEvents {
        self.live
            .watching
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        LiveEvents {
            rx: self.live.sender.subscribe(),
            live: Arc::clone(&self.live),
        }
    }

    /// Enqueues without ever waiting: a full queue drops the event (counted)
    /// whatever the policy. For callers that cannot await.
    pub fn try_record(&self, event: AuditEvent) -> Recorded {
        self.try_enqueue(Queued::Ready(Box::new(event)))
    }

    /// Like [`Self::try_record`], building the event on the writer's task:
    /// the request path only moves `build`'s captures (cheap clones of the
    /// request's parts) and the batcher does the allocating and redacting.
    /// `build` must not block.
    pub fn try_record_with(&self, build: impl FnOnce() -> AuditEvent + Send + 'static) -> Recorded {
        self.try_enqueue(Queued::Deferred(Box::new(build)))
    }

    /// Like [`Self::try_record_with`] for a capture that is already boxed
    /// (the guard's snapshot): one allocation per event, not two.
    pub(crate) fn try_record_deferred(&self, event: Box<dyn DeferredEvent>) -> Recorded {
        self.try_enqueue(Queued::Deferred(event))
    }

    fn try_enqueue(&self, item: Queued) -> Recorded {
        match self.tx.try_send(item) {
            Ok(()) => {
                self.wake_if_full();
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
        let event = match self.tx.try_send(Queued::Ready(Box::new(event))) {
            Ok(()) => {
                self.wake_if_full();
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
            self.full.notify_one();
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
            dead_lettered: l(&c.dead_lettered),
            spool_overflow: l(&c.spool_overflow),
            sink_timeouts: l(&c.sink_timeouts),
            set_aside: l(&c.set_aside),
        }
    }

    /// Events waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Stops accepting events and the prune task, writes every queued event
    /// (to the sink, or to the spool when the sink is down, hangs, or the
    /// deadline is near; spooled events replay on next start) and waits for
    /// the batcher, at most `shutdown_timeout` (plus a second's grace before
    /// it is aborted and what is still queued is counted lost). Idempotent.
    pub async fn shutdown(&self) {
        self.shutdown.notify_one();
        let prune = self
            .prune_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(prune) = prune {
            prune.abort();
        }
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut task) = task else {
            return;
        };
        let backstop = self.shutdown_timeout + Duration::from_secs(1);
        match tokio::time::timeout(backstop, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit batcher ended abnormally"),
            Err(_) => {
                task.abort();
                let queued = self.queued() as u64;
                tracing::error!(
                    events = queued,
                    "audit writer missed its shutdown deadline (the spool's disk hangs?); queued events are lost"
                );
                bump(&self.counters.lost, "portcullis_audit_lost_total", queued);
            }
        }
    }
}

impl Drop for AuditWriter {
    /// A writer dropped without `shutdown` stops its prune task too (the
    /// batcher ends by itself once the queue's sender is gone).
    fn drop(&mut self) {
        let prune = self
            .prune_task
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(prune) = prune {
            prune.abort();
        }
    }
}

/// Deletes old events every `policy.every`, beside the batcher (a long
/// delete never holds up writes); sinks delete in bounded chunks.
async fn prune_loop(
    sink: Arc<dyn AuditSink>,
    policy: PrunePolicy,
    clock: Arc<dyn Clock>,
    counters: Arc<Counters>,
) {
    loop {
        tokio::time::sleep(policy.every).await;
        let before = micros(clock.now().saturating_sub(policy.older_than));
        match sink.prune(before).await {
            Ok(n) => bump(&counters.pruned, "portcullis_audit_pruned_total", n),
            Err(e) => tracing::warn!(error = %e, "audit prune failed; retrying next period"),
        }
    }
}

struct Batcher {
    rx: mpsc::Receiver<Queued>,
    sink: Arc<dyn AuditSink>,
    spool: Spool,
    next_retry: Instant,
    /// Wait before the next replay attempt: `retry_interval`, doubled after
    /// each timeout up to [`MAX_BACKOFF`].
    backoff: Duration,
    /// Times the sink rejected the content of the spool's oldest batch.
    head_rejections: u32,
    seen_set_aside: u64,
    spool_full_logged: bool,
    /// Set at shutdown: sink writes stop being attempted past it.
    deadline: Option<Instant>,
    counters: Arc<Counters>,
    shutdown: Arc<Notify>,
    full: Arc<Notify>,
    live: Arc<Live>,
    config: AuditWriterConfig,
}

/// Spool records replayed per loop turn, so the queue keeps draining meanwhile.
const REPLAY_PER_TURN: usize = 8;
/// Longest wait between replay attempts while the sink keeps timing out
/// (each attempt may hold the batcher for `write_timeout`).
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Most sink writes spent isolating the events a rejected batch's sink
/// refuses; what is left untried then goes to the dead-letter file whole.
const MAX_SALVAGE_WRITES: usize = 64;

impl Batcher {
    async fn run(mut self) {
        let size = self.config.batch_size;
        let mut batch = Vec::with_capacity(size);
        let mut closing = false;
        let mut done = false;
        while !done {
            let deadline = Instant::now() + self.config.flush_interval;
            while batch.len() < size {
                let room = size - batch.len();
                if closing {
                    // Draining for shutdown: take everything as it comes.
                    let mut queued = Vec::with_capacity(room);
                    let n = self.rx.recv_many(&mut queued, room).await;
                    batch.extend(queued.into_iter().map(Queued::into_event));
                    if n == 0 {
                        done = true;
                        break;
                    }
                    continue;
                }
                // Not parked on the channel (a send would wake us per event):
                // woken when a batch is full, at the flush deadline, or to shut down.
                tokio::select! {
                    biased;
                    () = self.shutdown.notified() => {
                        closing = true;
                        self.deadline = Some(Instant::now() + self.config.shutdown_timeout);
                        self.rx.close();
                    }
                    () = self.full.notified() => {}
                    () = sleep_until(deadline) => {
                        done = self.take_queued(&mut batch, size).await;
                        break;
                    }
                }
                if !closing && self.take_queued(&mut batch, size).await {
                    done = true;
                    break;
                }
            }
            if !batch.is_empty() {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(size));
                self.deliver(full).await;
            }
            self.replay(if done { usize::MAX } else { REPLAY_PER_TURN }, done)
                .await;
        }
    }

    /// Builds what is queued into `batch` (up to `size`), handing the thread
    /// back every [`BUILD_SLICE`] events: on a single-threaded runtime the
    /// requests share it, and a batch built in one go held them for a
    /// millisecond or more. Never waits for new events; `true`: the
    /// channel is closed and empty.
    async fn take_queued(&mut self, batch: &mut Vec<AuditEvent>, size: usize) -> bool {
        let mut built = 0usize;
        while batch.len() < size {
            match self.rx.try_recv() {
                Ok(e) => {
                    let e = e.into_event();
                    if self.live.watching() {
                        // No receiver left between the check and now: fine.
                        let _ = self.live.sender.send(Arc::new(e.clone()));
                    }
                    batch.push(e);
                    built += 1;
                    if built.is_multiple_of(BUILD_SLICE) {
                        tokio::task::yield_now().await;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => return true,
            }
        }
        false
    }

    /// The time a sink write may take now: `write_timeout`, cut to what is
    /// left before the shutdown deadline (zero: do not try).
    fn budget(&self) -> Duration {
        let budget = self.config.write_timeout;
        self.deadline.map_or(budget, |d| {
            budget.min(d.saturating_duration_since(Instant::now()))
        })
    }

    /// One sink write under [`Batcher::budget`].
    async fn write(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        let budget = self.budget();
        if budget.is_zero() {
            return Err(AuditError::Timeout(budget));
        }
        match tokio::time::timeout(budget, self.sink.write_batch(events)).await {
            Ok(done) => done,
            Err(_) => {
                bump(
                    &self.counters.sink_timeouts,
                    "portcullis_audit_sink_timeouts_total",
                    1,
                );
                Err(AuditError::Timeout(budget))
            }
        }
    }

    /// [`Batcher::write`] of the spool's oldest batch, moving the events
    /// that arrive meanwhile into the spool (where they would go anyway
    /// while it is not empty, so the order is kept): a sink that hangs for
    /// `write_timeout` on every retry never backs up the queue.
    async fn replay_write(&mut self, events: &[AuditEvent]) -> Result<(), AuditError> {
        let budget = self.budget();
        if budget.is_zero() {
            return Err(AuditError::Timeout(budget));
        }
        let sink = Arc::clone(&self.sink);
        let write = tokio::time::timeout(budget, sink.write_batch(events));
        tokio::pin!(write);
        let size = self.config.batch_size;
        let mut arrived = Vec::with_capacity(size);
        let mut queued = Vec::with_capacity(size);
        let mut open = true;
        let done = loop {
            let room = size - arrived.len();
            tokio::select! {
                biased;
                done = &mut write => break done,
                n = self.rx.recv_many(&mut queued, room), if open => {
                    open = n > 0;
                    arrived.extend(queued.drain(..).map(Queued::into_event));
                    if arrived.len() >= size {
                        let full = std::mem::replace(&mut arrived, Vec::with_capacity(size));
                        self.spool_batch(&full).await;
                    }
                }
            }
        };
        if !arrived.is_empty() {
            self.spool_batch(&arrived).await;
        }
        done.unwrap_or_else(|_| {
            bump(
                &self.counters.sink_timeouts,
                "portcullis_audit_sink_timeouts_total",
                1,
            );
            Err(AuditError::Timeout(budget))
        })
    }

    /// Counts a failed write and schedules the next replay attempt.
    fn failed(&mut self, e: &AuditError, what: &'static str) {
        tracing::warn!(error = %e, "{what}");
        bump(
            &self.counters.sink_errors,
            "portcullis_audit_sink_errors_total",
            1,
        );
        self.backoff = if matches!(e, AuditError::Timeout(_)) {
            (self.backoff * 2).min(MAX_BACKOFF.max(self.config.retry_interval))
        } else {
            self.config.retry_interval
        };
        self.next_retry = Instant::now() + self.backoff;
    }

    fn succeeded(&mut self) {
        self.backoff = self.config.retry_interval;
    }

    async fn deliver(&mut self, batch: Vec<AuditEvent>) {
        let n = batch.len() as u64;
        if !self.spool.pending() && !self.budget().is_zero() {
            match self.write(&batch).await {
                Ok(()) => {
                    bump(&self.counters.written, "portcullis_audit_written_total", n);
                    self.succeeded();
                    return;
                }
                Err(e) => self.failed(&e, "audit sink write failed; spooling"),
            }
        }
        self.spool_batch(&batch).await;
    }

    async fn spool_batch(&mut self, batch: &[AuditEvent]) {
        let n = batch.len() as u64;
        match self.spool.append(batch).await {
            Ok(()) => {
                self.spool_full_logged = false;
                bump(&self.counters.spooled, "portcullis_audit_spooled_total", n);
            }
            Err(e @ AuditError::SpoolFull { .. }) => {
                if !self.spool_full_logged {
                    tracing::error!(error = %e, "audit spool full; dropping new batches until it drains");
                    self.spool_full_logged = true;
                }
                bump(
                    &self.counters.spool_overflow,
                    "portcullis_audit_spool_overflow_total",
                    n,
                );
                bump(&self.counters.lost, "portcullis_audit_lost_total", n);
            }
            Err(e) => {
                tracing::error!(error = %e, events = n, "audit spool write failed; events lost");
                bump(&self.counters.lost, "portcullis_audit_lost_total", n);
            }
        }
    }

    /// Replays up to `max` spooled batches, in order, when a retry is due
    /// (always when `force`, within the shutdown deadline).
    async fn replay(&mut self, max: usize, force: bool) {
        if !self.spool.pending() || (!force && Instant::now() < self.next_retry) {
            return;
        }
        for _ in 0..max {
            if self.budget().is_zero() {
                return;
            }
            let peeked = self.spool.peek().await;
            let set_aside = self.spool.set_aside();
            if set_aside > self.seen_set_aside {
                bump(
                    &self.counters.set_aside,
                    "portcullis_audit_set_aside_total",
                    set_aside - self.seen_set_aside,
                );
                self.seen_set_aside = set_aside;
            }
            let (events, next) = match peeked {
                Ok(Some(found)) => found,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the audit spool");
                    self.next_retry = Instant::now() + self.config.retry_interval;
                    return;
                }
            };
            let stored = match self.replay_write(&events).await {
                Ok(()) => events.len() as u64,
                Err(e) if e.is_rejection() => {
                    self.head_rejections += 1;
                    if self.head_rejections < self.config.dead_letter_after {
                        self.failed(&e, "audit sink rejected a spooled batch; retrying it later");
                        return;
                    }
                    match self.salvage(&events).await {
                        Ok(stored) => stored,
                        Err(e) => {
                            self.failed(&e, "audit sink unavailable while isolating a rejected batch; replay later");
                            return;
                        }
                    }
                }
                Err(e) => {
                    self.failed(&e, "audit sink still unavailable; replay later");
                    return;
                }
            };
            self.head_rejections = 0;
            self.succeeded();
            bump(
                &self.counters.written,
                "portcullis_audit_written_total",
                stored,
            );
            bump(
                &self.counters.replayed,
                "portcullis_audit_replayed_total",
                stored,
            );
            if let Err(e) = self.spool.advance(next).await {
                tracing::error!(error = %e, "cannot advance the audit spool");
                return;
            }
        }
    }

    /// Writes what the sink accepts of a batch it keeps rejecting, halving
    /// the rejected parts down to single events, and moves the events it
    /// still rejects to the dead-letter file. Returns how many were stored;
    /// an error that is not a rejection stops it (retried later: writes are
    /// idempotent).
    async fn salvage(&mut self, events: &[AuditEvent]) -> Result<u64, AuditError> {
        let mut stack = vec![(0, events.len())];
        let mut dead: Vec<AuditEvent> = Vec::new();
        let mut stored = 0u64;
        let mut writes = 0;
        while let Some((a, b)) = stack.pop() {
            let part = &events[a..b];
            writes += 1;
            if writes > MAX_SALVAGE_WRITES {
                dead.extend_from_slice(part);
                continue;
            }
            match self.write(part).await {
                Ok(()) => stored += part.len() as u64,
                Err(e) if e.is_rejection() => {
                    if part.len() == 1 {
                        tracing::debug!(error = %e, id = %part[0].id, "audit sink rejects this event");
                        dead.extend_from_slice(part);
                    } else {
                        let mid = a + (b - a) / 2;
                        stack.push((mid, b));
                        stack.push((a, mid));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if dead.is_empty() {
            return Ok(stored);
        }
        let n = dead.len() as u64;
        match self.spool.dead_letter(&dead).await {
            Ok(()) => {
                tracing::error!(
                    events = n,
                    stored,
                    dead_letter = %self.spool.dead_letter_path().display(),
                    "audit sink keeps rejecting these events; moved them to the dead-letter file"
                );
                bump(
                    &self.counters.dead_lettered,
                    "portcullis_audit_dead_lettered_total",
                    n,
                );
            }
            Err(e) => {
                tracing::error!(error = %e, events = n, "cannot write the audit dead-letter file; events lost");
                bump(&self.counters.lost, "portcullis_audit_lost_total", n);
            }
        }
        Ok(stored)
    }
}
