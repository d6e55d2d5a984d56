//! Webhook alerts from `portcullis serve` (`[[anomaly.webhooks]]`): two
//! replicas on the shared Redis post a burst's alert to a real receiver
//! that verifies every delivery with the `standardwebhooks` package from
//! PyPI (tests/e2e/webhook_receiver.py), once per cooldown across both, and
//! retried when the receiver first answers 500; `config check` refuses a
//! webhook it could not use.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{Value, json};
use support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The receiver process, killed on drop.
struct Receiver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    async fn start(fail_first: u32) -> Self {
        let addr = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/webhook_receiver.py");
        let child = Command::new(venv_python())
            .arg(&script)
            .args([
                "127.0.0.1",
                &addr.port().to_string(),
                SECRET,
                &fail_first.to_string(),
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let this = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the receiver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        this
    }

    async fn deliveries(&self) -> Value {
        send(&client(), get(self.addr, "/deliveries", &[]))
            .await
            .json()
    }
}

/// A replica on the shared Redis (`redis`, `prefix`) whose burst alerts go
/// to `receiver`.
fn config(
    dir: &TempDir,
    upstream: SocketAddr,
    redis: &str,
    prefix: &str,
    receiver: SocketAddr,
) -> GatewayConfig {
    let secret = dir.join("webhook.secret").display().to_string();
    GatewayConfig::new(dir)
        .no_storage_url()
        .storage(&format!("redis = {}", toml_str(redis)))
        .storage(&format!("redis_prefix = {}", toml_str(prefix)))
        .issuer_is_public()
        .no_audit()
        .raw(
            "[[anomaly.detectors]]\nkind = \"burst\"\nthreshold = 5\nwindow = 60\n\
             actions = [\"alert\"]\ncooldown = 60",
        )
        .raw(&format!(
            "[[anomaly.webhooks]]\nurl = \"http://{receiver}/hook\"\nsecret_file = {}\n\
             detectors = [\"burst\"]",
            toml_str(&secret)
        ))
        .raw("[anomaly.webhook_delivery]\ntimeout = \"2s\"\nmax_attempts = 4")
        .route(Route::new("open", "/open/**").credentials(&["anonymous"]))
        .upstream(Upstream::default("app", &format!("http://{upstream}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_alerts_once_per_cooldown_across_replicas_signed_and_retried() {
    let Some(redis) = redis_url() else { return };
    let prefix = unique_name("pcx_webhooks");
    let _cleanup = RedisPrefix {
        urls: vec![redis.clone()],
        prefix: prefix.clone(),
    };
    // Down at first: the first post gets a 500 and is retried.
    let receiver = Receiver::start(1).await;
    let dir = TempDir::new("webhooks");
    std::fs::write(dir.join("webhook.secret"), format!("{SECRET}\n")).unwrap();
    let upstream = echo_upstream().await;
    let c = client();
    let mut gateways = Vec::new();
    for i in 0..2 {
        let config = config(&dir, upstream, &redis, &prefix, receiver.addr);
        gateways.push(config.start(&dir, &format!("replica{i}")));
    }
    for g in &gateways {
        g.wait_ready(&c).await;
    }

    // 30 requests from one client over both replicas: the shared burst
    // window passes 5 on the 5th and stays over it.
    for i in 0..30 {
        let g = &gateways[i % 2];
        let r = send(&c, get(g.public, "/open/x", &[])).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let got = loop {
        let got = receiver.deliveries().await;
        if got["verified"].as_array().is_some_and(|v| !v.is_empty()) {
            break got;
        }
        assert!(Instant::now() < deadline, "no verified delivery: {got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Nothing more arrives within the cooldown (more requests, both replicas).
    for i in 0..10 {
        send(&c, get(gateways[i % 2].public, "/open/x", &[])).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_after = receiver.deliveries().await;
    assert_eq!(got_after["verified"], got["verified"], "{got_after}");
    let verified = got["verified"].as_array().unwrap();
    assert_eq!(verified.len(), 1, "{got}");
    assert_eq!(got_after["rejected"], 0, "{got_after}");
    assert_eq!(
        got_after["posts"], 2,
        "one 500, then the retry: {got_after}"
    );
    let event = &verified[0];
    assert_eq!(event["type"], "anomaly.detected", "{event}");
    assert_eq!(event["data"]["detector"], "burst", "{event}");
    assert_eq!(event["data"]["key"], "ip:127.0.0.1", "{event}");

    let mut delivered = 0.0;
    let mut failed = 0.0;
    for g in &gateways {
        delivered += metric_total(g.ops, "portcullis_webhook_delivered_total").await;
        failed += metric_total(g.ops, "portcullis_webhook_failed_attempts_total").await;
    }
    assert_eq!((delivered, failed), (1.0, 1.0));
    // The secret never reaches the logs.
    drop(gateways);
    for i in 0..2 {
        let log = std::fs::read_to_string(dir.join(&format!("replica{i}.log"))).unwrap();
        assert!(!log.contains("MfKQ9r8G"), "secret in the log: {log}");
    }
}

#[test]
fn config_check_refuses_a_webhook_it_could_not_use() {
    let dir = TempDir::new("webhooks_check");
    let public: SocketAddr = "127.0.0.1:18001".parse().unwrap();
    let ops: SocketAddr = "127.0.0.1:18002".parse().unwrap();
    let base = |webhook: &str| {
        GatewayConfig::with_ports(&dir, public, ops)
            .no_storage_url()
            .issuer_is_public()
            .no_audit()
            .no_log()
            .raw(webhook)
            .upstream(Upstream::default("app", "http://127.0.0.1:9"))
            .text()
    };
    std::fs::write(dir.join("good.secret"), SECRET).unwrap();
    std::fs::write(dir.join("bad.secret"), "not-a-whsec").unwrap();
    let cases = [
        (
            format!(
                "[[anomaly.webhooks]]\nurl = \"http://hooks.example.com/x\"\nsecret_file = \"{}\"",
                dir.join("good.secret").display()
            ),
            "anomaly.webhooks[0].url",
        ),
        (
            "[[anomaly.webhooks]]\nurl = \"https://hooks.example.com/x\"".to_owned(),
            "anomaly.webhooks[0].secret_file",
        ),
        (
            format!(
                "[[anomaly.webhooks]]\nurl = \"https://hooks.example.com/x\"\nsecret_file = \"{}\"",
                dir.join("bad.secret").display()
            ),
            "anomaly.webhooks[0].secret_file",
        ),
    ];
    for (webhook, key) in cases {
        let path = dir.join("gateway.toml");
        std::fs::write(&path, base(&webhook)).unwrap();
        let out = portcullis(&["config", "check", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{webhook} was accepted");
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
    // https with a secret, and a Slack webhook (its URL is its secret).
    let ok = format!(
        "[[anomaly.webhooks]]\nurl = \"https://hooks.example.com/x\"\nsecret_file = \"{}\"\n\n[[anomaly.webhooks]]\nurl = \"https://hooks.slack.com/services/T/B/X\"\nformat = \"slack\"",
        dir.join("good.secret").display()
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, base(&ok)).unwrap();
    let out = portcullis(&["config", "check", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("MfKQ9r8G"));
}

/// An admin API call on `ops` with `key`.
async fn admin_call(
    c: &HttpClient,
    ops: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Value,
) -> Reply {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{ops}{path}"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    send(c, req).await
}

/// Waits until `receiver` verified `n` deliveries; returns them.
async fn verified(receiver: &Receiver, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = receiver.deliveries().await;
        let list = got["verified"].as_array().cloned().unwrap_or_default();
        if list.len() >= n {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} deliveries: {got}",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Security events reach only the webhook that opted into each: a key
/// rotation and an admin key's creation through the admin API, a login
/// refused by the regulation (once per client and account, however often
/// it retries), a refresh token presented again. A webhook with the
/// default settings receives none of them (only the detectors' alerts), a
/// user's key is no admin key,
/// and the console's delivery list shows what was sent, without the path
/// of the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_events_reach_the_webhooks_that_opted_in() {
    let security = Receiver::start(0).await;
    let alerts = Receiver::start(0).await;
    let dir = TempDir::new("webhook_events");
    std::fs::write(dir.join("webhook.secret"), format!("{SECRET}\n")).unwrap();
    let secret = toml_str(&dir.join("webhook.secret").display().to_string());
    let config = GatewayConfig::new(&dir)
        .issuer_is_public()
        .no_audit()
        .raw("[token_service.regulation]\nmax_failures_per_account = 2")
        .raw(&format!(
            "[[anomaly.webhooks]]\nurl = \"http://{security}/hook/secret-path\"\n\
             secret_file = {secret}\ndetectors = []\nevents = [\"signing_key.rotated\", \
             \"admin_key.created\", \"login.throttled\", \"token.reuse_detected\"]",
            security = security.addr,
        ))
        .raw(&format!(
            "[[anomaly.webhooks]]\nurl = \"http://{alerts}/hook\"\nsecret_file = {secret}",
            alerts = alerts.addr,
        ))
        .route(Route::new("open", "/open/**").credentials(&["anonymous"]))
        .upstream(Upstream::default("app", "http://127.0.0.1:9"));
    let (public, ops) = (config.public, config.ops);
    let admin = bootstrap_admin(&config.write());
    let gateway = config.start(&dir, "gateway");
    let c = client();
    gateway.wait_ready(&c).await;

    // A key rotation.
    let r = admin_call(&c, ops, &admin, "POST", "/admin/keys/rotate", json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let kid = r.json()["kid"].as_str().unwrap().to_owned();
    let got = verified(&security, 1).await;
    assert_eq!(got[0]["type"], "security.signing_key.rotated", "{got:?}");
    assert_eq!(got[0]["data"]["target"], kid.as_str());
    assert!(
        got[0]["data"]["subject"]
            .as_str()
            .unwrap()
            .starts_with("admin")
    );

    // A user and the user's own key (no admin key), then an admin key.
    let r = admin_call(
        &c,
        ops,
        &admin,
        "POST",
        "/admin/users",
        json!({"username": "alice", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let alice = r.json()["id"].as_str().unwrap().to_owned();
    let r = admin_call(
        &c,
        ops,
        &admin,
        "POST",
        &format!("/admin/users/{alice}/api-keys"),
        json!({"name": "ci"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = admin_call(
        &c,
        ops,
        &admin,
        "POST",
        "/admin/users/admin:auditor/api-keys",
        json!({"name": "auditor", "permissions": ["admin.audit.read"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let key_id = r.json()["api_key"]["id"].as_str().unwrap().to_owned();
    let got = verified(&security, 2).await;
    assert_eq!(got[1]["type"], "security.admin_key.created", "{got:?}");
    assert_eq!(got[1]["data"]["target"], key_id.as_str());
    assert!(
        got[1]["data"]["detail"]
            .as_str()
            .unwrap()
            .contains("admin.audit.read"),
        "{got:?}"
    );

    let login = |password: &'static str| {
        let body = json!({"username": "alice", "password": password}).to_string();
        post(
            public,
            "/auth/login",
            &[("content-type", "application/json")],
            &body,
        )
    };
    let json_post = |path: &'static str, body: Value| {
        post(
            public,
            path,
            &[("content-type", "application/json")],
            &body.to_string(),
        )
    };

    // A refresh token presented again after its rotation.
    let r = send(&c, login(PASSWORD)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let first = r.json()["refresh_token"].as_str().unwrap().to_owned();
    let r = send(
        &c,
        json_post("/auth/refresh", json!({"refresh_token": first})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = send(
        &c,
        json_post("/auth/refresh", json!({"refresh_token": first})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let got = verified(&security, 3).await;
    assert_eq!(got[2]["type"], "security.token.reuse_detected", "{got:?}");
    assert_eq!(got[2]["data"]["subject"], alice.as_str());

    // Logins refused by the regulation: one notice for the client and
    // account, however many refusals.
    let mut throttled = 0;
    for _ in 0..6 {
        let r = send(&c, login("wrong-password")).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            throttled += 1;
        }
    }
    assert!(throttled >= 3, "{throttled} throttled");
    let got = verified(&security, 4).await;
    assert_eq!(got[3]["type"], "security.login.throttled", "{got:?}");
    assert_eq!(got[3]["data"]["subject"], "alice");
    assert_eq!(got[3]["data"]["client_ip"], "127.0.0.1");

    // Nothing more for the throttled client, and nothing at all for the
    // webhook that did not opt in.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = security.deliveries().await;
    assert_eq!(got["verified"].as_array().unwrap().len(), 4, "{got}");
    assert_eq!(got["rejected"], 0);
    // The other webhook got the refresh_reuse detector's alert (its
    // default: every detector), and no security event.
    let other = alerts.deliveries().await;
    let other_types: Vec<_> = other["verified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(other_types, ["anomaly.detected"], "{other}");

    // The console's list: newest first, scheme and host only.
    let r = admin_call(&c, ops, &admin, "GET", "/admin/anomalies", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let deliveries: Vec<Value> = r.json()["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["what"].as_str().unwrap().starts_with("security "))
        .cloned()
        .collect();
    assert_eq!(deliveries.len(), 4, "{}", r.body);
    assert_eq!(deliveries[0]["what"], "security login.throttled");
    assert_eq!(deliveries[3]["what"], "security signing_key.rotated");
    assert!(
        deliveries.iter().all(|d| d["outcome"] == "delivered"),
        "{}",
        r.body
    );
    assert_eq!(deliveries[0]["url"], format!("http://{}", security.addr));
    assert!(!r.body.contains("secret-path"), "{}", r.body);
}

/// A receiver that accepts connections and never answers costs the request
/// path nothing: with every delivery hung for its whole 60 s timeout, 40
/// clients' bursts (40 alerts, more than the 16 deliveries in flight) are
/// all answered at once, far inside one delivery timeout; nothing is
/// counted delivered, and the receiver did see the deliveries arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_costs_the_request_path_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let receiver = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(socket); // read nothing, answer nothing
        }
    });
    let dir = TempDir::new("webhook_hang");
    std::fs::write(dir.join("webhook.secret"), format!("{SECRET}\n")).unwrap();
    let upstream = echo_upstream().await;
    let secret = toml_str(&dir.join("webhook.secret").display().to_string());
    let config = GatewayConfig::new(&dir)
        .no_storage_url()
        .issuer_is_public()
        .no_audit()
        .raw("[guard.client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]")
        .raw(
            "[[anomaly.detectors]]\nkind = \"burst\"\nthreshold = 1\nwindow = 60\n\
             actions = [\"alert\"]",
        )
        .raw(&format!(
            "[[anomaly.webhooks]]\nurl = \"http://{hung}/hook\"\nsecret_file = {secret}"
        ))
        .raw("[anomaly.webhook_delivery]\ntimeout = \"60s\"\nmax_attempts = 1")
        .route(Route::new("open", "/open/**").credentials(&["anonymous"]))
        .upstream(Upstream::default("app", &format!("http://{upstream}")));
    let (public, ops) = (config.public, config.ops);
    let gateway = config.start(&dir, "gateway");
    let c = client();
    gateway.wait_ready(&c).await;

    let started = Instant::now();
    for i in 0..40 {
        let from = format!("203.0.113.{}", i + 1);
        let r = send(
            &c,
            get(public, "/open/x", &[("x-forwarded-for", from.as_str())]),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let took = started.elapsed();
    // A request that waited on a delivery would take its 60 s timeout.
    assert!(took < Duration::from_secs(30), "40 requests took {took:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "no delivery reached the receiver"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric_total(ops, "portcullis_webhook_delivered_total").await,
        0.0
    );
    receiver.abort();
}
