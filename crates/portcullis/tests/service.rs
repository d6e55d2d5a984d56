//! The token service end to end over real HTTP: the router served by
//! `axum::serve` on 127.0.0.1:0, called with a hyper client. Each scenario
//! runs on the memory stores and once on PostgreSQL (users, API keys) +
//! Redis (sessions, refresh families, denylist, the login limiter).

#[cfg(feature = "redis")]
#[path = "support/own_redis.rs"]
mod own_redis;
mod support;

use std::any::Any;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use portcullis::anomaly::{AnomalyBackend, AnomalyEngine};
use portcullis::audit::jsonl::JsonlSink;
use portcullis::audit::{AuditWriter, AuditWriterConfig};
use portcullis::ratelimit::RateLimiter;
use portcullis::service::TokenService;
use portcullis::stores::{Backends, NewUser, Stores, StoresConfig};
use portcullis_core::anomaly::{Action, DetectorConfig, DetectorKind};
use portcullis_core::ratelimit::{Algorithm as Limit, KeySpec, Rule};
use portcullis_core::{
    Algorithm, IssuerConfig, Key, KeySet, SecretHasher, SystemClock, TokenIssuer,
};
use serde_json::{Value, json};

const PEPPER: [u8; 32] = [7u8; 32];
const ISSUER: &str = "https://auth.test";
const PASSWORD: &str = "correct horse battery staple";

fn hasher() -> SecretHasher {
    SecretHasher::new(&PEPPER).expect("pepper")
}

// ---------------------------------------------------------------- backends

/// The stores under test and whatever must live as long as they do.
struct Env {
    backends: Backends,
    /// Where the login limiter keeps its state (`None`: memory).
    redis_url: Option<String>,
    /// The signing keys every replica shares.
    keys: Arc<KeySet>,
    _guard: Box<dyn Any + Send>,
}

async fn memory() -> Env {
    Env {
        backends: Backends::all(Arc::new(portcullis::stores::memory::MemoryStores::new())),
        redis_url: None,
        keys: key_set(),
        _guard: Box::new(()),
    }
}

/// Deletes a test's Redis keys when dropped (even after a panic).
#[cfg(feature = "redis")]
struct RedisKeys {
    url: String,
    prefix: String,
}

#[cfg(feature = "redis")]
impl Drop for RedisKeys {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(support::redis_cleanup(&url, &prefix));
        });
        let _ = cleanup.join();
    }
}

/// Durable state (users, API keys, apps) on a fresh PostgreSQL database,
/// hot state (sessions, refresh families, denylist) on Redis under a fresh
/// prefix; `None` (skip) when either is unreachable and skipping is allowed.
#[cfg(all(feature = "postgres", feature = "redis"))]
async fn postgres_redis() -> Option<Env> {
    use portcullis::stores::postgres::PostgresStores;
    use portcullis::stores::redis::{RedisConnection, RedisStores};
    let db = support::FreshDatabase::create("service").await?;
    let url = support::redis_url()?;
    let durable = Arc::new(
        PostgresStores::connect(&db.url, 8)
            .await
            .expect("connect PostgreSQL"),
    );
    let prefix = support::unique_prefix("service");
    let conn = RedisConnection::single(&url).await.expect("connect Redis");
    let hot = Arc::new(RedisStores::new(conn, &prefix));
    Some(Env {
        backends: Backends {
            users: durable.clone(),
            api_keys: durable.clone(),
            signing_keys: durable.clone(),
            apps: durable,
            sessions: hot.clone(),
            refresh: hot.clone(),
            denylist: hot,
        },
        redis_url: Some(url.clone()),
        keys: key_set(),
        _guard: Box::new((db, RedisKeys { url, prefix })),
    })
}

// ------------------------------------------------------------------ server

/// What a test server is started with.
#[derive(Default)]
struct Options {
    /// Login attempts per account per minute.
    account_limit: Option<u64>,
    /// Login attempts per client IP per minute.
    ip_limit: Option<u64>,
    /// Detectors (default: every detector with its defaults).
    detectors: Option<Vec<DetectorConfig>>,
    /// The service's per-call store budget (default: the service's).
    store_budget: Option<Duration>,
}

/// The token service served on 127.0.0.1, with its stores and audit log.
struct Server {
    addr: SocketAddr,
    stores: Arc<Stores>,
    audit: Arc<AuditWriter>,
    audit_path: PathBuf,
    task: tokio::task::JoinHandle<()>,
    #[cfg(feature = "redis")]
    _limiter_keys: Option<RedisKeys>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.audit_path);
        let _ = std::fs::remove_file(self.audit_path.with_extension("spool"));
    }
}

