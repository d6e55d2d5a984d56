//! The guard through `GuardLayer` over real HTTP: an axum app served on a
//! loopback port, called with a hyper client. Every step's refusal, its
//! status, problem body and headers; credentials never fall through; dry
//! run; exactly one audit event per request (counted in SQLite).

#![cfg(all(feature = "axum", feature = "sqlite", feature = "memory"))]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::Guard;
use portcullis::anomaly::{AnomalyBackend, AnomalyEngine};
use portcullis::audit::sqlite::SqliteAudit;
use portcullis::audit::{AuditWriter, AuditWriterConfig};
use portcullis::guard::{CredentialSource, GuardConfig, RouteConfig};
use portcullis::http::{GuardLayer, Principal};
use portcullis::stores::{Backends, NewApiKey, NewApp, NewSession, NewUser, Stores, StoresConfig};
use portcullis_core::anomaly::{Action, DetectorConfig, DetectorKind};
use portcullis_core::ratelimit::{ClientIpConfig, RuleConfig};
use portcullis_core::{
    AccessRequest, Algorithm, IssuerConfig, Key, KeySet, SecretHasher, SystemClock, TokenIssuer,
    Validation, Verifier,
};
use serde_json::Value;

struct Harness {
    addr: SocketAddr,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    stores: Arc<Stores>,
    issuer: TokenIssuer,
    audit: Arc<AuditWriter>,
    audit_db: SqliteAudit,
    anomaly: Arc<AnomalyEngine>,
    user_id: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rule(name: &str, limit: u64, key: &str) -> RuleConfig {
    RuleConfig {
        name: name.into(),
        algorithm: "fixed_window".into(),
        rate: None,
        burst: None,
        limit: Some(limit),
        period: 60.0,
        key: vec![key.into()],
        on_backend_error: None,
        lease: None,
    }
}

fn config() -> GuardConfig {
    GuardConfig::default()
        .rate_limit(rule("tight", 3, "subject"))
        .route(RouteConfig::new("health", "/health").credentials([CredentialSource::Anonymous]))
        .route(
            RouteConfig::new("optional", "/maybe")
                .credentials([CredentialSource::Jwt, CredentialSource::Anonymous]),
        )
        .route(RouteConfig::new("docs-read", "/docs/**").methods(["GET"]))
        .route(
            RouteConfig::new("docs-write", "/docs/**")
                .methods(["POST"])
                .permissions(["docs.write"]),
        )
        .route(RouteConfig::new("limited", "/limited").rate_limits(["tight"]))
        .route(RouteConfig::new("apps", "/apps/**").credentials([CredentialSource::App]))
        .route(
            RouteConfig::new("admin-dry", "/admin/**")
                .permissions(["admin.all"])
                .dry_run(),
        )
        .route(RouteConfig::new("blocked", "/blocked/**").deny())
}

async fn harness(config: GuardConfig) -> Harness {
    let dir = TempDir(std::env::temp_dir().join(support::unique_name("guard")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let hasher = SecretHasher::new(&[7; 32]).unwrap();
    let backend = Arc::new(portcullis::stores::memory::MemoryStores::new());
    let stores =
        Arc::new(Stores::new(Backends::all(backend), StoresConfig::new(hasher.clone())).unwrap());
    let mut keys = KeySet::new();
    keys.insert(Key::generate(Algorithm::ES256).unwrap().with_kid("k1"))
        .unwrap();
    let issuer = TokenIssuer::new(
        keys.clone(),
        IssuerConfig::new("https://issuer.test"),
        hasher,
    );
    let verifier = Verifier::new(
        keys,
        Validation::for_local_issuer(&IssuerConfig::new("https://issuer.test")),
    );
    let audit_db = SqliteAudit::open(&dir.0.join("audit.db"), Duration::from_secs(5))
        .await
        .unwrap();
    let mut wc = AuditWriterConfig::new(dir.0.join("spool"));
    wc.flush_interval = Duration::from_millis(10);
    let audit = Arc::new(
        AuditWriter::start(Arc::new(audit_db.clone()), wc, Arc::new(SystemClock)).unwrap(),
    );
    let anomaly = Arc::new(
        AnomalyEngine::new(
            vec![DetectorConfig {
                kind: DetectorKind::AuthFailures,
                threshold: 1000,
                window: Duration::from_secs(60),
                actions: vec![Action::Tag],
                ban_for: Duration::from_secs(60),
                cooldown: Duration::from_secs(60),
            }],
            AnomalyBackend::memory(10_000),
            None,
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    let guard = Guard::builder(config)
        .local_keys(verifier)
        .stores(Arc::clone(&stores))
        .anomaly(Arc::clone(&anomaly))
        .audit(Arc::clone(&audit))
        .build()
        .unwrap();
    let user = stores
        .create_user(&NewUser {
            username: "alice".into(),
            password: Some("correct horse battery".into()),
            permissions: vec!["docs.read".into()],
            ..NewUser::default()
        })
        .await
        .unwrap();

    async fn who(p: Principal) -> String {
        p.subject.clone()
    }
    async fn maybe(p: Option<Principal>) -> String {
        p.map_or_else(|| "anonymous".into(), |p| p.subject.clone())
    }
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/maybe", get(maybe))
        .route("/docs/{id}", get(who).post(who))
        .route("/limited", get(who))
        .route("/apps/{x}", get(who))
        .route("/admin/{x}", get(who))
        .route("/blocked/{x}", get(who))
        .route("/unrouted", get(who))
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
    Harness {
        addr,
        client: Client::builder(TokioExecutor::new()).build_http(),
        stores,
        issuer,
        audit,
        audit_db,
        anomaly,
        user_id: user.id,
        _dir: dir,
    }
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Harness {
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let res = self
            .client
            .request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn session_token(&self, claims: Value) -> (String, String, String) {
        let session = self
            .stores
            .create_session(&NewSession {
                user_id: self.user_id.clone(),
                ttl: Duration::from_secs(3600),
                ..NewSession::default()
            })
            .await
            .unwrap();
        let issued = self
            .issuer
            .issue_access(&AccessRequest {
                subject: self.user_id.clone(),
                session_id: Some(session.id.clone()),
                claims: claims.as_object().cloned().unwrap_or_default(),
                ..AccessRequest::default()
            })
            .unwrap();
        (issued.token, issued.jti, session.id)
    }

    async fn audit_count(&self) -> i64 {
        // Let the batcher flush.
        for _ in 0..100 {
            if self.audit.queued() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
            .fetch_one(self.audit_db.pool())
            .await
            .unwrap()
    }

    async fn last_event(&self) -> (String, Option<String>, Option<String>, Option<i64>) {
        self.audit_count().await;
        sqlx::query_as(
            "SELECT decision, code, route, status FROM audit_events ORDER BY ts_us DESC LIMIT 1",
        )
        .fetch_one(self.audit_db.pool())
        .await
        .unwrap()
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn missing_credentials_get_a_401_challenge_and_a_problem_body() {
    let h = harness(config()).await;
    let r = h.call("GET", "/docs/1", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "auth.missing_credentials");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"api\""));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let body = r.json();
    assert_eq!(body["status"], 401);
    assert_eq!(body["title"], "Unauthorized");
    assert!(body["detail"].as_str().unwrap().contains("bearer JWT"));
    assert_eq!(
        body["request_id"].as_str(),
        r.header("x-request-id"),
        "the body and the header carry the same request id"
    );
}

#[tokio::test]
async fn a_valid_token_reaches_the_handler_with_its_principal() {
    let h = harness(config()).await;
    let (token, _, _) = h.session_token(serde_json::json!({})).await;
    let r = h
        .call("GET", "/docs/1", &[("authorization", &bearer(&token))])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, h.user_id);
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test]
async fn bad_tokens_are_refused_with_invalid_token_and_never_fall_through_to_anonymous() {
    let h = harness(config()).await;
    let (token, _, _) = h.session_token(serde_json::json!({})).await;
    // Change one signature character away from the end (whose low bits
    // must stay canonical): a well-formed token with a wrong signature.
    let mut forged = token.clone().into_bytes();
    let i = forged.len() - 10;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for (auth, code) in [
        (bearer(&forged), "auth.invalid_signature"),
        (bearer("not.a.jwt"), "auth.malformed_token"),
        ("Basic Zm9vOmJhcg==".to_owned(), "auth.malformed_token"),
    ] {
        // `/maybe` takes anonymous callers, but a present credential decides.
        let r = h.call("GET", "/maybe", &[("authorization", &auth)]).await;
        assert_eq!(r.status, 401, "{auth}: {}", r.body);
        assert_eq!(r.code(), code, "{auth}");
        let challenge = r.header("www-authenticate").unwrap();
        assert!(challenge.starts_with("Bearer realm=\"api\", error=\"invalid_token\""));
    }
    let r = h.call("GET", "/maybe", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "anonymous"));
    let r = h
        .call("GET", "/maybe", &[("authorization", &bearer(&token))])
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, h.user_id.as_str()));
}

#[tokio::test]
async fn a_denied_jti_and_a_revoked_session_are_refused() {
    let h = harness(config()).await;
    let (token, jti, _) = h.session_token(serde_json::json!({})).await;
    let auth = bearer(&token);
    assert_eq!(
        h.call("GET", "/docs/1", &[("authorization", &auth)])
            .await
            .status,
        200
    );
    h.stores.revoke_jti(&jti, chrono_now() + 600).await.unwrap();
    let r = h.call("GET", "/docs/1", &[("authorization", &auth)]).await;
    assert_eq!((r.status, r.code().as_str()), (401, "auth.token_revoked"));

    let (token, _, sid) = h.session_token(serde_json::json!({})).await;
    let auth = bearer(&token);
    assert_eq!(
        h.call("GET", "/docs/1", &[("authorization", &auth)])
            .await
            .status,
        200
    );
    h.stores.revoke_session(&sid).await.unwrap();
    let r = h.call("GET", "/docs/1", &[("authorization", &auth)]).await;
    assert_eq!((r.status, r.code().as_str()), (401, "auth.session_revoked"));
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn api_keys_authenticate_and_stop_working_once_revoked() {
    let h = harness(config()).await;
    let created = h
        .stores
        .create_api_key(&NewApiKey {
            name: "ci".into(),
            owner: h.user_id.clone(),
            permissions: vec!["docs.write".into()],
            ..NewApiKey::default()
        })
        .await
        .unwrap();
    let r = h
        .call(
            "POST",
            "/docs/1",
            &[("authorization", &bearer(&created.key))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = h
        .call("POST", "/docs/1", &[("x-api-key", &created.key)])
        .await;
    assert_eq!(r.status, 200, "the configured header works too: {}", r.body);
    h.stores.revoke_api_key(&created.record.id).await.unwrap();
    let r = h
        .call("POST", "/docs/1", &[("x-api-key", &created.key)])
        .await;
    assert_eq!((r.status, r.code().as_str()), (401, "auth.invalid_api_key"));
    let r = h
        .call("GET", "/docs/1", &[("x-api-key", "pck_garbage")])
        .await;
    assert_eq!((r.status, r.code().as_str()), (401, "auth.invalid_api_key"));
}

#[tokio::test]
async fn app_credentials_are_checked_and_other_credentials_are_not_accepted_there() {
    let h = harness(config()).await;
    let app = h
        .stores
        .create_app(&NewApp {
            name: "billing".into(),
            ..NewApp::default()
        })
        .await
        .unwrap();
    let id = app.record.app_id.clone();
    let r = h
        .call(
            "GET",
            "/apps/x",
            &[("x-app-id", &id), ("x-app-secret", &app.secret)],
        )
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, id.as_str()));
    let r = h
        .call(
            "GET",
            "/apps/x",
            &[("x-app-id", &id), ("x-app-secret", "pcs_wrong")],
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "auth.invalid_app_credentials")
    );
    let (token, _, _) = h.session_token(serde_json::json!({})).await;
    let r = h
        .call("GET", "/apps/x", &[("authorization", &bearer(&token))])
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "auth.missing_credentials")
    );
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("does not accept a bearer JWT")
    );
}

