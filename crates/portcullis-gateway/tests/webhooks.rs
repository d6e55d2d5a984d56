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
use serde_json::Value;
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

fn config(
    dir: &TempDir,
    public: SocketAddr,
    ops: SocketAddr,
    upstream: SocketAddr,
    redis: &str,
    prefix: &str,
    receiver: SocketAddr,
) -> String {
    format!(
        r#"
[server]
listen = "{public}"
ops_listen = "{ops}"

[storage]
pepper_file = "{pepper}"
redis = "{redis}"
redis_prefix = "{prefix}"

[keys]
dir = "{keys}"
issuer = "http://{public}"

[log]
level = "warn"

[[anomaly.detectors]]
kind = "burst"
threshold = 5
window = 60
actions = ["alert"]
cooldown = 60

[[anomaly.webhooks]]
url = "http://{receiver}/hook"
secret_file = "{secret}"
detectors = ["burst"]

[anomaly.webhook_delivery]
timeout = "2s"
max_attempts = 4

[[guard.routes]]
name = "open"
path = "/open/**"
credentials = ["anonymous"]

[[upstreams]]
name = "app"
url = "http://{upstream}"
default = true
"#,
        pepper = dir.join("pepper").display(),
        keys = dir.join("keys").display(),
        secret = dir.join("webhook.secret").display(),
    )
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
    keys_and_pepper(&dir);
    std::fs::write(dir.join("webhook.secret"), format!("{SECRET}\n")).unwrap();
    let upstream = echo_upstream().await;
    let c = client();
    let mut gateways = Vec::new();
    for i in 0..2 {
        let (public, ops) = (free_port(), free_port());
        let text = config(&dir, public, ops, upstream, &redis, &prefix, receiver.addr);
        gateways.push(Gateway::start(
            &dir,
            &format!("replica{i}"),
            &text,
            public,
            ops,
        ));
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
    keys_and_pepper(&dir);
    let base = |webhook: &str| {
        format!(
            r#"
[server]
listen = "127.0.0.1:18001"
ops_listen = "127.0.0.1:18002"

[storage]
pepper_file = "{pepper}"

[keys]
dir = "{keys}"
issuer = "http://127.0.0.1:18001"

{webhook}

[[upstreams]]
name = "app"
url = "http://127.0.0.1:9"
default = true
"#,
            pepper = dir.join("pepper").display(),
            keys = dir.join("keys").display(),
        )
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