/// Users every scenario expects: alice (editor), bob, and carol (disabled).
async fn seed(stores: &Stores) {
    if stores
        .user_by_username("alice")
        .await
        .expect("lookup")
        .is_some()
    {
        return;
    }
    let user = |name: &str, permissions: &[&str]| NewUser {
        username: name.to_owned(),
        password: Some(PASSWORD.to_owned()),
        roles: vec!["editor".to_owned()],
        permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        ..NewUser::default()
    };
    stores
        .create_user(&user("alice", &["docs.read", "docs.write"]))
        .await
        .expect("alice");
    stores
        .create_user(&user("bob", &["docs.read"]))
        .await
        .expect("bob");
    let carol = stores
        .create_user(&user("carol", &["docs.read"]))
        .await
        .expect("carol");
    stores
        .set_user_disabled(&carol.id, true)
        .await
        .expect("disable carol");
}

/// ES256 (active), RS256 and an HMAC key: the JWKS must show the first two only.
fn key_set() -> Arc<KeySet> {
    let mut keys = KeySet::new();
    keys.insert(
        Key::generate(Algorithm::ES256)
            .expect("ES256")
            .with_kid("k-es"),
    )
    .expect("insert");
    keys.insert(
        Key::generate(Algorithm::RS256)
            .expect("RS256")
            .with_kid("k-rs"),
    )
    .expect("insert");
    keys.insert(
        Key::generate(Algorithm::HS256)
            .expect("HS256")
            .with_kid("k-hs"),
    )
    .expect("insert");
    keys.set_active("k-es").expect("active");
    Arc::new(keys)
}

/// The login limiter of `options`, on the env's Redis (under a fresh
/// prefix, returned for cleanup) when it has one.
async fn login_limiter(env: &Env, options: &Options) -> (Option<RateLimiter>, Option<String>) {
    let minute = Duration::from_secs(60);
    let mut builder = RateLimiter::builder();
    if let Some(limit) = options.account_limit {
        builder = builder.rule(Rule::new(
            "login_per_account",
            Limit::SlidingLog {
                limit,
                period: minute,
            },
            KeySpec::subject(),
        ));
    }
    if let Some(limit) = options.ip_limit {
        builder = builder.rule(Rule::new(
            "login_per_ip",
            Limit::SlidingLog {
                limit,
                period: minute,
            },
            KeySpec::ip(),
        ));
    }
    if options.account_limit.is_none() && options.ip_limit.is_none() {
        return (None, None);
    }
    #[cfg(feature = "redis")]
    if let Some(url) = &env.redis_url {
        let prefix = support::unique_prefix("service_login");
        let conn = portcullis::redis_conn::RedisConnection::single(url)
            .await
            .expect("connect Redis");
        let limiter = builder.redis(conn, &prefix).build().expect("limiter");
        return (Some(limiter), Some(prefix));
    }
    #[cfg(not(feature = "redis"))]
    let _ = env;
    (Some(builder.build().expect("limiter")), None)
}

async fn start(env: &Env, options: Options) -> Server {
    let stores =
        Arc::new(Stores::new(env.backends.clone(), StoresConfig::new(hasher())).expect("stores"));
    seed(&stores).await;
    let keys = Arc::clone(&env.keys);
    let issuer = TokenIssuer::new(Arc::clone(&keys), IssuerConfig::new(ISSUER), hasher());
    let audit_path = std::env::temp_dir().join(format!(
        "{}.jsonl",
        support::unique_name("pcx_service_audit")
    ));
    let sink = JsonlSink::open(&audit_path, 1 << 30, 0).expect("audit sink");
    let mut audit_config = AuditWriterConfig::new(audit_path.with_extension("spool"));
    audit_config.flush_interval = Duration::from_millis(10);
    let audit = Arc::new(
        AuditWriter::start(Arc::new(sink), audit_config, Arc::new(SystemClock)).expect("audit"),
    );
    let detectors = options.detectors.clone().unwrap_or_else(|| {
        DetectorKind::ALL
            .iter()
            .map(|k| DetectorConfig::default_for(*k))
            .collect()
    });
    let anomaly = Arc::new(
        AnomalyEngine::new(
            detectors,
            AnomalyBackend::memory(10_000),
            None,
            Arc::new(SystemClock),
        )
        .expect("anomaly engine"),
    );
    let (limiter, limiter_prefix) = login_limiter(env, &options).await;
    let mut builder = TokenService::builder(Arc::clone(&stores), issuer, keys)
        .anomaly(anomaly)
        .audit(Arc::clone(&audit));
    if let Some(limiter) = limiter {
        builder = builder.login_limiter(limiter);
    }
    if let Some(budget) = options.store_budget {
        builder = builder.store_budget(budget);
    }
    let service = builder.build().expect("token service");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = service
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    #[cfg(not(feature = "redis"))]
    let _ = limiter_prefix;
    Server {
        addr,
        stores,
        audit,
        audit_path,
        task,
        #[cfg(feature = "redis")]
        _limiter_keys: limiter_prefix
            .and_then(|prefix| env.redis_url.clone().map(|url| RedisKeys { url, prefix })),
    }
}

