//! Anomaly detection end to end: thresholds with an injected clock, bans,
//! shared state and alert de-duplication on the real Redis (single server
//! and the local Cluster), and signed webhooks to a real local receiver.

#[path = "support/own_redis.rs"]
mod own_redis;
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis::anomaly::memory::MemoryDedup;
use portcullis::anomaly::webhook::{AlertDedup, AlertSender, WebhookConfig, WebhookEndpoint};
use portcullis::anomaly::{AnomalyBackend, AnomalyEngine, Observed};
use portcullis_core::anomaly::webhook::{PayloadFormat, WebhookSecret};
use portcullis_core::anomaly::{
    Action, BanTarget, DetectorConfig, DetectorKind, SampleRequest, Signal,
};
use portcullis_core::{Clock, ManualClock, SystemClock};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const T0: u64 = 1_800_000_000;

fn detector(
    kind: DetectorKind,
    threshold: u32,
    window_s: u64,
    actions: &[Action],
) -> DetectorConfig {
    DetectorConfig {
        threshold,
        window: Duration::from_secs(window_s),
        actions: actions.to_vec(),
        ..DetectorConfig::default_for(kind)
    }
}

fn sample() -> SampleRequest {
    SampleRequest::new("POST", "/login", "curl/8.5")
}

async fn observe(engine: &AnomalyEngine, signal: Signal<'_>) -> Observed {
    engine.observe(signal, sample).await.expect("observe")
}

fn all_detectors(actions: &[Action]) -> Vec<DetectorConfig> {
    vec![
        detector(DetectorKind::Burst, 50, 10, actions),
        detector(DetectorKind::AuthFailures, 5, 60, actions),
        detector(DetectorKind::DistinctAccounts, 4, 300, actions),
        detector(DetectorKind::RefreshReuse, 1, 1, actions),
        detector(DetectorKind::DeniedSpike, 3, 60, actions),
    ]
}

/// Each detector fires exactly at its threshold, never one below it.
async fn thresholds_hold(engine: &AnomalyEngine, ip: &str) {
    for i in 1..=50 {
        let o = observe(engine, Signal::Request { ip }).await;
        assert_eq!(o.events.len(), usize::from(i == 50), "burst at request {i}");
    }
    // The same key still over the threshold: tagged again, but reported in
    // full only once per FULL_REPORT_EVERY (the first firing's report).
    let o = observe(engine, Signal::Request { ip }).await;
    assert_eq!(o.tags, vec![DetectorKind::Burst]);
    assert!(o.events.is_empty(), "reported once: {:?}", o.events);
    let first = engine
        .recent_detections()
        .into_iter()
        .find(|e| e.key == format!("ip:{ip}"))
        .expect("the first firing is among the recent detections");
    assert_eq!(first.detector, DetectorKind::Burst);
    assert_eq!(first.count, 50);
    assert_eq!(first.sample, sample());

    // Five failures against one account from one IP: both auth_failures keys
    // fire on the fifth.
    for i in 1..=5 {
        let o = observe(
            engine,
            Signal::AuthFailure {
                ip,
                account: Some("alice"),
            },
        )
        .await;
        let fired: Vec<_> = o
            .events
            .iter()
            .map(|e| (e.detector, e.key.clone()))
            .collect();
        if i < 5 {
            assert!(fired.is_empty(), "auth failure {i} fired {fired:?}");
        } else {
            assert!(fired.contains(&(DetectorKind::AuthFailures, format!("ip:{ip}"))));
            assert!(fired.contains(&(DetectorKind::AuthFailures, "account:alice".to_owned())));
            assert!(
                !fired
                    .iter()
                    .any(|(d, _)| *d == DetectorKind::DistinctAccounts)
            );
        }
    }

    // Distinct accounts from a second IP: the fourth distinct name fires,
    // repeating a name does not count.
    let ip2 = format!("{ip}-b");
    for (i, account) in ["a", "b", "b", "c", "a", "d"].iter().enumerate() {
        let o = observe(
            engine,
            Signal::AuthFailure {
                ip: &ip2,
                account: Some(account),
            },
        )
        .await;
        let distinct = o
            .events
            .iter()
            .any(|e| e.detector == DetectorKind::DistinctAccounts);
        assert_eq!(
            distinct,
            i == 5,
            "distinct accounts at attempt {i} ({account})"
        );
    }

    // A refresh reuse fires at once.
    let o = observe(
        engine,
        Signal::RefreshReuse {
            ip,
            subject: "u-reuse",
        },
    )
    .await;
    assert_eq!(o.events.len(), 1);
    assert_eq!(o.events[0].key, "subject:u-reuse");

    for i in 1..=3 {
        let o = observe(
            engine,
            Signal::Denied {
                subject: "u-denied",
            },
        )
        .await;
        assert_eq!(o.events.len(), usize::from(i == 3), "denied {i}");
    }
}

