//! Backends failing under a running gateway, with servers of the test's own
//! (the shared Redis on 6379 and PostgreSQL on 5432 are never touched):
//!
//! - Redis hung (SIGSTOP) and then down (killed) under load: each rate
//!   rule's `on_backend_error` holds (`allow` admits, `local` falls back to
//!   this replica's memory, `deny` refuses 503 `backend.unavailable`), JWTs
//!   are still checked and admitted (revocation is read from the local set,
//!   which follows the log in SQL: no Redis call), logins (SQL) keep
//!   working, readiness stays green, nothing else is a 5xx, and no request
//!   hangs; restarted, the service recovers.
//! - PostgreSQL (the audit database) stopped under load: every request is
//!   still served, events spool to disk, and when it is back every request's
//!   audit event is in the table exactly once.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::stores::sqlite::SqliteStores;
use portcullis::stores::{Backends, NewUser, Stores, StoresConfig};
use portcullis_core::SecretHasher;
use support::*;

/// What a hung or dead Redis may cost one request, at most: the ban check
/// and the rate-limit call (100 ms budgets each, then their breakers open),
/// with room for a loaded test machine.
const REQUEST_BOUND: Duration = Duration::from_millis(1500);

async fn create_alice(db: &std::path::Path) {
    let stores = Stores::new(
        Backends::all(Arc::new(SqliteStores::open(db).await.unwrap())),
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
}

fn redis_config(
    dir: &TempDir,
    redis: &str,
    upstream: SocketAddr,
    public: SocketAddr,
    ops: SocketAddr,
) -> String {
    let rule = |name: &str, on_error: &str| {
        RateLimit::fixed_window(name, 100_000, 3600, &["ip"])
            .line(&format!("on_backend_error = {}", toml_str(on_error)))
    };
    GatewayConfig::with_ports(dir, public, ops)
        .storage(&format!("redis = {}", toml_str(redis)))
        .storage("redis_prefix = \"pcx_outage\"")
        .issuer_is_public()
        .no_audit()
        .no_log()
        .rate_limit(rule("open_rule", "allow"))
        .rate_limit(rule("closed_rule", "deny"))
        .rate_limit(rule("local_rule", "local"))
        .route(
            Route::new("fail_open", "/fail-open")
                .credentials(&["anonymous"])
                .rate_limits(&["open_rule"]),
        )
        .route(
            Route::new("fail_closed", "/fail-closed")
                .credentials(&["anonymous"])
                .rate_limits(&["closed_rule"]),
        )
        .route(
            Route::new("local", "/local")
                .credentials(&["anonymous"])
                .rate_limits(&["local_rule"]),
        )
        .route(Route::new("docs", "/docs"))
        .upstream(Upstream::default("app", &format!("http://{upstream}")))
        .text()
}

/// Status and problem code of each reply, by path.
type Replies = HashMap<&'static str, Vec<(u16, Option<String>)>>;

/// One round of load: `rounds` × each route, 8 at a time; the status and
/// problem code of each, by path. Panics on a request slower than
/// [`REQUEST_BOUND`].
async fn load(c: &HttpClient, public: SocketAddr, auth: &str, rounds: usize) -> Replies {
    let mut tasks = Vec::new();
    for _ in 0..rounds {
        for path in ["/fail-open", "/fail-closed", "/local", "/docs"] {
            let (c, auth) = (c.clone(), auth.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut headers = Vec::new();
                if path == "/docs" {
                    headers.push(("authorization", auth.as_str()));
                }
                let started = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    send(&c, get(public, path, &headers)),
                )
                .await
                .unwrap_or_else(|_| panic!("{path} hung for 10 s"));
                let took = started.elapsed();
                assert!(
                    took < REQUEST_BOUND,
                    "{path} took {took:?} (status {}): a failing Redis must not stall requests",
                    r.status
                );
                (path, r.status.as_u16(), r.code())
            }));
            if tasks.len().is_multiple_of(8) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let mut out: Replies = HashMap::new();
    for t in tasks {
        let (path, status, code) = t.await.unwrap();
        out.entry(path).or_default().push((status, code));
    }
    out
}

/// Every reply while Redis is hung or down is what the configuration says.
fn assert_policies_hold(phase: &str, replies: &Replies) {
    let unavailable = Some("backend.unavailable".to_owned());
    for (path, list) in replies {
        for (status, code) in list {
            match *path {
                // allow: admitted; local: this replica's memory admits.
                "/fail-open" | "/local" => assert_eq!(*status, 200, "{phase} {path}: {code:?}"),
                // deny: the documented refusal.
                "/fail-closed" => {
                    assert_eq!((*status, code), (503, &unavailable), "{phase} {path}")
                }
                // Revocation is read locally (the log is in SQL): a JWT
                // route with no rate rule owes Redis nothing.
                "/docs" => assert_eq!(*status, 200, "{phase} {path}: {code:?}"),
                _ => unreachable!(),
            }
        }
    }
}

