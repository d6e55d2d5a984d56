//! Logins, password resets and console sign-ins are regulated, outside in
//! against the real binary: failures per client IP and per (account, IP)
//! lead to 429 `auth.too_many_attempts` with `Retry-After`, before any
//! password is hashed, the same for real and unknown accounts; a throttled
//! IP does not lock the account out for its owner elsewhere; the state is
//! shared by replicas on PostgreSQL + Redis; every refusal is audited.
//!
//! Client addresses come from `X-Forwarded-For`, believed because the test
//! client connects from 127.0.0.1, the configured trusted proxy.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use portcullis::stores::postgres::PostgresStores;
use portcullis::stores::{Backends, NewUser, Stores, StoresConfig};
use portcullis_core::SecretHasher;
use serde_json::{Value, json};
use support::*;

/// A gateway on SQLite with an audit log and an admin key.
struct Single {
    _dir: TempDir,
    gateway: Gateway,
    client: HttpClient,
    admin_key: String,
}

fn single_config(dir: &TempDir, public: SocketAddr, ops: SocketAddr, extra: &str) -> GatewayConfig {
    GatewayConfig::with_ports(dir, public, ops)
        .issuer_is_public()
        .audit("flush_interval = \"50ms\"")
        .raw("[guard.client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]")
        .route(Route::new("open", "/open/**").credentials(&["anonymous"]))
        .upstream(Upstream::new("echo", "http://127.0.0.1:9", &["open"]))
        .raw(extra)
}

async fn single(name: &str, extra: &str) -> Single {
    let dir = TempDir::new(name);
    let (public, ops) = (free_port(), free_port());
    let config = single_config(&dir, public, ops, extra);
    let admin_key = bootstrap_admin(&config.write());
    let gateway = config.start(&dir, "gateway");
    let client = client();
    gateway.wait_ready(&client).await;
    Single {
        _dir: dir,
        gateway,
        client,
        admin_key,
    }
}