// ------------------------------------------------------------------ client

/// One HTTP answer.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an RFC 9457 problem with `status` and `code`; returns the body.
    #[track_caller]
    fn problem(&self, status: StatusCode, code: &str) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let body = self.json();
        assert_eq!(body["code"], code, "body: {body}");
        assert_eq!(body["status"], status.as_u16());
        assert_eq!(body["type"], "about:blank");
        assert!(body["title"].is_string() && body["detail"].is_string());
        assert!(body["request_id"].is_string());
        if status == StatusCode::UNAUTHORIZED {
            let challenge = self.header("www-authenticate").expect("WWW-Authenticate");
            assert!(challenge.starts_with("Bearer realm="), "{challenge}");
            if code != "auth.missing_credentials" {
                assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
            }
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = self
                .header("retry-after")
                .expect("Retry-After")
                .parse()
                .expect("seconds");
            assert!(retry >= 1);
        }
        body
    }
}

impl Server {
    async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "auth.test")
            .header("user-agent", "service-test/1");
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let request = request.body(Full::new(Bytes::from(body))).expect("request");
        let response = sender.send_request(request).await.expect("response");
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.expect("body").to_bytes(),
        }
    }

    async fn post(&self, path: &str, bearer: Option<&str>, body: &Value) -> Reply {
        let bytes = serde_json::to_vec(body).expect("json");
        self.send(Method::POST, path, bearer, Some("application/json"), bytes)
            .await
    }

    async fn get(&self, path: &str, bearer: &str) -> Reply {
        self.send(Method::GET, path, Some(bearer), None, Vec::new())
            .await
    }

    async fn delete(&self, path: &str, bearer: &str) -> Reply {
        self.send(Method::DELETE, path, Some(bearer), None, Vec::new())
            .await
    }

    async fn login_as(&self, username: &str, password: &str) -> Reply {
        self.post(
            "/login",
            None,
            &json!({ "username": username, "password": password }),
        )
        .await
    }

    /// A successful login: (access token, refresh token, session id).
    async fn login(&self, username: &str) -> (String, String, String) {
        let reply = self.login_as(username, PASSWORD).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let body = reply.json();
        (
            body["access_token"].as_str().expect("access").to_owned(),
            body["refresh_token"].as_str().expect("refresh").to_owned(),
            body["session_id"].as_str().expect("sid").to_owned(),
        )
    }

    async fn refresh(&self, refresh_token: &str) -> Reply {
        self.post("/refresh", None, &json!({ "refresh_token": refresh_token }))
            .await
    }

    /// Every audit event written so far (stops the writer).
    async fn audit_events(&self) -> Vec<Value> {
        self.audit.shutdown().await;
        std::fs::read_to_string(&self.audit_path)
            .expect("audit log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("event"))
            .collect()
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["kind"].as_str()).collect()
}

// --------------------------------------------------------------- scenarios