#[tokio::test]
async fn memory_detectors_fire_at_their_threshold() {
    let clock = Arc::new(ManualClock::at_unix_seconds(T0));
    let engine = AnomalyEngine::new(
        all_detectors(&[Action::Tag]),
        AnomalyBackend::memory(10_000),
        None,
        clock.clone(),
    )
    .unwrap();
    thresholds_hold(&engine, "203.0.113.7").await;

    // Windows slide: 49 requests, the window passes, 49 more: no burst.
    let ip = "198.51.100.9";
    for _ in 0..49 {
        assert!(
            observe(&engine, Signal::Request { ip })
                .await
                .events
                .is_empty()
        );
    }
    clock.advance(Duration::from_secs(10));
    for _ in 0..49 {
        assert!(
            observe(&engine, Signal::Request { ip })
                .await
                .events
                .is_empty()
        );
    }
    let o = observe(&engine, Signal::Request { ip }).await;
    assert_eq!(o.tags, vec![DetectorKind::Burst]);
}

/// A burst fires its detector on every request past the threshold: the
/// recent detections keep one entry per detector and key, with the latest
/// count and time, newest first.
#[tokio::test]
async fn recent_detections_keep_one_entry_per_detector_and_key() {
    let clock = Arc::new(ManualClock::at_unix_seconds(T0));
    let engine = AnomalyEngine::new(
        vec![detector(DetectorKind::Burst, 3, 10, &[Action::Tag])],
        AnomalyBackend::memory(10_000),
        None,
        clock.clone(),
    )
    .unwrap();
    assert!(engine.recent_detections().is_empty());
    for _ in 0..20 {
        observe(&engine, Signal::Request { ip: "203.0.113.7" }).await;
    }
    clock.advance(Duration::from_secs(1));
    for _ in 0..3 {
        observe(&engine, Signal::Request { ip: "198.51.100.9" }).await;
    }
    let recent = engine.recent_detections();
    let keys: Vec<&str> = recent.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, ["ip:198.51.100.9", "ip:203.0.113.7"]);
    assert!(recent.iter().all(|d| d.detector == DetectorKind::Burst));
    observe(&engine, Signal::Request { ip: "203.0.113.7" }).await;
    let latest = &engine.recent_detections()[1];
    assert_eq!(latest.last_seen_ms, (T0 + 1) * 1000, "updated in place");
}

