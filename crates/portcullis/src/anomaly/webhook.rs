//! The alert sender: a bounded queue the request path never waits on, fed
//! at most once per (detector, key) and cooldown by this process, and a
//! worker that claims each alert across replicas (de-duplication) and POSTs
//! signed JSON to every endpoint, retrying with exponential backoff and full
//! jitter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::http_client::{self, HttpClient, HttpClientError, TlsTrust};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use portcullis_core::anomaly::AnomalyEvent;
use portcullis_core::anomaly::webhook::{
    HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, PayloadFormat, WebhookSecret, message_id,
    notice_payload, payload,
};
pub use portcullis_core::anomaly::webhook::{SecurityEventKind, SecurityNotice};
use portcullis_core::{Clock, opaque};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::memory::MemoryDedup;

/// One receiver of alerts.
#[derive(Debug, Clone)]
pub struct WebhookEndpoint {
    /// Where to POST (`https://`, or `http://` when `allow_http`).
    pub url: http::Uri,
    /// The signing secret (`whsec_...`).
    pub secret: WebhookSecret,
    /// The body format.
    pub format: PayloadFormat,
    /// The detectors whose alerts it receives (`None`: every detector;
    /// empty: none, for an endpoint of security events only).
    pub detectors: Option<Vec<portcullis_core::anomaly::DetectorKind>>,
    /// The security events it receives (empty: none; each is opt-in).
    pub events: Vec<SecurityEventKind>,
}

impl WebhookEndpoint {
    /// Whether alerts of `detector` go to this endpoint.
    pub fn receives(&self, detector: portcullis_core::anomaly::DetectorKind) -> bool {
        self.detectors
            .as_ref()
            .is_none_or(|only| only.contains(&detector))
    }

    /// Whether notices of `event` go to this endpoint.
    pub fn receives_event(&self, event: SecurityEventKind) -> bool {
        self.events.contains(&event)
    }

    /// Where it posts, as shown in the console: scheme and host only (a
    /// Slack URL's path is its secret).
    pub fn shown_url(&self) -> String {
        format!(
            "{}://{}",
            self.url.scheme_str().unwrap_or("https"),
            self.url.authority().map_or("", |a| a.as_str())
        )
    }
}

/// Sender settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Receivers; each alert goes to all of them.
    pub endpoints: Vec<WebhookEndpoint>,
    /// Per-attempt time limit (default 5 s).
    pub timeout: Duration,
    /// Attempts per endpoint, the first included (default 6).
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt, with full jitter (default 500 ms).
    pub backoff_base: Duration,
    /// Longest retry delay (default 60 s).
    pub backoff_max: Duration,
    /// Alerts waiting to be sent; beyond it alerts are dropped and counted (default 1024).
    pub queue_capacity: usize,
    /// Deliveries in flight at once (default 16).
    pub max_in_flight: usize,
    /// Accept `http://` endpoints (default false: alerts name clients and
    /// accounts, so they travel over TLS unless the operator says otherwise).
    pub allow_http: bool,
    /// Which TLS servers are trusted (Mozilla roots plus extra CAs).
    pub tls: TlsTrust,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            timeout: Duration::from_secs(5),
            max_attempts: 6,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            queue_capacity: 1024,
            max_in_flight: 16,
            allow_http: false,
            tls: TlsTrust::default(),
        }
    }
}