/// login → call → refresh → the old refresh token again revokes the family
/// and the session → the new access token is refused.
async fn refresh_reuse_revokes_the_family_and_session(env: Env) {
    let srv = start(&env, Options::default()).await;
    let reply = srv.login_as("alice", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer");
    let near = |v: &Value, want: i64| v.as_i64().is_some_and(|v| (want - 2..=want).contains(&v));
    assert!(near(&body["expires_in"], 900), "{body}");
    assert!(near(&body["refresh_expires_in"], 7 * 24 * 3600), "{body}");
    let access1 = body["access_token"].as_str().expect("access").to_owned();
    let refresh1 = body["refresh_token"].as_str().expect("refresh").to_owned();
    let sid = body["session_id"].as_str().expect("sid").to_owned();
    assert!(refresh1.starts_with("pcr_"));

    let sessions = srv.get("/sessions", &access1).await;
    assert_eq!(sessions.status, StatusCode::OK, "{}", sessions.text());
    let list = sessions.json()["sessions"].clone();
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["id"], sid.as_str());
    assert_eq!(list[0]["current"], true);
    assert_eq!(list[0]["client_ip"], "127.0.0.1");

    let rotated = srv.refresh(&refresh1).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text());
    let body = rotated.json();
    let access2 = body["access_token"].as_str().expect("access").to_owned();
    let refresh2 = body["refresh_token"].as_str().expect("refresh").to_owned();
    assert_eq!(body["session_id"], sid.as_str());
    // Rotation keeps the family's lifetime: it never extends it.
    assert!(
        body["refresh_expires_in"]
            .as_i64()
            .is_some_and(|e| e <= 7 * 24 * 3600)
    );
    assert_ne!(refresh2, refresh1);
    assert_ne!(access2, access1);
    assert_eq!(srv.get("/sessions", &access2).await.status, StatusCode::OK);

    // The old token again: the family and the session are revoked.
    srv.refresh(&refresh1)
        .await
        .problem(StatusCode::UNAUTHORIZED, "auth.refresh_reused");
    srv.get("/sessions", &access2)
        .await
        .problem(StatusCode::UNAUTHORIZED, "auth.session_revoked");
    srv.refresh(&refresh2)
        .await
        .problem(StatusCode::UNAUTHORIZED, "auth.token_revoked");

    // Remember-me: the long lifetime, kept across rotation.
    let long = srv
        .post(
            "/login",
            None,
            &json!({ "username": "alice", "password": PASSWORD, "remember_me": true }),
        )
        .await
        .json();
    assert!(near(&long["refresh_expires_in"], 30 * 24 * 3600), "{long}");
    let rotated = srv
        .refresh(long["refresh_token"].as_str().expect("refresh"))
        .await
        .json();
    assert!(
        near(&rotated["refresh_expires_in"], 30 * 24 * 3600),
        "{rotated}"
    );

    let events = srv.audit_events().await;
    let seen = kinds(&events);
    for kind in [
        "login.succeeded",
        "token.issued",
        "token.rotated",
        "token.reuse_detected",
    ] {
        assert!(seen.contains(&kind), "{kind} missing from {seen:?}");
    }
    let reuse = events
        .iter()
        .find(|e| e["kind"] == "token.reuse_detected")
        .expect("reuse event");
    assert_eq!(reuse["decision"], "deny");
    assert_eq!(reuse["credential_id"], sid.as_str());
    assert!(
        reuse["anomaly_flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "refresh_reuse")),
        "{reuse}"
    );
    let log = std::fs::read_to_string(&srv.audit_path).expect("audit log");
    for secret in [&access1, &access2, &refresh1, &refresh2] {
        assert!(
            !log.contains(secret.as_str()),
            "a token reached the audit log"
        );
    }
    assert!(!log.contains(PASSWORD));
}

/// Logout revokes one session and the presented token; logout-all every session.
async fn logout_and_logout_all(env: Env) {
    let srv = start(&env, Options::default()).await;
    let (a_access, a_refresh, _) = srv.login("alice").await;
    let (b_access, b_refresh, _) = srv.login("alice").await;
    let (c_access, c_refresh, _) = srv.login("alice").await;

    let out = srv
        .post(
            "/logout",
            Some(&a_access),
            &json!({ "refresh_token": a_refresh }),
        )
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.text());
    srv.get("/sessions", &a_access)
        .await
        .problem(StatusCode::UNAUTHORIZED, "auth.token_revoked");
    srv.refresh(&a_refresh)
        .await
        .problem(StatusCode::UNAUTHORIZED, "auth.token_revoked");

    let left = srv.get("/sessions", &b_access).await;
    assert_eq!(left.status, StatusCode::OK);
    assert_eq!(left.json()["sessions"].as_array().map(Vec::len), Some(2));

    // A second replica on the same stores has seen `c`'s session as live.
    let replica = start(&env, Options::default()).await;
    assert_eq!(
        replica.get("/sessions", &c_access).await.status,
        StatusCode::OK
    );

    // No body at all is fine for logout-all (and for logout).
    let all = srv
        .send(
            Method::POST,
            "/logout-all",
            Some(&b_access),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text());
    assert_eq!(all.json()["revoked_sessions"], 2);
    srv.get("/sessions", &c_access)
        .await
        .problem(StatusCode::UNAUTHORIZED, "auth.session_revoked");
    srv.get("/sessions", &b_access)
        .await
        .problem(StatusCode::UNAUTHORIZED, "auth.token_revoked");
    // ...and refuses it within the revocation bound (1 s).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    replica
        .get("/sessions", &c_access)
        .await
        .problem(StatusCode::UNAUTHORIZED, "auth.session_revoked");
    for refresh in [&b_refresh, &c_refresh] {
        srv.refresh(refresh)
            .await
            .problem(StatusCode::UNAUTHORIZED, "auth.token_revoked");
    }
    // Logging in again works.
    let (fresh, _, _) = srv.login("alice").await;
    assert_eq!(srv.get("/sessions", &fresh).await.status, StatusCode::OK);
    let revoked = kinds(&srv.audit_events().await)
        .into_iter()
        .filter(|k| *k == "token.revoked")
        .count();
    assert_eq!(revoked, 2);
}

