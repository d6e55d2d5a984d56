//! The admin API over real HTTP on the real binary (SQLite stores and
//! audit log): only on the ops listener, only with an admin key holding the
//! route's permission, every call audited; users, sessions, tokens, API
//! keys, apps and bans end to end through the public listener; bad input
//! refused naming the field; every route of the OpenAPI document exists.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use support::{
    Gateway, GatewayConfig, HttpClient, PASSWORD, Reply, Route, TempDir, Upstream, bootstrap_admin,
    bootstrap_admin_with, client, echo_upstream, get, portcullis, post, send, toml_str,
};

struct Admin {
    dir: TempDir,
    gateway: Gateway,
    client: HttpClient,
    config: String,
    key: String,
    audit_db: std::path::PathBuf,
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    let body = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    b.body(Full::new(body)).unwrap()
}

async fn start() -> Admin {
    let dir = TempDir::new("admin");
    let mut replicas = start_replicas(dir, |c| c, 1).await;
    replicas.remove(0)
}

/// `n` gateways on the same `[storage]` (the SQLite stores in `dir`, or
/// what `storage` makes of them; each its own audit file), the admin key
/// bootstrapped once. They share `dir` (kept by the first).
async fn start_replicas(
    dir: TempDir,
    storage: impl Fn(GatewayConfig) -> GatewayConfig,
    n: usize,
) -> Vec<Admin> {
    let upstream = echo_upstream().await;
    let client = client();
    let mut configs = Vec::new();
    for i in 0..n {
        let audit_db = dir.join(&format!("audit-{i}.db"));
        let config = storage(GatewayConfig::new(&dir))
            .audit_lines(&format!(
                "sqlite = {}",
                toml_str(&audit_db.display().to_string())
            ))
            .route(Route::new("api", "/api/**").credentials(&["jwt", "api_key", "app"]))
            .route(Route::new("open", "/open/**").credentials(&["anonymous"]))
            .upstream(Upstream::new(
                "echo",
                &format!("http://{upstream}"),
                &["api", "open"],
            ));
        let path = config.write_as(&format!("gateway-{i}"));
        configs.push((path, config, audit_db));
    }
    let key = bootstrap_admin(&configs[0].0);
    let mut out = Vec::new();
    let mut dir = Some(dir);
    for (i, (path, config, audit_db)) in configs.into_iter().enumerate() {
        let holder = dir.take().unwrap_or_else(|| TempDir::new("admin-replica"));
        let gateway = config.start(&holder, &format!("gateway-{i}"));
        gateway.wait_ready(&client).await;
        out.push(Admin {
            dir: holder,
            gateway,
            client: client.clone(),
            config: path.to_str().unwrap().to_owned(),
            key: key.clone(),
            audit_db,
        });
    }
    out
}

/// Replicas on a fresh PostgreSQL database and a unique Redis prefix; the
/// gateways stop before the database and the keys are removed (fields
/// drop in order).
struct SharedBackends {
    replicas: Vec<Admin>,
    _prefix: support::RedisPrefix,
    _db: support::FreshDatabase,
}

/// `n` replicas on PostgreSQL + Redis (`None`: a server is unreachable and
/// skipping is allowed).
async fn on_postgres_and_redis(label: &str, n: usize) -> Option<SharedBackends> {
    let db = support::FreshDatabase::create(label).await?;
    let redis = support::redis_url()?;
    let prefix = support::RedisPrefix {
        urls: vec![redis.clone()],
        prefix: support::unique_name(&format!("pcx-{label}")),
    };
    let dir = TempDir::new(&format!("{label}-pg"));
    let storage = |c: GatewayConfig| {
        c.storage_url(&db.url)
            .storage(&format!("redis = {}", toml_str(&redis)))
            .storage(&format!("redis_prefix = {}", toml_str(&prefix.prefix)))
    };
    Some(SharedBackends {
        replicas: start_replicas(dir, storage, n).await,
        _prefix: prefix,
        _db: db,
    })
}

