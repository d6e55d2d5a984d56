//! Revocation read locally (issue 26): two `portcullis serve` replicas under
//! steady load, each holding the live revocation set in memory and
//! following the log in `storage.url`, with servers of the test's own that
//! the test hangs (SIGSTOP; the shared Redis on 6379 and PostgreSQL on 5432
//! are never stopped):
//!
//! - Redis hung for 5 s (one server, every node of a Cluster, or the one
//!   Cluster node that serves the rate limiter's slot): no 5xx on a JWT
//!   route whose rate rule says `allow` (whose fallback is counted), and a
//!   session revoked through the admin API meanwhile is refused by both
//!   replicas within 1 s.
//! - PostgreSQL hung for 5 s (under `max_stale`): no 5xx on that route; an
//!   admin revocation attempted during the pause lands when the server is
//!   back and is refused by both replicas within 1 s of it.
//! - PostgreSQL hung 40 s, past the default `max_stale` (30 s) with the
//!   default `on_stale = "deny"`: tokens are
//!   refused (503 `backend.unavailable`) from `max_stale` on, not before,
//!   and admitted again at once after recovery.
//! - A replica killed (-9) and started again refuses every token revoked
//!   before, from its first answer on, and only then reports ready.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portcullis::stores::{Backends, NewUser, Stores, StoresConfig};
use portcullis_core::SecretHasher;
use support::*;

/// What a hung store may cost one request at most (the rate limiter's and
/// the ban check's budgets before their breakers open), with room for a
/// loaded test machine.
const REQUEST_BOUND: Duration = Duration::from_millis(1500);

/// The p99 a store pause may leave on the JWT route, at most: under the
/// 250 ms revocation budget a per-request store lookup would have cost
/// (the rate limiter's 100 ms budget is paid until its breaker opens).
const P99_BOUND: Duration = Duration::from_millis(250);

/// The revocation bound between replicas, plus one request's time.
const BOUND: Duration = Duration::from_millis(1000);

struct Setup<'a> {
    url: &'a str,
    /// The `[storage]` line naming the Redis (`redis = …` or `redis_cluster = […]`).
    redis: Option<String>,
    revocation: &'a str,
}

fn config(
    dir: &TempDir,
    setup: &Setup<'_>,
    upstream: SocketAddr,
    public: SocketAddr,
    ops: SocketAddr,
    issuer: SocketAddr,
) -> GatewayConfig {
    let mut config = GatewayConfig::with_ports(dir, public, ops).storage_url(setup.url);
    // One prefix for both replicas (they share their rate limits).
    if let Some(line) = &setup.redis {
        config = config.storage(&format!("{line}\nredis_prefix = \"{}\"", redis_prefix(dir)));
    }
    config
        .issuer(&format!("http://{issuer}"))
        .no_audit()
        .raw(&format!("[revocation]\n{}", setup.revocation))
        .rate_limit(
            RateLimit::fixed_window("open_rule", 1_000_000, 3600, &["subject"])
                .line("on_backend_error = \"allow\""),
        )
        .route(Route::new("api", "/api/**").rate_limits(&["open_rule"]))
        .upstream(Upstream::default("app", &format!("http://{upstream}")))
}

/// The replicas' `storage.redis_prefix`: the name of their directory.
fn redis_prefix(dir: &TempDir) -> String {
    dir.0
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
}

/// Two replicas on one storage, `alice` created, an admin key bootstrapped.
struct Replicas {
    gateways: Vec<Gateway>,
    publics: Vec<SocketAddr>,
    admin_key: String,
    c: HttpClient,
    // Last: the directory outlives the processes.
    dir: TempDir,
}

async fn create_alice(stores: Stores) {
    stores
        .create_user(&NewUser {
            username: "alice".into(),
            password: Some(PASSWORD.into()),
            ..NewUser::default()
        })
        .await
        .unwrap();
}

