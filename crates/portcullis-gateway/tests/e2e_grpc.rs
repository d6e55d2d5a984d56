//! gRPC through `portcullis serve` with the real thing at both ends: the
//! standard health service on a `grpcio` server (`grpcio-health-checking`,
//! `tests/e2e/grpc_health_server.py`) behind `protocol = "h2c"`, and behind
//! `protocol = "h2"` over TLS with a private CA's certificate; a `grpcio`
//! client (`tests/e2e/grpc_health_client.py`, `grpc.insecure_channel`: h2c
//! with prior knowledge to the gateway) in front. With a JWT in the
//! `authorization` metadata, unary `Check` answers SERVING, the
//! server-streaming `Watch` relays its first message, and the upstream's
//! own NOT_FOUND reaches the client; without a token the client reads
//! UNAUTHENTICATED, past the rate limit RESOURCE_EXHAUSTED, each with the
//! stable code in its details; and the audit log holds one event per call.

#[path = "e2e/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// The health service's paths, and the route that covers them.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// A gateway in front of a grpcio health server.
struct Setup {
    python: PathBuf,
    public: u16,
    _gateway: Proc,
    _server: Proc,
    dir: TempDir,
}

/// The gateway: the health service needs a JWT (the default credentials)
/// and allows 3 calls a minute per subject; `upstream` is the
/// `[[upstreams]]` body (URL, protocol, CA).
fn gateway_config(public: u16, ops: u16, upstream: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{public}"
ops_listen = "127.0.0.1:{ops}"
upstream_connect_timeout = "2s"
upstream_read_timeout = "20s"

[storage]
url = "sqlite://{{db}}"
pepper_file = "{{pepper}}"

[keys]
dir = "{{keys}}"
issuer = "http://127.0.0.1:{public}"
audience = ["api"]

[audit]
sqlite = "{{audit}}"

[guard]
default = "deny"

[[guard.rate_limits]]
name = "per_caller"
algorithm = "fixed_window"
limit = 3
period = 60
key = ["subject"]

[[guard.routes]]
name = "health"
methods = ["POST"]
path = "{HEALTH}*"
credentials = ["jwt"]
rate_limits = ["per_caller"]

[[upstreams]]
name = "grpc"
routes = ["health"]
{upstream}
"#
    )
}

async fn setup(name: &str, tls: bool) -> Option<Setup> {
    let python = python()?;
    let dir = TempDir::new(name);
    let d = dir.path();
    let port = free_port();
    let mut server = Command::new(&python);
    server
        .arg(e2e_dir().join("grpc_health_server.py"))
        .arg(port.to_string());
    let upstream = if tls {
        make_ca(d, "ca");
        make_leaf(d, "ca", "grpc", 30, false);
        server.arg(dir.join("grpc.pem")).arg(dir.join("grpc.key"));
        format!(
            "url = \"https://localhost:{port}\"\nprotocol = \"h2\"\nca_file = \"{}\"",
            dir.join("ca.pem").display()
        )
    } else {
        format!("url = \"http://127.0.0.1:{port}\"\nprotocol = \"h2c\"")
    };
    let mut server = Proc::spawn("grpc-server", d, server);
    server.wait_port(port);
    let (public, ops) = (free_port(), free_port());
    let gateway = start_gateway(&dir, &gateway_config(public, ops, &upstream), public, ops).await;
    Some(Setup {
        python,
        public,
        _gateway: gateway,
        _server: server,
        dir,
    })
}

impl Setup {
    /// A JWT for `sub`, signed with the gateway's key.
    fn token(&self, sub: &str) -> String {
        let key = self.dir.join("keys").join("k1.pem");
        portcullis(&[
            "token",
            "issue",
            "--key",
            key.to_str().unwrap(),
            "--iss",
            &format!("http://127.0.0.1:{}", self.public),
            "--aud",
            "api",
            "--sub",
            sub,
        ])
        .trim()
        .to_owned()
    }

    /// One grpcio call (`check` or `watch`) through the gateway: what the
    /// client read (`code`, and `status` or `details`).
    fn call(&self, method: &str, service: &str, token: Option<&str>) -> Value {
        let mut cmd = Command::new(&self.python);
        cmd.arg(e2e_dir().join("grpc_health_client.py"))
            .arg(format!("127.0.0.1:{}", self.public))
            .arg(method)
            .arg(service)
            .args(token);
        let out = cmd.output().expect("the grpcio client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "grpcio client {method} {service}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }
}

/// The audit events of the health service's calls, once there are `n`.
fn audit_events(audit: &Path, n: usize) -> Vec<(String, u64, String)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page: Value = serde_json::from_str(&portcullis(&[
            "audit",
            "query",
            "--sqlite",
            audit.to_str().unwrap(),
            "--path-prefix",
            HEALTH,
            "--format",
            "json",
        ]))
        .unwrap_or(Value::Null);
        let mut events: Vec<(String, u64, String)> = page["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                (
                    e["path"].as_str().unwrap_or_default().to_owned(),
                    e["status"].as_u64().unwrap_or_default(),
                    e["code"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        if events.len() >= n || Instant::now() > deadline {
            events.sort();
            return events;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The calls a gRPC team makes through the gateway, and what their
/// grpcio client reads.
fn grpc_calls_read_as_grpc_statuses(s: &Setup) {
    let alice = s.token("alice");

    // No token: UNAUTHENTICATED, the stable code first in the details.
    let r = s.call("check", "", None);
    assert_eq!(r["code"], "UNAUTHENTICATED", "{r}");
    let details = r["details"].as_str().unwrap_or_default();
    assert!(details.starts_with("auth.missing_credentials"), "{details}");

    // With a JWT: unary Check answers SERVING (the server's own answer).
    let r = s.call("check", "", Some(&alice));
    assert_eq!(r, serde_json::json!({"code": "OK", "status": "SERVING"}));

    // Server-streaming Watch: its first message comes through.
    let r = s.call("watch", "portcullis.e2e", Some(&alice));
    assert_eq!(r, serde_json::json!({"code": "OK", "status": "SERVING"}));

    // The upstream's own status (an unknown service) is relayed as it is.
    let r = s.call("check", "no.such.Service", Some(&alice));
    assert_eq!(r["code"], "NOT_FOUND", "{r}");

    // Three calls a minute for alice: the fourth is RESOURCE_EXHAUSTED.
    let r = s.call("check", "", Some(&alice));
    assert_eq!(r["code"], "RESOURCE_EXHAUSTED", "{r}");
    let details = r["details"].as_str().unwrap_or_default();
    assert!(details.starts_with("rate_limit.exceeded"), "{details}");

    // One audit event per call, with the HTTP status each stands for.
    let check = format!("{HEALTH}Check");
    let watch = format!("{HEALTH}Watch");
    let want = vec![
        (check.clone(), 200, String::new()),
        (check.clone(), 200, String::new()),
        (check.clone(), 401, "auth.missing_credentials".to_owned()),
        (check, 429, "rate_limit.exceeded".to_owned()),
        (watch, 200, String::new()),
    ];
    assert_eq!(audit_events(&s.dir.join("audit.db"), want.len()), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_calls_through_an_h2c_upstream() {
    let Some(s) = setup("grpc-h2c", false).await else {
        return;
    };
    grpc_calls_read_as_grpc_statuses(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_calls_through_a_tls_upstream_with_a_private_ca() {
    let Some(s) = setup("grpc-h2", true).await else {
        return;
    };
    grpc_calls_read_as_grpc_statuses(&s);
}