/// Logging in needs no Redis (users and sessions are in SQL; bans fail
/// open): served, within the request bound plus a password hash.
async fn login_served_in_time(c: &HttpClient, public: SocketAddr, phase: &str) {
    let body = serde_json::json!({"username": "alice", "password": PASSWORD}).to_string();
    let started = Instant::now();
    let r = send(
        c,
        post(
            public,
            "/auth/login",
            &[("content-type", "application/json")],
            &body,
        ),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status.as_u16(), 200, "{phase}: {}", r.body);
    assert!(
        took < Duration::from_secs(4),
        "{phase}: login took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_then_down_keeps_each_rules_policy_and_recovers() {
    let mut redis = OwnRedis::start();
    let dir = TempDir::new("outage_redis");
    keys_and_pepper(&dir);
    create_alice(&dir.join("stores.db")).await;
    let upstream = echo_upstream().await;
    let (public, ops) = (free_port(), free_port());
    let gw = Gateway::start(
        &dir,
        "gateway",
        &redis_config(&dir, &redis.url(), upstream, public, ops),
        public,
        ops,
    );
    let c = client();
    gw.wait_ready(&c).await;
    let auth = format!("Bearer {}", login(&c, public, "alice").await);

    // Healthy: everything admitted.
    let replies = load(&c, public, &auth, 10).await;
    for (path, list) in &replies {
        assert!(list.iter().all(|(s, _)| *s == 200), "{path}: {list:?}");
    }

    // A token `/docs` has not seen (once, a new token meant a denylist
    // lookup on Redis; now the local revocation set answers).
    let unseen = format!("Bearer {}", login(&c, public, "alice").await);

    // Hung: the server keeps its sockets open and never answers.
    redis.pause();
    let replies = load(&c, public, &unseen, 10).await;
    assert_policies_hold("hung", &replies);
    login_served_in_time(&c, public, "hung").await;
    let ready = send(&c, get(ops, "/health/ready", &[])).await;
    assert_eq!(
        ready.status.as_u16(),
        200,
        "revocation does not depend on Redis: still ready: {}",
        ready.body
    );

    // Down: killed (resumed first so it dies at once), connections refused.
    redis.resume();
    redis.kill();
    let replies = load(&c, public, &unseen, 10).await;
    assert_policies_hold("down", &replies);
    login_served_in_time(&c, public, "down").await;

    // Back on the same port (empty: no persistence): the gateway reconnects
    // by itself; fail-closed admits again, and tokens are checked again.
    let port = redis.port;
    let _redis = OwnRedis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = send(&c, get(public, "/fail-closed", &[])).await;
        if r.status.as_u16() == 200 {
            break;
        }
        assert_eq!(
            r.code().as_deref(),
            Some("backend.unavailable"),
            "{}",
            r.body
        );
        assert!(
            Instant::now() < deadline,
            "no recovery 30 s after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fresh = format!("Bearer {}", login(&c, public, "alice").await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let replies = load(&c, public, &fresh, 3).await;
        if replies.values().flatten().all(|(s, _)| *s == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "not recovered: {replies:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The session from before the outage is durable (SQL): still valid.
    let r = send(&c, get(public, "/docs", &[("authorization", &auth)])).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    gw.wait_ready(&c).await;
}

fn audit_config(
    dir: &TempDir,
    pg: &str,
    upstream: SocketAddr,
    public: SocketAddr,
    ops: SocketAddr,
) -> String {
    GatewayConfig::with_ports(dir, public, ops)
        .storage_lines("url = \"memory\"")
        .issuer_is_public()
        .audit_lines(&format!("postgres = {}", toml_str(pg)))
        .audit(&format!(
            "spool_dir = {}",
            toml_str(&dir.join("audit.spool").display().to_string())
        ))
        .no_log()
        .route(Route::new("open", "/open").credentials(&["anonymous"]))
        .upstream(Upstream::default("app", &format!("http://{upstream}")))
        .text()
}

/// Sends `n` requests, 8 at a time; each must be served (200). Their request ids.
async fn served(c: &HttpClient, public: SocketAddr, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in 0..n.div_ceil(8) {
        let mut tasks = Vec::new();
        for _ in 0..8usize.min(n - chunk * 8) {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    send(&c, get(public, "/open", &[])),
                )
                .await
                .expect("a request hung while the audit database is down");
                assert_eq!(r.status.as_u16(), 200, "{}", r.body);
                r.header("x-request-id").unwrap().to_owned()
            }));
        }
        for t in tasks {
            ids.push(t.await.unwrap());
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_spools_audit_and_loses_nothing() {
    let dir = TempDir::new("outage_pg");
    let Some(pg) = OwnPostgres::start(dir.join("pg")) else {
        return;
    };
    keys_and_pepper(&dir);
    let upstream = echo_upstream().await;
    let (public, ops) = (free_port(), free_port());
    let gw = Gateway::start(
        &dir,
        "gateway",
        &audit_config(&dir, &pg.url(), upstream, public, ops),
        public,
        ops,
    );
    let c = client();
    gw.wait_ready(&c).await;

    let mut ids = served(&c, public, 40).await;
    pg.stop();
    // Down for longer than the writer's 5 s write timeout, so batches
    // fail and go to the spool, not only wait.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        ids.extend(served(&c, public, 16).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = ids.len() - 40;
    assert!(
        std::fs::metadata(dir.join("audit.spool")).is_ok_and(|m| m.len() > 0),
        "nothing was spooled while PostgreSQL was down"
    );
    pg.restart();
    ids.extend(served(&c, public, 40).await);

    // Every request's event arrives, each exactly once.
    let mut db = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&pg.url()).await.unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let counts: HashMap<String, i64> = loop {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT request_id, COUNT(*) FROM audit_events WHERE request_id = ANY($1) GROUP BY request_id",
        )
        .bind(&ids)
        .fetch_all(&mut db)
        .await
        .unwrap();
        if rows.len() == ids.len() || Instant::now() > deadline {
            break rows.into_iter().collect();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let missing: Vec<&String> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} events missing ({during} sent while PostgreSQL was down), e.g. {:?}",
        missing.len(),
        ids.len(),
        missing.first()
    );
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "events stored more than once: {twice:?}");
    drop(gw);
}