/// Why a webhook configuration was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookConfigError {
    /// The URL is not absolute `http(s)://host...`.
    #[error("webhook url `{0}` must be an absolute http:// or https:// URL")]
    Url(String),
    /// A plain-HTTP endpoint without `allow_http`.
    #[error("webhook url `{0}` is plain http; use https, or set allow_http for a trusted network")]
    PlainHttp(String),
    /// The TLS client could not be built.
    #[error("webhook TLS: {0}")]
    Tls(#[from] HttpClientError),
    /// A zero timeout, attempt count or queue.
    #[error("webhook `{0}` must be positive")]
    Zero(&'static str),
}

impl WebhookConfig {
    /// Checks every field, naming the one at fault.
    pub fn validate(&self) -> Result<(), WebhookConfigError> {
        for e in &self.endpoints {
            let url = e.url.to_string();
            match e.url.scheme_str() {
                Some("https") if e.url.authority().is_some() => {}
                Some("http") if e.url.authority().is_some() => {
                    if !self.allow_http {
                        return Err(WebhookConfigError::PlainHttp(url));
                    }
                }
                _ => return Err(WebhookConfigError::Url(url)),
            }
        }
        if self.timeout.is_zero() {
            return Err(WebhookConfigError::Zero("timeout"));
        }
        if self.max_attempts == 0 {
            return Err(WebhookConfigError::Zero("max_attempts"));
        }
        if self.queue_capacity == 0 {
            return Err(WebhookConfigError::Zero("queue_capacity"));
        }
        if self.max_in_flight == 0 {
            return Err(WebhookConfigError::Zero("max_in_flight"));
        }
        Ok(())
    }
}

/// Counters of the sender (also exported as `metrics` counters).
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Alerts accepted into the queue.
    pub queued: AtomicU64,
    /// Alerts dropped because the queue was full.
    pub overflowed: AtomicU64,
    /// Alerts skipped as duplicates within their cooldown.
    pub deduplicated: AtomicU64,
    /// Deliveries acknowledged with a 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed (error, timeout or non-2xx).
    pub failed_attempts: AtomicU64,
    /// Deliveries given up after the last attempt or a permanent refusal.
    pub abandoned: AtomicU64,
}

/// How the worker de-duplicates alerts.
#[derive(Debug, Clone)]
pub enum AlertDedup {
    /// Per process.
    Memory(Arc<MemoryDedup>),
    /// Across replicas (`SET NX PX`).
    #[cfg(feature = "redis")]
    Redis(super::redis::RedisDedup),
}

impl AlertDedup {
    async fn claim(&self, id: &str, cooldown_ms: u64, clock: &dyn Clock) -> bool {
        match self {
            Self::Memory(m) => m.claim(id, cooldown_ms, millis(clock)),
            #[cfg(feature = "redis")]
            Self::Redis(r) => match r.claim(id, cooldown_ms).await {
                Ok(first) => first,
                Err(e) => {
                    // A duplicate alert is better than a lost one.
                    tracing::warn!(error = %e, "alert de-duplication unavailable; sending anyway");
                    true
                }
            },
        }
    }
}

enum Job {
    Alert {
        event: AnomalyEvent,
        cooldown_ms: u64,
    },
    Notice {
        notice: SecurityNotice,
        /// De-duplicated across replicas by this id for `cooldown_ms`
        /// (none: every notice is sent).
        dedup: Option<(String, u64)>,
    },
}

impl Job {
    /// What it is, as the console's delivery list names it.
    fn what(&self) -> String {
        match self {
            Self::Alert { event, .. } => {
                format!("anomaly {} on {}", event.detector.as_str(), event.key)
            }
            Self::Notice { notice, .. } => format!("security {}", notice.event.as_str()),
        }
    }

    fn dedup(&self) -> Option<(String, u64)> {
        match self {
            Self::Alert { event, cooldown_ms } => Some((alert_id(event), *cooldown_ms)),
            Self::Notice { dedup, .. } => dedup.clone(),
        }
    }

    fn for_endpoint(&self, endpoint: &WebhookEndpoint) -> Option<Bytes> {
        match self {
            Self::Alert { event, .. } => endpoint
                .receives(event.detector)
                .then(|| Bytes::from(payload(event, endpoint.format))),
            Self::Notice { notice, .. } => endpoint
                .receives_event(notice.event)
                .then(|| Bytes::from(notice_payload(notice, endpoint.format))),
        }
    }
}