/// Only one's own sessions can be revoked; another user's is 404.
async fn sessions_of_others_are_not_found(env: Env) {
    let srv = start(&env, Options::default()).await;
    let (alice, _, alice_sid) = srv.login("alice").await;
    let (bob, _, _) = srv.login("bob").await;
    srv.delete(&format!("/sessions/{alice_sid}"), &bob)
        .await
        .problem(StatusCode::NOT_FOUND, "request.not_found");
    srv.delete("/sessions/no-such-session", &bob)
        .await
        .problem(StatusCode::NOT_FOUND, "request.not_found");
    assert_eq!(srv.get("/sessions", &alice).await.status, StatusCode::OK);
    let bob_view = srv.get("/sessions", &bob).await.json();
    assert!(!bob_view.to_string().contains(&alice_sid));

    let own = srv.delete(&format!("/sessions/{alice_sid}"), &alice).await;
    assert_eq!(own.status, StatusCode::NO_CONTENT, "{}", own.text());
    srv.get("/sessions", &alice)
        .await
        .problem(StatusCode::UNAUTHORIZED, "auth.session_revoked");
}

/// API keys: created and shown once, listed without secrets, revoked by
/// their owner only, refused once revoked; no key beyond one's permissions.
async fn api_keys_create_list_revoke(env: Env) {
    let srv = start(&env, Options::default()).await;
    let (alice, _, _) = srv.login("alice").await;
    let (bob, _, _) = srv.login("bob").await;

    let created = srv
        .post(
            "/api-keys",
            Some(&alice),
            &json!({ "name": "ci", "permissions": ["docs.read"], "expires_in": 3600 }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let body = created.json();
    let key = body["key"].as_str().expect("key").to_owned();
    let id = body["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with("pck_"));
    assert_eq!(body["permissions"], json!(["docs.read"]));
    assert!(body["expires_at"].as_i64().is_some());
    let record = srv.stores.verify_api_key(&key).await.expect("key verifies");
    assert_eq!(record.id, id);

    // All of the caller's permissions by default; never more than they hold.
    let full = srv
        .post("/api-keys", Some(&alice), &json!({ "name": "full" }))
        .await;
    assert_eq!(full.status, StatusCode::CREATED, "{}", full.text());
    assert_eq!(
        full.json()["permissions"],
        json!(["docs.read", "docs.write"])
    );
    srv.post(
        "/api-keys",
        Some(&bob),
        &json!({ "name": "sneaky", "permissions": ["docs.write"] }),
    )
    .await
    .problem(StatusCode::FORBIDDEN, "authz.denied");

    let listed = srv.get("/api-keys", &alice).await;
    assert_eq!(listed.status, StatusCode::OK);
    let text = listed.text();
    assert!(!text.contains(&key) && !text.contains("hash"), "{text}");
    let keys = listed.json()["api_keys"].clone();
    assert_eq!(keys.as_array().map(Vec::len), Some(2));
    assert!(
        srv.get("/api-keys", &bob).await.json()["api_keys"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );

    srv.delete(&format!("/api-keys/{id}"), &bob)
        .await
        .problem(StatusCode::NOT_FOUND, "request.not_found");
    // Another replica's stores verify the key (and remember it)...
    let replica =
        Stores::new(env.backends.clone(), StoresConfig::new(hasher())).expect("replica stores");
    assert!(replica.verify_api_key(&key).await.is_ok());
    assert!(srv.stores.verify_api_key(&key).await.is_ok());
    let revoked = srv.delete(&format!("/api-keys/{id}"), &alice).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.text());
    assert!(srv.stores.verify_api_key(&key).await.is_err());
    // ...and refuse it within the revocation bound (1 s).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(replica.verify_api_key(&key).await.is_err());
    srv.delete(&format!("/api-keys/{id}"), &alice)
        .await
        .problem(StatusCode::NOT_FOUND, "request.not_found");
    let after = srv.get("/api-keys", &alice).await.json();
    let entry = after["api_keys"]
        .as_array()
        .and_then(|l| l.iter().find(|k| k["id"] == id.as_str()).cloned())
        .expect("still listed");
    assert!(entry["revoked_at"].as_i64().is_some());

    let seen = srv.audit_events().await;
    let seen = kinds(&seen);
    assert!(seen.contains(&"api_key.created") && seen.contains(&"api_key.revoked"));
}

/// Unknown user, wrong password and disabled user get the same answer.
async fn failed_logins_look_the_same(env: Env) {
    let srv = start(&env, Options::default()).await;
    let answers = [
        srv.login_as("nobody", PASSWORD).await,
        srv.login_as("alice", "wrong password").await,
        srv.login_as("carol", PASSWORD).await,
        srv.login_as("", "").await,
    ];
    let mut bodies = Vec::new();
    for reply in &answers {
        let mut body = reply.problem(StatusCode::UNAUTHORIZED, "auth.invalid_credentials");
        body.as_object_mut().expect("object").remove("request_id");
        bodies.push(body);
        assert_eq!(
            reply.header("www-authenticate"),
            answers[0].header("www-authenticate")
        );
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    let events = srv.audit_events().await;
    assert_eq!(
        kinds(&events)
            .iter()
            .filter(|k| **k == "login.failed")
            .count(),
        4
    );
}

/// Login attempts are limited per account and per client IP: 429 with
/// Retry-After, even for the right password.
async fn login_is_rate_limited(env: Env) {
    let per_account = start(
        &env,
        Options {
            account_limit: Some(3),
            ..Options::default()
        },
    )
    .await;
    for _ in 0..3 {
        per_account
            .login_as("alice", "wrong")
            .await
            .problem(StatusCode::UNAUTHORIZED, "auth.invalid_credentials");
    }
    let limited = per_account.login_as("ALICE", PASSWORD).await;
    limited.problem(StatusCode::TOO_MANY_REQUESTS, "rate_limit.exceeded");
    assert!(limited.header("ratelimit").is_some());
    // Another account from the same client is not affected.
    per_account.login("bob").await;

    let per_ip = start(
        &env,
        Options {
            ip_limit: Some(4),
            ..Options::default()
        },
    )
    .await;
    for name in ["u1", "u2", "u3", "u4"] {
        per_ip
            .login_as(name, "wrong")
            .await
            .problem(StatusCode::UNAUTHORIZED, "auth.invalid_credentials");
    }
    per_ip
        .login_as("bob", PASSWORD)
        .await
        .problem(StatusCode::TOO_MANY_REQUESTS, "rate_limit.exceeded");
}

/// Without any limiter configured, logins are regulated by default: the
/// sixth wrong password for one account from one client is refused 429
/// `auth.too_many_attempts` with `Retry-After` (even the right password),
/// audited as `login.throttled`; the client's other accounts go on.
async fn logins_are_regulated_by_default(env: Env) {
    let srv = start(&env, Options::default()).await;
    for _ in 0..5 {
        srv.login_as("alice", "wrong")
            .await
            .problem(StatusCode::UNAUTHORIZED, "auth.invalid_credentials");
    }
    let refused = srv.login_as("alice", PASSWORD).await;
    refused.problem(StatusCode::TOO_MANY_REQUESTS, "auth.too_many_attempts");
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=15 * 60).contains(&retry), "{retry}");
    srv.login("bob").await;
    let events = srv.audit_events().await;
    let throttled: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "login.throttled")
        .collect();
    assert_eq!(throttled.len(), 1, "{events:?}");
    assert_eq!(throttled[0]["code"], "auth.too_many_attempts");
    assert_eq!(throttled[0]["status"], 429);
}

// ------------------------------------------------ memory-only checks

/// Bad JSON, unknown or missing fields, the wrong media type and an
/// oversized body get problem answers, never a 500.
async fn bad_bodies_get_problem_answers(env: Env) {
    let srv = start(&env, Options::default()).await;
    let raw = |body: &str| {
        srv.send(
            Method::POST,
            "/login",
            None,
            Some("application/json"),
            body.as_bytes().to_vec(),
        )
    };
    let p = raw("{not json")
        .await
        .problem(StatusCode::BAD_REQUEST, "request.invalid_body");
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not valid JSON"))
    );
    let p = raw(r#"{"username":"alice","password":"x","admin":true}"#)
        .await
        .problem(StatusCode::BAD_REQUEST, "request.invalid_body");
    assert!(
        p["detail"].as_str().is_some_and(|d| d.contains("admin")),
        "{p}"
    );
    let p = raw(r#"{"username":"alice"}"#)
        .await
        .problem(StatusCode::BAD_REQUEST, "request.invalid_body");
    assert!(
        p["detail"].as_str().is_some_and(|d| d.contains("password")),
        "{p}"
    );
    raw(r#"{"username":"alice","password":"x","remember_me":"yes"}"#)
        .await
        .problem(StatusCode::BAD_REQUEST, "request.invalid_body");
    raw("[]")
        .await
        .problem(StatusCode::BAD_REQUEST, "request.invalid_body");
    srv.send(
        Method::POST,
        "/login",
        None,
        Some("text/plain"),
        br#"{"username":"alice","password":"x"}"#.to_vec(),
    )
    .await
    .problem(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "request.unsupported_media_type",
    );
    let huge = format!(
        r#"{{"username":"alice","password":"{}"}}"#,
        "x".repeat(17 * 1024)
    );
    raw(&huge)
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE, "request.body_too_large");
    let (access, _, _) = srv.login("alice").await;
    srv.post(
        "/api-keys",
        Some(&access),
        &json!({ "name": "k", "scopes": [] }),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "request.invalid_body");
    srv.post("/api-keys", Some(&access), &json!({ "name": "" }))
        .await
        .problem(StatusCode::BAD_REQUEST, "request.invalid_input");
    srv.post(
        "/api-keys",
        Some(&access),
        &json!({ "name": "k", "expires_in": 0 }),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "request.invalid_input");
    srv.refresh("pcr_not-a-token")
        .await
        .problem(StatusCode::UNAUTHORIZED, "auth.malformed_token");
}

/// Calls without a usable bearer access token are refused with RFC 6750 challenges.
async fn callers_need_a_bearer_access_token(env: Env) {
    let srv = start(&env, Options::default()).await;
    let none = srv
        .send(Method::GET, "/sessions", None, None, Vec::new())
        .await;
    none.problem(StatusCode::UNAUTHORIZED, "auth.missing_credentials");
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\"")
    );
    let (_, refresh, _) = srv.login("alice").await;
    // A refresh token is never an access token.
    srv.get("/sessions", &refresh)
        .await
        .problem(StatusCode::UNAUTHORIZED, "auth.malformed_token");
    srv.get("/sessions", "e30.e30.c2ln")
        .await
        .problem(StatusCode::UNAUTHORIZED, "auth.malformed_token");
}

