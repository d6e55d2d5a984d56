//! What happens while the shared backend is failing: a circuit breaker that
//! stops calling a dead Redis and lets one probe through per interval, a
//! counter per fallback (metrics), and a warning logged at most once per
//! interval with the number of fallbacks it stands for.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Consecutive failures that open the breaker.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// While open, one call is let through this often to probe for recovery.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// At most one warning per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A circuit breaker over the Redis backend.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: &'static str,
    epoch: Instant,
    threshold: u32,
    probe_ms: u64,
    failures: AtomicU32,
    /// 0 when closed; otherwise the ms (since `epoch`) of the next probe.
    next_probe_ms: AtomicU64,
}

impl CircuitBreaker {
    /// Opens after `threshold` consecutive failures; probes every `probe`.
    pub fn new(threshold: u32, probe: Duration) -> Self {
        Self {
            name: "rate-limit",
            epoch: Instant::now(),
            threshold: threshold.max(1),
            probe_ms: u64::try_from(probe.as_millis()).unwrap_or(u64::MAX).max(1),
            failures: AtomicU32::new(0),
            next_probe_ms: AtomicU64::new(0),
        }
    }

    /// Names the backend in the breaker's log lines (default `rate-limit`).
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 keeps meaning "closed".
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Whether to call the backend now: always when closed; when open, for
    /// exactly one caller per probe interval.
    pub fn allow(&self) -> bool {
        let next = self.next_probe_ms.load(Ordering::Acquire);
        if next == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= next
            && self
                .next_probe_ms
                .compare_exchange(
                    next,
                    now + self.probe_ms,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// The backend answered: close.
    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.next_probe_ms.load(Ordering::Relaxed) != 0 {
            self.next_probe_ms.store(0, Ordering::Release);
            tracing::info!(
                backend = self.name,
                "backend is answering again; circuit breaker closed"
            );
        }
    }

    /// The backend failed: count, and open at the threshold.
    pub fn failure(&self) {
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n >= self.threshold {
            let next = self.now_ms() + self.probe_ms;
            self.next_probe_ms.fetch_max(next, Ordering::AcqRel);
        }
    }

    /// Whether the breaker is open (backend considered down).
    pub fn is_open(&self) -> bool {
        self.next_probe_ms.load(Ordering::Acquire) != 0
    }
}

/// Counts fallbacks and logs them at most once per [`LOG_INTERVAL`].
#[derive(Debug)]
pub struct FallbackLog {
    epoch: Instant,
    last_log_ms: AtomicU64,
    suppressed: AtomicU64,
    total: AtomicU64,
}

impl Default for FallbackLog {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_log_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }
}

impl FallbackLog {
    /// Records one fallback of `rule` in `mode` because of `error`.
    pub fn record(&self, rule: &str, mode: &'static str, error: &dyn std::fmt::Display) {
        metrics::counter!(
            "portcullis_ratelimit_fallback_total",
            "rule" => rule.to_owned(),
            "mode" => mode
        )
        .increment(1);
        self.total.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.last_log_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(LOG_INTERVAL.as_millis()).unwrap_or(10_000);
        if (last == 0 || now.saturating_sub(last) >= interval)
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                rule,
                mode,
                suppressed,
                error = %error,
                "rate-limit backend unavailable; applying on_backend_error"
            );
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Fallbacks recorded since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}