impl Single {
    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let bearer = format!("Bearer {}", self.admin_key);
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.gateway.ops))
            .header("authorization", bearer);
        let body = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                bytes::Bytes::from(v.to_string())
            }
            None => bytes::Bytes::new(),
        };
        send(
            &self.client,
            b.body(http_body_util::Full::new(body)).unwrap(),
        )
        .await
    }

    async fn create_user(&self, username: &str) {
        let r = self
            .admin(
                "POST",
                "/admin/users",
                Some(json!({"username": username, "password": PASSWORD})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }

    async fn login(&self, from: &str, username: &str, password: &str) -> Reply {
        login_at(&self.client, self.gateway.public, from, username, password).await
    }

    /// The events with `code`, waiting up to 10 s for at least `least`
    /// (the audit writer batches).
    async fn audit_with_code(&self, code: &str, least: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self
                .admin("GET", &format!("/admin/audit?code={code}&limit=500"), None)
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            let events = r.json()["events"].as_array().cloned().unwrap_or_default();
            if events.len() >= least || Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The gateway's password-check counter (`/metrics`).
    async fn password_checks(&self) -> u64 {
        metric(
            &self.client,
            self.gateway.ops,
            "portcullis_password_checks_total",
        )
        .await
    }
}

async fn metric(client: &HttpClient, ops: SocketAddr, name: &str) -> u64 {
    let text = send(client, get(ops, "/metrics", &[])).await.body;
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

async fn login_at(
    client: &HttpClient,
    public: SocketAddr,
    from: &str,
    username: &str,
    password: &str,
) -> Reply {
    let body = json!({"username": username, "password": password}).to_string();
    send(
        client,
        post(
            public,
            "/auth/login",
            &[
                ("content-type", "application/json"),
                ("x-forwarded-for", from),
            ],
            &body,
        ),
    )
    .await
}

/// A throttled answer: 429 `auth.too_many_attempts` with a positive
/// `Retry-After`; returns the body without its request id.
fn throttled(r: &Reply) -> Value {
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(
        r.code().as_deref(),
        Some("auth.too_many_attempts"),
        "{}",
        r.body
    );
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a numeric Retry-After");
    assert!(retry >= 1, "Retry-After {retry}");
    let mut body = r.json();
    body.as_object_mut().unwrap().remove("request_id");
    body
}

/// The index of the first 429 in `replies`; every reply before it is 401
/// `auth.invalid_credentials`.
fn first_throttled(replies: &[Reply]) -> usize {
    first_throttled_after(
        replies,
        StatusCode::UNAUTHORIZED,
        "auth.invalid_credentials",
    )
}

/// The index of the first 429 in `replies`; every reply before it is
/// `status` with `code`, every one from it on a throttled answer.
fn first_throttled_after(replies: &[Reply], status: StatusCode, code: &str) -> usize {
    let at = replies
        .iter()
        .position(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .expect("some attempt throttled");
    for r in &replies[..at] {
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.code().as_deref(), Some(code), "{}", r.body);
    }
    for r in &replies[at..] {
        throttled(r);
    }
    at
}

/// 40 wrong passwords from one IP for one account, and 40 over 20 accounts
/// from another, are refused (429, Retry-After) well before the 30th,
/// without hashing once throttled, the same for real and unknown accounts;
/// meanwhile the right password from another client IP logs in, and every
/// refusal is audited as `login.throttled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_from_one_ip_is_throttled_while_the_owner_logs_in_elsewhere() {
    let g = single("regulation_login", "").await;
    for name in ["alice", "bob", "u3", "u7"] {
        g.create_user(name).await;
    }

    // One account from one IP: the 6th attempt is refused (default 5).
    let mut replies = Vec::new();
    for _ in 0..40 {
        replies.push(g.login("203.0.113.1", "alice", "wrong").await);
    }
    let at = first_throttled(&replies);
    assert!(at < 29, "throttled only at attempt {}", at + 1);
    assert_eq!(at, 5, "the default is 5 failures per account and IP");
    // The right password from the throttled IP is refused too, unchecked.
    let checks = g.password_checks().await;
    throttled(&g.login("203.0.113.1", "alice", PASSWORD).await);
    assert_eq!(
        g.password_checks().await,
        checks,
        "no hashing once throttled"
    );

    // Identical for an account that does not exist.
    let mut ghost = Vec::new();
    for _ in 0..6 {
        ghost.push(g.login("203.0.113.2", "ghost", "wrong").await);
    }
    assert_eq!(first_throttled(&ghost), 5);
    assert_eq!(throttled(&ghost[5]), throttled(&replies[5]));
    assert_eq!(
        ghost[5].header("retry-after"),
        replies[5].header("retry-after")
    );
    let mut names: Vec<_> = ghost[5].headers.keys().map(|k| k.as_str()).collect();
    let mut real: Vec<_> = replies[5].headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    real.sort_unstable();
    assert_eq!(names, real);

    // The owner, from another address, is not locked out.
    let ok = g.login("198.51.100.7", "alice", PASSWORD).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);

    // Many accounts from one IP: refused after 20 failures (default), well
    // before the 30th, whether the accounts exist or not.
    let mut replies = Vec::new();
    for i in 0..40 {
        let name = format!("u{}", i % 20);
        replies.push(g.login("203.0.113.3", &name, "wrong").await);
    }
    let at = first_throttled(&replies);
    assert!(at < 29, "throttled only at attempt {}", at + 1);
    throttled(&g.login("203.0.113.3", "bob", PASSWORD).await);
    let ok = g.login("198.51.100.8", "bob", PASSWORD).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);

    // Audited: each refusal is a `login.throttled` event with the client.
    let refused = 35 + 1 + 1 + 20 + 1;
    let events = g.audit_with_code("auth.too_many_attempts", refused).await;
    assert_eq!(events.len(), refused, "{events:?}");
    assert!(events.iter().all(|e| e["kind"] == "login.throttled"));
    assert!(
        events
            .iter()
            .any(|e| e["client_ip"] == "203.0.113.1" && e["route"] == "/login")
    );
}