#[tokio::test]
async fn a_ban_blocks_then_expires_and_can_be_lifted() {
    let clock = Arc::new(ManualClock::at_unix_seconds(T0));
    let mut burst = detector(DetectorKind::Burst, 3, 10, &[Action::Ban]);
    burst.ban_for = Duration::from_secs(60);
    let engine = AnomalyEngine::new(
        vec![burst],
        AnomalyBackend::memory(1_000),
        None,
        clock.clone(),
    )
    .unwrap();
    let ip = "192.0.2.1";
    for _ in 0..2 {
        observe(&engine, Signal::Request { ip }).await;
    }
    assert_eq!(engine.banned(Some(ip), None).await.unwrap(), None);
    let o = observe(&engine, Signal::Request { ip }).await;
    assert_eq!(o.bans.len(), 1);
    let ban = engine
        .banned(Some(ip), Some("anyone"))
        .await
        .unwrap()
        .expect("banned");
    assert_eq!(ban.target, BanTarget::Ip(ip.into()));
    assert_eq!(ban.reason, "burst");
    assert_eq!(engine.banned(Some("192.0.2.2"), None).await.unwrap(), None);
    assert_eq!(engine.list_bans().await.unwrap().len(), 1);

    clock.advance(Duration::from_secs(59));
    assert!(engine.banned(Some(ip), None).await.unwrap().is_some());
    clock.advance(Duration::from_secs(1));
    assert_eq!(engine.banned(Some(ip), None).await.unwrap(), None);
    assert!(engine.list_bans().await.unwrap().is_empty());

    let subject = BanTarget::Subject("u-1".into());
    engine
        .ban(subject.clone(), Duration::from_secs(600), "manual")
        .await
        .unwrap();
    assert!(engine.banned(None, Some("u-1")).await.unwrap().is_some());
    assert!(engine.lift_ban(&subject).await.unwrap());
    assert_eq!(engine.banned(None, Some("u-1")).await.unwrap(), None);
    assert!(!engine.lift_ban(&subject).await.unwrap());
}

/// Issue 12 item 20 in memory: expired bans are purged as bans are added,
/// without anyone listing them, and dropped when a check meets them.
#[test]
fn memory_bans_expire_without_being_listed() {
    use portcullis::anomaly::memory::MemoryBans;
    use portcullis_core::anomaly::Ban;
    let bans = MemoryBans::default();
    let ban = |i: u32, until_ms: u64| Ban {
        target: BanTarget::Ip(format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)),
        until_ms,
        reason: "burst".into(),
    };
    for i in 0..5_000 {
        bans.ban(ban(i, 1_000 + u64::from(i)), 0);
    }
    for i in 5_000..10_000 {
        bans.ban(ban(i, 100_000), 10_000);
    }
    assert_eq!(bans.len(), 5_000, "only the live bans are held");
    assert!(bans.banned(Some("10.0.39.15"), None, 10_000).is_some());
    bans.ban(ban(1, 50_000), 10_000);
    assert!(bans.banned(Some("10.0.0.1"), None, 60_000).is_none());
    assert_eq!(
        bans.len(),
        5_000,
        "the expired ban met by a check is dropped"
    );
}

#[test]
fn memory_windows_stay_bounded() {
    use portcullis::anomaly::memory::MemoryCounters;
    use portcullis_core::anomaly::{DetectionKey, Observation};
    let counters = MemoryCounters::new(64 * 16);
    let config = detector(DetectorKind::Burst, 5, 10, &[]);
    for i in 0..50_000u32 {
        let ip = format!("10.0.{}.{}", i / 256, i % 256);
        let obs = Observation {
            kind: DetectorKind::Burst,
            key: DetectionKey::Ip(&ip),
            member: None,
        };
        counters.record(&obs, &config, 1_000_000);
    }
    assert!(counters.len() <= 64 * 16, "{} windows held", counters.len());
}

// ---------------------------------------------------------------------------
// A real local webhook receiver.

#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: i64,
    signature: String,
    body: Bytes,
}

struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
    scheme: &'static str,
}