#[tokio::test]
async fn a_missing_permission_is_a_403_naming_it() {
    let h = harness(config()).await;
    let (token, _, _) = h.session_token(serde_json::json!({})).await;
    let r = h
        .call("POST", "/docs/1", &[("authorization", &bearer(&token))])
        .await;
    assert_eq!((r.status, r.code().as_str()), (403, "authz.denied"));
    assert!(
        r.json()["detail"].as_str().unwrap().contains("docs.write"),
        "{}",
        r.body
    );
    let (token, _, _) = h
        .session_token(serde_json::json!({"permissions": ["docs.*"]}))
        .await;
    let r = h
        .call("POST", "/docs/1", &[("authorization", &bearer(&token))])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn unmatched_and_denied_routes_are_refused_by_default() {
    let h = harness(config()).await;
    let (token, _, _) = h
        .session_token(serde_json::json!({"permissions": ["*"]}))
        .await;
    let auth = bearer(&token);
    let r = h
        .call("GET", "/unrouted", &[("authorization", &auth)])
        .await;
    assert_eq!((r.status, r.code().as_str()), (403, "authz.denied"));
    let r = h
        .call("GET", "/blocked/1", &[("authorization", &auth)])
        .await;
    assert_eq!((r.status, r.code().as_str()), (403, "authz.denied"));
}

#[tokio::test]
async fn rate_limits_add_headers_and_refuse_with_retry_after() {
    let h = harness(config()).await;
    let (token, _, _) = h.session_token(serde_json::json!({})).await;
    let auth = bearer(&token);
    for remaining in [2, 1, 0] {
        let r = h.call("GET", "/limited", &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200);
        assert!(r.header("ratelimit-policy").unwrap().contains("\"tight\""));
        let rl = r.header("ratelimit").unwrap();
        assert!(rl.contains(&format!("r={remaining}")), "{rl}");
    }
    let r = h.call("GET", "/limited", &[("authorization", &auth)]).await;
    assert_eq!((r.status, r.code().as_str()), (429, "rate_limit.exceeded"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert!(r.header("ratelimit").is_some());
    // Another subject has its own budget.
    let bob = h
        .stores
        .create_user(&NewUser {
            username: "bob".into(),
            password: Some("correct horse battery".into()),
            ..NewUser::default()
        })
        .await
        .unwrap();
    let session = h
        .stores
        .create_session(&NewSession {
            user_id: bob.id.clone(),
            ttl: Duration::from_secs(60),
            ..NewSession::default()
        })
        .await
        .unwrap();
    let t = h
        .issuer
        .issue_access(&AccessRequest {
            subject: bob.id.clone(),
            session_id: Some(session.id),
            ..AccessRequest::default()
        })
        .unwrap();
    let r = h
        .call("GET", "/limited", &[("authorization", &bearer(&t.token))])
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_banned_ip_is_refused_before_authentication_with_retry_after() {
    let h = harness(config()).await;
    h.anomaly
        .ban(
            portcullis_core::anomaly::BanTarget::Ip("127.0.0.1".into()),
            Duration::from_secs(120),
            "manual",
        )
        .await
        .unwrap();
    let r = h.call("GET", "/health", &[]).await;
    assert_eq!((r.status, r.code().as_str()), (403, "anomaly.banned"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((119..=120).contains(&retry), "{retry}");
    h.anomaly
        .lift_ban(&portcullis_core::anomaly::BanTarget::Ip("127.0.0.1".into()))
        .await
        .unwrap();
    assert_eq!(h.call("GET", "/health", &[]).await.status, 200);
}

#[tokio::test]
async fn a_banned_subject_is_refused_after_authentication() {
    let h = harness(config()).await;
    let (token, _, _) = h.session_token(serde_json::json!({})).await;
    h.anomaly
        .ban(
            portcullis_core::anomaly::BanTarget::Subject(h.user_id.clone()),
            Duration::from_secs(60),
            "manual",
        )
        .await
        .unwrap();
    let r = h
        .call("GET", "/docs/1", &[("authorization", &bearer(&token))])
        .await;
    assert_eq!((r.status, r.code().as_str()), (403, "anomaly.banned"));
}

#[tokio::test]
async fn dry_run_lets_the_request_through_and_audits_the_would_be_refusal() {
    let h = harness(config()).await;
    let (token, _, _) = h.session_token(serde_json::json!({})).await;
    let r = h
        .call("GET", "/admin/x", &[("authorization", &bearer(&token))])
        .await;
    assert_eq!(r.status, 200, "dry run never refuses: {}", r.body);
    let (decision, code, route, status) = h.last_event().await;
    assert_eq!(decision, "deny");
    assert_eq!(code.as_deref(), Some("authz.denied"));
    assert_eq!(route.as_deref(), Some("admin-dry"));
    assert_eq!(status, Some(200));
    let reason: Option<String> =
        sqlx::query_scalar("SELECT reason FROM audit_events ORDER BY ts_us DESC LIMIT 1")
            .fetch_one(h.audit_db.pool())
            .await
            .unwrap();
    assert_eq!(
        reason.as_deref(),
        Some("dry_run: missing_permission: missing permission `admin.all`"),
        "the event says which rule refused and why"
    );
}

#[tokio::test]
async fn exactly_one_audit_event_per_request_allowed_or_refused() {
    let h = harness(config()).await;
    let (token, _, _) = h.session_token(serde_json::json!({})).await;
    let auth = bearer(&token);
    type Call<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let calls: Vec<Call<'_>> = vec![
        ("GET", "/health", vec![]),
        ("GET", "/docs/1", vec![]),
        ("GET", "/docs/1", vec![("authorization", auth.as_str())]),
        ("POST", "/docs/1", vec![("authorization", auth.as_str())]),
        ("GET", "/docs/1", vec![("authorization", "Bearer x.y.z")]),
        ("GET", "/unrouted", vec![]),
        ("GET", "/limited", vec![("authorization", auth.as_str())]),
    ];
    for (m, p, hs) in &calls {
        h.call(m, p, hs).await;
    }
    assert_eq!(h.audit_count().await, calls.len() as i64);
    let (decision, code, route, status) = h.last_event().await;
    assert_eq!(
        (decision.as_str(), code, route.as_deref(), status),
        ("allow", None, Some("limited"), Some(200))
    );
    let denied: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE decision = 'deny'")
            .fetch_one(h.audit_db.pool())
            .await
            .unwrap();
    assert_eq!(denied, 4);
}

#[tokio::test]
async fn the_request_id_is_adopted_only_from_a_trusted_proxy() {
    let h = harness(config()).await;
    let r = h
        .call("GET", "/health", &[("x-request-id", "client-chosen")])
        .await;
    assert_eq!(r.status, 200);
    assert_ne!(r.header("x-request-id"), Some("client-chosen"));

    let mut trusting = config();
    trusting.client_ip = ClientIpConfig::new()
        .trusted_proxies(["127.0.0.1"])
        .unwrap();
    let h = harness(trusting).await;
    let r = h
        .call("GET", "/health", &[("x-request-id", "proxy-chosen")])
        .await;
    assert_eq!(r.header("x-request-id"), Some("proxy-chosen"));
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_configured_header_names_the_client_and_forwarded_is_ignored() {
    let mut c = config();
    c.client_ip = ClientIpConfig::new()
        .trusted_proxies(["127.0.0.1"])
        .unwrap();
    let h = harness(c).await;
    h.anomaly
        .ban(
            portcullis_core::anomaly::BanTarget::Ip("203.0.113.9".into()),
            Duration::from_secs(60),
            "manual",
        )
        .await
        .unwrap();
    let r = h
        .call("GET", "/health", &[("x-forwarded-for", "203.0.113.9")])
        .await;
    assert_eq!(
        r.code(),
        "anomaly.banned",
        "XFF from a trusted proxy names the client"
    );
    // A client behind an XFF-writing proxy cannot pick its address with `Forwarded`.
    let r = h
        .call(
            "GET",
            "/health",
            &[
                ("forwarded", "for=198.51.100.1"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        )
        .await;
    assert_eq!(r.code(), "anomaly.banned");
}

#[tokio::test]
async fn a_guard_that_verifies_jwts_needs_stores_or_an_explicit_opt_out() {
    let mut keys = KeySet::new();
    keys.insert(Key::generate(Algorithm::ES256).unwrap().with_kid("k1"))
        .unwrap();
    let verifier = || Verifier::new(keys.clone(), Validation::new().with_issuer("iss"));
    let err = Guard::builder(config_without_stores())
        .local_keys(verifier())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("revocation"), "{err}");
    Guard::builder(config_without_stores())
        .local_keys(verifier())
        .without_revocation()
        .build()
        .unwrap();
    let err = Guard::builder(config())
        .local_keys(verifier())
        .without_revocation()
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("stores()"),
        "API-key routes need stores: {err}"
    );
}

fn config_without_stores() -> GuardConfig {
    GuardConfig::default().route(RouteConfig::new("a", "/a").credentials([CredentialSource::Jwt]))
}

#[tokio::test]
async fn config_errors_name_the_route_and_field() {
    let bad = GuardConfig::default().route(RouteConfig::new("r1", "/x").rate_limits(["nope"]));
    let err = Guard::builder(bad)
        .without_revocation()
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("route `r1`"), "{err}");
    let toml_like: Result<GuardConfig, _> = serde_json::from_value(serde_json::json!({
        "routes": [{"name": "x", "path": "/x", "credentails": ["jwt"]}]
    }));
    assert!(toml_like.unwrap_err().to_string().contains("credentails"));
}

#[tokio::test]
async fn signed_service_requests_are_verified_over_their_body_and_never_replayed() {
    use portcullis::authz::{MemoryNonceStore, SignedRequestAuthenticator};
    use portcullis_core::authz::signed_request::{SignedParts, sign};
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    let config = GuardConfig::default()
        .route(RouteConfig::new("svc", "/svc/**").credentials([CredentialSource::Signed]));
    let guard = Guard::builder(config)
        .signed_requests(
            SignedRequestAuthenticator::new(MemoryNonceStore::default())
                .with_app("billing", SECRET)
                .unwrap(),
        )
        .without_revocation()
        .build()
        .unwrap();
    async fn echo(p: Principal, body: String) -> String {
        format!("{}:{body}", p.subject)
    }
    let app = Router::new()
        .route("/svc/echo", axum::routing::post(echo))
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
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let send = |body: &'static str, signed_body: &'static str, nonce: &'static str| {
        let client = client.clone();
        async move {
            let ts = chrono_now();
            let parts = SignedParts {
                method: "POST",
                path: "/svc/echo",
                query: "",
                body: signed_body.as_bytes(),
            };
            let sig = sign(SECRET, "billing", ts, nonce, &parts);
            let req = http::Request::post(format!("http://{addr}/svc/echo"))
                .header("x-portcullis-app", "billing")
                .header("x-portcullis-timestamp", ts.to_string())
                .header("x-portcullis-nonce", nonce)
                .header("x-portcullis-signature", sig)
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap();
            let res = client.request(req).await.unwrap();
            let status = res.status().as_u16();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, body) = send("{\"amount\":5}", "{\"amount\":5}", "nonce-0000000001").await;
    assert_eq!((status, body.as_str()), (200, "billing:{\"amount\":5}"));
    let (status, body) = send("{\"amount\":5}", "{\"amount\":5}", "nonce-0000000001").await;
    assert_eq!(status, 401, "a replayed nonce is refused: {body}");
    assert!(body.contains("auth.invalid_signature_request"));
    let (status, body) = send("{\"amount\":500}", "{\"amount\":5}", "nonce-0000000002").await;
    assert_eq!(
        status, 401,
        "a body other than the signed one is refused: {body}"
    );
    let (status, _) = send("{}", "{}", "nonce-0000000003").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_credential_store_that_is_down_is_a_503_not_a_401_and_never_a_pass() {
    use portcullis::stores::sqlite::SqliteStores;
    let dir = TempDir(std::env::temp_dir().join(support::unique_name("guard_down")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let db = Arc::new(SqliteStores::open(&dir.0.join("stores.db")).await.unwrap());
    let hasher = SecretHasher::new(&[5; 32]).unwrap();
    let mut stores_config = StoresConfig::new(hasher.clone());
    stores_config.revocation.max_stale = Duration::from_secs(1);
    let stores = Arc::new(Stores::new(Backends::all(Arc::clone(&db)), stores_config).unwrap());
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
    let user = stores
        .create_user(&NewUser {
            username: "dana".into(),
            password: Some("correct horse battery".into()),
            ..NewUser::default()
        })
        .await
        .unwrap();
    let session = stores
        .create_session(&NewSession {
            user_id: user.id.clone(),
            ttl: Duration::from_secs(600),
            ..NewSession::default()
        })
        .await
        .unwrap();
    let token = issuer
        .issue_access(&AccessRequest {
            subject: user.id,
            session_id: Some(session.id),
            ..AccessRequest::default()
        })
        .unwrap()
        .token;
    let key = stores
        .create_api_key(&NewApiKey {
            name: "ci".into(),
            owner: "svc".into(),
            ..NewApiKey::default()
        })
        .await
        .unwrap()
        .key;
    let parts = |auth: &str| {
        http::Request::get("/docs")
            .header("authorization", auth)
            .body(())
            .unwrap()
            .into_parts()
            .0
    };
    let peer = Some("127.0.0.1".parse().unwrap());
    assert!(guard.check(&parts(&bearer(&token)), peer).await.allowed());
    // The database goes away. Within `revocation.max_stale` (1 s here) a
    // JWT is answered by the local revocation set, which the outage only
    // makes staler...
    db.pool().close().await;
    assert!(guard.check(&parts(&bearer(&token)), peer).await.allowed());
    // ...past it (`on_stale = "deny"`, the default) the JWT is refused, and
    // so is the API key once its 1 s cache entry is gone: both fail closed.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(stores.revocations().is_stale());
    for auth in [bearer(&token), bearer(&key)] {
        let d = guard.check(&parts(&auth), peer).await;
        let r = d.refusal.as_ref().expect("refused while the store is down");
        assert_eq!(r.status.as_u16(), 503, "{auth}: {r:?}");
        assert_eq!(r.code.as_str(), "backend.unavailable");
    }
}

#[tokio::test]
async fn an_api_key_of_a_disabled_user_is_refused_until_the_user_is_enabled() {
    let h = harness(config()).await;
    let created = h
        .stores
        .create_api_key(&NewApiKey {
            name: "ci".into(),
            owner: h.user_id.clone(),
            permissions: vec!["docs.write".into()],
            ..NewApiKey::default()
        })
        .await
        .unwrap();
    let auth = bearer(&created.key);
    let r = h.call("POST", "/docs/1", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{}", r.body);

    h.stores.set_user_disabled(&h.user_id, true).await.unwrap();
    let r = h.call("POST", "/docs/1", &[("authorization", &auth)]).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "auth.token_revoked"),
        "{}",
        r.body
    );
    assert!(r.json()["detail"].as_str().unwrap().contains("disabled"));
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
    let (decision, code, _, status) = h.last_event().await;
    assert_eq!(
        (decision.as_str(), code.as_deref(), status),
        ("deny", Some("auth.token_revoked"), Some(401))
    );

    // The key itself was not revoked: it works again for an enabled owner.
    h.stores.set_user_disabled(&h.user_id, false).await.unwrap();
    let r = h.call("POST", "/docs/1", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

const SIGNING_SECRET: &[u8] = b"signing-secret-signing-secret-32b!";

/// A signed route (bodies up to 64 bytes) through `GuardLayer`, audited to SQLite.
async fn signed_harness() -> (SocketAddr, SqliteAudit, Arc<AuditWriter>, TempDir) {
    use portcullis::authz::{MemoryNonceStore, SignedRequestAuthenticator};
    let dir = TempDir(std::env::temp_dir().join(support::unique_name("guard_signed")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let audit_db = SqliteAudit::open(&dir.0.join("audit.db"), Duration::from_secs(5))
        .await
        .unwrap();
    let mut wc = AuditWriterConfig::new(dir.0.join("spool"));
    wc.flush_interval = Duration::from_millis(10);
    let audit = Arc::new(
        AuditWriter::start(Arc::new(audit_db.clone()), wc, Arc::new(SystemClock)).unwrap(),
    );
    let mut config = GuardConfig::default()
        .route(RouteConfig::new("hooks", "/hooks/**").credentials([CredentialSource::Signed]));
    config.max_signed_body_bytes = 64;
    let signed = SignedRequestAuthenticator::new(MemoryNonceStore::default())
        .with_app("billing", SIGNING_SECRET)
        .unwrap();
    let guard = Guard::builder(config)
        .signed_requests(signed)
        .audit(Arc::clone(&audit))
        .build()
        .unwrap();
    async fn who(p: Principal) -> String {
        p.subject.clone()
    }
    let app = Router::new()
        .route("/hooks/{x}", axum::routing::post(who))
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
    (addr, audit_db, audit, dir)
}

/// A POST of `body` to `path` signed by the app `billing`.
fn signed_post(addr: SocketAddr, path: &str, body: &[u8]) -> http::Request<Full<Bytes>> {
    use portcullis_core::authz::signed_request::{self, SignedParts};
    let ts = chrono_now();
    let nonce = format!("n{}", support::unique_name("nonce").replace(['-', '_'], ""));
    let signature = signed_request::sign(
        SIGNING_SECRET,
        "billing",
        ts,
        &nonce,
        &SignedParts {
            method: "POST",
            path,
            query: "",
            body,
        },
    );
    http::Request::post(format!("http://{addr}{path}"))
        .header("x-portcullis-app", "billing")
        .header("x-portcullis-timestamp", ts.to_string())
        .header("x-portcullis-nonce", nonce)
        .header("x-portcullis-signature", signature)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap()
}

/// A signed request whose body passes the bound is answered 413 before any
/// check runs, and its one audit event records that 413 and its code.
#[tokio::test]
async fn an_oversized_signed_body_is_refused_413_and_audited_as_413() {
    let (addr, audit_db, audit, _dir) = signed_harness().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let small = br#"{"amount":1}"#;
    let res = client
        .request(signed_post(addr, "/hooks/pay", small))
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "a signed body within the bound goes through"
    );

    let big = vec![b'x'; 1000];
    let res = client
        .request(signed_post(addr, "/hooks/pay", &big))
        .await
        .unwrap();
    let status = res.status().as_u16();
    let request_id = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "request.body_too_large", "{body}");
    assert_eq!(body["status"], 413);
    assert!(
        body["detail"].as_str().unwrap().contains("64 bytes"),
        "{body}"
    );
    assert_eq!(body["request_id"].as_str(), request_id.as_deref());

    // Exactly one event per request; the oversized one says what the client got.
    for _ in 0..100 {
        if audit.queued() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // decision, code, status, request_id
    type Row = (String, Option<String>, Option<i64>, Option<String>);
    let events: Vec<Row> = sqlx::query_as(
        "SELECT decision, code, status, request_id FROM audit_events ORDER BY ts_us",
    )
    .fetch_all(audit_db.pool())
    .await
    .unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        events[1],
        (
            "deny".to_owned(),
            Some("request.body_too_large".to_owned()),
            Some(413),
            request_id
        )
    );
}

#[tokio::test]
async fn the_audit_event_keeps_a_redacted_path_and_a_bounded_user_agent() {
    let h = harness(config()).await;
    // Longer than the 256 bytes kept, with multi-byte characters around the cut.
    let agent = format!("probe/1.0 {}", "é".repeat(200));
    let r = h
        .call(
            "GET",
            "/health?access_token=s3cret-value&page=2",
            &[("user-agent", &agent)],
        )
        .await;
    assert_eq!(r.status, 200);
    h.audit_count().await;
    let (path, ua): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT path, user_agent FROM audit_events ORDER BY ts_us DESC LIMIT 1")
            .fetch_one(h.audit_db.pool())
            .await
            .unwrap();
    assert_eq!(path.as_deref(), Some("/health?page=2"));
    let ua = ua.unwrap();
    assert!(ua.starts_with("probe/1.0 éé"), "{ua}");
    assert!(ua.len() <= 256 && ua.len() >= 250, "{} bytes", ua.len());
    assert!(!ua.contains('\u{fffd}'), "cut inside a character: {ua}");
}