/// The JWKS holds public asymmetric keys only; discovery names the issuer
/// and its endpoints.
async fn jwks_and_discovery_are_public_only(env: Env) {
    let srv = start(&env, Options::default()).await;
    let jwks = srv
        .send(
            Method::GET,
            "/.well-known/jwks.json",
            None,
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.header("content-type"), Some("application/json"));
    let body = jwks.json();
    let keys = body["keys"].as_array().expect("keys");
    let kids: Vec<&str> = keys.iter().filter_map(|k| k["kid"].as_str()).collect();
    assert_eq!(kids.len(), 2, "{body}");
    assert!(kids.contains(&"k-es") && kids.contains(&"k-rs"));
    for key in keys {
        for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            assert!(key.get(private).is_none(), "`{private}` in {key}");
        }
    }

    let doc = srv
        .send(
            Method::GET,
            "/.well-known/openid-configuration",
            None,
            None,
            Vec::new(),
        )
        .await
        .json();
    assert_eq!(doc["issuer"], ISSUER);
    assert_eq!(
        doc["jwks_uri"],
        format!("{ISSUER}/.well-known/jwks.json").as_str()
    );
    assert_eq!(doc["token_endpoint"], format!("{ISSUER}/login").as_str());
    let algs = doc["id_token_signing_alg_values_supported"].clone();
    assert!(algs.as_array().is_some_and(|a| a.contains(&json!("ES256"))));
    assert!(!algs.to_string().contains("HS256"));
}

