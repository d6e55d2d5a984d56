//! Four `portcullis serve` replicas side by side, as a deployment runs
//! them: one PostgreSQL database (users, sessions, refresh families) and one Redis —
//! a single server, then the Redis Cluster — for the hot shared state. A
//! limit of N admits exactly N across the four under concurrent load; a
//! logout or a session revoked through one replica is refused by all four
//! within 1 s; a ban one replica records is enforced by all.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis::stores::postgres::PostgresStores;
use portcullis::stores::{Backends, NewUser, Stores, StoresConfig};
use portcullis_core::SecretHasher;
use support::*;

const LIMIT: usize = 24;
const REPLICAS: usize = 4;

/// Where the replicas keep their hot state.
enum Hot {
    Single(String),
    Cluster(Vec<String>),
}

impl Hot {
    fn toml(&self) -> String {
        match self {
            Self::Single(url) => format!("redis = \"{url}\""),
            Self::Cluster(urls) => format!(
                "redis_cluster = [{}]",
                urls.iter()
                    .map(|u| format!("\"{u}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    fn urls(&self) -> Vec<String> {
        match self {
            Self::Single(url) => vec![url.clone()],
            Self::Cluster(urls) => urls.clone(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn config(
    dir: &TempDir,
    db: &str,
    hot: &Hot,
    prefix: &str,
    upstream: SocketAddr,
    public: SocketAddr,
    ops: SocketAddr,
    issuer: SocketAddr,
) -> GatewayConfig {
    GatewayConfig::with_ports(dir, public, ops)
        .storage_url(db)
        .storage(&hot.toml())
        .storage(&format!("redis_prefix = {}", toml_str(prefix)))
        .issuer(&format!("http://{issuer}"))
        .no_audit()
        .no_log()
        .raw(
            "[anomaly]\n[[anomaly.detectors]]\nkind = \"auth_failures\"\nthreshold = 3\n\
             window = 60\nactions = [\"ban\", \"tag\"]\nban_for = 600",
        )
        .raw("[guard.client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]")
        .rate_limit(
            RateLimit::fixed_window("shared", LIMIT as u64, 3600, &["subject"])
                .line("on_backend_error = \"deny\""),
        )
        .route(Route::new("limited", "/limited").rate_limits(&["shared"]))
        .route(Route::new("docs", "/docs"))
        .route(Route::new("open", "/open").credentials(&["anonymous"]))
        .upstream(Upstream::default("app", &format!("http://{upstream}")))
}

async fn replicas_share_limits_revocation_and_bans(hot: Hot, label: &str) {
    let Some(db) = FreshDatabase::create(label).await else {
        return;
    };
    let prefix = unique_name(&format!("pcx_gw_{label}"));
    let _cleanup = RedisPrefix {
        urls: hot.urls(),
        prefix: prefix.clone(),
    };
    let dir = TempDir::new(label);
    keys_and_pepper(&dir);
    // The users live in PostgreSQL; the replicas migrate the same schema.
    let pg = Arc::new(PostgresStores::connect(&db.url, 2).await.unwrap());
    let stores = Stores::new(
        Backends::all(pg),
        StoresConfig::new(SecretHasher::new(&PEPPER).unwrap()),
    )
    .unwrap();
    for name in ["alice", "bob"] {
        stores
            .create_user(&NewUser {
                username: name.into(),
                password: Some(PASSWORD.into()),
                ..NewUser::default()
            })
            .await
            .unwrap();
    }

    let upstream = echo_upstream().await;
    let publics: Vec<SocketAddr> = (0..REPLICAS).map(|_| free_port()).collect();
    let c = client();
    let mut gateways = Vec::new();
    for (i, public) in publics.iter().enumerate() {
        let ops = free_port();
        // One issuer for all: a token from any replica is valid on every one.
        let config = config(
            &dir, &db.url, &hot, &prefix, upstream, *public, ops, publics[0],
        );
        gateways.push(config.start(&dir, &format!("replica{i}")));
    }
    for g in &gateways {
        g.wait_ready(&c).await;
    }

    // 1. A limit of N admits exactly N of 2N concurrent calls spread over
    //    the four replicas (the session made on replica 0 is in PostgreSQL).
    let token = login(&c, publics[0], "alice").await;
    let auth = format!("Bearer {token}");
    let mut tasks = Vec::new();
    for i in 0..2 * LIMIT {
        let (c, auth, public) = (c.clone(), auth.clone(), publics[i % REPLICAS]);
        tasks.push(tokio::spawn(async move {
            send(&c, get(public, "/limited", &[("authorization", &auth)])).await
        }));
    }
    let (mut admitted, mut limited) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            200 => admitted += 1,
            429 => {
                assert_eq!(
                    r.code().as_deref(),
                    Some("rate_limit.exceeded"),
                    "{}",
                    r.body
                );
                limited += 1;
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!(
        (admitted, limited),
        (LIMIT, LIMIT),
        "a limit of {LIMIT} across {REPLICAS} replicas"
    );

    // 2. Logout through replica 1 (session revoked, jti denied): refused by
    //    all four within 1 s.
    let token = login(&c, publics[2], "bob").await;
    let auth = format!("Bearer {token}");
    for public in &publics {
        let r = send(&c, get(*public, "/docs", &[("authorization", &auth)])).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    }
    let r = send(
        &c,
        post(publics[1], "/auth/logout", &[("authorization", &auth)], ""),
    )
    .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    assert_refused_everywhere(&c, &publics, &auth, "auth.token_revoked").await;

    // 3. A session revoked through replica 3 by its owner's other session
    //    (no jti denied: only the session record says so) is refused by all
    //    four within 1 s, the revocation caches' bound.
    let victim = login(&c, publics[0], "bob").await;
    let victim_auth = format!("Bearer {victim}");
    let sid = claims(&victim)["sid"].as_str().unwrap().to_owned();
    for public in &publics {
        let r = send(
            &c,
            get(*public, "/docs", &[("authorization", &victim_auth)]),
        )
        .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    }
    let other = login(&c, publics[3], "bob").await;
    let req = http::Request::delete(format!("http://{}/auth/sessions/{sid}", publics[3]))
        .header("authorization", format!("Bearer {other}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = send(&c, req).await;
    assert!(r.status.is_success(), "{} {}", r.status, r.body);
    assert_refused_everywhere(&c, &publics, &victim_auth, "auth.session_revoked").await;
    let r = send(
        &c,
        get(
            publics[2],
            "/docs",
            &[("authorization", &format!("Bearer {other}"))],
        ),
    )
    .await;
    assert_eq!(
        r.status.as_u16(),
        200,
        "the other session stays valid: {}",
        r.body
    );

    // 4. Three bad tokens from one client through replica 2 trip the
    //    auth-failure detector there; its ban is enforced by all four.
    let banned_ip = "203.0.113.77";
    for _ in 0..3 {
        let r = send(
            &c,
            get(
                publics[2],
                "/docs",
                &[
                    ("authorization", "Bearer not-a-token"),
                    ("x-forwarded-for", banned_ip),
                ],
            ),
        )
        .await;
        assert_eq!(r.status.as_u16(), 401, "{}", r.body);
    }
    for public in &publics {
        let r = send(&c, get(*public, "/open", &[("x-forwarded-for", banned_ip)])).await;
        assert_eq!(r.status.as_u16(), 403, "{}", r.body);
        assert_eq!(r.code().as_deref(), Some("anomaly.banned"), "{}", r.body);
        assert!(r.header("retry-after").is_some());
        let r = send(
            &c,
            get(*public, "/open", &[("x-forwarded-for", "203.0.113.78")]),
        )
        .await;
        assert_eq!(
            r.status.as_u16(),
            200,
            "another client is not banned: {}",
            r.body
        );
    }

    // The ban is where `portcullis bans list --prefix <redis_prefix>` finds it.
    let mut args = vec![
        "bans",
        "list",
        "--format",
        "json",
        "--prefix",
        prefix.as_str(),
    ];
    let joined;
    match &hot {
        Hot::Single(url) => args.extend(["--redis", url.as_str()]),
        Hot::Cluster(urls) => {
            joined = urls.join(",");
            args.extend(["--redis-cluster", joined.as_str()]);
        }
    }
    let out = portcullis(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(banned_ip), "{listed}");
    assert!(listed.contains("auth_failures"), "{listed}");
}

/// Polls every replica until `auth` is refused with 401 `code`; each must
/// refuse within 1 s of the revocation (plus one request's time).
async fn assert_refused_everywhere(c: &HttpClient, publics: &[SocketAddr], auth: &str, code: &str) {
    // Each check from a client address of its own: the refusals are auth
    // failures, and the detector bans an address after three.
    static CLIENT: AtomicUsize = AtomicUsize::new(1);
    let revoked_at = Instant::now();
    for public in publics {
        loop {
            let ip = format!(
                "198.51.100.{}",
                CLIENT.fetch_add(1, Ordering::Relaxed) % 250 + 1
            );
            let r = send(
                c,
                get(
                    *public,
                    "/docs",
                    &[("authorization", auth), ("x-forwarded-for", &ip)],
                ),
            )
            .await;
            if r.status.as_u16() == 401 {
                assert_eq!(r.code().as_deref(), Some(code), "{}", r.body);
                break;
            }
            assert_eq!(r.status.as_u16(), 200, "{}", r.body);
            assert!(
                revoked_at.elapsed() < Duration::from_millis(1100),
                "replica {public} still accepts a revoked credential after {:?}",
                revoked_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_on_one_redis_share_limits_revocation_and_bans() {
    let Some(url) = redis_url() else { return };
    replicas_share_limits_revocation_and_bans(Hot::Single(url), "replicas_single").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_on_the_redis_cluster_share_limits_revocation_and_bans() {
    let Some(urls) = redis_cluster_urls() else {
        return;
    };
    replicas_share_limits_revocation_and_bans(Hot::Cluster(urls), "replicas_cluster").await;
}
