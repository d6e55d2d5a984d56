//! HMAC-signed service requests through `portcullis serve`: the real
//! binary, real sockets, signatures made with the library's own signer.
//! A good signature reaches the upstream as the app (its identity headers,
//! the body intact); a bad one, a replay or a stale timestamp is 401
//! `auth.invalid_signature_request`; `config check` refuses a `signed`
//! route without `[signed_requests]` and a short secret. On the shared
//! Redis, a nonce spent on one gateway is refused by another.

mod support;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portcullis_core::authz::signed_request::{
    HEADER_APP, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, SignedParts, sign,
};
use serde_json::Value;
use support::{
    Gateway, GatewayConfig, HttpClient, RateLimit, RedisPrefix, Reply, Route, TempDir, Upstream,
    client, free_port, portcullis, redis_url, send, unique_name,
};

const APP: &str = "billing";
/// The secret as the app holds it (hex text); the file has a trailing newline.
const SECRET: &str = "7f3c9a1e5b2d4c6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5";

/// An upstream answering with the method, path, headers and body length it got.
async fn echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let headers: serde_json::Map<String, Value> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_owned(),
                                Value::from(v.to_str().unwrap_or("?")),
                            )
                        })
                        .collect();
                    let path = req.uri().to_string();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let json = serde_json::json!({
                        "path": path,
                        "headers": headers,
                        "body": String::from_utf8_lossy(&body),
                    });
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                        json.to_string(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// A signed request as a client library would send it.
struct Signed {
    method: &'static str,
    path_and_query: String,
    body: String,
    timestamp: i64,
    nonce: String,
    signature: String,
}

impl Signed {
    fn new(method: &'static str, path_and_query: &str, body: &str) -> Self {
        Self::at(method, path_and_query, body, now(), &unique_name("nonce"))
    }

    fn at(
        method: &'static str,
        path_and_query: &str,
        body: &str,
        timestamp: i64,
        nonce: &str,
    ) -> Self {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let signature = sign(
            SECRET.as_bytes(),
            APP,
            timestamp,
            nonce,
            &SignedParts {
                method,
                path,
                query,
                body: body.as_bytes(),
            },
        );
        Self {
            method,
            path_and_query: path_and_query.to_owned(),
            body: body.to_owned(),
            timestamp,
            nonce: nonce.to_owned(),
            signature,
        }
    }

    fn request(&self, addr: SocketAddr) -> Request<Full<Bytes>> {
        Request::builder()
            .method(self.method)
            .uri(format!("http://{addr}{}", self.path_and_query))
            .header(HEADER_APP, APP)
            .header(HEADER_TIMESTAMP, self.timestamp.to_string())
            .header(HEADER_NONCE, &self.nonce)
            .header(HEADER_SIGNATURE, &self.signature)
            .body(Full::new(Bytes::from(self.body.clone())))
            .unwrap()
    }
}

fn assert_refused(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.code().as_deref(), Some(code), "{}", r.body);
}

/// The configuration: one signed route (`/orders`), one route for JWTs;
/// `storage` and `signed` are the sections' lines.
fn config(
    dir: &TempDir,
    upstream: SocketAddr,
    public: SocketAddr,
    ops: SocketAddr,
    storage: &str,
    signed: &str,
) -> String {
    GatewayConfig::with_ports(dir, public, ops)
        .storage_lines(storage)
        .issuer_is_public()
        .no_audit()
        .no_log()
        .raw(signed)
        .role("service", &["orders.read"])
        .rate_limit(RateLimit::fixed_window("per_app", 1000, 60, &["subject"]))
        .route(
            Route::new("orders", "/orders")
                .credentials(&["signed"])
                .rate_limits(&["per_app"])
                .permissions_all(&["orders.write"]),
        )
        .route(Route::new("docs", "/docs"))
        .upstream(Upstream::new(
            "app",
            &format!("http://{upstream}"),
            &["orders", "docs"],
        ))
        .text()
}

fn signed_section(secret_file: &Path) -> String {
    format!(
        r#"[signed_requests]
window = "2m"

[[signed_requests.apps]]
id = "{APP}"
secret_file = "{}"
roles = ["service"]
permissions = ["orders.write"]
tenant = "acme"
"#,
        secret_file.display()
    )
}

fn secret_file(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.join("billing.secret");
    fs::write(&path, format!("{SECRET}\n")).unwrap();
    path
}

