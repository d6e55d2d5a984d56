//! `portcullis serve` end to end: a real echo upstream on a loopback
//! port, a configuration file, the real binary, real sockets. Login through
//! the mounted token service, calls through the proxy (identity headers,
//! spoofing, 401 / 403 / 429 / 502, default deny, body limit), the nginx
//! forward-auth endpoint, `config check`, and SIGTERM draining in-flight
//! requests.

mod support;

use std::convert::Infallible;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::stores::sqlite::SqliteStores;
use portcullis::stores::{Backends, NewUser, Stores, StoresConfig};
use portcullis_core::SecretHasher;
use serde_json::Value;
use support::{
    GatewayConfig, HttpClient, PASSWORD, PEPPER, RateLimit, Reply, Route, TempDir, Upstream,
    client, free_port, get, keys_and_pepper, portcullis, redis_url, send, toml_str,
};

/// The gateway process: killed on drop (its log printed if the test failed).
struct Gateway {
    child: Option<Child>,
    log: PathBuf,
    ops: SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- gateway log ---\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// An upstream that answers with the method, path and headers it received
/// as JSON; `/slow` answers after 0.8 s, `/stall` after 10 s.
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
                    match req.uri().path() {
                        "/slow" => tokio::time::sleep(Duration::from_millis(800)).await,
                        "/stall" => tokio::time::sleep(Duration::from_secs(10)).await,
                        _ => {}
                    }
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
                    let method = req.method().to_string();
                    let path = req.uri().to_string();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    let json = serde_json::json!({"method": method, "path": path, "headers": headers, "body_len": body});
                    let mut r = Response::new(Full::new(Bytes::from(json.to_string())));
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    r.headers_mut()
                        .insert("connection", "x-upstream-secret".parse().unwrap());
                    r.headers_mut()
                        .insert("x-upstream-secret", "leak".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Keys, pepper, a SQLite store with alice, and the config file.
async fn setup(
    dir: &TempDir,
    upstream: SocketAddr,
    trusted: &str,
) -> (PathBuf, SocketAddr, SocketAddr) {
    setup_with(dir, upstream, trusted, "").await
}

/// [`setup`] with extra `[storage]` lines.
async fn setup_with(
    dir: &TempDir,
    upstream: SocketAddr,
    trusted: &str,
    storage_extra: &str,
) -> (PathBuf, SocketAddr, SocketAddr) {
    keys_and_pepper(dir);
    let db = dir.join("stores.db");
    let backend = Arc::new(SqliteStores::open(&db).await.unwrap());
    let stores = Stores::new(
        Backends::all(backend),
        StoresConfig::new(SecretHasher::new(&PEPPER).unwrap()),
    )
    .unwrap();
    stores
        .create_user(&NewUser {
            username: "alice".into(),
            password: Some(PASSWORD.into()),
            permissions: vec!["docs.read".into()],
            ..NewUser::default()
        })
        .await
        .unwrap();
    let public = free_port();
    let ops = free_port();
    let dead = free_port(); // nothing listens there
    let anonymous = ["anonymous"];
    let config = GatewayConfig::with_ports(dir, public, ops)
        .server(
            "max_body_bytes = 1024\nupstream_connect_timeout = \"2s\"\n\
             upstream_read_timeout = \"2s\"\nshutdown_timeout = \"10s\"",
        )
        .storage(storage_extra)
        .issuer_is_public()
        .keys("audience = [\"api\"]")
        .no_log()
        .raw("[guard]\nrealm = \"api\"")
        .raw(&format!(
            "[guard.client_ip]\ntrusted_proxies = [{}]",
            toml_str(trusted)
        ))
        // sliding_log: no window edge for the test to straddle
        .rate_limit(RateLimit::new("tight", "sliding_log", 2, 60, &["subject"]))
        .rate_limit(RateLimit::fixed_window("ip3", 3, 60, &["ip"]))
        .route(
            Route::new("per_ip", "/per-ip")
                .credentials(&anonymous)
                .rate_limits(&["ip3"]),
        )
        .route(Route::new("docs", "/docs/{id}").permissions_all(&["docs.read"]))
        .route(Route::new("upload", "/upload").methods(&["POST"]))
        .route(Route::new("admin", "/admin/**").permissions_all(&["admin.all"]))
        .route(Route::new("limited", "/limited").rate_limits(&["tight"]))
        .route(Route::new("slow", "/slow").credentials(&anonymous))
        .route(Route::new("stall", "/stall").credentials(&anonymous))
        .route(Route::new("down", "/down").credentials(&anonymous))
        .raw("[forward_auth]\nenabled = true")
        .upstream(Upstream::new(
            "app",
            &format!("http://{upstream}"),
            &[
                "docs", "upload", "admin", "limited", "slow", "stall", "per_ip",
            ],
        ))
        .upstream(Upstream::new("dead", &format!("http://{dead}"), &["down"]));
    let path = config.write_as("portcullis");
    (path, public, ops)
}

fn start(dir: &TempDir, config: &Path, ops: SocketAddr) -> Gateway {
    let log = dir.join("gateway.log");
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("gateway.out")).unwrap())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Gateway {
        child: Some(child),
        log,
        ops,
    }
}