/// Serves one connection: every POST is recorded and answered with `status`.
async fn serve_connection<I>(io: I, store: Arc<Mutex<Vec<Received>>>, status: u16)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let store = Arc::clone(&store);
        async move {
            let h = |n: &str| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            let (id, ts, sig) = (
                h("webhook-id"),
                h("webhook-timestamp"),
                h("webhook-signature"),
            );
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            store.lock().unwrap().push(Received {
                id,
                timestamp: ts.parse().unwrap_or(0),
                signature: sig,
                body,
            });
            let mut resp = hyper::Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

impl Receiver {
    /// Answers every POST over plain HTTP with `status` and records it.
    async fn start(status: u16) -> Self {
        Self::serve(status, None).await
    }

    /// The same over TLS, with the test certificate for 127.0.0.1.
    async fn start_tls(status: u16) -> Self {
        Self::serve(status, Some(support::test_tls_acceptor())).await
    }

    async fn serve(status: u16, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&received);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let store = Arc::clone(&store);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve_connection(stream, store, status).await;
                            }
                        }
                        None => serve_connection(stream, store, status).await,
                    }
                });
            }
        });
        Self {
            addr,
            received,
            task,
            scheme,
        }
    }

    fn url(&self) -> http::Uri {
        format!("{}://{}/hooks/portcullis", self.scheme, self.addr)
            .parse()
            .unwrap()
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn webhook_config(url: http::Uri, attempts: u32) -> WebhookConfig {
    WebhookConfig {
        endpoints: vec![WebhookEndpoint {
            url,
            secret: WebhookSecret::parse(SECRET).unwrap(),
            format: PayloadFormat::Standard,
            detectors: None,
            events: Vec::new(),
        }],
        max_attempts: attempts,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        allow_http: true,
        ..WebhookConfig::default()
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn webhook_payload_is_signed_and_verifiable_by_the_receiver() {
    let receiver = Receiver::start(204).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (alerts, worker) = AlertSender::start(
        webhook_config(receiver.url(), 3),
        AlertDedup::Memory(Arc::new(MemoryDedup::default())),
        Arc::clone(&clock),
    )
    .unwrap();
    let engine = AnomalyEngine::new(
        vec![detector(DetectorKind::RefreshReuse, 1, 1, &[Action::Alert])],
        AnomalyBackend::memory(100),
        Some(alerts.clone()),
        Arc::clone(&clock),
    )
    .unwrap();
    observe(
        &engine,
        Signal::RefreshReuse {
            ip: "192.0.2.5",
            subject: "u-7",
        },
    )
    .await;
    // Within the cooldown a second detection on the same key is not re-sent.
    observe(
        &engine,
        Signal::RefreshReuse {
            ip: "192.0.2.5",
            subject: "u-7",
        },
    )
    .await;
    eventually("one delivery", || {
        alerts
            .stats()
            .delivered
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    drop(engine);
    drop(alerts);
    worker.await.unwrap();

    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    // The documented algorithm, computed independently of the sender:
    // base64(HMAC-SHA256(secret bytes, "<id>.<timestamp>.<body>")).
    use base64::Engine as _;
    let key_bytes = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key_bytes);
    let mut signed = format!("{}.{}.", r.id, r.timestamp).into_bytes();
    signed.extend_from_slice(&r.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(aws_lc_rs::hmac::sign(&key, &signed))
    );
    assert_eq!(r.signature, expected);
    assert!(r.id.starts_with("msg_"));
    assert!((r.timestamp - clock.unix_seconds()).abs() < 60);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["type"], "anomaly.detected");
    assert_eq!(v["data"]["detector"], "refresh_reuse");
    assert_eq!(v["data"]["key"], "subject:u-7");
    assert_eq!(v["data"]["sample"]["path"], "/login");
}

#[tokio::test]
async fn an_unreachable_receiver_is_retried_then_abandoned_without_blocking_requests() {
    // A port with nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url: http::Uri = format!("http://{}/x", closed.local_addr().unwrap())
        .parse()
        .unwrap();
    drop(closed);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (alerts, worker) = AlertSender::start(
        webhook_config(url, 4),
        AlertDedup::Memory(Arc::new(MemoryDedup::default())),
        Arc::clone(&clock),
    )
    .unwrap();
    let engine = AnomalyEngine::new(
        vec![detector(
            DetectorKind::Burst,
            1,
            10,
            &[Action::Alert, Action::Tag],
        )],
        AnomalyBackend::memory(100),
        Some(alerts.clone()),
        clock,
    )
    .unwrap();
    for _ in 0..100 {
        let o = observe(&engine, Signal::Request { ip: "192.0.2.44" }).await;
        assert_eq!(o.tags, vec![DetectorKind::Burst]);
    }
    // Every observation above returned at once with its tag while the
    // receiver was down; the worker retries on its own.
    let stats = Arc::clone(alerts.stats());
    drop(engine);
    drop(alerts);
    worker.await.unwrap();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        stats.failed_attempts.load(Relaxed),
        4,
        "every attempt was made"
    );
    assert_eq!(stats.abandoned.load(Relaxed), 1, "then it stopped");
    assert_eq!(stats.delivered.load(Relaxed), 0);
    assert_eq!(stats.queued.load(Relaxed), 1, "one alert per cooldown");
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let receiver = Receiver::start(500).await;
    let mut config = webhook_config(receiver.url(), 1);
    config.queue_capacity = 1;
    config.max_in_flight = 1;
    let (alerts, worker) = AlertSender::start(
        config,
        AlertDedup::Memory(Arc::new(MemoryDedup::default())),
        Arc::new(SystemClock),
    )
    .unwrap();
    let event = |i: u32| portcullis_core::anomaly::AnomalyEvent {
        detector: DetectorKind::Burst,
        key: format!("ip:10.0.0.{i}"),
        count: 1,
        window_secs: 1.0,
        first_seen_ms: 0,
        last_seen_ms: 0,
        sample: SampleRequest::default(),
    };
    let accepted = (0..1_000)
        .filter(|&i| alerts.alert(event(i), Duration::from_secs(60)))
        .count();
    use std::sync::atomic::Ordering::Relaxed;
    assert!(accepted < 1_000);
    assert_eq!(
        alerts.stats().overflowed.load(Relaxed) as usize,
        1_000 - accepted
    );
    drop(alerts);
    worker.await.unwrap();
}

/// Issue 12 item 19: one key above its threshold on every request must
/// not fill the alert queue; alerts for other keys still get through.
#[tokio::test]
async fn one_flooding_key_does_not_crowd_other_keys_out_of_the_alert_queue() {
    let receiver = Receiver::start(204).await;
    let mut config = webhook_config(receiver.url(), 1);
    config.queue_capacity = 4;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (alerts, worker) = AlertSender::start(
        config,
        AlertDedup::Memory(Arc::new(MemoryDedup::default())),
        Arc::clone(&clock),
    )
    .unwrap();
    let engine = AnomalyEngine::new(
        vec![detector(DetectorKind::Burst, 1, 10, &[Action::Alert])],
        AnomalyBackend::memory(100),
        Some(alerts.clone()),
        clock,
    )
    .unwrap();
    for _ in 0..1_000 {
        observe(&engine, Signal::Request { ip: "192.0.2.66" }).await;
    }
    for ip in ["192.0.2.67", "192.0.2.68"] {
        observe(&engine, Signal::Request { ip }).await;
    }
    use std::sync::atomic::Ordering::Relaxed;
    let stats = Arc::clone(alerts.stats());
    assert_eq!(stats.overflowed.load(Relaxed), 0, "no alert was dropped");
    assert_eq!(stats.queued.load(Relaxed), 3, "one per key and cooldown");
    drop(engine);
    drop(alerts);
    worker.await.unwrap();
    let mut keys: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["data"]["key"].as_str().unwrap().to_owned()
        })
        .collect();
    keys.sort();
    assert_eq!(keys, ["ip:192.0.2.66", "ip:192.0.2.67", "ip:192.0.2.68"]);
}

