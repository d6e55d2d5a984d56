//! What the upstream learns about the caller, end to end with the real
//! binary: the signed internal token (verified by a real Flask app with
//! PyJWT against the gateway's published JWKS, and by the library's
//! verifier), forgeries refused, the credential hidden unless an upstream
//! opts out, `X-Forwarded-For` from the trusted-proxy view, and the
//! `portcullis snippets` output accepted by real nginx and Caddy.

mod support;

use std::convert::Infallible;
use std::fs;
use std::net::{IpAddr, SocketAddr};
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
use portcullis_core::{
    AccessRequest, Algorithm, IssuerConfig, Key, KeySet, SecretHasher, TokenIssuer, Validation,
    Verifier,
};
use serde_json::Value;
use support::{
    GatewayConfig, HttpClient, PASSWORD, PEPPER, Route, TempDir, Upstream, free_port, get,
    keys_and_pepper, portcullis, send, venv_python,
};

/// A child process killed on drop, its log printed if the test failed.
struct Proc {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ---\n{}",
                self.name,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn spawn(name: &'static str, dir: &TempDir, cmd: &mut Command) -> Proc {
    let log = dir.join(&format!("{name}.log"));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(dir.join(&format!("{name}.err"))).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc {
        name,
        child: Some(child),
        log: dir.join(&format!("{name}.err")),
    }
}

/// Answers with the method, path and headers it received, as JSON.
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
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(json.to_string()))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A client whose connections come from `local`.
fn client_from(local: IpAddr) -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_local_address(Some(local));
    Client::builder(TokioExecutor::new()).build(c)
}

async fn wait_for(client: &HttpClient, addr: SocketAddr, path: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Ok(r)) =
            tokio::time::timeout(Duration::from_secs(1), client.request(get(addr, path, &[]))).await
            && (r.status() == StatusCode::OK || r.status() == StatusCode::UNAUTHORIZED)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{what} not up in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The payload of a compact JWT, unverified.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&portcullis_core::jose::b64_decode(payload.as_bytes()).unwrap()).unwrap()
}

struct Setup {
    config: PathBuf,
    public: SocketAddr,
    ops: SocketAddr,
    pyapp: SocketAddr,
}

