//! `[[keys.trusted_issuers]]`: the gateway accepts an outside identity
//! provider's JWTs, checked against the JWKS the provider publishes (here a
//! real HTTP server in the test serving `portcullis keys jwks` output),
//! with the audience required, the key set cached and kept through a
//! provider outage, and bad entries named by `config check`.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::{
    Gateway, GatewayConfig, Route, TempDir, Upstream, client, echo_upstream, free_port, get, send,
};

const IDP: &str = "https://idp.example";

/// A provider's JWKS endpoint: counts fetches; answers 503 while `down`.
struct Jwks {
    addr: SocketAddr,
    fetches: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
}

async fn jwks_server(document: String) -> Jwks {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let (f, d, doc) = (
        Arc::clone(&fetches),
        Arc::clone(&down),
        Bytes::from(document),
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (f, d, doc) = (Arc::clone(&f), Arc::clone(&d), doc.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let (f, d, doc) = (Arc::clone(&f), Arc::clone(&d), doc.clone());
                    async move {
                        f.fetch_add(1, Ordering::SeqCst);
                        let mut r = Response::new(Full::new(doc));
                        if d.load(Ordering::SeqCst) {
                            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Jwks {
        addr,
        fetches,
        down,
    }
}

fn generate(dir: &Path, kid: &str) {
    let out = support::portcullis(&[
        "keys",
        "generate",
        "--alg",
        "RS256",
        "--kid",
        kid,
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn token(key: &Path, iss: &str, aud: &str) -> String {
    let out = support::portcullis(&[
        "token",
        "issue",
        "--key",
        key.to_str().unwrap(),
        "--sub",
        "user:carol",
        "--iss",
        iss,
        "--aud",
        aud,
        "--ttl",
        "10m",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn config(
    dir: &TempDir,
    public: SocketAddr,
    ops: SocketAddr,
    issuer_entry: &str,
    upstream: SocketAddr,
) -> String {
    GatewayConfig::with_ports(dir, public, ops)
        .storage_url("memory")
        .issuer_is_public()
        .keys("audience = [\"gateway\"]")
        .no_audit()
        .no_log()
        .raw(issuer_entry)
        .route(Route::new("api", "/api/**").credentials(&["jwt"]))
        .upstream(Upstream::new(
            "app",
            &format!("http://{upstream}"),
            &["api"],
        ))
        .text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_a_trusted_issuer_verify_against_its_published_keys() {
    let dir = TempDir::new("trusted-issuers");
    let idp_keys = dir.join("idp");
    generate(&idp_keys, "idp1");
    let other_keys = dir.join("other");
    generate(&other_keys, "idp1"); // same kid, another key: a forgery
    let jwks = support::portcullis(&["keys", "jwks", idp_keys.to_str().unwrap()]);
    assert!(jwks.status.success());
    let server = jwks_server(String::from_utf8(jwks.stdout).unwrap()).await;
    let upstream = echo_upstream().await;

    let (public, ops) = (free_port(), free_port());
    let entry = format!(
        r#"[[keys.trusted_issuers]]
issuer = "{IDP}"
jwks_url = "http://{jwks}/jwks.json"
audience = ["orders"]
allow_http = true
ttl = "1s"
max_stale = "10m"
refetch_interval = "1s""#,
        jwks = server.addr
    );
    let gateway = Gateway::start(
        &dir,
        "gw",
        &config(&dir, public, ops, &entry, upstream),
        public,
        ops,
    );
    let c = client();
    gateway.wait_ready(&c).await;

    let key = idp_keys.join("idp1.pem");
    let good = token(&key, IDP, "orders");
    let call = |t: String| {
        let c = c.clone();
        async move {
            send(
                &c,
                get(
                    public,
                    "/api/orders",
                    &[("authorization", &format!("Bearer {t}"))],
                ),
            )
            .await
        }
    };

    // The provider's token passes; the upstream is reached.
    let r = call(good.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["path"], "/api/orders");

    // Its key set is cached, not fetched per request.
    for _ in 0..20 {
        assert_eq!(call(good.clone()).await.status, StatusCode::OK);
    }
    assert!(
        server.fetches.load(Ordering::SeqCst) <= 2,
        "{} fetches for 21 requests",
        server.fetches.load(Ordering::SeqCst)
    );

    // Another API's token of the same provider, a forged signature, an
    // issuer nobody trusts: refused.
    let r = call(token(&key, IDP, "billing")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(
        r.code().as_deref(),
        Some("auth.invalid_audience"),
        "{}",
        r.body
    );
    let r = call(token(&other_keys.join("idp1.pem"), IDP, "orders")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(
        r.code().as_deref(),
        Some("auth.invalid_signature"),
        "{}",
        r.body
    );
    // (An issuer nobody trusts has no key set that knows its kid.)
    let r = call(token(&key, "https://elsewhere.example", "orders")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(r.code().as_deref(), Some("auth.unknown_key"), "{}", r.body);

    // The provider goes down: past the key set's ttl the last good set
    // still serves (within max_stale), so its users are not locked out.
    server.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let before = server.fetches.load(Ordering::SeqCst);
    let r = call(good.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        server.fetches.load(Ordering::SeqCst) > before,
        "a stale key set is refreshed in the background"
    );

    // The fetches are counted on /metrics.
    let metrics = send(&c, get(ops, "/metrics", &[])).await.body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portcullis_jwks_fetches_total")),
        "{metrics}"
    );
}

#[test]
fn config_check_names_the_trusted_issuer_key_at_fault() {
    let dir = TempDir::new("trusted-issuers-check");
    let (public, ops, up) = (free_port(), free_port(), free_port());
    let check = |name: &str, entry: &str| {
        let path = dir.join(&format!("{name}.toml"));
        std::fs::write(&path, config(&dir, public, ops, entry, up)).unwrap();
        let out = support::portcullis(&["config", "check", path.to_str().unwrap()]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, err) = check(
        "no-audience",
        &format!("[[keys.trusted_issuers]]\nissuer = \"{IDP}\""),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("keys.trusted_issuers[0].audience"), "{err}");

    let (code, err) = check(
        "plain-http",
        &format!(
            "[[keys.trusted_issuers]]\nissuer = \"{IDP}\"\njwks_url = \"http://idp.example/jwks\"\naudience = [\"orders\"]"
        ),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("keys.trusted_issuers[0].jwks_url"), "{err}");

    let (code, err) = check(
        "typo",
        &format!("[[keys.trusted_issuers]]\nissuer = \"{IDP}\"\naudiences = [\"orders\"]"),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("audiences") && err.contains("audience"),
        "{err}"
    );

    let (code, err) = check(
        "ok",
        &format!("[[keys.trusted_issuers]]\nissuer = \"{IDP}\"\naudience = [\"orders\"]"),
    );
    assert_eq!(code, Some(0), "{err}");
}

/// A provider that accepts the connection and never answers: a request
/// with its token ends within the 5 s fetch budget as 503
/// `auth.jwks_unavailable`, and the gateway's own tokens keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_provider_costs_a_request_the_fetch_budget_not_forever() {
    let dir = TempDir::new("trusted-issuers-hung");
    let idp_keys = dir.join("idp");
    generate(&idp_keys, "idp1");
    // Accepts and holds every connection without reading or answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let upstream = echo_upstream().await;
    let (public, ops) = (free_port(), free_port());
    let entry = format!(
        "[[keys.trusted_issuers]]\nissuer = \"{IDP}\"\njwks_url = \"http://{hung}/jwks.json\"\naudience = [\"orders\"]\nallow_http = true"
    );
    let gateway = Gateway::start(
        &dir,
        "gw",
        &config(&dir, public, ops, &entry, upstream),
        public,
        ops,
    );
    let c = client();
    gateway.wait_ready(&c).await;

    let remote = token(&idp_keys.join("idp1.pem"), IDP, "orders");
    let started = std::time::Instant::now();
    let r = send(
        &c,
        get(
            public,
            "/api/orders",
            &[("authorization", &format!("Bearer {remote}"))],
        ),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(
        r.code().as_deref(),
        Some("auth.jwks_unavailable"),
        "{}",
        r.body
    );
    assert!(
        waited < std::time::Duration::from_secs(8),
        "waited {waited:?}"
    );

    // The gateway's own keys do not depend on the provider.
    let own = token(
        &dir.join("keys").join("k1.pem"),
        &format!("http://{public}"),
        "gateway",
    );
    let r = send(
        &c,
        get(
            public,
            "/api/orders",
            &[("authorization", &format!("Bearer {own}"))],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}