/// How one delivery ended, as the console's Threats page lists it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryRecord {
    /// When it ended, Unix milliseconds.
    pub at_ms: u64,
    /// The endpoint, scheme and host only.
    pub url: String,
    /// What was sent, e.g. `anomaly burst on ip:203.0.113.7`.
    pub what: String,
    /// `delivered`, `refused <status>` (a 4xx: not retried) or `abandoned`
    /// (every attempt failed).
    pub outcome: String,
    /// Attempts made.
    pub attempts: u32,
}

/// The last deliveries kept for the console.
pub const RECENT_DELIVERIES: usize = 50;

type Recent = Arc<std::sync::Mutex<std::collections::VecDeque<DeliveryRecord>>>;

/// The request path's handle: enqueue and go.
#[derive(Clone)]
pub struct AlertSender {
    tx: mpsc::Sender<Job>,
    stats: Arc<WebhookStats>,
    /// (detector, key) enqueued by this process within its cooldown.
    recent: Arc<MemoryDedup>,
    clock: Arc<dyn Clock>,
    /// The security events some endpoint receives.
    events: Arc<[SecurityEventKind]>,
    /// The last [`RECENT_DELIVERIES`] deliveries, newest last.
    deliveries: Recent,
}

impl std::fmt::Debug for AlertSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertSender")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("what", &self.what()).finish()
    }
}

impl AlertSender {
    /// Starts the worker on the current Tokio runtime. The worker ends once
    /// every sender handle is dropped and its in-flight deliveries are done.
    pub fn start(
        config: WebhookConfig,
        dedup: AlertDedup,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), WebhookConfigError> {
        config.validate()?;
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let stats = Arc::new(WebhookStats::default());
        let client = http_client::build(&config.tls, config.timeout)?;
        let mut events: Vec<SecurityEventKind> = config
            .endpoints
            .iter()
            .flat_map(|e| e.events.iter().copied())
            .collect();
        events.sort_by_key(|e| e.as_str());
        events.dedup();
        let deliveries: Recent = Arc::default();
        let worker = Worker {
            config: Arc::new(config),
            dedup,
            clock: Arc::clone(&clock),
            client,
            stats: Arc::clone(&stats),
            deliveries: Arc::clone(&deliveries),
        };
        let handle = tokio::spawn(worker.run(rx));
        let sender = Self {
            tx,
            stats,
            recent: Arc::new(MemoryDedup::default()),
            clock,
            events: events.into(),
            deliveries,
        };
        Ok((sender, handle))
    }

    /// Queues an alert without waiting, unless this process already queued
    /// one for the same (detector, key) within `cooldown` (then it is
    /// counted as de-duplicated: one flooding key cannot fill the queue and
    /// crowd out other keys' alerts). `false` (and counted) only when the
    /// queue is full.
    pub fn alert(&self, event: AnomalyEvent, cooldown: Duration) -> bool {
        let cooldown_ms = u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX);
        let id = alert_id(&event);
        if !self.recent.claim(&id, cooldown_ms, millis(&*self.clock)) {
            self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.enqueue(Job::Alert { event, cooldown_ms }, Some(&id))
    }

    /// Whether some endpoint receives `event` (a caller with nothing to
    /// send skips building the notice).
    pub fn wants(&self, event: SecurityEventKind) -> bool {
        self.events.contains(&event)
    }