/// Login failures feed the detectors: enough of them ban the client, whose
/// next login is refused with 403 `anomaly.banned`.
async fn login_failures_feed_the_detectors(env: Env) {
    let mut detector = DetectorConfig::default_for(DetectorKind::AuthFailures);
    detector.threshold = 3;
    detector.actions = vec![Action::Ban, Action::Tag];
    detector.ban_for = Duration::from_secs(60);
    let srv = start(
        &env,
        Options {
            detectors: Some(vec![detector]),
            ..Options::default()
        },
    )
    .await;
    for _ in 0..3 {
        srv.login_as("alice", "wrong")
            .await
            .problem(StatusCode::UNAUTHORIZED, "auth.invalid_credentials");
    }
    let banned = srv.login_as("alice", PASSWORD).await;
    banned.problem(StatusCode::FORBIDDEN, "anomaly.banned");
    assert!(banned.header("retry-after").is_some());
    let events = srv.audit_events().await;
    let flagged = events
        .iter()
        .filter(|e| e["kind"] == "login.failed")
        .filter(|e| {
            e["anomaly_flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "auth_failures"))
        })
        .count();
    assert!(flagged >= 1, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_names_the_bad_field() {
    let env = memory().await;
    let stores = Arc::new(Stores::new(env.backends, StoresConfig::new(hasher())).expect("stores"));
    let keys = key_set();
    let bad = TokenIssuer::new(Arc::clone(&keys), IssuerConfig::new("not a url"), hasher());
    let err = TokenService::builder(Arc::clone(&stores), bad, Arc::clone(&keys))
        .build()
        .expect_err("bad issuer");
    assert!(err.to_string().contains("`issuer`"), "{err}");
    let issuer = TokenIssuer::new(Arc::clone(&keys), IssuerConfig::new(ISSUER), hasher());
    let err = TokenService::builder(stores, issuer, Arc::clone(&keys))
        .max_body_bytes(10)
        .build()
        .expect_err("tiny body bound");
    assert!(err.to_string().contains("`max_body_bytes`"), "{err}");
    let issuer = TokenIssuer::new(Arc::clone(&keys), IssuerConfig::new(ISSUER), hasher());
    let env = memory().await;
    let stores = Arc::new(Stores::new(env.backends, StoresConfig::new(hasher())).expect("stores"));
    let err = TokenService::builder(stores, issuer, keys)
        .store_budget(Duration::ZERO)
        .build()
        .expect_err("no store budget");
    assert!(err.to_string().contains("`store_budget`"), "{err}");
}

/// A store that hangs (its Redis stopped with SIGSTOP, sockets open) is a
/// store that is down: login, refresh and the API key list answer 503
/// `backend.unavailable` within the service's store budget, instead of
/// waiting out the connection's 2 s reply bound; once it is known down a
/// call costs nothing (circuit breaker); once the store answers again, so
/// does the service.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_is_answered_503_within_the_store_budget() {
    use portcullis::stores::redis::{RedisConnection, RedisStores};
    let redis = own_redis::OwnRedis::start(None).await;
    let conn = RedisConnection::single(&redis.url())
        .await
        .expect("connect Redis");
    let hung = Arc::new(RedisStores::new(conn, "pcx_service_hung:"));
    let memory = Arc::new(portcullis::stores::memory::MemoryStores::new());
    let env = Env {
        backends: Backends {
            users: hung.clone(),
            api_keys: hung.clone(),
            refresh: hung,
            signing_keys: memory.clone(),
            apps: memory.clone(),
            sessions: memory.clone(),
            denylist: memory,
        },
        redis_url: None,
        keys: key_set(),
        _guard: Box::new(()),
    };
    let budget = Duration::from_millis(300);
    let server = start(
        &env,
        Options {
            store_budget: Some(budget),
            ..Options::default()
        },
    )
    .await;
    let (access, refresh, _) = server.login("alice").await;

    redis.pause();
    let timed = |started: std::time::Instant, what: &str| {
        let took = started.elapsed();
        assert!(
            took >= budget && took < Duration::from_millis(1500),
            "{what} took {took:?} against a hung store (budget {budget:?})"
        );
    };
    let started = std::time::Instant::now();
    let reply = server.login_as("alice", PASSWORD).await;
    timed(started, "login");
    reply.problem(StatusCode::SERVICE_UNAVAILABLE, "backend.unavailable");
    let started = std::time::Instant::now();
    let reply = server.refresh(&refresh).await;
    timed(started, "refresh");
    reply.problem(StatusCode::SERVICE_UNAVAILABLE, "backend.unavailable");
    let started = std::time::Instant::now();
    let reply = server.get("/api-keys", &access).await;
    timed(started, "GET /api-keys");
    reply.problem(StatusCode::SERVICE_UNAVAILABLE, "backend.unavailable");
    let started = std::time::Instant::now();
    let reply = server
        .post("/api-keys", Some(&access), &json!({ "name": "ci" }))
        .await;
    timed(started, "POST /api-keys");
    reply.problem(StatusCode::SERVICE_UNAVAILABLE, "backend.unavailable");
    // Known down (the stores' circuit breaker is open after three failed
    // calls): the next call within the probe interval costs nothing.
    let started = std::time::Instant::now();
    let reply = server.get("/api-keys", &access).await;
    let took = started.elapsed();
    reply.problem(StatusCode::SERVICE_UNAVAILABLE, "backend.unavailable");
    assert!(
        took < budget - Duration::from_millis(100),
        "a store known down cost {took:?}"
    );

    redis.resume();
    // The breaker lets one probe through per 250 ms: answered again soon.
    let resumed = std::time::Instant::now();
    loop {
        let reply = server.get("/api-keys", &access).await;
        if reply.status == StatusCode::OK {
            break;
        }
        reply.problem(StatusCode::SERVICE_UNAVAILABLE, "backend.unavailable");
        assert!(
            resumed.elapsed() < Duration::from_secs(3),
            "still 503 after the store came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = server.refresh(&refresh).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

// ------------------------------------------------------------------ wiring

macro_rules! on_memory {
    ($($check:ident),* $(,)?) => {
        mod memory_stores {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::memory().await).await;
                }
            )*
        }
    };
}

macro_rules! on_every_backend {
    ($($check:ident),* $(,)?) => {
        on_memory!(
            $($check,)*
            bad_bodies_get_problem_answers,
            callers_need_a_bearer_access_token,
            jwks_and_discovery_are_public_only,
            login_failures_feed_the_detectors,
            logins_are_regulated_by_default,
        );

        #[cfg(all(feature = "postgres", feature = "redis"))]
        mod postgres_redis_stores {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some(env) = super::postgres_redis().await else { return };
                    super::$check(env).await;
                }
            )*
        }
    };
}

on_every_backend!(
    refresh_reuse_revokes_the_family_and_session,
    logout_and_logout_all,
    sessions_of_others_are_not_found,
    api_keys_create_list_revoke,
    failed_logins_look_the_same,
    login_is_rate_limited,
);