async fn start(
    dir: &TempDir,
    name: &str,
    config: &str,
    public: SocketAddr,
    ops: SocketAddr,
    c: &HttpClient,
) -> Gateway {
    let gw = Gateway::start(dir, name, config, public, ops);
    gw.wait_ready(c).await;
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_requests_reach_the_upstream_as_the_app_and_replays_are_refused() {
    let dir = TempDir::new("signed");
    let upstream = echo_upstream().await;
    let (public, ops) = (free_port(), free_port());
    let secret = secret_file(&dir);
    let text = config(
        &dir,
        upstream,
        public,
        ops,
        "url = \"memory\"",
        &signed_section(&secret),
    );
    let c = client();
    let _gw = start(&dir, "gw", &text, public, ops, &c).await;

    // A correctly signed POST: the upstream sees the app, its grants and
    // tenant, and the body it was signed over.
    let body = r#"{"amount":42}"#;
    let good = Signed::new("POST", "/orders?b=2&a=1", body);
    let r = send(&c, good.request(public)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let seen = r.json();
    let h = &seen["headers"];
    assert_eq!(seen["path"], "/orders?b=2&a=1");
    assert_eq!(seen["body"], body);
    assert_eq!(h["x-portcullis-subject"], APP);
    assert_eq!(h["x-portcullis-auth-method"], "signed_request");
    assert_eq!(h["x-portcullis-roles"], "service");
    assert_eq!(h["x-portcullis-permissions"], "orders.write");
    assert_eq!(h["x-portcullis-tenant"], "acme");

    // The same request again: its nonce is spent.
    let r = send(&c, good.request(public)).await;
    assert_refused(&r, 401, "auth.invalid_signature_request");
    assert!(
        r.json()["detail"].as_str().unwrap().contains("replayed"),
        "{}",
        r.body
    );

    // A signature that does not verify: one hex digit changed.
    let mut bad = Signed::new("POST", "/orders", body);
    let flipped = if bad.signature.starts_with('0') {
        "1"
    } else {
        "0"
    };
    bad.signature.replace_range(0..1, flipped);
    let r = send(&c, bad.request(public)).await;
    assert_refused(&r, 401, "auth.invalid_signature_request");
    assert!(r.header("www-authenticate").is_some());
    // Its nonce was not spent by the failed attempt: signed properly, it passes.
    let fixed = Signed::at("POST", "/orders", body, bad.timestamp, &bad.nonce);
    assert_eq!(send(&c, fixed.request(public)).await.status, StatusCode::OK);

    // A body changed after signing.
    let mut tampered = Signed::new("POST", "/orders", body);
    tampered.body = r#"{"amount":4200}"#.into();
    assert_refused(
        &send(&c, tampered.request(public)).await,
        401,
        "auth.invalid_signature_request",
    );

    // Outside the 2-minute window.
    let stale = Signed::at("POST", "/orders", body, now() - 600, &unique_name("nonce"));
    assert_refused(
        &send(&c, stale.request(public)).await,
        401,
        "auth.invalid_signature_request",
    );

    // No signature at all on a signed-only route.
    let plain = Request::post(format!("http://{public}/orders"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    assert_refused(&send(&c, plain).await, 401, "auth.missing_credentials");

    // The refusals are counted by route and code.
    let metrics = send(&c, support::get(ops, "/metrics", &[])).await.body;
    let count =
        |labels: &[(&str, &str)]| metric(&metrics, "portcullis_guard_decisions_total", labels);
    assert_eq!(
        count(&[("route", "orders"), ("decision", "allow"), ("code", "none")]),
        Some(2.0)
    );
    assert_eq!(
        count(&[
            ("route", "orders"),
            ("decision", "deny"),
            ("code", "auth.invalid_signature_request")
        ]),
        Some(4.0),
        "{metrics}"
    );
}

/// The value of the sample `name{labels…}` (every given label present) in
/// a Prometheus text exposition.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (set, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| set.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

#[test]
fn config_check_refuses_signed_routes_without_apps_and_short_secrets() {
    let dir = TempDir::new("signed-check");
    let (upstream, public, ops) = (free_port(), free_port(), free_port());
    let check = |text: &str| {
        let path = dir.join("check.toml");
        fs::write(&path, text).unwrap();
        let out = portcullis(&["config", "check", path.to_str().unwrap()]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // The documented shape passes.
    let secret = secret_file(&dir);
    let (ok, stderr) = check(&config(
        &dir,
        upstream,
        public,
        ops,
        "url = \"memory\"",
        &signed_section(&secret),
    ));
    assert!(ok, "{stderr}");

    // A `signed` route but no [signed_requests]: the error names the route.
    let (ok, stderr) = check(&config(&dir, upstream, public, ops, "url = \"memory\"", ""));
    assert!(!ok);
    assert!(stderr.contains("guard.routes[0].credentials"), "{stderr}");
    assert!(stderr.contains("route `orders`"), "{stderr}");
    assert!(stderr.contains("[signed_requests]"), "{stderr}");

    // A secret under 32 bytes, a bad id, an unknown role, a window over 1h.
    let short = dir.join("short.secret");
    fs::write(&short, "too-short\n").unwrap();
    let section = signed_section(&short)
        .replace("window = \"2m\"", "window = \"2h\"")
        .replace("roles = [\"service\"]", "roles = [\"servcie\"]")
        .replace(&format!("id = \"{APP}\""), "id = \"bill ing\"");
    let (ok, stderr) = check(&config(
        &dir,
        upstream,
        public,
        ops,
        "url = \"memory\"",
        &section,
    ));
    assert!(!ok);
    for needle in [
        "signed_requests.window",
        "signed_requests.apps[0].id",
        "signed_requests.apps[0].secret_file",
        "at least 32",
        "signed_requests.apps[0].roles[0]",
        "did you mean `service`",
    ] {
        assert!(stderr.contains(needle), "{needle} missing from:\n{stderr}");
    }
    // The secret is never inline: `secret` is not a key.
    let inline = signed_section(&secret).replace("secret_file = ", "secret = ");
    let (ok, stderr) = check(&config(
        &dir,
        upstream,
        public,
        ops,
        "url = \"memory\"",
        &inline,
    ));
    assert!(!ok);
    assert!(stderr.contains("unknown key `secret`"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_spent_on_one_replica_is_refused_by_another_on_redis() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_name("pcx_signed");
    let _cleanup = RedisPrefix {
        urls: vec![url.clone()],
        prefix: prefix.clone(),
    };
    let dir = TempDir::new("signed-redis");
    let upstream = echo_upstream().await;
    let secret = secret_file(&dir);
    let storage = format!("url = \"memory\"\nredis = \"{url}\"\nredis_prefix = \"{prefix}\"");
    let c = client();
    let (pa, oa, pb, ob) = (free_port(), free_port(), free_port(), free_port());
    let a = config(&dir, upstream, pa, oa, &storage, &signed_section(&secret));
    let b = config(&dir, upstream, pb, ob, &storage, &signed_section(&secret));
    let _ga = start(&dir, "a", &a, pa, oa, &c).await;
    let _gb = start(&dir, "b", &b, pb, ob, &c).await;

    let body = "{}";
    let first = Signed::new("POST", "/orders", body);
    let r = send(&c, first.request(pa)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // The nonce is on Redis under the deployment's prefix, kept for twice the window.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    let key = format!("{prefix}:nonce:{APP}:{}", first.nonce);
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
    assert!(ttl > 200_000 && ttl <= 240_000, "PTTL of {key}: {ttl}");

    // Replayed to the other replica: refused there.
    let r = send(&c, first.request(pb)).await;
    assert_refused(&r, 401, "auth.invalid_signature_request");
    assert!(
        r.json()["detail"].as_str().unwrap().contains("replayed"),
        "{}",
        r.body
    );
    // And back on the first.
    assert_refused(
        &send(&c, first.request(pa)).await,
        401,
        "auth.invalid_signature_request",
    );

    // A fresh nonce passes on the second replica.
    let second = Signed::new("POST", "/orders", body);
    let r = send(&c, second.request(pb)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["headers"]["x-portcullis-subject"], APP);

    // Rate limits count on the same Redis: its breaker is reported closed.
    let metrics = send(&c, support::get(ob, "/metrics", &[])).await.body;
    assert_eq!(
        metric(&metrics, "portcullis_ratelimit_breaker_state", &[]),
        Some(0.0),
        "{metrics}"
    );

    // The app banned through the CLI (on the same Redis, under the same
    // prefix): every replica refuses it, and the refusal is counted by code.
    let out = portcullis(&[
        "bans",
        "add",
        "--redis",
        &url,
        "--prefix",
        &prefix,
        "--subject",
        APP,
        "--for",
        "10m",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A ban made elsewhere holds on each replica within its 250 ms ban
    // cache (BAN_CACHE_TTL): a fresh request until then may pass.
    let banned_at = std::time::Instant::now();
    let refused = loop {
        let r = send(&c, Signed::new("POST", "/orders", body).request(pa)).await;
        if r.status != StatusCode::OK || banned_at.elapsed() > Duration::from_secs(1) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_refused(&refused, 403, "anomaly.banned");
    let metrics = send(&c, support::get(oa, "/metrics", &[])).await.body;
    assert_eq!(
        metric(
            &metrics,
            "portcullis_guard_decisions_total",
            &[
                ("route", "orders"),
                ("decision", "deny"),
                ("code", "anomaly.banned")
            ]
        ),
        Some(1.0),
        "{metrics}"
    );
}