    /// Queues a security notice for the endpoints that opted into its
    /// event, without waiting. With a non-zero `once_per`, notices of the
    /// same event, subject and client are sent once per that interval
    /// across replicas (a throttled client retrying must not flood the
    /// receiver). `false` (and counted) only when the queue is full.
    pub fn notify(&self, notice: SecurityNotice, once_per: Duration) -> bool {
        if !self.wants(notice.event) {
            return true;
        }
        let cooldown_ms = u64::try_from(once_per.as_millis()).unwrap_or(u64::MAX);
        let dedup = (cooldown_ms > 0).then(|| {
            (
                format!(
                    "notice:{}:{}:{}",
                    notice.event.as_str(),
                    notice.subject.as_deref().unwrap_or_default(),
                    notice.client_ip.as_deref().unwrap_or_default()
                ),
                cooldown_ms,
            )
        });
        if let Some((id, ms)) = &dedup
            && !self.recent.claim(id, *ms, millis(&*self.clock))
        {
            self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let id = dedup.as_ref().map(|(id, _)| id.clone());
        self.enqueue(Job::Notice { notice, dedup }, id.as_deref())
    }

    fn enqueue(&self, job: Job, claimed: Option<&str>) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                // Not sent: the next detection may try again.
                if let Some(id) = claimed {
                    self.recent.release(id);
                }
                self.stats.overflowed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("portcullis_webhook_overflow_total").increment(1);
                false
            }
        }
    }

    /// The last deliveries (at most [`RECENT_DELIVERIES`]), newest first.
    pub fn recent_deliveries(&self) -> Vec<DeliveryRecord> {
        let recent = self
            .deliveries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.iter().rev().cloned().collect()
    }

    /// The sender's counters.
    pub fn stats(&self) -> &Arc<WebhookStats> {
        &self.stats
    }
}

struct Worker {
    config: Arc<WebhookConfig>,
    dedup: AlertDedup,
    clock: Arc<dyn Clock>,
    client: HttpClient,
    stats: Arc<WebhookStats>,
    deliveries: Recent,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let permits = Arc::new(Semaphore::new(self.config.max_in_flight));
        let mut deliveries = JoinSet::new();
        while let Some(job) = rx.recv().await {
            while deliveries.try_join_next().is_some() {}
            // Claimed across replicas (or in this process) before sending.
            if let Some((id, cooldown_ms)) = job.dedup()
                && !self.dedup.claim(&id, cooldown_ms, &*self.clock).await
            {
                self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Ok(msg_id) = message_id() else {
                tracing::error!("no randomness for a webhook message id; alert dropped");
                continue;
            };
            let what = job.what();
            for endpoint in &self.config.endpoints {
                let Some(body) = job.for_endpoint(endpoint) else {
                    continue;
                };
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                let delivery = Delivery {
                    config: Arc::clone(&self.config),
                    endpoint: endpoint.clone(),
                    client: self.client.clone(),
                    stats: Arc::clone(&self.stats),
                    clock: Arc::clone(&self.clock),
                    msg_id: msg_id.clone(),
                    body,
                    what: what.clone(),
                    deliveries: Arc::clone(&self.deliveries),
                };
                deliveries.spawn(async move {
                    delivery.run().await;
                    drop(permit);
                });
            }
        }
        while deliveries.join_next().await.is_some() {}
    }
}

struct Delivery {
    config: Arc<WebhookConfig>,
    endpoint: WebhookEndpoint,
    client: HttpClient,
    stats: Arc<WebhookStats>,
    clock: Arc<dyn Clock>,
    msg_id: String,
    body: Bytes,
    what: String,
    deliveries: Recent,
}

enum Attempt {
    Delivered,
    Retry,
    Permanent(u16),
}