/// Keys, a store with alice, and a gateway config: `/py/**` to the PyJWT
/// app (internal token, audience `pyapp`), `/docs/{id}` and `/public` to
/// the echo upstream (internal token, audience `echo`), `/keep` to the echo
/// upstream again with the credential kept and no internal token.
async fn setup(dir: &TempDir, echo: SocketAddr) -> Setup {
    keys_and_pepper(dir);
    let db = dir.join("stores.db");
    let stores = Stores::new(
        Backends::all(Arc::new(SqliteStores::open(&db).await.unwrap())),
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
    let pyapp = free_port();
    let echo_url = format!("http://{echo}");
    let config = GatewayConfig::with_ports(dir, public, ops)
        .server("upstream_read_timeout = \"5s\"")
        .issuer_is_public()
        .keys("audience = [\"api\"]")
        .no_audit()
        .no_log()
        .raw("[internal_token]\nttl = \"30s\"")
        .raw("[guard.client_ip]\ntrusted_proxies = [\"127.0.0.2/32\"]")
        .route(Route::new("py", "/py/**"))
        .route(Route::new("docs", "/docs/{id}").permissions_all(&["docs.read"]))
        .route(Route::new("public", "/public").credentials(&["anonymous"]))
        .route(Route::new("keep", "/keep"))
        .raw("[forward_auth]\nenabled = true")
        .upstream(
            Upstream::new("pyapp", &format!("http://{pyapp}"), &["py"])
                .line("internal_token = true"),
        )
        .upstream(
            Upstream::new("echo", &echo_url, &["docs", "public"]).line("internal_token = true"),
        )
        .upstream(Upstream::new("keeper", &echo_url, &["keep"]).line("strip_credentials = false"));
    let path = config.write_as("portcullis");
    Setup {
        config: path,
        public,
        ops,
        pyapp,
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

/// A token shaped like the gateway's internal token (same kid, issuer,
/// audience, type) but signed by a key that is not the gateway's.
fn forged(issuer: &str, audience: &str, subject: &str) -> String {
    let mut keys = KeySet::new();
    keys.insert(Key::generate(Algorithm::ES256).unwrap().with_kid("k1"))
        .unwrap();
    let mut config = IssuerConfig::new(issuer);
    config.audience = vec![audience.into()];
    let issuer = TokenIssuer::new(keys, config, SecretHasher::new(&[7; 32]).unwrap());
    issuer
        .issue_access(&AccessRequest {
            subject: subject.into(),
            ..AccessRequest::default()
        })
        .unwrap()
        .token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_token_is_verified_by_pyjwt_and_the_library_and_forgeries_are_refused() {
    let dir = TempDir::new("token");
    let echo = echo_upstream().await;
    let s = setup(&dir, echo).await;
    let internal_issuer = format!("http://{}/internal", s.public);
    let _gw = spawn(
        "gateway",
        &dir,
        Command::new(env!("CARGO_BIN_EXE_portcullis")).args([
            "serve",
            "--config",
            s.config.to_str().unwrap(),
        ]),
    );
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/internal_token_app.py");
    let _py = spawn(
        "pyjwt-app",
        &dir,
        Command::new(venv_python())
            .arg(&app)
            .args(["127.0.0.1", &s.pyapp.port().to_string()])
            .env(
                "PORTCULLIS_JWKS_URL",
                format!("http://{}/.well-known/portcullis/jwks.json", s.public),
            )
            .env("PORTCULLIS_ISSUER", &internal_issuer)
            .env("PORTCULLIS_AUDIENCE", "pyapp"),
    );
    let untrusted = client_from("127.0.0.1".parse().unwrap());
    let trusted = client_from("127.0.0.2".parse().unwrap());
    wait_for(&untrusted, s.ops, "/health/ready", "gateway").await;
    wait_for(&untrusted, s.pyapp, "/", "the PyJWT app").await;

    // The JWKS is published: public keys only.
    let r = send(
        &untrusted,
        get(s.public, "/.well-known/portcullis/jwks.json", &[]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/jwk-set+json"));
    let jwks = r.json();
    assert_eq!(jwks["keys"][0]["kid"], "k1", "{}", r.body);
    assert!(jwks["keys"][0].get("d").is_none(), "private key published");
    let post = Request::post(format!(
        "http://{}/.well-known/portcullis/jwks.json",
        s.public
    ))
    .body(Full::new(Bytes::new()))
    .unwrap();
    assert_eq!(
        send(&untrusted, post).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );

    let token = login(&untrusted, s.public).await;
    let subject = claims_of(&token)["sub"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");

    // Through the gateway, the PyJWT app accepts the caller, with the right
    // subject, grants and request id; a spoofed token header is replaced.
    let r = send(
        &untrusted,
        get(
            s.public,
            "/py/whoami",
            &[
                ("authorization", &bearer),
                ("x-portcullis-identity", "spoofed"),
                ("x-request-id", "ignored-from-untrusted"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let who = r.json();
    assert_eq!(who["subject"], subject.as_str(), "{}", r.body);
    assert_eq!(who["permissions"], serde_json::json!(["docs.read"]));
    assert_eq!(who["auth_method"], "jwt");
    assert!(who["session"].is_string(), "{}", r.body);
    assert!(who["request_id"].is_string());
    assert_eq!(who["request_id"], who["request_id_header"]);
    assert_eq!(r.header("x-request-id"), who["request_id"].as_str());

    // Straight to the app: no token, a forged one, the caller's own access
    // token, and a genuine internal token meant for another upstream: 401.
    let r = send(&untrusted, get(s.pyapp, "/whoami", &[])).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let fake = forged(&internal_issuer, "pyapp", "admin");
    let r = send(
        &untrusted,
        get(s.pyapp, "/whoami", &[("x-portcullis-identity", &fake)]),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(
        r.body.contains("Signature verification failed"),
        "{}",
        r.body
    );
    let r = send(
        &untrusted,
        get(s.pyapp, "/whoami", &[("x-portcullis-identity", &token)]),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    // The echo upstream: the token is there, the credential is not.
    let r = send(
        &untrusted,
        get(
            s.public,
            "/docs/1",
            &[
                ("authorization", &bearer),
                ("x-portcullis-identity", "spoofed"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let h = &r.json()["headers"];
    assert!(
        h.get("authorization").is_none(),
        "the credential reached the upstream: {h}"
    );
    let internal = h["x-portcullis-identity"].as_str().unwrap().to_owned();
    assert_ne!(internal, "spoofed");
    let claims = claims_of(&internal);
    assert_eq!(claims["aud"], "echo");
    assert_eq!(claims["iss"], internal_issuer.as_str());
    assert_eq!(claims["request_id"], h["x-request-id"]);
    let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 30, "internal_token.ttl");
    // The library's verifier accepts it against the published JWKS.
    let (keys, _) = KeySet::from_jwks_json(jwks.to_string().as_bytes()).unwrap();
    let verifier = Verifier::new(
        keys,
        Validation::new()
            .with_issuer(&internal_issuer)
            .with_audience("echo")
            .with_require_typ(true),
    );
    let principal = verifier.verify(internal.as_bytes()).unwrap();
    assert_eq!(principal.subject, subject);
    assert_eq!(principal.permissions, ["docs.read"]);

    // An internal token for the echo upstream is refused by the PyJWT app
    // (wrong audience) and by the gateway as a caller's credential (its
    // issuer is not keys.issuer).
    let r = send(
        &untrusted,
        get(s.pyapp, "/whoami", &[("x-portcullis-identity", &internal)]),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.body.to_lowercase().contains("audience"), "{}", r.body);
    let r = send(
        &untrusted,
        get(
            s.public,
            "/docs/1",
            &[("authorization", &format!("Bearer {internal}"))],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    // An anonymous request gets no token; a spoofed one never passes.
    let r = send(
        &untrusted,
        get(s.public, "/public", &[("x-portcullis-identity", "spoofed")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.json()["headers"].get("x-portcullis-identity").is_none());

    // An upstream that keeps the credential gets it, and no token (not
    // even a spoofed one).
    let r = send(
        &untrusted,
        get(
            s.public,
            "/keep",
            &[
                ("authorization", &bearer),
                ("x-portcullis-identity", "spoofed"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let h = &r.json()["headers"];
    assert_eq!(h["authorization"], bearer.as_str());
    assert!(h.get("x-portcullis-identity").is_none(), "{h}");

    // X-Forwarded-For: an untrusted peer's chain and scheme are replaced.
    let r = send(
        &untrusted,
        get(
            s.public,
            "/public",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
            ],
        ),
    )
    .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], s.public.to_string());
    // A trusted proxy's chain gets the proxy appended; its scheme and host stand.
    let r = send(
        &trusted,
        get(
            s.public,
            "/public",
            &[
                ("x-forwarded-for", "198.51.100.7, 10.1.1.1"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "api.example.com"),
            ],
        ),
    )
    .await;
    let h = &r.json()["headers"];
    assert_eq!(
        h["x-forwarded-for"], "198.51.100.7, 10.1.1.1, 127.0.0.2",
        "{h}"
    );
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "api.example.com");

    // Envoy's forward-auth answer carries every identity header, empty when
    // unknown, so ext_authz overrides the client's copies.
    let r = send(
        &trusted,
        get(
            s.public,
            "/_portcullis/auth/envoy/public",
            &[("x-portcullis-subject", "admin")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("x-portcullis-subject"), Some(""));
    assert_eq!(r.header("x-portcullis-roles"), Some(""));
}

/// Runs `program` and returns (success, stdout + stderr).
fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/e2e-env.sh installs it)"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snippets_use_the_configured_names_and_real_nginx_and_caddy_accept_them() {
    let dir = TempDir::new("snippets");
    let echo = echo_upstream().await;
    let s = setup(&dir, echo).await;
    // Custom identity names and forward-auth prefix.
    let mut text = fs::read_to_string(&s.config).unwrap();
    text = text.replace(
        "[forward_auth]\nenabled = true\n",
        "[forward_auth]\nenabled = true\nprefix = \"/_gw\"\n",
    );
    text.push_str("\n[identity]\nsubject = \"X-User-Id\"\ntenant = \"x-org\"\n");
    fs::write(&s.config, text).unwrap();
    let config = s.config.to_str().unwrap();

    let snippet = |proxy: &str| {
        let out = portcullis(&["snippets", proxy, "--config", config, "--listen", "18080"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let nginx = snippet("nginx");
    assert!(
        nginx.contains(&format!("proxy_pass http://{}/_gw/nginx;", s.public)),
        "{nginx}"
    );
    assert!(nginx.contains("auth_request_set $portcullis_x_user_id $upstream_http_x_user_id;"));
    assert!(
        nginx.contains("proxy_set_header X-Org $portcullis_x_org;"),
        "{nginx}"
    );
    assert!(
        nginx.contains(&format!("proxy_pass http://{};", s.pyapp)),
        "{nginx}"
    );
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "pid {pid};\nerror_log {err};\nevents {{}}\nhttp {{\n    access_log off;\n{nginx}\n}}\n",
            pid = dir.join("nginx.pid").display(),
            err = dir.join("nginx-error.log").display(),
        ),
    )
    .unwrap();
    let (ok, out) = run(
        nginx_binary(),
        &[
            "-t",
            "-q",
            "-p",
            dir.0.to_str().unwrap(),
            "-e",
            dir.join("nginx-error.log").to_str().unwrap(),
            "-c",
            conf.to_str().unwrap(),
        ],
    );
    assert!(ok, "nginx -t refused the snippet:\n{out}\n{nginx}");

    let caddy = snippet("caddy");
    assert!(caddy.contains("uri /_gw/caddy"), "{caddy}");
    assert!(caddy.contains("request_header -X-User-Id"), "{caddy}");
    let caddyfile = dir.join("Caddyfile");
    fs::write(&caddyfile, &caddy).unwrap();
    let (ok, out) = run(
        "caddy",
        &[
            "adapt",
            "--adapter",
            "caddyfile",
            "--config",
            caddyfile.to_str().unwrap(),
        ],
    );
    assert!(ok, "caddy adapt refused the snippet:\n{out}\n{caddy}");
    for needle in ["X-User-Id", "X-Org", "/_gw/caddy"] {
        assert!(
            out.contains(needle),
            "{needle} not in the adapted JSON:\n{out}"
        );
    }
    let (ok, out) = run(
        "caddy",
        &[
            "validate",
            "--adapter",
            "caddyfile",
            "--config",
            caddyfile.to_str().unwrap(),
        ],
    );
    assert!(ok, "caddy validate refused the snippet:\n{out}\n{caddy}");

    let traefik = snippet("traefik");
    assert!(traefik.contains(&format!("address: \"http://{}/_gw/traefik\"", s.public)));
    assert!(traefik.contains("- \"X-Org\""), "{traefik}");
    let envoy = snippet("envoy");
    assert!(envoy.contains("path_prefix: /_gw/envoy"), "{envoy}");
    assert!(envoy.contains("- exact: x-user-id"), "{envoy}");

    // A configuration without forward-auth has nothing to point a proxy at.
    let mut text = fs::read_to_string(&s.config).unwrap();
    text = text.replace("enabled = true\nprefix = \"/_gw\"", "prefix = \"/_gw\"");
    fs::write(&s.config, text).unwrap();
    let out = portcullis(&["snippets", "nginx", "--config", config]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forward_auth.enabled"));
}