async fn replicas(label: &str, setup: &Setup<'_>) -> Replicas {
    let dir = TempDir::new(label);
    keys_and_pepper(&dir);
    let hasher = SecretHasher::new(&PEPPER).unwrap();
    if let Some(path) = setup.url.strip_prefix("sqlite://") {
        let db = portcullis::stores::sqlite::SqliteStores::open(std::path::Path::new(path))
            .await
            .unwrap();
        create_alice(Stores::new(Backends::all(Arc::new(db)), StoresConfig::new(hasher)).unwrap())
            .await;
    } else {
        let db = portcullis::stores::postgres::PostgresStores::connect(setup.url, 2)
            .await
            .unwrap();
        create_alice(Stores::new(Backends::all(Arc::new(db)), StoresConfig::new(hasher)).unwrap())
            .await;
    }
    let upstream = echo_upstream().await;
    let publics: Vec<SocketAddr> = (0..2).map(|_| free_port()).collect();
    let c = client();
    let mut gateways = Vec::new();
    for (i, public) in publics.iter().enumerate() {
        let ops = free_port();
        let config = config(&dir, setup, upstream, *public, ops, publics[0]);
        gateways.push(config.start(&dir, &format!("replica{i}")));
    }
    for g in &gateways {
        g.wait_ready(&c).await;
    }
    let admin_key = bootstrap_admin(&dir.join("replica0.toml"));
    Replicas {
        gateways,
        publics,
        admin_key,
        c,
        dir,
    }
}

/// One reply of the load: when (since the load started), where, what.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    took: Duration,
    replica: usize,
    status: u16,
    code: Option<String>,
}

/// Steady load on `/api/…` with one token, alternating between replicas,
/// four requests in flight, until stopped.
struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(c: &HttpClient, publics: &[SocketAddr], auth: &str) -> Self {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..4)
            .map(|worker| {
                let (c, publics, auth, stop) =
                    (c.clone(), publics.to_vec(), auth.to_owned(), stop.clone());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    let mut i = worker;
                    while !stop.load(Ordering::Relaxed) {
                        let replica = i % publics.len();
                        i += 1;
                        let sent = Instant::now();
                        let r = tokio::time::timeout(
                            Duration::from_secs(10),
                            send(
                                &c,
                                get(publics[replica], "/api/data", &[("authorization", &auth)]),
                            ),
                        )
                        .await
                        .expect("a request hung for 10 s");
                        let took = sent.elapsed();
                        assert!(
                            took < REQUEST_BOUND,
                            "a request took {took:?} (status {}): a hung store must not stall requests",
                            r.status
                        );
                        out.push(Sample {
                            at: sent.duration_since(started),
                            took,
                            replica,
                            status: r.status.as_u16(),
                            code: r.code(),
                        });
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    out
                })
            })
            .collect();
        Self {
            started,
            stop,
            tasks,
        }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_by_key(|s| s.at);
        all
    }
}

/// DELETE /admin/sessions/{sid} through replica `i`'s ops listener.
async fn admin_revoke_session(r: &Replicas, i: usize, sid: &str) -> Reply {
    let req = http::Request::delete(format!("http://{}/admin/sessions/{sid}", r.gateways[i].ops))
        .header("authorization", format!("Bearer {}", r.admin_key))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    send(&r.c, req).await
}