/// 100 bogus logins at once from one IP cost at most the IP's 20 password
/// checks (the rest are refused 429 before hashing), so they cannot crowd
/// the hashing slots; the owner then logs in from another address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_flood_from_one_ip_hashes_at_most_its_budget() {
    let g = Arc::new(single("regulation_flood", "").await);
    g.create_user("alice").await;
    let checks = g.password_checks().await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let g = Arc::clone(&g);
        tasks.push(tokio::spawn(async move {
            g.login("203.0.113.60", &format!("user{}", i % 7), "wrong")
                .await
        }));
    }
    let mut refused = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::TOO_MANY_REQUESTS => {
                throttled(&r);
                refused += 1;
            }
            // Past 50 failures `auth_failures` bans the address (by
            // default): refused before the regulation is asked.
            StatusCode::FORBIDDEN => {
                assert_eq!(r.code().as_deref(), Some("anomaly.banned"), "{}", r.body);
                refused += 1;
            }
            // Checked and wrong, or (a loaded machine) no hashing slot in time.
            StatusCode::UNAUTHORIZED | StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert!(refused >= 80, "only {refused} of 100 refused");
    let hashed = g.password_checks().await - checks;
    assert!(hashed <= 20, "{hashed} password checks for one IP");
    let ok = g.login("198.51.100.60", "alice", PASSWORD).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}

/// Forged reset tokens from one IP are throttled like logins (20 per IP by
/// default), and share the IP's budget with its logins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_token_guessing_is_throttled() {
    let g = single("regulation_reset", "").await;
    let mut replies = Vec::new();
    for i in 0..30 {
        let body = json!({"token": format!("prt_forged{i:04}"), "password": PASSWORD}).to_string();
        replies.push(
            send(
                &g.client,
                post(
                    g.gateway.public,
                    "/auth/password/reset",
                    &[
                        ("content-type", "application/json"),
                        ("x-forwarded-for", "203.0.113.9"),
                    ],
                    &body,
                ),
            )
            .await,
        );
    }
    let at = first_throttled(&replies);
    assert_eq!(at, 20, "20 failures per IP by default");
    // The same IP's logins are throttled as well.
    throttled(&g.login("203.0.113.9", "anyone", "x").await);
    let events = g.audit_with_code("auth.too_many_attempts", 11).await;
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "login.throttled" && e["route"] == "/password/reset"),
        "{events:?}"
    );
}

/// Console sign-ins with bad keys are audited (`login.failed`) and
/// throttled per client IP; the right key from elsewhere still signs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_in_failures_are_audited_and_throttled() {
    let g = single(
        "regulation_console",
        "\n[token_service.regulation]\nmax_failures_per_ip = 4\n",
    )
    .await;
    let origin = format!("http://{}", g.gateway.ops);
    let sign_in = |key: String, from: &'static str| {
        let body = json!({"key": key}).to_string();
        let req = post(
            g.gateway.ops,
            "/console/session",
            &[
                ("content-type", "application/json"),
                ("origin", &origin),
                ("x-forwarded-for", from),
            ],
            &body,
        );
        send(&g.client, req)
    };
    let mut replies = Vec::new();
    for i in 0..8 {
        replies.push(sign_in(format!("pck_guess{i}"), "203.0.113.20").await);
    }
    let at = replies
        .iter()
        .position(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .expect("throttled");
    assert_eq!(at, 4);
    for r in &replies[..at] {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    for r in &replies[at..] {
        throttled(r);
    }
    // Even the right key is refused from there; from elsewhere it works.
    throttled(&sign_in(g.admin_key.clone(), "203.0.113.20").await);
    let ok = sign_in(g.admin_key.clone(), "198.51.100.20").await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);

    let failed = g.audit_with_code("auth.invalid_api_key", 4).await;
    let failed: Vec<_> = failed
        .iter()
        .filter(|e| e["route"] == "/console/session")
        .collect();
    assert_eq!(failed.len(), 4, "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|e| e["kind"] == "login.failed" && e["client_ip"] == "203.0.113.20")
    );
    let refused = g.audit_with_code("auth.too_many_attempts", 5).await;
    assert_eq!(
        refused
            .iter()
            .filter(|e| e["kind"] == "login.throttled" && e["route"] == "/console/session")
            .count(),
        5
    );
}

