//! Two guarded app instances sharing PostgreSQL (durable stores) and Redis
//! (denylist, rate limits): a revoke through one is refused by the other
//! within the revocation bound, and a limit of N admits exactly N across both.

#![cfg(all(feature = "axum", feature = "redis", feature = "postgres"))]

#[path = "support/own_redis.rs"]
mod own_redis;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::Guard;
use portcullis::guard::{GuardConfig, RouteConfig};
use portcullis::http::{GuardLayer, Principal};
use portcullis::ratelimit::RateLimiter;
use portcullis::redis_conn::RedisConnection;
use portcullis::stores::postgres::PostgresStores;
use portcullis::stores::redis::RedisStores;
use portcullis::stores::{Backends, NewApiKey, NewSession, NewUser, Stores, StoresConfig};
use portcullis_core::ratelimit::RuleConfig;
use portcullis_core::{
    AccessRequest, Algorithm, IssuerConfig, Key, KeySet, SecretHasher, TokenIssuer, Validation,
    Verifier,
};

const LIMIT: u64 = 25;

fn config() -> GuardConfig {
    GuardConfig::default()
        .rate_limit(RuleConfig {
            name: "per-subject".into(),
            algorithm: "gcra".into(),
            rate: Some(LIMIT),
            burst: Some(LIMIT),
            limit: None,
            period: 3600.0,
            key: vec!["subject".into()],
            on_backend_error: Some("deny".into()),
            lease: None,
        })
        .route(RouteConfig::new("docs", "/docs").rate_limits(["per-subject"]))
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn serve(guard: Guard) -> SocketAddr {
    async fn who(p: Principal) -> String {
        p.subject.clone()
    }
    let app = Router::new()
        .route("/docs", get(who))
        .layer(GuardLayer::new(guard));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

async fn status(client: &HttpClient, addr: SocketAddr, auth: &str) -> (u16, String) {
    let req = http::Request::get(format!("http://{addr}/docs"))
        .header("authorization", auth)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

struct Cleanup {
    url: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(support::redis_cleanup(&url, &prefix));
            }
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_revocation_and_exact_limits() {
    let Some(db) = support::FreshDatabase::create("guard_replicas").await else {
        return;
    };
    let Some(redis_url) = support::redis_url() else {
        return;
    };
    let prefix = support::unique_prefix("guard_replicas");
    let _cleanup = Cleanup {
        url: redis_url.clone(),
        prefix: prefix.clone(),
    };
    let hasher = SecretHasher::new(&[9; 32]).unwrap();
    let mut keys = KeySet::new();
    keys.insert(Key::generate(Algorithm::ES256).unwrap().with_kid("k1"))
        .unwrap();
    let issuer_config = IssuerConfig::new("https://issuer.test");
    let issuer = TokenIssuer::new(keys.clone(), issuer_config.clone(), hasher.clone());

    // Each instance: its own store facade (own per-replica caches), its own
    // connections, the same PostgreSQL database and Redis prefix.
    let mut instances = Vec::new();
    for _ in 0..2 {
        let pg = Arc::new(PostgresStores::connect(&db.url, 4).await.unwrap());
        let conn = RedisConnection::single(&redis_url).await.unwrap();
        let hot = Arc::new(RedisStores::new(conn.clone(), &format!("{prefix}stores:")));
        let backends = Backends {
            users: pg.clone(),
            sessions: hot.clone(),
            refresh: hot.clone(),
            denylist: hot.clone(),
            api_keys: pg.clone(),
            signing_keys: pg.clone(),
            apps: pg,
        };
        let stores = Arc::new(Stores::new(backends, StoresConfig::new(hasher.clone())).unwrap());
        let verifier = Verifier::new(keys.clone(), Validation::for_local_issuer(&issuer_config));
        let guard = Guard::builder(config())
            .local_keys(verifier)
            .stores(Arc::clone(&stores))
            .rate_limiter(RateLimiter::builder().redis(conn, &format!("{prefix}rl:")))
            .build()
            .unwrap();
        instances.push((serve(guard).await, stores));
    }
    let (a, stores_a) = (instances[0].0, Arc::clone(&instances[0].1));
    let b = instances[1].0;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    let user = stores_a
        .create_user(&NewUser {
            username: "carol".into(),
            password: Some("correct horse battery".into()),
            ..NewUser::default()
        })
        .await
        .unwrap();

    // A limit of N across both instances admits exactly N.
    let session = stores_a
        .create_session(&NewSession {
            user_id: user.id.clone(),
            ttl: Duration::from_secs(3600),
            ..NewSession::default()
        })
        .await
        .unwrap();
    let token = issuer
        .issue_access(&AccessRequest {
            subject: user.id.clone(),
            session_id: Some(session.id.clone()),
            ..AccessRequest::default()
        })
        .unwrap();
    let auth = format!("Bearer {}", token.token);
    let mut tasks = Vec::new();
    for i in 0..(LIMIT * 2) {
        let client = client.clone();
        let auth = auth.clone();
        let addr = if i % 2 == 0 { a } else { b };
        tasks.push(tokio::spawn(
            async move { status(&client, addr, &auth).await.0 },
        ));
    }
    let mut admitted = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => admitted += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((admitted, limited), (LIMIT, LIMIT));

    // A session revoked through instance A is refused by B within 1 s.
    let session = stores_a
        .create_session(&NewSession {
            user_id: user.id.clone(),
            ttl: Duration::from_secs(3600),
            ..NewSession::default()
        })
        .await
        .unwrap();
    let other = issuer
        .issue_access(&AccessRequest {
            subject: format!("{}-2", user.id),
            session_id: Some(session.id.clone()),
            ..AccessRequest::default()
        })
        .unwrap();
    let auth = format!("Bearer {}", other.token);
    assert_eq!(status(&client, b, &auth).await.0, 200);
    stores_a.revoke_session(&session.id).await.unwrap();
    let revoked_at = Instant::now();
    loop {
        let (code, body) = status(&client, b, &auth).await;
        if code == 401 {
            assert!(body.contains("auth.session_revoked"), "{body}");
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_millis(1100),
            "instance B still accepts a session revoked on A after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An API key revoked on A is refused by B within 1 s.
    let key = stores_a
        .create_api_key(&NewApiKey {
            name: "ci".into(),
            owner: format!("{}-3", user.id),
            ..NewApiKey::default()
        })
        .await
        .unwrap();
    let auth = format!("Bearer {}", key.key);
    assert_eq!(status(&client, b, &auth).await.0, 200);
    stores_a.revoke_api_key(&key.record.id).await.unwrap();
    let revoked_at = Instant::now();
    loop {
        let (code, body) = status(&client, b, &auth).await;
        if code == 401 {
            assert!(body.contains("auth.invalid_api_key"), "{body}");
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_millis(1100),
            "instance B still accepts an API key revoked on A"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A jti denied through A is refused by B within the bound: B cached the
    // token as not denied when it served it a moment ago.
    let session = stores_a
        .create_session(&NewSession {
            user_id: user.id.clone(),
            ttl: Duration::from_secs(3600),
            ..NewSession::default()
        })
        .await
        .unwrap();
    let t = issuer
        .issue_access(&AccessRequest {
            subject: format!("{}-4", user.id),
            session_id: Some(session.id),
            ..AccessRequest::default()
        })
        .unwrap();
    let auth = format!("Bearer {}", t.token);
    assert_eq!(status(&client, b, &auth).await.0, 200);
    stores_a.revoke_jti(&t.jti, t.expires_at).await.unwrap();
    let revoked_at = Instant::now();
    loop {
        let (code, body) = status(&client, b, &auth).await;
        if code == 401 {
            assert!(body.contains("auth.token_revoked"), "{body}");
            break;
        }
        assert_eq!(code, 200, "{body}");
        assert!(
            revoked_at.elapsed() < Duration::from_millis(1100),
            "instance B still accepts a jti denied on A"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // On A, which denied it, the refusal is immediate.
    let (code, body) = status(&client, a, &auth).await;
    assert_eq!(code, 401, "{body}");
}

/// A Redis holding the denylist and sessions that hangs (SIGSTOP, sockets
/// open) costs a token check nothing while the local revocation set is
/// younger than `revocation.max_stale` (the check is an in-memory lookup);
/// past it (`on_stale = "deny"`) tokens are refused at once with
/// `backend.unavailable`, never let through, and admitted again once the
/// store answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_revocation_store_costs_nothing_within_max_stale_and_refuses_past_it() {
    let server = own_redis::OwnRedis::start(None).await;
    let conn = RedisConnection::single(&server.url()).await.unwrap();
    let hot = Arc::new(RedisStores::new(conn, "pcx_hung:"));
    let memory = Arc::new(portcullis::stores::memory::MemoryStores::new());
    let backends = Backends {
        users: memory.clone(),
        sessions: hot.clone(),
        refresh: hot.clone(),
        denylist: hot,
        api_keys: memory.clone(),
        signing_keys: memory.clone(),
        apps: memory,
    };
    let hasher = SecretHasher::new(&[4; 32]).unwrap();
    let mut config = StoresConfig::new(hasher.clone());
    config.revocation.max_stale = Duration::from_secs(1);
    let stores = Arc::new(Stores::new(backends, config).unwrap());
    let mut keys = KeySet::new();
    keys.insert(Key::generate(Algorithm::ES256).unwrap().with_kid("k1"))
        .unwrap();
    let ic = IssuerConfig::new("https://issuer.test");
    let issuer = TokenIssuer::new(keys.clone(), ic.clone(), hasher);
    let guard = Guard::builder(GuardConfig::default().route(RouteConfig::new("docs", "/docs")))
        .local_keys(Verifier::new(keys, Validation::for_local_issuer(&ic)))
        .stores(Arc::clone(&stores))
        .build()
        .unwrap();
    let session = stores
        .create_session(&NewSession {
            user_id: "u1".into(),
            ttl: Duration::from_secs(600),
            ..NewSession::default()
        })
        .await
        .unwrap();
    let request = |sid: &str| {
        let token = issuer
            .issue_access(&AccessRequest {
                subject: "u1".into(),
                session_id: Some(sid.to_owned()),
                ..AccessRequest::default()
            })
            .unwrap()
            .token;
        http::Request::get("/docs")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
            .into_parts()
            .0
    };
    let (parts, unseen) = (request(&session.id), request(&session.id));
    let peer = Some("127.0.0.1".parse().unwrap());
    assert!(guard.check(&parts, peer).await.allowed());
    server.pause();
    // A token the guard has not seen: answered by the local set at once.
    let started = Instant::now();
    let fresh = guard.check(&unseen, peer).await;
    let fresh_took = started.elapsed();
    // Past max_stale: refused, at once too.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let started = Instant::now();
    let stale = guard.check(&unseen, peer).await;
    let stale_took = started.elapsed();
    server.resume();
    assert!(fresh.allowed(), "{:?}", fresh.refusal);
    // Far under the 250 ms revocation budget a store lookup would wait.
    assert!(
        fresh_took < Duration::from_millis(200),
        "a hung store cost the request {fresh_took:?}"
    );
    let r = stale.refusal.as_ref().expect("refused past max_stale");
    assert_eq!(r.code.as_str(), "backend.unavailable", "{r:?}");
    assert!(
        stale_took < Duration::from_millis(200),
        "a stale set cost the request {stale_took:?}"
    );
    // The store answers again: the next read of the log makes the set
    // fresh (the read hung since the pause completes first).
    let resumed = Instant::now();
    while !guard.check(&unseen, peer).await.allowed() {
        assert!(
            resumed.elapsed() < Duration::from_secs(3),
            "still refused after the store came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An API key whose owner's status cannot be read (the users' Redis hangs:
/// SIGSTOP, sockets open) is refused with `backend.unavailable` within the
/// revocation budget: a disabled owner is never let through by an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_whose_owner_cannot_be_checked_is_refused_within_the_budget() {
    let server = own_redis::OwnRedis::start(None).await;
    let conn = RedisConnection::single(&server.url()).await.unwrap();
    let users = Arc::new(RedisStores::new(conn, "pcx_hung_owner:"));
    let memory = Arc::new(portcullis::stores::memory::MemoryStores::new());
    let backends = Backends {
        users,
        sessions: memory.clone(),
        refresh: memory.clone(),
        denylist: memory.clone(),
        api_keys: memory.clone(),
        signing_keys: memory.clone(),
        apps: memory,
    };
    let mut sc = StoresConfig::new(SecretHasher::new(&[5; 32]).unwrap());
    sc.revocation_cache_ttl = Duration::ZERO;
    let stores = Arc::new(Stores::new(backends, sc).unwrap());
    let user = stores
        .create_user(&NewUser {
            username: "owner".into(),
            password: Some("correct horse battery".into()),
            ..NewUser::default()
        })
        .await
        .unwrap();
    let key = stores
        .create_api_key(&NewApiKey {
            name: "ci".into(),
            owner: user.id,
            ..NewApiKey::default()
        })
        .await
        .unwrap()
        .key;
    let guard = Guard::builder(
        GuardConfig::default().route(
            RouteConfig::new("docs", "/docs")
                .credentials([portcullis::guard::CredentialSource::ApiKey]),
        ),
    )
    .stores(Arc::clone(&stores))
    .build()
    .unwrap();
    let parts = http::Request::get("/docs")
        .header("authorization", format!("Bearer {key}"))
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let peer = Some("127.0.0.1".parse().unwrap());
    assert!(guard.check(&parts, peer).await.allowed());
    server.pause();
    let started = Instant::now();
    let d = guard.check(&parts, peer).await;
    let took = started.elapsed();
    server.resume();
    let r = d
        .refusal
        .as_ref()
        .expect("refused while the users' store hangs");
    assert_eq!(r.code.as_str(), "backend.unavailable", "{r:?}");
    assert!(
        took < Duration::from_millis(1000),
        "a hung users' store cost the request {took:?}"
    );
    assert!(guard.check(&parts, peer).await.allowed());
}