impl Delivery {
    async fn run(self) {
        let mut outcome = "abandoned".to_owned();
        let mut attempts = 0;
        for attempt in 0..self.config.max_attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(&self.config, attempt)).await;
            }
            attempts = attempt + 1;
            match self.attempt().await {
                Attempt::Delivered => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("portcullis_webhook_delivered_total").increment(1);
                    self.remember("delivered".to_owned(), attempts);
                    return;
                }
                Attempt::Permanent(status) => {
                    tracing::warn!(url = %self.endpoint.shown_url(), status, "webhook refused; not retrying");
                    outcome = format!("refused {status}");
                    break;
                }
                Attempt::Retry => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("portcullis_webhook_failed_attempts_total").increment(1);
                }
            }
        }
        self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("portcullis_webhook_abandoned_total").increment(1);
        tracing::warn!(url = %self.endpoint.shown_url(), msg_id = %self.msg_id, "webhook delivery abandoned");
        self.remember(outcome, attempts);
    }

    /// Adds this delivery's end to the console's list.
    fn remember(&self, outcome: String, attempts: u32) {
        let record = DeliveryRecord {
            at_ms: millis(&*self.clock),
            url: self.endpoint.shown_url(),
            what: self.what.clone(),
            outcome,
            attempts,
        };
        let mut recent = self
            .deliveries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() >= RECENT_DELIVERIES {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    async fn attempt(&self) -> Attempt {
        let ts = self.clock.unix_seconds();
        let signature = self.endpoint.secret.sign(&self.msg_id, ts, &self.body);
        let request = http::Request::post(self.endpoint.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "portcullis-webhooks/1")
            .header(HEADER_ID, &self.msg_id)
            .header(HEADER_TIMESTAMP, ts.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(Full::new(self.body.clone()));
        let Ok(request) = request else {
            return Attempt::Permanent(0);
        };
        let started = std::time::Instant::now();
        let sent = tokio::time::timeout(self.config.timeout, async {
            let response = self.client.request(request).await?;
            let status = response.status();
            // Drain (bounded by the timeout) so the connection can be reused.
            let _ = response.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        })
        .await;
        metrics::histogram!("portcullis_webhook_attempt_seconds")
            .record(started.elapsed().as_secs_f64());
        match sent {
            Ok(Ok(status)) if status.is_success() => Attempt::Delivered,
            Ok(Ok(status))
                if status.is_client_error()
                    && status != http::StatusCode::REQUEST_TIMEOUT
                    && status != http::StatusCode::TOO_MANY_REQUESTS =>
            {
                Attempt::Permanent(status.as_u16())
            }
            _ => Attempt::Retry,
        }
    }
}

/// Exponential backoff with full jitter: uniform in `[0, min(max, base * 2^(n-1))]`.
fn backoff(config: &WebhookConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff_base
        .saturating_mul(1u32 << (attempt - 1).min(20))
        .min(config.backoff_max);
    let mut r = [0u8; 8];
    if opaque::fill_random(&mut r).is_err() {
        return exp;
    }
    let frac = (u64::from_le_bytes(r) >> 11) as f64 / (1u64 << 53) as f64;
    exp.mul_f64(frac)
}

/// What alerts are de-duplicated by: `<detector>:<key>`.
fn alert_id(event: &AnomalyEvent) -> String {
    format!("{}:{}", event.detector.as_str(), event.key)
}

fn millis(clock: &dyn Clock) -> u64 {
    u64::try_from(clock.now().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let config = WebhookConfig {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1_000),
            ..WebhookConfig::default()
        };
        for attempt in 1..30 {
            let cap = Duration::from_millis(100 * (1u64 << (attempt - 1).min(20)))
                .min(Duration::from_millis(1_000));
            assert!(backoff(&config, attempt) <= cap);
        }
    }

    #[test]
    fn plain_http_and_relative_urls_are_refused_by_name() {
        let (secret, _) = WebhookSecret::generate().unwrap();
        let mut config = WebhookConfig::default();
        config.endpoints.push(WebhookEndpoint {
            url: "/relative".parse().unwrap(),
            secret,
            format: PayloadFormat::Standard,
            detectors: None,
            events: Vec::new(),
        });
        assert!(matches!(config.validate(), Err(WebhookConfigError::Url(_))));
        config.endpoints[0].url = "http://127.0.0.1:9/hook".parse().unwrap();
        assert!(matches!(
            config.validate(),
            Err(WebhookConfigError::PlainHttp(_))
        ));
        config.allow_http = true;
        assert_eq!(config.validate(), Ok(()));
        config.endpoints[0].url = "https://hooks.example/hook".parse().unwrap();
        config.allow_http = false;
        assert_eq!(config.validate(), Ok(()));
    }
}