impl Admin {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        send(
            &self.client,
            request(self.gateway.ops, method, path, Some(&self.key), body),
        )
        .await
    }

    async fn create_user(&self, username: &str, roles: &[&str]) -> String {
        let r = self
            .call(
                "POST",
                "/admin/users",
                Some(json!({"username": username, "password": PASSWORD, "roles": roles})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert!(r.json().get("password_hash").is_none(), "never shown");
        r.json()["id"].as_str().unwrap().to_owned()
    }

    async fn login(&self, username: &str) -> Value {
        let body = json!({"username": username, "password": PASSWORD}).to_string();
        let r = self.public_post("/auth/login", &body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.json()
    }

    /// A JSON POST to the public listener (the token service).
    async fn public_post(&self, path: &str, body: &str) -> Reply {
        send(
            &self.client,
            post(
                self.gateway.public,
                path,
                &[("content-type", "application/json")],
                body,
            ),
        )
        .await
    }

    async fn public_get(&self, path: &str, bearer: &str) -> Reply {
        send(
            &self.client,
            get(
                self.gateway.public,
                path,
                &[("authorization", &format!("Bearer {bearer}"))],
            ),
        )
        .await
    }
}

/// Polls until the public listener answers `want` (the revocation bound).
async fn eventually(admin: &Admin, path: &str, bearer: &str, want: StatusCode) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = admin.public_get(path, bearer).await;
        if r.status == want || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_keys_on_the_ops_listener_reach_the_admin_api() {
    let admin = start().await;
    let ops = admin.gateway.ops;

    // No key: 401 with the admin realm.
    let r = send(
        &admin.client,
        request(ops, "GET", "/admin/users", None, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(r.code().as_deref(), Some("auth.missing_credentials"));
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("portcullis-admin")
    );

    // A bad key: 401, never a fall-through.
    let r = send(
        &admin.client,
        request(ops, "GET", "/admin/users", Some("pck_nope"), None),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // A read-only admin key reads but cannot write.
    let reader = bootstrap_admin_with(
        std::path::Path::new(&admin.config),
        &["--name", "viewer", "--permission", "admin.users.read"],
    );
    let r = send(
        &admin.client,
        request(ops, "GET", "/admin/users", Some(&reader), None),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = send(
        &admin.client,
        request(
            ops,
            "POST",
            "/admin/users",
            Some(&reader),
            Some(json!({"username": "x", "password": PASSWORD})),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code().as_deref(), Some("authz.denied"));

    // A user's own API key (no admin permission) is refused too.
    let id = admin.create_user("plain", &[]).await;
    let r = admin
        .call(
            "POST",
            &format!("/admin/users/{id}/api-keys"),
            Some(json!({"name": "mine", "permissions": ["docs.read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let user_key = r.json()["key"].as_str().unwrap().to_owned();
    let r = send(
        &admin.client,
        request(ops, "GET", "/admin/users", Some(&user_key), None),
    )
    .await;
    // Not an admin key (owner `admin:…`), whatever it holds: refused as a credential.
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code().as_deref(), Some("auth.invalid_api_key"));

    // The public listener does not serve it: the request goes to the guard's
    // routes (here none matches: refused) and never lists users.
    let r = send(
        &admin.client,
        request(
            admin.gateway.public,
            "GET",
            "/admin/users",
            Some(&admin.key),
            None,
        ),
    )
    .await;
    assert_ne!(r.status, StatusCode::OK);
    assert!(r.json().get("users").is_none(), "{}", r.body);
    // Nor does an admin key open the public routes: on a route that takes
    // API keys it is refused like an unknown key (a user's key is accepted).
    let r = admin.public_get("/api/x", &admin.key).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(r.code().as_deref(), Some("auth.invalid_api_key"));
    let r = admin.public_get("/api/x", &user_key).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Every admin call is audited, refused ones included.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let db = rusqlite_free_count(&admin.audit_db, "GET /admin/users").await;
        if db >= 4 || Instant::now() > deadline {
            assert!(db >= 4, "admin calls audited: {db}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every admin route, on `admin`'s backend: no key → 401, a key without
/// the route's permission → 403, the admin key on the public listener →
/// never served, the admin key on the ops listener → past the guard.
async fn sweep_every_route(admin: &Admin) {
    let other = bootstrap_admin_with(
        std::path::Path::new(&admin.config),
        &["--name", "sweeper", "--permission", "admin.nothing.read"],
    );
    for r in portcullis_gateway::admin::ROUTES {
        let Some(permission) = r.permission else {
            continue;
        };
        let path = r
            .path
            .replace("{id}", "some-id")
            .replace("{target}", "ip:10.0.0.9");
        let body = (r.method != "GET" && r.method != "DELETE").then(|| json!({}));
        let what = format!("{} {path}", r.method);
        let none = send(
            &admin.client,
            request(admin.gateway.ops, r.method, &path, None, body.clone()),
        )
        .await;
        assert_eq!(
            none.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            none.body
        );
        let wrong = send(
            &admin.client,
            request(
                admin.gateway.ops,
                r.method,
                &path,
                Some(&other),
                body.clone(),
            ),
        )
        .await;
        assert_eq!(
            wrong.status,
            StatusCode::FORBIDDEN,
            "{what} without {permission}"
        );
        let public = send(
            &admin.client,
            request(
                admin.gateway.public,
                r.method,
                &path,
                Some(&admin.key),
                body.clone(),
            ),
        )
        .await;
        assert!(
            public.status.is_client_error(),
            "{what} on the public listener: {}",
            public.status
        );
        if path.ends_with("/stream") {
            continue;
        }
        let ok = send(
            &admin.client,
            request(admin.gateway.ops, r.method, &path, Some(&admin.key), body),
        )
        .await;
        assert!(
            ok.status != StatusCode::UNAUTHORIZED && ok.status != StatusCode::FORBIDDEN,
            "{what} with the admin key: {} {}",
            ok.status,
            ok.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_guarded_on_sqlite() {
    let admin = start().await;
    sweep_every_route(&admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_guarded_on_postgres_and_redis() {
    let Some(shared) = on_postgres_and_redis("admin_sweep", 1).await else {
        return;
    };
    sweep_every_route(&shared.replicas[0]).await;
}

/// A hung database (SIGSTOP) never hangs an admin call: each answers
/// 503 `backend.unavailable` within the store budget, and the API works
/// again once the database does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_gets_503_not_a_hung_admin_call() {
    let dir = TempDir::new("admin-hung");
    let Some(pg) = support::OwnPostgres::start(dir.join("pg")) else {
        return;
    };
    let url = pg.url();
    let mut replicas = start_replicas(dir, |c| c.storage_url(&url), 1).await;
    let admin = replicas.remove(0);
    let id = admin.create_user("hung", &[]).await;

    pg.pause();
    for path in [
        "/admin/users?search=h".to_owned(),
        format!("/admin/users/{id}"),
    ] {
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(20), admin.call("GET", &path, None))
            .await
            .expect("an admin call never hangs on a hung database");
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {}",
            r.body
        );
        assert_eq!(r.code().as_deref(), Some("backend.unavailable"));
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "{:?}",
            started.elapsed()
        );
    }
    pg.resume();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = admin.call("GET", &format!("/admin/users/{id}"), None).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "back after the database: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(admin);
    drop(pg);
}

/// Audit events of one admin route, counted with sqlx (the audit database
/// is the gateway's own SQLite file).
async fn rusqlite_free_count(db: &std::path::Path, route: &str) -> i64 {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Connection};
    let Ok(mut conn) = SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await
    else {
        return 0;
    };
    let n: Result<(i64,), _> = sqlx::query_as("SELECT COUNT(*) FROM audit_events WHERE route = ?")
        .bind(route)
        .fetch_one(&mut conn)
        .await;
    let _ = conn.close().await;
    n.map(|(n,)| n).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_sessions_and_tokens_over_http() {
    let admin = start().await;
    let alice = admin.create_user("alice", &["reader"]).await;
    for name in ["bob", "alina", "carol"] {
        admin.create_user(name, &[]).await;
    }

    // Paging and search.
    let r = admin.call("GET", "/admin/users?limit=2", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let names: Vec<_> = r.json()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["alice", "alina"]);
    let next = r.json()["next"].as_str().unwrap().to_owned();
    let r = admin
        .call("GET", &format!("/admin/users?limit=2&after={next}"), None)
        .await;
    let names: Vec<_> = r.json()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["bob", "carol"]);
    let r = admin.call("GET", "/admin/users?search=AL", None).await;
    assert_eq!(r.json()["users"].as_array().unwrap().len(), 2);
    assert_eq!(
        admin
            .call("GET", &format!("/admin/users/{alice}"), None)
            .await
            .json()["username"],
        "alice"
    );
    assert_eq!(
        admin.call("GET", "/admin/users/nobody", None).await.status,
        StatusCode::NOT_FOUND
    );

    // Grants show in the next token.
    let r = admin
        .call(
            "PUT",
            &format!("/admin/users/{alice}/grants"),
            Some(json!({"roles": ["editor"], "permissions": ["docs.write"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["roles"], json!(["editor"]));
    let tokens = admin.login("alice").await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(support::claims(&access)["roles"], json!(["editor"]));
    assert_eq!(
        admin.public_get("/api/x", &access).await.status,
        StatusCode::OK
    );

    // Sessions: listed, one revoked -> its token refused.
    let r = admin
        .call("GET", &format!("/admin/users/{alice}/sessions"), None)
        .await;
    let sessions = r.json()["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 1, "{}", r.body);
    let sid = sessions[0]["id"].as_str().unwrap();
    assert_eq!(
        admin
            .call("DELETE", &format!("/admin/sessions/{sid}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let r = eventually(&admin, "/api/x", &access, StatusCode::UNAUTHORIZED).await;
    assert_eq!(r.code().as_deref(), Some("auth.session_revoked"));

    // Revoking a jti refuses that token (its session is alive).
    let tokens = admin.login("alice").await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let claims = support::claims(&access);
    let r = admin
        .call(
            "POST",
            "/admin/tokens/revoke",
            Some(json!({"jti": claims["jti"], "expires_at": claims["exp"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = eventually(&admin, "/api/x", &access, StatusCode::UNAUTHORIZED).await;
    assert_eq!(r.code().as_deref(), Some("auth.token_revoked"));

    // Disabling refuses the access token and the refresh token at once.
    let tokens = admin.login("alice").await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        admin.public_get("/api/x", &access).await.status,
        StatusCode::OK
    );
    let r = admin
        .call("POST", &format!("/admin/users/{alice}/disable"), None)
        .await;
    assert_eq!(r.json()["disabled"], json!(true));
    assert_eq!(
        eventually(&admin, "/api/x", &access, StatusCode::UNAUTHORIZED)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let body = json!({"refresh_token": tokens["refresh_token"]}).to_string();
    let r = admin.public_post("/auth/refresh", &body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    admin
        .call("POST", &format!("/admin/users/{alice}/enable"), None)
        .await;

    // A password reset: the old password stops working.
    let r = admin
        .call(
            "POST",
            &format!("/admin/users/{alice}/password"),
            Some(json!({"password": "a brand new password"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let body = json!({"username": "alice", "password": PASSWORD}).to_string();
    let r = admin.public_post("/auth/login", &body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Delete: gone, the name is free.
    assert_eq!(
        admin
            .call("DELETE", &format!("/admin/users/{alice}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        admin
            .call("GET", &format!("/admin/users/{alice}"), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    admin.create_user("alice", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_apps_and_bans_over_http() {
    let admin = start().await;
    let bob = admin.create_user("bob", &[]).await;

    // An API key made by the admin works on the public listener until revoked.
    let r = admin
        .call(
            "POST",
            &format!("/admin/users/{bob}/api-keys"),
            Some(json!({"name": "ci", "permissions": ["deploy"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let key = r.json()["key"].as_str().unwrap().to_owned();
    let key_id = r.json()["api_key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        admin.public_get("/api/x", &key).await.status,
        StatusCode::OK
    );
    let listed = admin
        .call("GET", &format!("/admin/users/{bob}/api-keys"), None)
        .await;
    assert_eq!(listed.json()["api_keys"][0]["id"], json!(key_id));
    assert!(
        !listed.body.contains("pck_"),
        "the key itself is never listed"
    );
    assert_eq!(
        admin
            .call("DELETE", &format!("/admin/api-keys/{key_id}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let r = eventually(&admin, "/api/x", &key, StatusCode::UNAUTHORIZED).await;
    assert_eq!(r.code().as_deref(), Some("auth.invalid_api_key"));

    // App credentials: the secret works; after a rotation without grace only the new one.
    let r = admin
        .call(
            "POST",
            "/admin/apps",
            Some(json!({"name": "billing", "permissions": ["invoices.read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let app_id = r.json()["app"]["app_id"].as_str().unwrap().to_owned();
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    let app_get = |secret: String| {
        let app_id = app_id.clone();
        let admin = &admin;
        async move {
            send(
                &admin.client,
                get(
                    admin.gateway.public,
                    "/api/x",
                    &[("x-app-id", &app_id), ("x-app-secret", &secret)],
                ),
            )
            .await
        }
    };
    assert_eq!(app_get(secret.clone()).await.status, StatusCode::OK);
    let r = admin
        .call(
            "POST",
            &format!("/admin/apps/{app_id}/rotate"),
            Some(json!({"grace_seconds": 0})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let new_secret = r.json()["secret"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["app"]["secret_version"], json!(2));
    assert_eq!(app_get(new_secret.clone()).await.status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(5);
    while app_get(secret.clone()).await.status != StatusCode::UNAUTHORIZED {
        assert!(Instant::now() < deadline, "the old secret still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin
        .call("POST", &format!("/admin/apps/{app_id}/disable"), None)
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while app_get(new_secret.clone()).await.status != StatusCode::UNAUTHORIZED {
        assert!(Instant::now() < deadline, "a disabled app still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Bans: add, listed, refused on the public listener, lifted.
    let r = admin
        .call(
            "POST",
            "/admin/bans",
            Some(json!({"target": "ip:127.0.0.1", "duration_seconds": 120, "reason": "test"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = admin.call("GET", "/admin/bans", None).await;
    assert_eq!(
        r.json()["bans"][0]["target"],
        json!("ip:127.0.0.1"),
        "{}",
        r.body
    );
    let r = send(&admin.client, get(admin.gateway.public, "/open/x", &[])).await;
    assert_eq!(r.code().as_deref(), Some("anomaly.banned"), "{}", r.body);
    assert_eq!(
        admin
            .call("DELETE", "/admin/bans/ip:127.0.0.1", None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(&admin.client, get(admin.gateway.public, "/open/x", &[]))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        admin
            .call("DELETE", "/admin/bans/ip:127.0.0.1", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Recent detections: a burst of bad credentials from one IP, which
    // `auth_failures` (50 in a minute, by default) also bans.
    for _ in 0..50 {
        admin.public_get("/api/x", "not.a.token").await;
    }
    let r = admin.call("GET", "/admin/bans", None).await;
    assert!(
        r.json()["bans"].as_array().is_some_and(|b| {
            b.iter().any(|b| {
                b["target"] == json!("ip:127.0.0.1") && b["reason"] == json!("auth_failures")
            })
        }),
        "{}",
        r.body
    );
    let r = admin.call("GET", "/admin/anomalies", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let detections = r.json()["detections"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        detections
            .iter()
            .any(|d| d["detector"] == json!("auth_failures") && d["key"] == json!("ip:127.0.0.1")),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field_and_changes_nothing() {
    let admin = start().await;
    let r = admin
        .call(
            "POST",
            "/admin/users",
            Some(json!({"username": "dave", "password": PASSWORD, "rolez": ["x"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.json()["detail"].as_str().unwrap().contains("rolez"),
        "{}",
        r.body
    );
    let r = admin
        .call(
            "POST",
            "/admin/users",
            Some(json!({"username": "", "password": PASSWORD})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.json()["detail"].as_str().unwrap().contains("username"),
        "{}",
        r.body
    );
    let r = admin.call("GET", "/admin/users?limit=0", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.json()["detail"].as_str().unwrap().contains("limit"),
        "{}",
        r.body
    );
    let r = admin
        .call(
            "POST",
            "/admin/bans",
            Some(json!({"target": "host:example.com", "duration_seconds": 60})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.json()["detail"].as_str().unwrap().contains("target"));
    // A body over 64 KiB is refused from its declared length, before it is
    // read (raw socket: the answer comes while the body is still unsent).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(admin.gateway.ops)
            .await
            .unwrap();
        let head = format!(
            "POST /admin/users HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n",
            admin.key
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    // Nothing was created.
    let r = admin.call("GET", "/admin/users", None).await;
    assert_eq!(r.json()["users"], json!([]), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let admin = start().await;
    let r = send(
        &admin.client,
        request(admin.gateway.ops, "GET", "/openapi.json", None, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let doc = r.json();
    assert_eq!(doc["openapi"], json!("3.1.0"));
    // Valid OpenAPI 3.1, by openapi-spec-validator (PyPI, in the e2e venv).
    let file = admin.dir.join("openapi.json");
    std::fs::write(&file, &r.body).unwrap();
    let out = std::process::Command::new(support::venv_python())
        .args([
            "-c",
            "import json, sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the document does not validate:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paths = doc["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let concrete = path
                .replace("{id}", "some-id")
                .replace("{target}", "ip:10.0.0.1");
            let token_service = op["tags"][0] == json!("token service");
            let addr = if token_service {
                admin.gateway.public
            } else {
                admin.gateway.ops
            };
            let body = (method != "get" && method != "delete").then(|| json!({}));
            let req = request(
                addr,
                &method.to_uppercase(),
                &concrete,
                Some(&admin.key),
                body,
            );
            if path.ends_with("/stream") {
                // An endless body: the head is the answer.
                let head = admin.client.request(req).await.unwrap();
                assert_eq!(head.status(), StatusCode::OK, "{method} {path}");
                checked += 1;
                continue;
            }
            let r = send(&admin.client, req).await;
            // Documented but absent would be the router's bare 404 or a 405.
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                !(r.status == StatusCode::NOT_FOUND && r.body.is_empty()),
                "{method} {path} is documented but not routed"
            );
            // Admin routes are guarded routes: never the default deny.
            if !token_service && op.get("x-permission").is_some() {
                assert!(
                    r.code().as_deref() != Some("authz.denied"),
                    "{method} {path}: {}",
                    r.body
                );
            }
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        portcullis_gateway::admin::ROUTES.len()
            + portcullis_gateway::admin::TOKEN_SERVICE_ROUTES.len()
    );
    // And a route that is not documented is not served.
    let r = admin.call("GET", "/admin/nothing-here", None).await;
    assert!(
        r.status == StatusCode::FORBIDDEN || r.status == StatusCode::NOT_FOUND,
        "{}",
        r.status
    );
}

/// Two replicas on PostgreSQL + Redis: what an operator does through one
/// is honoured by the other within the revocation bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_and_redis_follow_the_admin() {
    let Some(shared) = on_postgres_and_redis("admin", 2).await else {
        return;
    };
    let (a, b) = (&shared.replicas[0], &shared.replicas[1]);

    // Made through A's admin API, used through B.
    let bob = a.create_user("bob", &[]).await;
    let r = b.call("GET", "/admin/users?search=bo", None).await;
    assert_eq!(r.json()["users"][0]["id"], json!(bob), "{}", r.body);
    let tokens = b.login("bob").await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(b.public_get("/api/x", &access).await.status, StatusCode::OK);
    let r = a
        .call(
            "POST",
            &format!("/admin/users/{bob}/api-keys"),
            Some(json!({"name": "ci"})),
        )
        .await;
    let key = r.json()["key"].as_str().unwrap().to_owned();
    let key_id = r.json()["api_key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(b.public_get("/api/x", &key).await.status, StatusCode::OK);

    // Disabled through A: B refuses the access token and the refresh token.
    a.call("POST", &format!("/admin/users/{bob}/disable"), None)
        .await;
    let started = Instant::now();
    let r = eventually(b, "/api/x", &access, StatusCode::UNAUTHORIZED).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "within the revocation bound: {:?}",
        started.elapsed()
    );
    let body = json!({"refresh_token": tokens["refresh_token"]}).to_string();
    let r = b.public_post("/auth/refresh", &body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    // A key revoked through B is refused by A.
    assert_eq!(
        b.call("DELETE", &format!("/admin/api-keys/{key_id}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let r = eventually(a, "/api/x", &key, StatusCode::UNAUTHORIZED).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // A ban through A (on Redis) is honoured by B.
    let r = a
        .call(
            "POST",
            "/admin/bans",
            Some(json!({"target": "ip:127.0.0.1", "duration_seconds": 60})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // B answers ban checks from a cache of 250 ms (BAN_CACHE_TTL).
    let r = within_a_second(b, StatusCode::FORBIDDEN).await;
    assert_eq!(r.code().as_deref(), Some("anomaly.banned"), "{}", r.body);
    assert_eq!(
        b.call("DELETE", "/admin/bans/ip:127.0.0.1", None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    // Lifted through B: at once there, within the cache's TTL on A.
    assert_eq!(
        send(&b.client, get(b.gateway.public, "/open/x", &[]))
            .await
            .status,
        StatusCode::OK
    );
    within_a_second(a, StatusCode::OK).await;
}

/// `GET /open/x` on `admin`'s public listener until it answers `want`,
/// for at most a second (then the last answer is asserted).
async fn within_a_second(admin: &Admin, want: StatusCode) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let r = send(&admin.client, get(admin.gateway.public, "/open/x", &[])).await;
        if r.status == want || Instant::now() > deadline {
            assert_eq!(r.status, want, "{}", r.body);
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads SSE chunks from `body` until one holds `needle` or `limit` passes.
async fn read_until(
    body: &mut hyper::body::Incoming,
    seen: &mut String,
    needle: &str,
    limit: Duration,
) -> bool {
    use http_body_util::BodyExt;
    let deadline = tokio::time::Instant::now() + limit;
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    seen.push_str(&String::from_utf8_lossy(data));
                }
            }
            _ => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_queried_and_streamed_live() {
    let admin = start().await;
    let stream = |query: &str| {
        admin.client.request(request(
            admin.gateway.ops,
            "GET",
            &format!("/admin/audit/stream{query}"),
            Some(&admin.key),
            None,
        ))
    };
    let response = stream("").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut seen = String::new();
    assert!(
        read_until(
            &mut body,
            &mut seen,
            "live decisions",
            Duration::from_secs(5)
        )
        .await
    );

    // A decision arrives within 100 ms of its answer (best of three, the
    // machine is shared).
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let r = send(&admin.client, get(admin.gateway.public, "/open/live", &[])).await;
        let answered = Instant::now();
        let id = r.header("x-request-id").unwrap().to_owned();
        assert!(
            read_until(&mut body, &mut seen, &id, Duration::from_secs(5)).await,
            "{seen}"
        );
        best = best.min(answered.elapsed());
    }
    assert!(
        best < Duration::from_millis(100),
        "the stream took {best:?}"
    );
    assert!(seen.contains("event: decision"));

    // Filtered: only refusals.
    let response = stream("?decision=deny").await.unwrap();
    let mut denied = response.into_body();
    let mut only = String::new();
    assert!(
        read_until(
            &mut denied,
            &mut only,
            "live decisions",
            Duration::from_secs(5)
        )
        .await
    );
    let allowed = send(
        &admin.client,
        get(admin.gateway.public, "/open/filtered", &[]),
    )
    .await;
    let refused = send(
        &admin.client,
        get(admin.gateway.public, "/api/filtered", &[]),
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let refused_id = refused.header("x-request-id").unwrap();
    assert!(
        read_until(&mut denied, &mut only, refused_id, Duration::from_secs(5)).await,
        "{only}"
    );
    assert!(
        !only.contains(allowed.header("x-request-id").unwrap()),
        "an allowed request passed the filter"
    );
    let bad = admin
        .call("GET", "/admin/audit/stream?decision=maybe", None)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // The same events through the query API, with keyset paging.
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let r = admin
            .call("GET", "/admin/audit?path_prefix=/open/&limit=2", None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        // Every /open/ event written (more than a page of them), not just
        // the first batch: a batch may hold only some of them.
        let body = r.json();
        let events = body["events"].as_array().unwrap().len();
        if (events == 2 && body["next"].is_string()) || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().expect("a next page").to_owned();
    let r = admin
        .call(
            "GET",
            &format!("/admin/audit?path_prefix=/open/&limit=2&cursor={next}"),
            None,
        )
        .await;
    let rest = r.json()["events"].as_array().unwrap().clone();
    assert!(!rest.is_empty(), "{}", r.body);
    assert!(
        rest.iter()
            .all(|e| e["path"].as_str().unwrap().starts_with("/open/"))
    );
    // The stream shows an event before its batch is written: wait for the write.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = admin
            .call(
                "GET",
                "/admin/audit?decision=deny&code=auth.missing_credentials",
                None,
            )
            .await;
        let written = r.json()["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["request_id"] == json!(refused_id)));
        if written || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        r.json()["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["request_id"] == json!(refused_id)),
        "{}",
        r.body
    );
    assert_eq!(
        admin
            .call("GET", "/admin/audit?since=yesterday", None)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reader_that_never_reads_holds_nothing_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let admin = start().await;
    // A client that asks for the stream and then never reads.
    // A small receive window, so the kernel's buffers cannot absorb the
    // burst on the reader's behalf.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(admin.gateway.ops).await.unwrap();
    let req = format!(
        "GET /admin/audit/stream HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {}\r\n\r\n",
        admin.key
    );
    slow.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Warm up, then measure the memory under a burst of requests.
    for _ in 0..200 {
        send(&admin.client, get(admin.gateway.public, "/open/warm", &[])).await;
    }
    let started = Instant::now();
    // More events than the kernel's socket buffers (several MB on
    // loopback) and the live buffer together can hold for the reader.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = admin.client.clone();
        let public = admin.gateway.public;
        tasks.push(tokio::spawn(async move {
            for _ in 0..1500 {
                let r = send(
                    &client,
                    get(
                        public,
                        "/open/burst-with-a-longer-path-to-fill-buffers",
                        &[],
                    ),
                )
                .await;
                assert_eq!(r.status, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    // Nothing waited for the reader (a generous bound: a loaded machine).
    assert!(
        took < Duration::from_secs(120),
        "12000 requests took {took:?}"
    );
    // Every event has left the audit queue, and so reached the live
    // buffer (a loaded machine writes the audit log behind the burst; an
    // event still queued cannot have been skipped yet).
    // The bounds below are only reached on a failure: on a machine whose
    // disk is busy (other builds, a copy of a target directory) the audit
    // writer has taken over a minute to drain 12,000 events, and reading on
    // before it did asserted on a queue, not on the stream.
    let drained = Instant::now() + Duration::from_secs(300);
    loop {
        let metrics = send(&admin.client, get(admin.gateway.ops, "/metrics", &[]))
            .await
            .body;
        if metrics
            .lines()
            .any(|l| l.trim() == "portcullis_audit_queue_depth 0")
        {
            break;
        }
        assert!(
            Instant::now() < drained,
            "the audit queue never drained: {}",
            metrics
                .lines()
                .find(|l| l.starts_with("portcullis_audit_queue_depth"))
                .unwrap_or("no depth")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // When it reads at last, it is told what it skipped. It reads the whole
    // stream, not only up to the first `skipped` marker: a reader that
    // falls behind again while catching up gets a marker each time, and the
    // events between them count as delivered.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(3), slow.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            // Quiet for 3 s: the stream has sent all it holds.
            _ => break,
        }
        let text = String::from_utf8_lossy(&got);
        let (delivered, skipped) = delivered_and_skipped(&text);
        if text.contains("event: skipped") && delivered + skipped >= 12_000 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("event: skipped"),
        "the reader was never told it skipped: {} bytes, {} events, starting {}",
        got.len(),
        text.matches("event: decision").count(),
        &text[..text.len().min(400)]
    );
    // What the gateway buffered for this reader is bounded by what the
    // code controls: every burst event was either written to the socket
    // before the reader fell behind (read here before the `skipped`
    // marker), skipped (counted in the marker), or is among the at most
    // LIVE_BUFFER events the live buffer keeps. Had the stream queued
    // events for the reader, fewer would have been skipped.
    let (delivered, skipped) = delivered_and_skipped(&text);
    const LIVE_BUFFER: u64 = 1024;
    assert!(
        delivered + skipped + LIVE_BUFFER >= 12_000,
        "{delivered} delivered + {skipped} skipped + {LIVE_BUFFER} buffered < 12000 burst events: the stream held events for its reader"
    );
    assert!(skipped <= 12_000 + 1024, "{skipped}");
}

/// Decision events and the sum of `skipped` counts in a live stream's text
/// (a marker whose count has not fully arrived yet counts as 0).
fn delivered_and_skipped(text: &str) -> (u64, u64) {
    let delivered = text.matches("event: decision").count() as u64;
    let skipped = text
        .split("event: skipped\n")
        .skip(1)
        .filter_map(|rest| {
            rest.lines()
                .next()
                .and_then(|l| l.strip_prefix("data: "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum();
    (delivered, skipped)
}

/// `$2b$04$…` of "imported password 1" (made with libxcrypt's bcrypt), as a
/// Python service's user table would hold it.
const BCRYPT_HASH: &str = "$2b$04$abcdefghijklmnopqrstuu22hpbMboJsE4xsKV3TaNXVCQvNoYE3i";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_users_through_the_admin_api() {
    let admin = start().await;
    let dir = TempDir::new("admin-cli");
    let key_file = dir.join("admin.key");
    std::fs::write(&key_file, format!("{}\n", admin.key)).unwrap();
    let pw_file = dir.join("pw");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    let url = format!("http://{}", admin.gateway.ops);
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--admin", &url, "--key-file", key_file.to_str().unwrap()]);
        portcullis(&all)
    };

    let out = cli(&[
        "users",
        "create",
        "erin",
        "--password-file",
        pw_file.to_str().unwrap(),
        "--role",
        "reader",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let erin: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = erin["id"].as_str().unwrap().to_owned();
    admin.login("erin").await;

    // Bulk import: a bcrypt hash keeps working; a bad line is reported by its
    // line number and the others are created.
    let import = dir.join("users.jsonl");
    std::fs::write(
        &import,
        format!(
            "{}\n{}\n\n{}\n",
            json!({"username": "frank", "password_hash": BCRYPT_HASH, "roles": ["reader"]}),
            json!({"username": "gina", "pasword": "typo"}),
            json!({"username": "hugo", "password_hash": BCRYPT_HASH}),
        ),
    )
    .unwrap();
    let out = cli(&[
        "users",
        "import",
        import.to_str().unwrap(),
        "--batch",
        "2",
        "--format",
        "json",
    ]);
    assert!(
        !out.status.success(),
        "one line failed, so the command says so"
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["created"], json!(2), "{summary}");
    assert_eq!(summary["failed"][0]["line"], json!(2), "{summary}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("imported 3/3 lines"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = json!({"username": "frank", "password": "imported password 1"}).to_string();
    let r = admin.public_post("/auth/login", &body).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the imported bcrypt hash logs in: {}",
        r.body
    );

    // Table output for people.
    let out = cli(&["users", "list", "--search", "f"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("frank") && !table.contains("erin"),
        "{table}"
    );

    // Disable, sessions, API keys and apps from the command line.
    let out = cli(&["users", "disable", &id, "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["disabled"],
        json!(true)
    );
    let out = cli(&["sessions", "list", &id, "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "api-keys",
        "create",
        &id,
        "--name",
        "ci",
        "--permission",
        "docs.read",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("pck_"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["apps", "create", "--name", "billing", "--format", "json"]);
    let app: Value = serde_json::from_slice(&out.stdout).unwrap();
    let app_id = app["app"]["app_id"].as_str().unwrap();
    let out = cli(&[
        "apps", "rotate", app_id, "--grace", "1h", "--format", "json",
    ]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["app"]["secret_version"],
        json!(2)
    );

    // Bans through the admin API from the bans command; IPv6 grouped as
    // the guard groups clients.
    let out = cli(&[
        "bans",
        "add",
        "--ip",
        "2001:db8::1",
        "--for",
        "1m",
        "--reason",
        "cli",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["bans", "list", "--format", "json"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("2001:db8::") && listed.contains("cli"),
        "{listed}"
    );
    let out = cli(&["bans", "lift", "--ip", "2001:db8::1"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["lifted"],
        json!(true)
    );
    let out = cli(&["bans", "lift", "--ip", "2001:db8::1"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["lifted"],
        json!(false)
    );
    let r = admin
        .call(
            "POST",
            "/admin/bans",
            Some(json!({"target": "ip:2001:db8::abcd", "duration_seconds": 60})),
        )
        .await;
    assert_eq!(
        r.json()["target"],
        json!("ip:2001:db8::"),
        "grouped by /64: {}",
        r.body
    );

    // The audit log through the admin API, with the query command's filters.
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let out = cli(&[
            "audit",
            "query",
            "--decision",
            "allow",
            "--limit",
            "2",
            "--format",
            "json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let page: Value = serde_json::from_slice(&out.stdout).unwrap();
        // A full page with a cursor: the events behind it may still be in
        // the audit queue on a busy machine.
        let full = page["events"].as_array().is_some_and(|e| e.len() == 2);
        if (full && page["next"].is_string()) || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["decision"] == json!("allow")),
        "{page}"
    );
    let next = page["next"].as_str().expect("another page").to_owned();
    let out = cli(&[
        "audit",
        "query",
        "--decision",
        "allow",
        "--limit",
        "2",
        "--cursor",
        &next,
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["audit", "prune", "--older-than", "30d"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prune needs the audit database"));

    // A refusal prints the code and exits 2; no key is a usage error.
    let out = cli(&["users", "show", "nobody"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not_found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = portcullis(&["users", "list", "--admin", &url]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORTCULLIS_ADMIN_KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_and_reset_links_set_a_password_once() {
    let admin = start().await;
    let reset = |token: &str, password: &str| {
        let body = json!({"token": token, "password": password}).to_string();
        send(
            &admin.client,
            post(
                admin.gateway.public,
                "/auth/password/reset",
                &[("content-type", "application/json")],
                &body,
            ),
        )
    };
    let login = |username: &str, password: &str| {
        let body = json!({"username": username, "password": password}).to_string();
        send(
            &admin.client,
            post(
                admin.gateway.public,
                "/auth/login",
                &[("content-type", "application/json")],
                &body,
            ),
        )
    };

    // An invitation: no password anyone knows until the token sets one.
    let r = admin
        .call(
            "POST",
            "/admin/users",
            Some(json!({"username": "ivy", "invite": true, "roles": ["reader"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let token = r.json()["reset_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("pcr_"));
    assert_eq!(
        reset(&token, "").await.status,
        StatusCode::BAD_REQUEST,
        "a bad password spends nothing"
    );
    assert_eq!(
        reset(&token, "ivy's first password").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        login("ivy", "ivy's first password").await.status,
        StatusCode::OK
    );
    // Once only.
    let again = reset(&token, "someone else's password").await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert_eq!(again.code().as_deref(), Some("auth.invalid_credentials"));

    // A reset link for an existing user; a forged one is refused.
    let r = admin
        .call(
            "POST",
            &format!("/admin/users/{id}/reset-token"),
            Some(json!({"ttl_seconds": 600})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let link = r.json()["reset_token"].as_str().unwrap().to_owned();
    let mut forged = link.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(
        reset(&forged, "ivy's second password").await.status,
        StatusCode::UNAUTHORIZED
    );
    let tokens = login("ivy", "ivy's first password").await.json();
    assert_eq!(
        reset(&link, "ivy's second password").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        login("ivy", "ivy's first password").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login("ivy", "ivy's second password").await.status,
        StatusCode::OK
    );
    // The reset ended the sessions opened before it.
    let r = eventually(
        &admin,
        "/api/x",
        tokens["access_token"].as_str().unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Invitations carry no password.
    let r = admin
        .call(
            "POST",
            "/admin/users",
            Some(json!({"username": "jo", "invite": true, "password": PASSWORD})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}