/// Polls both replicas with `auth` until both refuse it with 401
/// `auth.session_revoked`; the time that took.
async fn refused_by_both(r: &Replicas, auth: &str, within: Duration) -> Duration {
    let since = Instant::now();
    let mut pending: Vec<SocketAddr> = r.publics.clone();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for public in pending {
            let reply = send(&r.c, get(public, "/api/x", &[("authorization", auth)])).await;
            if reply.status.as_u16() == 401 {
                assert_eq!(
                    reply.code().as_deref(),
                    Some("auth.session_revoked"),
                    "{}",
                    reply.body
                );
            } else {
                still.push(public);
            }
        }
        pending = still;
        assert!(
            since.elapsed() < within,
            "not refused by {pending:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    since.elapsed()
}

fn no_5xx(phase: &str, samples: &[Sample], during: (Duration, Duration)) {
    let mut took: Vec<Duration> = samples
        .iter()
        .filter(|s| s.at >= during.0 && s.at < during.1)
        .map(|s| s.took)
        .collect();
    took.sort();
    let p99 = took
        .get(took.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    eprintln!(
        "{phase}: {} requests during the pause, p99 {p99:?}",
        took.len()
    );
    assert!(p99 < P99_BOUND, "{phase}: p99 {p99:?} during the pause");
    let bad: Vec<&Sample> = samples.iter().filter(|s| s.status >= 500).collect();
    assert!(
        bad.is_empty(),
        "{phase}: {} of {} requests were 5xx, first {:?}",
        bad.len(),
        samples.len(),
        bad.first()
    );
    assert!(
        samples.iter().all(|s| s.status == 200),
        "{phase}: {:?}",
        samples.iter().find(|s| s.status != 200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_hung_for_5s_costs_jwt_routes_nothing_and_revocations_land_on_both_replicas() {
    let Some(db) = FreshDatabase::create("rev_redis").await else {
        return;
    };
    let redis = OwnRedis::start();
    let line = format!("redis = \"{}\"", redis.url());
    let fallbacks = redis_hung_for_5s(
        "Redis hung",
        &db,
        &line,
        |_| redis.pause(),
        |_| redis.resume(),
    )
    .await;
    assert!(fallbacks > 0, "the hung Redis was never asked");
}

/// The same with every node of a Redis Cluster of the test's own hung.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_hung_for_5s_costs_jwt_routes_nothing_and_revocations_land_on_both_replicas()
 {
    let Some(db) = FreshDatabase::create("rev_cluster").await else {
        return;
    };
    let dir = TempDir::new("rev_cluster_nodes");
    let cluster = OwnRedisCluster::start(&dir.0);
    let fallbacks = redis_hung_for_5s(
        "Redis Cluster hung",
        &db,
        &cluster.config_line(),
        |_| cluster.pause(),
        |_| cluster.resume(),
    )
    .await;
    assert!(fallbacks > 0, "the hung Cluster was never asked");
}

/// One node of the Cluster hung: the one that serves the rate limiter's
/// slot (every rate-limit key of the prefix shares one hash tag), so each
/// request's rate check meets it; the other nodes answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_cluster_node_hung_for_5s_costs_jwt_routes_nothing_and_revocations_land_on_both_replicas()
 {
    let Some(db) = FreshDatabase::create("rev_cluster_node").await else {
        return;
    };
    let dir = TempDir::new("rev_cluster_node_nodes");
    let cluster = OwnRedisCluster::start(&dir.0);
    // Found before the pause (a paused node answers no `redis-cli`).
    let paused = std::sync::Mutex::new(None);
    let fallbacks = redis_hung_for_5s(
        "one Redis Cluster node hung",
        &db,
        &cluster.config_line(),
        |prefix| {
            let node = cluster.node_owning(&format!("{{{prefix}:ratelimit}}"));
            node.pause();
            *paused.lock().unwrap() = Some(node);
        },
        |_| {
            if let Some(node) = paused.lock().unwrap().take() {
                node.resume();
            }
        },
    )
    .await;
    assert!(fallbacks > 0, "the hung node was never asked");
}

/// Two replicas on `db` and the Redis of `line` under load; the Redis
/// paused (`pause`) for 5 s, a session revoked through the admin API
/// meanwhile.
async fn redis_hung_for_5s(
    phase: &str,
    db: &FreshDatabase,
    line: &str,
    pause: impl Fn(&str),
    resume: impl Fn(&str),
) -> u64 {
    /// SIGCONT even when an assertion fails while paused.
    struct Resume<F: Fn()>(F);
    impl<F: Fn()> Drop for Resume<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let r = replicas(
        "rev_redis",
        &Setup {
            url: &db.url,
            redis: Some(line.to_owned()),
            revocation: "",
        },
    )
    .await;
    let token = login(&r.c, r.publics[0], "alice").await;
    let victim = login(&r.c, r.publics[1], "alice").await;
    let victim_auth = format!("Bearer {victim}");
    let sid = claims(&victim)["sid"].as_str().unwrap().to_owned();

    let load = Load::start(&r.c, &r.publics, &format!("Bearer {token}"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paused_at = load.started.elapsed();
    let prefix = redis_prefix(&r.dir);
    pause(&prefix);
    let resumer = Resume(|| resume(&prefix));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reply = admin_revoke_session(&r, 0, &sid).await;
    assert!(reply.status.is_success(), "{} {}", reply.status, reply.body);
    let took = refused_by_both(&r, &victim_auth, BOUND).await;
    eprintln!("{phase}: a revocation during the pause refused by both replicas after {took:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    drop(resumer);
    let resumed_at = load.started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = load.finish().await;
    let during: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at >= paused_at && s.at < resumed_at)
        .cloned()
        .collect();
    assert!(
        during.len() > 20 && during.iter().any(|s| s.replica == 1),
        "too little load during the pause: {}",
        during.len()
    );
    no_5xx(phase, &samples, (paused_at, resumed_at));
    // Rate decisions taken without Redis (`on_backend_error = "allow"`).
    let mut fallbacks = 0.0;
    for g in &r.gateways {
        fallbacks += metric_total(g.ops, "portcullis_ratelimit_fallback_total").await;
    }
    fallbacks as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_hung_for_5s_costs_jwt_routes_nothing_and_a_revocation_made_meanwhile_lands_within_1s()
 {
    let dir = TempDir::new("rev_pg5");
    let Some(pg) = OwnPostgres::start(dir.join("pg")) else {
        return;
    };
    let url = pg.url();
    let r = replicas(
        "rev_pg5",
        &Setup {
            url: &url,
            redis: None,
            revocation: "max_stale = \"30s\"",
        },
    )
    .await;
    let token = login(&r.c, r.publics[0], "alice").await;
    let victim = login(&r.c, r.publics[1], "alice").await;
    let victim_auth = format!("Bearer {victim}");
    let sid = claims(&victim)["sid"].as_str().unwrap().to_owned();

    let load = Load::start(&r.c, &r.publics, &format!("Bearer {token}"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paused_at = load.started.elapsed();
    pg.pause();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The admin call is made during the pause and retried until the
    // database answers (its own key lookup needs the database).
    let revoke = {
        let (c, ops, key, sid) = (
            r.c.clone(),
            r.gateways[0].ops,
            r.admin_key.clone(),
            sid.clone(),
        );
        tokio::spawn(async move {
            loop {
                let req = http::Request::delete(format!("http://{ops}/admin/sessions/{sid}"))
                    .header("authorization", format!("Bearer {key}"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                let reply = send(&c, req).await;
                if reply.status.is_success() {
                    return Instant::now();
                }
                assert_eq!(reply.status.as_u16(), 503, "{}", reply.body);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Still valid while the revocation could not be written.
    let reply = send(
        &r.c,
        get(r.publics[1], "/api/x", &[("authorization", &victim_auth)]),
    )
    .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    pg.resume();
    let resumed = Instant::now();
    let resumed_at = load.started.elapsed();
    let revoked = tokio::time::timeout(Duration::from_secs(10), revoke)
        .await
        .expect("the admin revocation never landed")
        .unwrap();
    refused_by_both(&r, &victim_auth, BOUND + revoked.duration_since(resumed)).await;
    eprintln!(
        "admin revocation landed {:?} after PostgreSQL resumed; refused by both after {:?}",
        revoked.duration_since(resumed),
        resumed.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = load.finish().await;
    let during = samples
        .iter()
        .filter(|s| s.at >= paused_at && s.at < resumed_at)
        .count();
    assert!(during > 20, "too little load during the pause: {during}");
    no_5xx("PostgreSQL hung 5 s", &samples, (paused_at, resumed_at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_stale_on_stale_deny_refuses_from_max_stale_on_and_recovers_at_once() {
    let dir = TempDir::new("rev_stale");
    let Some(pg) = OwnPostgres::start(dir.join("pg")) else {
        return;
    };
    let url = pg.url();
    // The defaults: max_stale 30 s, on_stale "deny"; PostgreSQL hung 40 s.
    let max_stale = Duration::from_secs(30);
    let pause = Duration::from_secs(40);
    let r = replicas(
        "rev_stale",
        &Setup {
            url: &url,
            redis: None,
            revocation: "",
        },
    )
    .await;
    let token = login(&r.c, r.publics[0], "alice").await;
    let load = Load::start(&r.c, &r.publics, &format!("Bearer {token}"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paused_at = load.started.elapsed();
    pg.pause();
    tokio::time::sleep(pause).await;
    // Readiness reports the stale feed.
    let ready = send(&r.c, get(r.gateways[0].ops, "/health/ready", &[])).await;
    assert_eq!(ready.status.as_u16(), 503, "{}", ready.body);
    assert!(
        ready.json()["revocation"]["lag_ms"].as_u64().unwrap() >= 30_000,
        "{}",
        ready.body
    );
    // Resuming signals the server's processes one by one: the feed may
    // read the log before the last of them is resumed.
    let resuming_at = load.started.elapsed();
    pg.resume();
    let resumed_at = load.started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = send(&r.c, get(r.gateways[0].ops, "/metrics", &[])).await;
    let samples = load.finish().await;

    let refused: Vec<&Sample> = samples.iter().filter(|s| s.status != 200).collect();
    for s in &refused {
        assert_eq!(
            (s.status, s.code.as_deref()),
            (503, Some("backend.unavailable")),
            "{s:?}"
        );
    }
    let first = refused.first().expect("nothing was refused past max_stale");
    let last = refused.last().unwrap();
    // Not before max_stale (less one poll interval and slack)...
    assert!(
        first.at >= paused_at + max_stale - Duration::from_millis(300),
        "refused {:?} after the pause, before max_stale",
        first.at - paused_at
    );
    // ...every request from max_stale on (plus a second) until recovery...
    let stale_from = paused_at + max_stale + Duration::from_secs(1);
    let admitted = samples
        .iter()
        .find(|s| s.at >= stale_from && s.at < resuming_at && s.status != 503);
    assert!(
        admitted.is_none(),
        "admitted while stale past max_stale: {admitted:?} (paused at {paused_at:?}, resumed at {resuming_at:?})"
    );
    // ...and none once the database is back (within 1 s, with slack for a
    // loaded machine).
    assert!(
        last.at < resumed_at + Duration::from_millis(1500),
        "still refused {:?} after recovery",
        last.at - resumed_at
    );
    eprintln!(
        "first refusal {:?} after the pause; last {:?} after recovery",
        first.at - paused_at,
        last.at.saturating_sub(resumed_at)
    );
    assert!(
        metrics.body.lines().any(|l| l
            .starts_with("portcullis_revocation_stale_decisions_total{decision=\"deny\"}")
            && !l.ends_with(" 0")),
        "{}",
        metrics.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_and_restarted_refuses_every_revoked_token_before_it_reports_ready() {
    let dir = TempDir::new("rev_restart_db");
    let db_path = dir.join("stores.db");
    let url = format!("sqlite://{}", db_path.display());
    let mut r = replicas(
        "rev_restart",
        &Setup {
            url: &url,
            redis: None,
            revocation: "",
        },
    )
    .await;
    let c = r.c.clone();
    let public = r.publics[0];
    let live = format!("Bearer {}", login(&c, public, "alice").await);
    let mut revoked = Vec::new();
    for _ in 0..3 {
        let auth = format!("Bearer {}", login(&c, public, "alice").await);
        let reply = send(
            &c,
            post(public, "/auth/logout", &[("authorization", &auth)], ""),
        )
        .await;
        assert_eq!(reply.status.as_u16(), 204, "{}", reply.body);
        revoked.push(auth);
    }
    let victim = login(&c, public, "alice").await;
    let sid = claims(&victim)["sid"].as_str().unwrap().to_owned();
    let reply = admin_revoke_session(&r, 0, &sid).await;
    assert!(reply.status.is_success(), "{}", reply.body);
    revoked.push(format!("Bearer {victim}"));

    // Kill -9 replica 0 (its drop), start it again on the same config.
    let ops = r.gateways[0].ops;
    let holder = TempDir::new("rev_restart_log");
    let text = std::fs::read_to_string(r.dir.join("replica0.toml")).unwrap();
    drop(r.gateways.remove(0));
    let restarted = Gateway::start(&holder, "replica0-again", &text, public, ops);
    // From its first answer on, no revoked token is let through; and it
    // reports ready only once it refuses them.
    let started = Instant::now();
    loop {
        let ready = tokio::time::timeout(
            Duration::from_secs(1),
            c.request(get(ops, "/health/ready", &[])),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .is_some_and(|resp| resp.status() == http::StatusCode::OK);
        for auth in &revoked {
            let answer = tokio::time::timeout(
                Duration::from_secs(2),
                c.request(get(public, "/api/x", &[("authorization", auth)])),
            )
            .await
            .ok()
            .and_then(Result::ok);
            if let Some(resp) = answer {
                assert_ne!(
                    resp.status().as_u16(),
                    200,
                    "a revoked token was admitted by the restarted replica"
                );
            } else {
                assert!(!ready, "ready but not answering");
            }
        }
        if ready {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not ready in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for auth in &revoked {
        let reply = send(&c, get(public, "/api/x", &[("authorization", auth)])).await;
        assert_eq!(reply.status.as_u16(), 401, "{}", reply.body);
    }
    let reply = send(&c, get(public, "/api/x", &[("authorization", &live)])).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    drop(restarted);
}