// ---------------------------------------------------------------------------
// Shared state on Redis.

#[tokio::test]
async fn the_tag_action_marks_audit_events_that_anomalies_only_finds() {
    use portcullis::audit::sqlite::SqliteAudit;
    use portcullis::audit::{
        AuditEvent, AuditQuery, AuditWriter, AuditWriterConfig, Decision, EventKind,
    };

    let clock = Arc::new(ManualClock::at_unix_seconds(T0));
    let engine = AnomalyEngine::new(
        vec![detector(DetectorKind::Burst, 3, 10, &[Action::Tag])],
        AnomalyBackend::memory(100),
        None,
        clock.clone(),
    )
    .unwrap();
    let dir = std::env::temp_dir().join(support::unique_name("anomaly_tag"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteAudit::open(&dir.join("audit.db"), Duration::from_secs(5))
        .await
        .unwrap();
    let writer = AuditWriter::start(
        Arc::new(store.clone()),
        AuditWriterConfig::new(dir.join("audit.spool")),
        clock.clone(),
    )
    .unwrap();
    for i in 0..4 {
        let observed = observe(&engine, Signal::Request { ip: "192.0.2.77" }).await;
        let mut event = AuditEvent::new(
            EventKind::Request,
            T0 as i64 * 1_000_000 + i,
            Decision::Allow,
        );
        event.client_ip = Some("192.0.2.77".into());
        observed.tag_audit(&mut event);
        observed.tag_audit(&mut event);
        writer.record(event).await;
    }
    writer.shutdown().await;

    let page = store
        .query_page(&AuditQuery {
            anomalies_only: true,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    // The third request reached the threshold, the fourth is above it.
    assert_eq!(page.events.len(), 2, "{:?}", page.events);
    for e in &page.events {
        assert_eq!(e.anomaly_flags, vec!["burst".to_owned()]);
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends one alert through a fresh sender and waits for its outcome.
async fn send_one(config: WebhookConfig) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let (alerts, worker) = AlertSender::start(
        config,
        AlertDedup::Memory(Arc::new(MemoryDedup::default())),
        Arc::new(SystemClock),
    )
    .unwrap();
    let event = portcullis_core::anomaly::AnomalyEvent {
        detector: DetectorKind::Burst,
        key: "ip:192.0.2.9".into(),
        count: 50,
        window_secs: 10.0,
        first_seen_ms: 1,
        last_seen_ms: 2,
        sample: SampleRequest::default(),
    };
    assert!(alerts.alert(event, Duration::from_secs(60)));
    let stats = Arc::clone(alerts.stats());
    drop(alerts);
    worker.await.unwrap();
    (stats.delivered.load(Relaxed), stats.abandoned.load(Relaxed))
}

#[tokio::test]
async fn webhooks_are_delivered_over_https_to_a_trusted_ca() {
    let receiver = Receiver::start_tls(200).await;
    let mut config = webhook_config(receiver.url(), 1);
    config.allow_http = false;
    config.tls = support::test_ca_trust();
    assert_eq!(send_one(config).await, (1, 0));
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].signature.starts_with("v1,"), "{:?}", got[0]);
}

#[tokio::test]
async fn webhooks_refuse_a_server_whose_certificate_is_not_trusted() {
    let receiver = Receiver::start_tls(200).await;
    // Only the Mozilla roots: the test CA is unknown, so the TLS handshake
    // fails, the alert is abandoned, and nothing reaches the receiver.
    let config = webhook_config(receiver.url(), 2);
    assert_eq!(send_one(config).await, (0, 1));
    assert!(receiver.received().is_empty());
}

#[cfg(feature = "redis")]
mod on_redis {
    use super::*;
    use portcullis::anomaly::redis::{RedisBans, RedisConnection, RedisCounters, RedisDedup};

    fn backend(conn: &RedisConnection, prefix: &str) -> AnomalyBackend {
        AnomalyBackend::Redis {
            counters: RedisCounters::new(conn.clone(), prefix),
            bans: RedisBans::new(conn.clone(), prefix),
        }
    }

    async fn suite(conn: RedisConnection, prefix: &str) {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let engine = AnomalyEngine::new(
            all_detectors(&[Action::Tag]),
            backend(&conn, prefix),
            None,
            Arc::clone(&clock),
        )
        .unwrap();
        thresholds_hold(&engine, "203.0.113.70").await;

        // Two replicas share windows, bans and alert de-duplication.
        let receiver = Receiver::start(200).await;
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let (alerts, worker) = AlertSender::start(
                webhook_config(receiver.url(), 2),
                AlertDedup::Redis(RedisDedup::new(conn.clone(), prefix)),
                Arc::clone(&clock),
            )
            .unwrap();
            let mut burst = detector(DetectorKind::Burst, 10, 60, &[Action::Alert, Action::Ban]);
            burst.ban_for = Duration::from_secs(300);
            let engine = AnomalyEngine::new(
                vec![burst],
                backend(&conn, prefix),
                Some(alerts),
                Arc::clone(&clock),
            )
            .unwrap();
            replicas.push((engine, worker));
        }
        let ip = "198.51.100.200";
        for i in 0..20 {
            let (engine, _) = &replicas[i % 2];
            let o = observe(engine, Signal::Request { ip }).await;
            if i < 9 {
                assert!(o.events.is_empty(), "shared count fired early at {i}");
            }
        }
        // Each replica's events reach the shared window with its next flush
        // (`batch::FLUSH_INTERVAL`): after that, the next request on either
        // replica counts all 20 and fires.
        tokio::time::sleep(portcullis::anomaly::batch::FLUSH_INTERVAL * 3).await;
        for (engine, _) in &replicas {
            observe(engine, Signal::Request { ip }).await;
            let fired = engine
                .recent_detections()
                .into_iter()
                .find(|e| e.key == format!("ip:{ip}"))
                .expect("each replica saw the shared count reach the threshold");
            assert_eq!(fired.count, 10);
        }
        for (engine, _) in &replicas {
            assert!(engine.banned(Some(ip), None).await.unwrap().is_some());
        }
        assert!(
            replicas[1]
                .0
                .lift_ban(&BanTarget::Ip(ip.into()))
                .await
                .unwrap()
        );
        // At once where it was lifted; on the other replica once its cached
        // answer (BAN_CACHE_TTL) expires.
        assert_eq!(replicas[1].0.banned(Some(ip), None).await.unwrap(), None);
        let started = std::time::Instant::now();
        while replicas[0]
            .0
            .banned(Some(ip), None)
            .await
            .unwrap()
            .is_some()
        {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "not lifted everywhere within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (engine, worker) in replicas {
            drop(engine);
            worker.await.unwrap();
        }
        let got = receiver.received();
        assert_eq!(
            got.len(),
            1,
            "one alert within the cooldown across replicas: {got:?}"
        );
    }

    /// Ban checks on Redis are answered from memory for BAN_CACHE_TTL
    /// (the request path's two round trips per request, gone), a ban or
    /// lift made by a replica holds there at once, and on the others
    /// within that TTL.
    #[tokio::test]
    async fn ban_checks_are_answered_from_memory_and_bans_reach_other_replicas_within_the_ttl() {
        use portcullis::anomaly::BAN_CACHE_TTL;
        let Some(url) = support::redis_url() else {
            return;
        };
        let prefix = support::unique_prefix("anomaly_bancache");
        let conn = RedisConnection::single(&url).await.expect("connect");
        let p = prefix.trim_end_matches(':');
        let engine = || {
            AnomalyEngine::new(Vec::new(), backend(&conn, p), None, Arc::new(SystemClock)).unwrap()
        };
        let (a, b) = (engine(), engine());
        let ip = "198.51.100.77";
        let started = std::time::Instant::now();
        for _ in 0..200 {
            assert_eq!(b.banned(Some(ip), Some("alice")).await.unwrap(), None);
        }
        // Two targets (IP, subject), each asked again once per TTL at most.
        let ttls =
            u64::try_from(started.elapsed().as_millis() / BAN_CACHE_TTL.as_millis()).unwrap();
        assert!(
            b.ban_backend_lookups() <= 2 * (ttls + 1),
            "{} Redis lookups for 400 checks in {:?}",
            b.ban_backend_lookups(),
            started.elapsed()
        );

        a.ban(
            BanTarget::Subject("alice".into()),
            Duration::from_secs(60),
            "manual",
        )
        .await
        .unwrap();
        assert!(
            a.banned(None, Some("alice")).await.unwrap().is_some(),
            "at once on a"
        );
        let banned_at = std::time::Instant::now();
        while b.banned(Some(ip), Some("alice")).await.unwrap().is_none() {
            assert!(
                banned_at.elapsed() < BAN_CACHE_TTL + Duration::from_millis(500),
                "b did not see the ban"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            a.lift_ban(&BanTarget::Subject("alice".into()))
                .await
                .unwrap()
        );
        assert_eq!(
            a.banned(None, Some("alice")).await.unwrap(),
            None,
            "at once on a"
        );
        let lifted_at = std::time::Instant::now();
        while b.banned(None, Some("alice")).await.unwrap().is_some() {
            assert!(
                lifted_at.elapsed() < BAN_CACHE_TTL + Duration::from_millis(500),
                "b did not see the lift"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        support::redis_cleanup(&url, &prefix).await;
    }

    #[tokio::test]
    async fn detectors_bans_and_alerts_are_shared_on_redis() {
        let Some(url) = support::redis_url() else {
            return;
        };
        let prefix = support::unique_prefix("anomaly");
        let conn = RedisConnection::single(&url).await.expect("connect");
        suite(conn, prefix.trim_end_matches(':')).await;
        support::redis_cleanup(&url, &prefix).await;
    }

    #[tokio::test]
    async fn detectors_bans_and_alerts_are_shared_on_redis_cluster() {
        let Some(urls) = support::redis_cluster_urls() else {
            return;
        };
        let prefix = support::unique_prefix("anomaly_cluster");
        let conn = RedisConnection::cluster(&urls).await.expect("connect");
        suite(conn, prefix.trim_end_matches(':')).await;
        support::redis_cluster_cleanup(&urls, &prefix).await;
    }

    /// Calls of `names` a server has run (scripts' inner calls included).
    async fn calls(url: &str, names: &[&str]) -> u64 {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        names
            .iter()
            .map(|name| {
                info.lines()
                    .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
                    .and_then(|rest| rest.split(',').next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }

    async fn keys(url: &str, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// Issue 12 item 20: a key above its threshold on every request writes
    /// its ban once per cooldown, not once per request, and a ban leaves
    /// Redis when it expires, without anyone listing bans.
    /// A key that went quiet is counted from Redis again, not from the
    /// replica's last batched count: events that left the window no longer
    /// count, so a slow client never trips a burst detector.
    #[tokio::test]
    async fn a_quiet_key_is_counted_afresh_not_from_a_stale_batch() {
        let server = crate::own_redis::OwnRedis::start(None).await;
        let conn = RedisConnection::single(&server.url()).await.unwrap();
        let burst = detector(DetectorKind::Burst, 5, 1, &[Action::Tag]);
        let engine = AnomalyEngine::new(
            vec![burst],
            backend(&conn, "pcx_test_quiet"),
            None,
            Arc::new(SystemClock),
        )
        .unwrap();
        let ip = "198.51.100.91";
        for i in 0..4 {
            let o = observe(&engine, Signal::Request { ip }).await;
            assert!(o.events.is_empty(), "event {i}");
        }
        // The window (1 s) passes: the four events are gone.
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        for i in 0..4 {
            let o = observe(&engine, Signal::Request { ip }).await;
            assert!(o.events.is_empty(), "event {i} after the pause");
        }
        let o = observe(&engine, Signal::Request { ip }).await;
        assert_eq!(o.events.len(), 1, "the fifth event of the new window fires");
        let stats = engine.batch_stats().unwrap();
        assert_eq!(stats.failures, 0);
    }

    #[tokio::test]
    async fn bans_are_written_once_per_cooldown_and_expire_in_storage() {
        let server = crate::own_redis::OwnRedis::start(None).await;
        let url = server.url();
        let conn = RedisConnection::single(&url).await.unwrap();
        let prefix = "pcx_test_bans";
        let mut burst = detector(DetectorKind::Burst, 3, 60, &[Action::Ban]);
        burst.ban_for = Duration::from_secs(1);
        burst.cooldown = Duration::from_secs(60);
        let engine = AnomalyEngine::new(
            vec![burst],
            backend(&conn, prefix),
            None,
            Arc::new(SystemClock),
        )
        .unwrap();
        let writes = ["set", "hset", "setex", "psetex", "hmset"];
        let before = calls(&url, &writes).await;
        let ip = "198.51.100.90";
        for _ in 0..20 {
            observe(&engine, Signal::Request { ip }).await;
        }
        assert_eq!(calls(&url, &writes).await - before, 1, "one ban write");
        assert!(engine.banned(Some(ip), None).await.unwrap().is_some());
        assert!(!keys(&url, &format!("{prefix}*bans*")).await.is_empty());
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert_eq!(engine.banned(Some(ip), None).await.unwrap(), None);
        assert_eq!(
            keys(&url, &format!("{prefix}*bans*")).await,
            Vec::<String>::new(),
            "an expired ban is gone from Redis"
        );
    }
}