/// A credential-stuffing source (one IP, many accounts) that keeps going
/// while throttled is banned by the `distinct_accounts` detector (default
/// 30 accounts in 5 minutes): 403 `anomaly.banned`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_stuffing_source_is_banned() {
    let g = single("regulation_stuffing", "").await;
    let mut statuses = Vec::new();
    for i in 0..45 {
        let r = g
            .login("203.0.113.30", &format!("victim{i}"), "hunter2")
            .await;
        statuses.push(r.status.as_u16());
        if r.status == StatusCode::FORBIDDEN {
            assert_eq!(r.code().as_deref(), Some("anomaly.banned"), "{}", r.body);
            break;
        }
    }
    let banned_at = statuses
        .iter()
        .position(|s| *s == 403)
        .unwrap_or_else(|| panic!("never banned: {statuses:?}"));
    assert_eq!(banned_at, 30, "{statuses:?}");
    assert!(statuses[20..30].iter().all(|s| *s == 429), "{statuses:?}");
    // Banned everywhere the guard looks, not only at login.
    let r = send(
        &g.client,
        get(
            g.gateway.public,
            "/open/x",
            &[("x-forwarded-for", "203.0.113.30")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
}

/// The starter configuration of `portcullis init`, untouched but for its
/// ports: a source trying many accounts from one address is banned (by the
/// default `distinct_accounts` detector, after the regulation throttled
/// it), and a user logging in from another address gets in. The two
/// clients really come from two addresses (127.0.0.1 and 127.0.0.2): the
/// starter trusts no forwarding header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untuned_init_gateway_bans_credential_stuffing_and_serves_others() {
    let dir = TempDir::new("regulation_init");
    let (public, ops) = (free_port(), free_port());
    let out = portcullis(&[
        "init",
        "--dir",
        dir.join("").to_str().unwrap(),
        "--listen",
        &public.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("portcullis.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("127.0.0.1:9090", &ops.to_string());
    std::fs::write(&path, &text).unwrap();
    let admin_key = bootstrap_admin(&path);
    let gateway = Gateway::start(&dir, "gateway", &text, public, ops);
    let attacker = client();
    gateway.wait_ready(&attacker).await;
    let r = send(
        &attacker,
        http::Request::post(format!("http://{ops}/admin/users"))
            .header("authorization", format!("Bearer {admin_key}"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                json!({"username": "alice", "password": PASSWORD}).to_string(),
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // One address, a new account each time.
    let mut statuses = Vec::new();
    for i in 0..45 {
        let r = login_at(
            &attacker,
            public,
            "198.51.100.99",
            &format!("victim{i}"),
            "hunter2",
        )
        .await;
        statuses.push(r.status.as_u16());
        if r.status == StatusCode::FORBIDDEN {
            assert_eq!(r.code().as_deref(), Some("anomaly.banned"), "{}", r.body);
            break;
        }
    }
    assert!(statuses.contains(&429), "never throttled: {statuses:?}");
    assert_eq!(statuses.last(), Some(&403), "never banned: {statuses:?}");
    // Banned: even the right password from there is refused.
    let r = login_at(&attacker, public, "198.51.100.99", "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    // Alice, from another address, logs in.
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(Some("127.0.0.2".parse().unwrap()));
    let neighbour: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let r = login_at(&neighbour, public, "198.51.100.99", "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// `auth_failures` bans by default (50 in a minute, for 5 minutes): an
/// address spraying forged tokens at the guard is banned on its 51st
/// request, on every route; an address whose client keeps sending a revoked
/// token (a tab polling after logout) is refused 401 each time and never
/// banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_ban_the_address_but_stale_tokens_do_not() {
    let extra = r#"
[[guard.routes]]
name = "api"
path = "/api/**"
credentials = ["jwt", "api_key"]

[[upstreams]]
name = "api"
url = "http://127.0.0.1:9"
routes = ["api"]
"#;
    let g = single("regulation_auth_failures", extra).await;
    let api = |from: &str, token: &str| {
        get(
            g.gateway.public,
            "/api/data",
            &[
                ("x-forwarded-for", from),
                ("authorization", &format!("Bearer {token}")),
            ],
        )
    };

    // A revoked token, 60 times from one address: 401 every time.
    g.create_user("alice").await;
    let r = g.login("198.51.100.70", "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let access = r.json()["access_token"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {access}");
    let r = send(
        &g.client,
        post(
            g.gateway.public,
            "/auth/logout",
            &[
                ("authorization", &auth),
                ("x-forwarded-for", "198.51.100.70"),
            ],
            "",
        ),
    )
    .await;
    assert!(r.status.is_success(), "{}", r.body);
    for _ in 0..60 {
        let r = send(&g.client, api("198.51.100.70", &access)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
        assert_eq!(
            r.code().as_deref(),
            Some("auth.token_revoked"),
            "{}",
            r.body
        );
    }

    // Forged tokens from another: banned once 50 failed.
    let mut statuses = Vec::new();
    for i in 0..60 {
        let r = send(&g.client, api("203.0.113.70", &format!("forged.token.{i}"))).await;
        statuses.push(r.status.as_u16());
        if r.status == StatusCode::FORBIDDEN {
            assert_eq!(r.code().as_deref(), Some("anomaly.banned"), "{}", r.body);
            break;
        }
    }
    let banned_at = statuses
        .iter()
        .position(|s| *s == 403)
        .unwrap_or_else(|| panic!("never banned: {statuses:?}"));
    assert_eq!(banned_at, 50, "{statuses:?}");
    assert!(statuses[..50].iter().all(|s| *s == 401), "{statuses:?}");
    // Banned on every route, the anonymous one too; the other address is not.
    let open = |from: &str| get(g.gateway.public, "/open/x", &[("x-forwarded-for", from)]);
    let r = send(&g.client, open("203.0.113.70")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = send(&g.client, open("198.51.100.70")).await;
    assert_ne!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let bans = g.admin("GET", "/admin/bans", None).await;
    let bans = bans.json()["bans"].as_array().cloned().unwrap_or_default();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0]["target"], "ip:203.0.113.70", "{bans:?}");
    assert_eq!(bans[0]["reason"], "auth_failures", "{bans:?}");
}

/// Two replicas on one PostgreSQL and one Redis: a limit of N failures is
/// N across both, even for attempts sent to both at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_regulation_on_postgres_and_redis() {
    let Some(redis) = redis_url() else { return };
    let prefix = unique_name("pcx_gw_regulation");
    let _cleanup = RedisPrefix {
        urls: vec![redis.clone()],
        prefix: prefix.clone(),
    };
    let shared = format!("redis = \"{redis}\"\nredis_prefix = \"{prefix}\"");
    replicas_share_the_regulation("regulation_replicas", &shared).await;
}

/// Two replicas on one PostgreSQL and no Redis: the state is in the
/// database (table `regulation`), so the limit is still N across both,
/// and the rows of a success are given back there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_regulation_on_postgres_alone() {
    let db = replicas_share_the_regulation("regulation_pg_replicas", "").await;
    let Some(db) = db else { return };
    // The state is the database's: the refused client's IP row is there
    // and locked; the owner's successful (account, IP) pair left no row.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let locked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM regulation WHERE key = 'login:acct:203.0.113.40:alice' \
         AND locked_until > (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(locked, 1);
    let owner: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM regulation WHERE key = 'login:acct:198.51.100.40:alice'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(owner, 0);
    pool.close().await;
}

/// `shared`: the `[storage]` lines that make the state shared besides
/// `url` (none: PostgreSQL alone). Returns the database (`None`: skipped).
async fn replicas_share_the_regulation(name: &str, shared: &str) -> Option<FreshDatabase> {
    let db = FreshDatabase::create(name).await?;
    let dir = TempDir::new(name);
    const N: usize = 4;
    let (publics, gateways) = two_replicas(&dir, &db.url, shared, N).await;
    let c = client();
    // A burst on a fresh replica opens its pool's connections inside the
    // regulation's call budget, which a loaded machine can exceed: those
    // attempts are then answered locally, by design, and the count is no
    // longer the shared one. Open them first, with attempts from other
    // addresses at other accounts.
    let mut warm = Vec::new();
    for i in 0..6 * N {
        let (c, public) = (c.clone(), publics[i % 2]);
        warm.push(tokio::spawn(async move {
            let from = format!("192.0.2.{i}");
            login_at(&c, public, &from, &format!("warm{i}"), "wrong").await
        }));
    }
    for t in warm {
        t.await.unwrap();
    }
    let fallbacks_before = [
        regulation_fallbacks(&c, gateways[0].ops).await,
        regulation_fallbacks(&c, gateways[1].ops).await,
    ];

    // 3N wrong passwords at once, alternating between the replicas:
    // exactly N are checked (401), the rest refused (429).
    let mut tasks = Vec::new();
    for i in 0..3 * N {
        let (c, public) = (c.clone(), publics[i % 2]);
        tasks.push(tokio::spawn(async move {
            login_at(&c, public, "203.0.113.40", "alice", "wrong").await
        }));
    }
    let (mut checked, mut refused) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                throttled(&r);
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    let fallbacks = [
        regulation_fallbacks(&c, gateways[0].ops).await - fallbacks_before[0],
        regulation_fallbacks(&c, gateways[1].ops).await - fallbacks_before[1],
    ];
    // Exact while the store answers within its budget: a key answered
    // locally (a fallback) is not shared, and says why if this fails.
    assert_eq!(
        (checked, refused),
        (N, 2 * N),
        "keys regulated without the shared store, per replica: {fallbacks:?}"
    );
    // Both replicas now refuse that client, right password or not...
    for public in publics {
        throttled(&login_at(&c, public, "203.0.113.40", "alice", PASSWORD).await);
    }
    // ...and both let the owner in from elsewhere.
    for public in publics {
        let r = login_at(&c, public, "198.51.100.40", "alice", PASSWORD).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    drop(gateways);
    Some(db)
}

/// Keys regulated in a gateway's own memory because its shared store
/// failed, hung or was skipped by the open breaker (`/metrics`).
async fn regulation_fallbacks(client: &HttpClient, ops: SocketAddr) -> u64 {
    metric(client, ops, "portcullis_regulation_fallback_total").await
}

/// Two ready gateway replicas on the PostgreSQL database at `url` (its
/// stores, with the user `alice` created) with `shared` as further
/// `[storage]` lines, regulating at `per_account` failures per account and
/// IP (100 per IP). Their public addresses, and the replicas.
async fn two_replicas(
    dir: &TempDir,
    url: &str,
    shared: &str,
    per_account: usize,
) -> ([SocketAddr; 2], Vec<Gateway>) {
    keys_and_pepper(dir);
    let pg = Arc::new(PostgresStores::connect(url, 2).await.unwrap());
    let stores = Stores::new(
        Backends::all(pg),
        StoresConfig::new(SecretHasher::new(&PEPPER).unwrap()),
    )
    .unwrap();
    stores
        .create_user(&NewUser {
            username: "alice".into(),
            password: Some(PASSWORD.into()),
            ..NewUser::default()
        })
        .await
        .unwrap();
    let publics = [free_port(), free_port()];
    let c = client();
    let mut gateways = Vec::new();
    for (i, public) in publics.iter().enumerate() {
        let ops = free_port();
        let config = GatewayConfig::with_ports(dir, *public, ops)
            .storage_url(url)
            .storage(shared)
            .issuer(&format!("http://{}", publics[0]))
            .no_audit()
            .raw("[guard.client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]")
            .raw(&format!(
                "[token_service.regulation]\nmax_failures_per_account = {per_account}\n\
                 max_failures_per_ip = 100"
            ))
            .route(Route::new("open", "/open/**").credentials(&["anonymous"]))
            .upstream(Upstream::new("echo", "http://127.0.0.1:9", &["open"]));
        gateways.push(config.start(dir, &format!("replica{i}")));
    }
    for g in &gateways {
        g.wait_ready(&c).await;
    }
    (publics, gateways)
}

/// A Redis that hangs (SIGSTOP) costs the regulation its sharing, not its
/// protection: the breaker opens and this replica regulates locally, so
/// guessing is still refused, and logins still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_falls_back_to_local_regulation() {
    let redis = OwnRedis::start();
    let dir = TempDir::new("regulation_hung_redis");
    let (public, ops) = (free_port(), free_port());
    let extra = "\n[token_service.regulation]\nmax_failures_per_account = 3\n";
    let config = single_config(&dir, public, ops, extra)
        .storage(&format!("redis = {}", toml_str(&redis.url())))
        .storage("redis_prefix = \"pcx_hung\"");
    let admin_key = bootstrap_admin(&config.write());
    let gateway = config.start(&dir, "gateway");
    let c = client();
    gateway.wait_ready(&c).await;
    let g = Single {
        _dir: dir,
        gateway,
        client: c,
        admin_key,
    };
    g.create_user("alice").await;

    redis.pause();
    let mut replies = Vec::new();
    for _ in 0..6 {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            g.login("203.0.113.50", "alice", "wrong"),
        )
        .await
        .expect("an answer while Redis hangs");
        replies.push(r);
    }
    assert_eq!(first_throttled(&replies), 3);
    redis.resume();
    let ok = g.login("198.51.100.50", "alice", PASSWORD).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}

/// The token service's budget for one store call on the login path
/// (`portcullis::service::DEFAULT_STORE_BUDGET`; not configurable in the
/// gateway).
const STORE_BUDGET: Duration = Duration::from_secs(1);
/// The budget of one regulation call on PostgreSQL; an attempt pays it at
/// most once.
const REGULATION_BUDGET: Duration = Duration::from_millis(250);
/// Slack for a loaded test machine.
const SLACK: Duration = Duration::from_secs(1);

/// Two replicas share the regulation on PostgreSQL alone, and PostgreSQL
/// hangs (SIGSTOP of a private server: connections stay open, nothing
/// answers). The sharing is lost, the protection is not: every login is
/// answered within the store budget plus one regulation budget (and
/// slack), the guessing client is refused 429 `auth.too_many_attempts`
/// from this replica's own counts after N attempts (before that, 503
/// `backend.unavailable`: the user store is down too), every key of every
/// attempt counted as a fallback. Once the server resumes, the replicas go
/// back to the database: N failures across both refuse a new client, with
/// no fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_postgres_falls_back_to_local_regulation_and_sharing_resumes() {
    let dir = TempDir::new("regulation_hung_pg");
    // Declared first, dropped last: the replicas die before it; a test
    // failing while it is paused still stops and removes it (resumed first).
    let Some(pg) = OwnPostgres::start(dir.join("pg")) else {
        return;
    };
    const N: usize = 3;
    let (publics, gateways) = two_replicas(&dir, &pg.url(), "", N).await;
    let ops = [gateways[0].ops, gateways[1].ops];
    let c = client();
    // Shared before the hang: a failure on one replica is a row in the table.
    let r = login_at(&c, publics[0], "198.51.100.50", "alice", "wrong").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(regulation_fallbacks(&c, ops[0]).await, 0);

    pg.pause();
    let bound = STORE_BUDGET + REGULATION_BUDGET + SLACK;
    let mut replies = Vec::new();
    let mut slowest = Duration::ZERO;
    for password in ["wrong"; 2 * N].into_iter().chain([PASSWORD]) {
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            login_at(&c, publics[0], "203.0.113.50", "alice", password),
        )
        .await
        .expect("every login is answered while PostgreSQL hangs");
        slowest = slowest.max(started.elapsed());
        replies.push(r);
    }
    let attempts = replies.len() as u64;
    eprintln!("regulation: slowest login while PostgreSQL hung: {slowest:?}");
    assert!(
        slowest < bound,
        "a login took {slowest:?} while PostgreSQL hung (bound {bound:?})"
    );
    assert_eq!(
        first_throttled_after(
            &replies,
            StatusCode::SERVICE_UNAVAILABLE,
            "backend.unavailable"
        ),
        N,
        "regulated from this replica's own counts"
    );
    // Each attempt's IP and (account, IP) keys, none from the database.
    assert_eq!(regulation_fallbacks(&c, ops[0]).await, 2 * attempts);
    assert_eq!(regulation_fallbacks(&c, ops[1]).await, 0);

    pg.resume();
    // Each replica's breaker closes at its next probe (every 250 ms): wait
    // until an attempt on it no longer falls back.
    for (i, public) in publics.into_iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(15);
        for n in 0.. {
            let before = regulation_fallbacks(&c, ops[i]).await;
            let from = format!("198.51.100.6{i}");
            let r = login_at(&c, public, &from, &format!("nobody{n}"), "wrong").await;
            if regulation_fallbacks(&c, ops[i]).await == before {
                assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} never went back to PostgreSQL"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Shared again: N failures alternating between the replicas, then both
    // refuse, and nothing fell back.
    let before = [
        regulation_fallbacks(&c, ops[0]).await,
        regulation_fallbacks(&c, ops[1]).await,
    ];
    let mut replies = Vec::new();
    for i in 0..2 * N {
        replies.push(login_at(&c, publics[i % 2], "203.0.113.51", "alice", "wrong").await);
    }
    assert_eq!(first_throttled(&replies), N);
    let after = [
        regulation_fallbacks(&c, ops[0]).await,
        regulation_fallbacks(&c, ops[1]).await,
    ];
    assert_eq!(after, before, "regulated in the database again");
    let db = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let locked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM regulation WHERE key = 'login:acct:203.0.113.51:alice' \
         AND locked_until > (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(locked, 1);
    db.close().await;
    // The owner logs in from elsewhere on both.
    for public in publics {
        let r = login_at(&c, public, "198.51.100.70", "alice", PASSWORD).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    drop(gateways);
}

/// The (argon2id, bcrypt) password verifications a gateway ran so far.
async fn verifications(client: &HttpClient, ops: SocketAddr) -> (u64, u64) {
    let name = "portcullis_password_verifications_total";
    (
        metric(client, ops, &format!("{name}{{kind=\"argon2id\"}}")).await,
        metric(client, ops, &format!("{name}{{kind=\"bcrypt\"}}")).await,
    )
}

/// Which hashers one failed login ran: (argon2id, bcrypt) verifications.
async fn hashers_of(g: &Single, from: &str, username: &str) -> (u64, u64) {
    let before = verifications(&g.client, g.gateway.ops).await;
    let r = g.login(from, username, "not the password").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let after = verifications(&g.client, g.gateway.ops).await;
    (after.0 - before.0, after.1 - before.1)
}

/// Accounts imported with a bcrypt hash cannot be told from unknown names
/// by what a failed login costs, in a gateway started after the import (it
/// reads the stored hashes at start): an unknown name, an argon2id account
/// and a bcrypt account each run one argon2id and one bcrypt verification
/// (counted by `/metrics`, not timed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcrypt_imported_accounts_cost_what_unknown_names_cost_after_a_restart() {
    let g = single("regulation_bcrypt", "").await;
    g.create_user("modern").await;
    let legacy = bcrypt::hash(PASSWORD, 4).unwrap();
    let r = g
        .admin(
            "POST",
            "/admin/users",
            Some(json!({"username": "legacy", "password_hash": legacy})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // Restart: a process that never saw the import.
    let Single {
        _dir: dir,
        gateway,
        client,
        admin_key,
    } = g;
    let (public, ops) = (gateway.public, gateway.ops);
    drop(gateway);
    let gateway = single_config(&dir, public, ops, "").start(&dir, "restarted");
    gateway.wait_ready(&client).await;
    let g = Single {
        _dir: dir,
        gateway,
        client,
        admin_key,
    };

    // The stored hashes are read in the background at start.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let ran = hashers_of(&g, &format!("198.51.100.{attempt}"), "nobody").await;
        if ran == (1, 1) {
            break;
        }
        assert_eq!(ran, (1, 0), "an unknown name before the scan");
        assert!(
            Instant::now() < deadline,
            "the stored bcrypt hash never noted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (from, name) in [
        ("192.0.2.1", "nobody-else"),
        ("192.0.2.2", "modern"),
        ("192.0.2.3", "legacy"),
    ] {
        assert_eq!(hashers_of(&g, from, name).await, (1, 1), "{name}");
    }
    // The imported account still logs in (and is rehashed).
    let ok = g.login("192.0.2.4", "legacy", PASSWORD).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}