/// A body sent chunked (no length known in advance).
struct Chunked(Vec<Bytes>);

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let next = if self.0.is_empty() {
            None
        } else {
            Some(self.0.remove(0))
        };
        std::task::Poll::Ready(next.map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn streaming_client() -> Client<HttpConnector, Chunked> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn wait_ready(gw: &Gateway, client: &HttpClient) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(1),
            client.request(get(gw.ops, "/health/ready", &[])),
        )
        .await
            && r.status() == StatusCode::OK
        {
            return;
        }
        assert!(Instant::now() < deadline, "gateway not ready in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn login(client: &HttpClient, public: SocketAddr) -> String {
    let body = serde_json::json!({"username": "alice", "password": PASSWORD}).to_string();
    let req = Request::post(format!("http://{public}/auth/login"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = send(client, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json()["access_token"].as_str().unwrap().to_owned()
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

fn assert_problem(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{}",
        r.body
    );
    assert_eq!(r.json()["code"], code, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_guards_forwards_and_answers_forward_auth() {
    let dir = TempDir::new("proxy");
    let upstream = echo_upstream().await;
    let (config, public, ops) = setup(&dir, upstream, "127.0.0.1/32").await;
    let gw = start(&dir, &config, ops);
    let c = client();
    wait_ready(&gw, &c).await;

    // Live and ready.
    assert_eq!(
        send(&c, get(ops, "/health/live", &[])).await.status,
        StatusCode::OK
    );

    // No credentials: 401 problem+json with a challenge.
    let r = send(&c, get(public, "/docs/1", &[])).await;
    assert_problem(&r, 401, "auth.missing_credentials");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer"))
    );

    // Login through the mounted token service, then through the proxy.
    let token = login(&c, public).await;
    let bearer = format!("Bearer {token}");
    let r = send(
        &c,
        get(
            public,
            "/docs/7?x=1",
            &[
                ("authorization", &bearer),
                ("x-portcullis-subject", "admin"),
                ("x-portcullis-permissions", "*"),
                ("x-request-id", "req-from-client-1"),
                ("connection", "x-drop-me"),
                ("x-drop-me", "1"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let seen = r.json();
    let h = &seen["headers"];
    assert_eq!(seen["path"], "/docs/7?x=1");
    let subject = h["x-portcullis-subject"].as_str().unwrap();
    assert_ne!(
        subject, "admin",
        "a spoofed identity header reached the upstream"
    );
    assert!(!subject.is_empty());
    assert_eq!(h["x-portcullis-permissions"], "docs.read");
    assert_eq!(h["x-portcullis-auth-method"], "jwt");
    assert!(h["x-portcullis-session"].is_string());
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], public.to_string());
    assert_eq!(
        h["x-request-id"], "req-from-client-1",
        "a trusted peer's request id is kept"
    );
    assert!(
        h.get("x-drop-me").is_none(),
        "a Connection-named header was forwarded"
    );
    assert!(h.get("connection").is_none());
    assert!(
        r.header("x-upstream-secret").is_none(),
        "a Connection-named response header came back"
    );
    assert_eq!(r.header("x-request-id"), Some("req-from-client-1"));

    // Behind a trusted proxy (the test client here): its client address,
    // scheme and public host are believed.
    let r = send(
        &c,
        get(
            public,
            "/docs/8",
            &[
                ("authorization", &bearer),
                ("x-forwarded-for", "198.51.100.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "api.example.com"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let h = &r.json()["headers"];
    // The trusted peer is appended to the chain it sent.
    assert_eq!(h["x-forwarded-for"], "198.51.100.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "api.example.com");

    // Permission missing: 403.
    let r = send(
        &c,
        get(public, "/admin/users", &[("authorization", &bearer)]),
    )
    .await;
    assert_problem(&r, 403, "authz.denied");

    // Rate limit of 2 per subject: the third is 429 with Retry-After.
    for _ in 0..2 {
        let r = send(&c, get(public, "/limited", &[("authorization", &bearer)])).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let r = send(&c, get(public, "/limited", &[("authorization", &bearer)])).await;
    assert_problem(&r, 429, "rate_limit.exceeded");
    assert!(r.header("retry-after").is_some());

    // No route matches: default deny.
    let r = send(&c, get(public, "/nowhere", &[("authorization", &bearer)])).await;
    assert_problem(&r, 403, "authz.denied");

    // Upstream down: 502 problem+json; upstream too slow: 504.
    let r = send(&c, get(public, "/down", &[])).await;
    assert_problem(&r, 502, "gateway.upstream_unavailable");
    let started = Instant::now();
    let r = send(&c, get(public, "/stall", &[])).await;
    assert_problem(&r, 504, "gateway.upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Body over the limit: 413, declared or streamed.
    let big = Request::post(format!("http://{public}/upload"))
        .header("authorization", &bearer)
        .body(Full::new(Bytes::from(vec![b'x'; 4096])))
        .unwrap();
    assert_problem(&send(&c, big).await, 413, "gateway.body_too_large");
    let streamed = Request::post(format!("http://{public}/upload"))
        .header("authorization", &bearer)
        .body(Chunked(vec![Bytes::from(vec![b'y'; 600]); 4]))
        .unwrap();
    let r = streaming_client().request(streamed).await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let ok = Request::post(format!("http://{public}/upload"))
        .header("authorization", &bearer)
        .body(Full::new(Bytes::from(vec![b'x'; 512])))
        .unwrap();
    let r = send(&c, ok).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["body_len"], 512);

    // nginx forward-auth: 200 with identity, 401, 403.
    let fa = "/_portcullis/auth/nginx";
    let r = send(
        &c,
        get(
            public,
            fa,
            &[
                ("x-forwarded-host", "api.test"),
                ("x-original-uri", "/docs/3"),
                ("x-original-method", "GET"),
                ("authorization", &bearer),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("x-portcullis-subject"), Some(subject));
    assert_eq!(r.header("x-portcullis-permissions"), Some("docs.read"));
    let r = send(
        &c,
        get(
            public,
            fa,
            &[
                ("x-forwarded-host", "api.test"),
                ("x-original-uri", "/docs/3"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("x-portcullis-code"),
        Some("auth.missing_credentials")
    );
    let r = send(
        &c,
        get(
            public,
            fa,
            &[
                ("x-forwarded-host", "api.test"),
                ("x-original-uri", "/admin/x"),
                ("authorization", &bearer),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("x-portcullis-code"), Some("authz.denied"));
    // A 429 is answered as 403 to nginx, the code in a header.
    let r = send(
        &c,
        get(
            public,
            fa,
            &[
                ("x-forwarded-host", "api.test"),
                ("x-original-uri", "/limited"),
                ("authorization", &bearer),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("x-portcullis-code"), Some("rate_limit.exceeded"));

    // Prometheus metrics on the ops listener: the guard's decisions, the
    // gateway's requests by surface and status, upstream latency and failures.
    let r = send(&c, get(ops, "/metrics", &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    for needle in [
        "portcullis_gateway_requests_total{surface=\"proxy\",status=\"200\"}",
        "portcullis_gateway_requests_total{surface=\"token_service\",status=\"200\"}",
        "portcullis_gateway_upstream_duration_seconds_bucket{upstream=\"app\"",
        "portcullis_gateway_upstream_failures_total{upstream=\"dead\",kind=\"unavailable\"} 1",
        "portcullis_gateway_upstream_failures_total{upstream=\"app\",kind=\"timeout\"} 1",
    ] {
        assert!(
            r.body.contains(needle),
            "{needle} missing from:\n{}",
            r.body
        );
    }
    // Decisions by route and stable code, counted from what this test sent
    // (the proxy and the forward-auth endpoint share the guard).
    let decisions = |route: &str, decision: &str, code: &str| {
        metric(
            &r.body,
            "portcullis_guard_decisions_total",
            &[("route", route), ("decision", decision), ("code", code)],
        )
    };
    // /docs/7 and /docs/8 proxied, /docs/3 through forward-auth.
    assert_eq!(decisions("docs", "allow", "none"), Some(3.0), "{}", r.body);
    // /docs/1 proxied and /docs/3 through forward-auth, both without credentials.
    assert_eq!(
        decisions("docs", "deny", "auth.missing_credentials"),
        Some(2.0),
        "{}",
        r.body
    );
    // Two allowed, then the third proxied and the forward-auth one refused.
    assert_eq!(decisions("limited", "allow", "none"), Some(2.0));
    assert_eq!(
        decisions("limited", "deny", "rate_limit.exceeded"),
        Some(2.0),
        "{}",
        r.body
    );
    assert_eq!(decisions("admin", "deny", "authz.denied"), Some(2.0));
    // /nowhere matched no route.
    assert_eq!(decisions("default", "deny", "authz.denied"), Some(1.0));
    // The audit queue, sampled at the scrape: a depth, and no drops.
    let depth = metric(&r.body, "portcullis_audit_queue_depth", &[]);
    assert!(depth.is_some_and(|d| d >= 0.0), "{}", r.body);
    assert_eq!(
        metric(&r.body, "portcullis_audit_dropped_total", &[]),
        Some(0.0),
        "{}",
        r.body
    );
    // No Redis here: no breaker to report.
    assert_eq!(
        metric(&r.body, "portcullis_ratelimit_breaker_state", &[]),
        None
    );

    // Traefik / Caddy dialect and Envoy.
    let r = send(
        &c,
        get(
            public,
            "/_portcullis/auth/traefik",
            &[
                ("x-forwarded-uri", "/docs/3"),
                ("x-forwarded-host", "api.test"),
                ("x-forwarded-method", "GET"),
                ("authorization", &bearer),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("x-portcullis-subject"), Some(subject));
    let r = send(
        &c,
        get(
            public,
            "/_portcullis/auth/envoy/docs/3",
            &[("authorization", &bearer)],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = send(
        &c,
        get(
            public,
            "/_portcullis/auth/envoy/admin/3",
            &[("authorization", &bearer)],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let dir = TempDir::new("sigterm");
    let upstream = echo_upstream().await;
    // The test client is NOT a trusted proxy here.
    // JSON logs (a table after [storage]'s keys).
    let (config, public, ops) = setup_with(
        &dir,
        upstream,
        "10.255.255.1/32",
        "[log]\nformat = \"json\"\nlevel = \"debug\"\n",
    )
    .await;
    // This gateway runs on the single-threaded scheduler (what one CPU
    // gets by default): proxying, the drain and the audit flush on it.
    let text = fs::read_to_string(&config).unwrap();
    assert!(text.contains("[server]\n"));
    fs::write(
        &config,
        text.replacen("[server]\n", "[server]\nworker_threads = 1\n", 1),
    )
    .unwrap();
    let mut gw = start(&dir, &config, ops);
    let c = client();
    wait_ready(&gw, &c).await;

    // From an untrusted peer: forwarding headers, request ids and spoofed
    // identity headers are not believed, and forward-auth does not answer.
    let r = send(
        &c,
        get(
            public,
            "/slow",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("x-request-id", "spoofed-id"),
                ("x-portcullis-subject", "admin"),
                ("x-portcullis-roles", "admin"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], public.to_string());
    assert_ne!(h["x-request-id"], "spoofed-id");
    assert!(
        h.get("x-portcullis-subject").is_none(),
        "anonymous request carried a spoofed subject"
    );
    assert!(h.get("x-portcullis-roles").is_none());
    let r = send(
        &c,
        get(
            public,
            "/_portcullis/auth/nginx",
            &[("x-original-uri", "/slow")],
        ),
    )
    .await;
    assert_problem(&r, 403, "gateway.untrusted_proxy");

    let slow = {
        let c = c.clone();
        tokio::spawn(async move { send(&c, get(public, "/slow", &[])).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = gw.child.as_ref().unwrap().id();
    let out = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());

    // While the request drains, readiness already fails (a fresh client:
    // pooled ops connections are closed by the shutdown).
    // The signal takes a moment to arrive: poll briefly.
    let deadline = Instant::now() + Duration::from_millis(400);
    let r = loop {
        let r = send(&client(), get(ops, "/health/ready", &[])).await;
        if r.status != StatusCode::OK || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(r.json()["status"], "shutting down");

    let r = slow.await.unwrap();
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the in-flight request was cut: {}",
        r.body
    );
    let mut child = gw.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        fs::read_to_string(&gw.log).unwrap_or_default()
    );

    // Every log line is a JSON object; start and stop are logged.
    let log = fs::read_to_string(&gw.log).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let said = |m: &str| {
        lines.iter().any(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|s| s.contains(m))
        })
    };
    assert!(said("listening"), "{log}");
    assert!(said("stopped"), "{log}");

    // The audit queue was flushed on the way out: the drained request's
    // event is in the database.
    let out = portcullis(&[
        "audit",
        "query",
        "--sqlite",
        dir.join("audit.db").to_str().unwrap(),
        "--path-prefix",
        "/slow",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().filter(|l| l.contains("/slow")).count(),
        2,
        "{text}"
    );
}

#[test]
fn config_check_names_the_line_and_suggests_the_key() {
    let dir = TempDir::new("check");
    let out = portcullis(&[
        "keys",
        "generate",
        "--alg",
        "ES256",
        "--kid",
        "k1",
        "--out",
        dir.join("keys").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let path = dir.join("bad.toml");
    fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:8080\"\nops_lisen = \"127.0.0.1:9090\"\n\n[keys]\ndir = \"{}\"\nissuer = \"https://issuer.test\"\n\n[guard]\nreaml = \"api\"\n",
            dir.join("keys").display()
        ),
    )
    .unwrap();
    let out = portcullis(&["config", "check", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}:3:1: `server.ops_lisen`", path.display())),
        "{err}"
    );
    assert!(err.contains("did you mean `ops_listen`?"), "{err}");
    assert!(err.contains(":10:1: `guard.reaml`"), "{err}");
    assert!(err.contains("did you mean `realm`?"), "{err}");

    let good = dir.join("good.toml");
    fs::write(
        &good,
        format!(
            "[keys]\ndir = \"{}\"\nissuer = \"https://issuer.test\"\n",
            dir.join("keys").display()
        ),
    )
    .unwrap();
    let out = portcullis(&["config", "check", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    // Environment overrides are checked like the file, and named.
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["config", "check", good.to_str().unwrap()])
        .env("PORTCULLIS_SERVER__MAX_BODY_BYTES", "0")
        .env("PORTCULLIS_STORAGE__URL", "mysql://x")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("`server.max_body_bytes`: must be at least 1 (set by the environment variable PORTCULLIS_SERVER__MAX_BODY_BYTES)"), "{err}");
    assert!(err.contains("PORTCULLIS_STORAGE__URL"), "{err}");

    // The key directory is loaded too: an empty one is named.
    fs::create_dir_all(dir.join("empty")).unwrap();
    let empty = dir.join("empty.toml");
    fs::write(
        &empty,
        format!(
            "[keys]\ndir = \"{}\"\nissuer = \"https://issuer.test\"\n",
            dir.join("empty").display()
        ),
    )
    .unwrap();
    let out = portcullis(&["config", "check", empty.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(":2:1: `keys.dir`") && err.contains("holds no private key"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_share_a_rate_limit_exactly() {
    let Some(redis) = redis_url() else { return };
    let upstream = echo_upstream().await;
    let prefix = format!(
        "portcullis-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let extra = format!("redis = \"{redis}\"\nredis_prefix = \"{prefix}\"");
    let (dir_a, dir_b) = (TempDir::new("replica-a"), TempDir::new("replica-b"));
    let (config_a, public_a, ops_a) = setup_with(&dir_a, upstream, "127.0.0.1/32", &extra).await;
    let (config_b, public_b, ops_b) = setup_with(&dir_b, upstream, "127.0.0.1/32", &extra).await;
    let a = start(&dir_a, &config_a, ops_a);
    let b = start(&dir_b, &config_b, ops_b);
    let c = client();
    wait_ready(&a, &c).await;
    wait_ready(&b, &c).await;

    // A limit of 3 per IP, six calls alternating between the replicas.
    let mut admitted = 0;
    for i in 0..6 {
        let public = if i % 2 == 0 { public_a } else { public_b };
        let r = send(&c, get(public, "/per-ip", &[])).await;
        match r.status.as_u16() {
            200 => admitted += 1,
            429 => assert_problem(&r, 429, "rate_limit.exceeded"),
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!(
        admitted, 3,
        "a limit of 3 admitted {admitted} across two replicas"
    );
}

#[test]
fn init_writes_a_config_that_checks_ok_and_never_overwrites() {
    let dir = TempDir::new("init");
    let target = dir.join("site");
    let out = portcullis(&[
        "init",
        "--dir",
        target.to_str().unwrap(),
        "--upstream",
        "http://127.0.0.1:8000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = target.join("portcullis.toml");
    let out = portcullis(&["config", "check", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The starter's pinned decisions come with it and hold.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK (3 pinned decisions hold)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let cases = target.join("cases.toml");
    let out = portcullis(&[
        "test",
        "--config",
        config.to_str().unwrap(),
        cases.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 cases: 3 passed, 0 failed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(target.join("pepper"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let out = portcullis(&["init", "--dir", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
}
