//! Authority ends where it should, over real HTTP on the real binary
//! (SQLite stores and audit log): an open audit stream ends when the key
//! or console session that opened it does, and streams are capped; of
//! concurrent key rotations or reset-token redemptions exactly one wins;
//! a rotation to a key the JWKS cannot publish is refused; `/reload` needs
//! an admin key and the ops listener refuses foreign `Host`s and
//! cross-site state changes; no URL credential reaches a reload answer,
//! the console or the log.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::{
    Gateway, GatewayConfig, HttpClient, PASSWORD, Reply, Route, TempDir, Upstream, client,
    echo_upstream, free_port, portcullis, send, toml_str,
};

struct Env {
    dir: TempDir,
    gateway: Gateway,
    client: HttpClient,
    config: String,
    key: String,
    /// The PostgreSQL database of `storage.url`, dropped after the gateway.
    _db: Option<support::FreshDatabase>,
}

/// The configuration every test here starts from (SQLite stores, or
/// `storage_url`); `server_extra` joins `[server]`.
fn gateway_config(
    dir: &TempDir,
    upstream: SocketAddr,
    server_extra: &str,
    storage_url: Option<&str>,
) -> GatewayConfig {
    let mut config = GatewayConfig::new(dir).server(server_extra);
    if let Some(url) = storage_url {
        config = config.storage_url(url);
    }
    config
        // These tests try several passwords of one account from one address on
        // purpose (which of the eight reset passwords won); login regulation,
        // tested in tests/regulation.rs, would refuse them from the sixth.
        .raw("[token_service.regulation]\nenabled = false")
        .route(Route::new("open", "/open/**").credentials(&["anonymous"]))
        .upstream(Upstream::new(
            "echo",
            &format!("http://{upstream}"),
            &["open"],
        ))
}

async fn start(name: &str, server_extra: &str) -> Env {
    start_with(name, server_extra, None).await
}

/// A gateway on SQLite, or on `db` (PostgreSQL) when given.
async fn start_with(name: &str, server_extra: &str, db: Option<support::FreshDatabase>) -> Env {
    let dir = TempDir::new(name);
    let upstream = echo_upstream().await;
    let gateway_config = gateway_config(
        &dir,
        upstream,
        server_extra,
        db.as_ref().map(|d| d.url.as_str()),
    );
    let path = gateway_config.write();
    let config = path.to_str().unwrap().to_owned();
    let key = bootstrap(&config, &[]).0;
    let gateway = gateway_config.start(&dir, "gateway");
    let client = client();
    gateway.wait_ready(&client).await;
    Env {
        dir,
        gateway,
        client,
        config,
        key,
        _db: db,
    }
}

/// An admin key of `config` and its id.
fn bootstrap(config: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["admin", "bootstrap", "--config", config];
    args.extend_from_slice(extra);
    let out = portcullis(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        printed["key"].as_str().unwrap().to_owned(),
        printed["id"].as_str().unwrap().to_owned(),
    )
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
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

impl Env {
    async fn ops(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        send(
            &self.client,
            request(self.gateway.ops, method, path, headers, body),
        )
        .await
    }

    async fn admin_as(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
        let bearer = format!("Bearer {key}");
        self.ops(method, path, &[("authorization", &bearer)], body)
            .await
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.admin_as(&self.key, method, path, body).await
    }

    /// Opens a live stream on the ops listener with `headers`.
    async fn stream(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> http::Response<hyper::body::Incoming> {
        self.client
            .request(request(self.gateway.ops, "GET", path, headers, None))
            .await
            .unwrap()
    }

    /// Some traffic, so an open stream has events to carry.
    async fn traffic(&self) {
        let r = send(
            &self.client,
            request(self.gateway.public, "GET", "/open/x", &[], None),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
}

/// Reads `body` until it ends or `limit` passes; what it carried and
/// whether it ended.
async fn read_to_end(body: &mut hyper::body::Incoming, limit: Duration) -> (String, bool) {
    let mut seen = String::new();
    let ended = tokio::time::timeout(limit, async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(data) = f.into_data() {
                        seen.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                Err(_) => break,
            }
        }
    })
    .await
    .is_ok();
    (seen, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_ends_with_revoked_when_its_key_is_revoked() {
    let env = start("auth-stream-key", "").await;
    let (streamer, streamer_id) = bootstrap(&env.config, &["--name", "streamer"]);
    let bearer = format!("Bearer {streamer}");
    let response = env
        .stream("/admin/audit/stream", &[("authorization", &bearer)])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    env.traffic().await;
    // Still open while the key stands.
    let (seen, ended) = read_to_end(&mut body, Duration::from_millis(2500)).await;
    assert!(!ended, "the stream ended early: {seen}");
    assert!(seen.contains("event: decision"), "{seen}");

    let r = env
        .admin("DELETE", &format!("/admin/api-keys/{streamer_id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let revoked = std::time::Instant::now();
    let (seen, ended) = read_to_end(&mut body, Duration::from_secs(10)).await;
    assert!(ended, "the stream outlived its key: {seen}");
    assert!(seen.contains("event: revoked"), "{seen}");
    // The key is checked every second (a revocation on this replica is
    // seen at once; on another, within the 1 s revocation bound).
    let took = revoked.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "ended {took:?} after the DELETE"
    );
    // The revoked key opens no new stream.
    let r = env
        .admin_as(&streamer, "GET", "/admin/audit/stream", None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_with_x_api_key_is_held_to_its_key_too() {
    let env = start("auth-stream-xkey", "").await;
    let (streamer, streamer_id) = bootstrap(&env.config, &["--name", "streamer"]);
    let response = env
        .stream("/admin/audit/stream", &[("x-api-key", &streamer)])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let r = env
        .admin("DELETE", &format!("/admin/api-keys/{streamer_id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let (seen, ended) = read_to_end(&mut body, Duration::from_secs(10)).await;
    assert!(ended && seen.contains("event: revoked"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_stream_ends_with_revoked_at_sign_out() {
    let env = start("auth-stream-console", "").await;
    let origin = format!("http://{}", env.gateway.ops);
    let r = env
        .ops(
            "POST",
            "/console/session",
            &[("origin", &origin)],
            Some(json!({"key": env.key})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = r.json()["csrf_token"].as_str().unwrap().to_owned();
    let response = env
        .stream("/console/api/admin/audit/stream", &[("cookie", &cookie)])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    env.traffic().await;
    let (seen, ended) = read_to_end(&mut body, Duration::from_millis(2500)).await;
    assert!(!ended, "the stream ended early: {seen}");

    let r = env
        .ops(
            "DELETE",
            "/console/session",
            &[
                ("cookie", &cookie),
                ("origin", &origin),
                ("x-csrf-token", &csrf),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let signed_out = std::time::Instant::now();
    let (seen, ended) = read_to_end(&mut body, Duration::from_secs(10)).await;
    assert!(ended, "the console stream outlived its session: {seen}");
    assert!(seen.contains("event: revoked"), "{seen}");
    let took = signed_out.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "ended {took:?} after sign-out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_stream_ends_with_revoked_when_its_key_is_revoked() {
    let env = start("auth-stream-console-key", "").await;
    let (console_key, console_id) = bootstrap(&env.config, &["--name", "console"]);
    let origin = format!("http://{}", env.gateway.ops);
    let r = env
        .ops(
            "POST",
            "/console/session",
            &[("origin", &origin)],
            Some(json!({"key": console_key})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let response = env
        .stream("/console/api/admin/audit/stream", &[("cookie", &cookie)])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    env.traffic().await;
    let (seen, ended) = read_to_end(&mut body, Duration::from_millis(1500)).await;
    assert!(!ended, "the stream ended early: {seen}");

    // Another operator revokes the console session's key.
    let r = env
        .admin("DELETE", &format!("/admin/api-keys/{console_id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let revoked = std::time::Instant::now();
    let (seen, ended) = read_to_end(&mut body, Duration::from_secs(10)).await;
    assert!(ended, "the console stream outlived its key: {seen}");
    assert!(seen.contains("event: revoked"), "{seen}");
    let took = revoked.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "ended {took:?} after the DELETE"
    );
    // The cookie no longer opens one.
    let r = env
        .ops(
            "GET",
            "/console/api/admin/audit/stream",
            &[("cookie", &cookie)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_are_capped_per_key_and_in_total() {
    let env = start(
        "auth-stream-cap",
        "admin_streams = 3\nadmin_streams_per_key = 2",
    )
    .await;
    let (other, _) = bootstrap(&env.config, &["--name", "other"]);
    let mine = format!("Bearer {}", env.key);
    let theirs = format!("Bearer {other}");
    let mut open = Vec::new();
    for _ in 0..2 {
        let r = env
            .stream("/admin/audit/stream", &[("authorization", &mine)])
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        open.push(r);
    }
    // A third of one key: 429, with the stable code and Retry-After.
    let r = env.admin("GET", "/admin/audit/stream", None).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.code().as_deref(), Some("rate_limit.too_many_streams"));
    assert!(r.header("retry-after").is_some());
    // Another key may open one: the total is then reached.
    let r = env
        .stream("/admin/audit/stream", &[("authorization", &theirs)])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    open.push(r);
    let r = env
        .admin_as(&other, "GET", "/admin/audit/stream", None)
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.body.contains("server.admin_streams"), "{}", r.body);
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_ten_rotations_at_once_exactly_one_is_accepted() {
    let env = start("auth-rotate", "").await;
    ten_rotations_at_once(&env, &[env.gateway.ops]).await;
}

/// Two replicas on one PostgreSQL database: ten rotations at once, sent
/// to both in turn, and exactly one is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_ten_rotations_at_once_on_two_postgres_replicas_exactly_one_is_accepted() {
    let Some(db) = support::FreshDatabase::create("authrotate").await else {
        return;
    };
    let env = start_with("auth-rotate-pg", "", Some(db)).await;
    // A second replica: the same file but its own listeners.
    let (public, ops) = (free_port(), free_port());
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&env.gateway.public.to_string(), &public.to_string())
        .replace(&env.gateway.ops.to_string(), &ops.to_string());
    let second = Gateway::start(&env.dir, "replica-b", &text, public, ops);
    second.wait_ready(&env.client).await;
    ten_rotations_at_once(&env, &[env.gateway.ops, second.ops]).await;
    // Both replicas publish the one new key.
    for replica in [env.gateway.public, public] {
        let jwks = send(
            &env.client,
            request(replica, "GET", "/auth/.well-known/jwks.json", &[], None),
        )
        .await
        .json();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut jwks = jwks;
        while jwks["keys"].as_array().map_or(0, Vec::len) != 2 {
            assert!(std::time::Instant::now() < deadline, "{replica}: {jwks}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            jwks = send(
                &env.client,
                request(replica, "GET", "/auth/.well-known/jwks.json", &[], None),
            )
            .await
            .json();
        }
    }
}

/// Ten `POST /admin/keys/rotate` at once, spread over `replicas` (their
/// ops listeners): exactly one 202, nine 409, one published key.
async fn ten_rotations_at_once(env: &Env, replicas: &[SocketAddr]) {
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (client, ops, key) = (
            env.client.clone(),
            replicas[i % replicas.len()],
            env.key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let bearer = format!("Bearer {key}");
            send(
                &client,
                request(
                    ops,
                    "POST",
                    "/admin/keys/rotate",
                    &[("authorization", &bearer)],
                    Some(json!({})),
                ),
            )
            .await
        }));
    }
    let (mut accepted, mut pending) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::CONFLICT => {
                assert_eq!(
                    r.code().as_deref(),
                    Some("keys.rotation_pending"),
                    "{}",
                    r.body
                );
                pending += 1;
            }
            other => panic!("{other}: {}", r.body),
        }
    }
    assert_eq!((accepted, pending), (1, 9));
    // The replica asked here may not be the one that rotated: it shows the
    // new key once its key ring has synced from the store (bounded wait,
    // reached only on a failure).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = env.admin("GET", "/admin/keys", None).await.json();
        let published = keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["state"] == "published")
            .count();
        if published == 1 || Instant::now() > deadline {
            assert_eq!(published, 1, "{keys}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_to_an_unpublishable_hmac_key_is_refused() {
    let env = start("auth-hmac", "").await;
    let jwks = || async {
        send(
            &env.client,
            request(
                env.gateway.public,
                "GET",
                "/auth/.well-known/jwks.json",
                &[],
                None,
            ),
        )
        .await
        .json()
    };
    let before = jwks().await;
    let r = env
        .admin("POST", "/admin/keys/rotate", Some(json!({"alg": "HS256"})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.code().as_deref(), Some("keys.unpublishable_algorithm"));
    assert!(
        r.json()["detail"].as_str().unwrap().contains("JWKS"),
        "{}",
        r.body
    );
    // Nothing was stored: no key pending, the JWKS unchanged.
    let keys = env.admin("GET", "/admin/keys", None).await.json();
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["state"] != "published"),
        "{keys}"
    );
    assert_eq!(jwks().await, before);
    // A public-key algorithm is accepted.
    let r = env
        .admin("POST", "/admin/keys/rotate", Some(json!({"alg": "EdDSA"})))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hmac_rotation_is_accepted_when_its_secret_is_shared_out_of_band() {
    let env = start("auth-hmac-shared", "").await;
    let r = env
        .admin(
            "POST",
            "/admin/keys/rotate",
            Some(json!({"alg": "HS256", "shared_out_of_band": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = env
        .admin(
            "POST",
            "/admin/keys/rotate",
            Some(json!({"alg": "HS256", "shared_out_of_band": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.json()["alg"], "HS256", "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_token_redeemed_eight_times_at_once_works_once() {
    let env = start("auth-reset", "").await;
    eight_resets_at_once(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_token_redeemed_eight_times_at_once_on_postgres_works_once() {
    let Some(db) = support::FreshDatabase::create("authreset").await else {
        return;
    };
    let env = start_with("auth-reset-pg", "", Some(db)).await;
    eight_resets_at_once(&env).await;
}

/// Eight `/auth/password/reset` at once with one token: exactly one 204,
/// and only the winner's password logs in.
async fn eight_resets_at_once(env: &Env) {
    let r = env
        .admin(
            "POST",
            "/admin/users",
            Some(json!({"username": "ivy", "password": PASSWORD})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = env
        .admin(
            "POST",
            &format!("/admin/users/{id}/reset-token"),
            Some(json!({"ttl_seconds": 600})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let token = r.json()["reset_token"].as_str().unwrap().to_owned();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (client, public, token) = (env.client.clone(), env.gateway.public, token.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"token": token, "password": format!("new password {i}")});
            send(
                &client,
                request(public, "POST", "/auth/password/reset", &[], Some(body)),
            )
            .await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        answers.push((r.status, r.code()));
    }
    let statuses: Vec<StatusCode> = answers.iter().map(|(s, _)| *s).collect();
    let won = statuses
        .iter()
        .filter(|s| **s == StatusCode::NO_CONTENT)
        .count();
    assert!(won <= 1, "{answers:?}");
    if !statuses.contains(&StatusCode::SERVICE_UNAVAILABLE) {
        assert_eq!(won, 1, "{answers:?}");
    }
    // The others find the token spent (401); on a loaded machine a call
    // may outlast the store budget (503 backend.unavailable, its write
    // possibly done: then it is the one that won, and no call says 204).
    for (status, code) in &answers {
        match *status {
            StatusCode::NO_CONTENT => {}
            StatusCode::UNAUTHORIZED => {
                assert_eq!(
                    code.as_deref(),
                    Some("auth.invalid_credentials"),
                    "{answers:?}"
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(code.as_deref(), Some("backend.unavailable"), "{answers:?}");
            }
            other => panic!("{other}: {answers:?}"),
        }
    }
    // Exactly one of the eight passwords is the user's: the one answered
    // 204 when there is one.
    let winner = statuses.iter().position(|s| *s == StatusCode::NO_CONTENT);
    let mut works = Vec::new();
    for i in 0..8 {
        let body = json!({"username": "ivy", "password": format!("new password {i}")});
        let mut r = send(
            &env.client,
            request(
                env.gateway.public,
                "POST",
                "/auth/login",
                &[],
                Some(body.clone()),
            ),
        )
        .await;
        for _ in 0..20 {
            if r.status != StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            r = send(
                &env.client,
                request(
                    env.gateway.public,
                    "POST",
                    "/auth/login",
                    &[],
                    Some(body.clone()),
                ),
            )
            .await;
        }
        match r.status {
            StatusCode::OK => works.push(i),
            StatusCode::UNAUTHORIZED => {}
            other => panic!("password {i}: {other}: {}", r.body),
        }
    }
    assert_eq!(
        works.len(),
        1,
        "passwords that log in: {works:?} ({answers:?})"
    );
    if let Some(w) = winner {
        assert_eq!(works, vec![w], "{answers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_needs_an_admin_key_and_the_ops_listener_refuses_other_sites() {
    let env = start("auth-reload", "").await;
    // No key: 401.
    let r = env.ops("POST", "/reload", &[], None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    // A key without admin.config.write: 403.
    let (reader, _) = bootstrap(
        &env.config,
        &["--name", "reader", "--permission", "admin.users.read"],
    );
    let r = env.admin_as(&reader, "POST", "/reload", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let bearer = format!("Bearer {}", env.key);
    // Cross-site, even with a key: 403.
    for header in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "http://evil.example"),
    ] {
        let r = env
            .ops(
                "POST",
                "/reload",
                &[("authorization", &bearer), header],
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{header:?}: {}", r.body);
        assert_eq!(r.code().as_deref(), Some("request.cross_site"));
    }
    // Every state-changing method, on any ops route: 403 before the
    // admin guard (so even a valid key changes nothing).
    for (method, path) in [
        ("DELETE", "/admin/api-keys/nope"),
        ("PUT", "/admin/users/nope/grants"),
        ("PATCH", "/admin/users/nope"),
        ("POST", "/admin/keys/rotate"),
        ("DELETE", "/console/session"),
    ] {
        let r = env
            .ops(
                method,
                path,
                &[("authorization", &bearer), ("sec-fetch-site", "cross-site")],
                None,
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            r.body
        );
        assert_eq!(r.code().as_deref(), Some("request.cross_site"));
    }
    let keys = env.admin("GET", "/admin/keys", None).await.json();
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["state"] != "published"),
        "a cross-site rotation went through: {keys}"
    );
    // A foreign Host (DNS rebinding): 421, on every route.
    for path in [
        "/reload",
        "/metrics",
        "/openapi.json",
        "/health/ready",
        "/admin/users",
        "/console",
    ] {
        let method = if path == "/reload" { "POST" } else { "GET" };
        let r = env
            .ops(
                method,
                path,
                &[("authorization", &bearer), ("host", "evil.example")],
                None,
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::MISDIRECTED_REQUEST,
            "{path}: {}",
            r.body
        );
        assert_eq!(r.code().as_deref(), Some("request.misdirected"));
    }
    // Loopback names pass; the key with admin.config.write reloads.
    let port = env.gateway.ops.port().to_string();
    let localhost = format!("localhost:{port}");
    let r = env
        .ops("GET", "/metrics", &[("host", &localhost)], None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let same = format!("http://{}", env.gateway.ops);
    let r = env
        .ops(
            "POST",
            "/reload",
            &[
                ("authorization", &bearer),
                ("origin", &same),
                ("sec-fetch-site", "same-origin"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_added_in_ops_hosts_are_answered() {
    let env = start(
        "auth-hosts",
        "ops_hosts = [\"ops.internal\", \"*.example.net\"]",
    )
    .await;
    for (host, status) in [
        ("ops.internal", StatusCode::OK),
        ("a.example.net:9090", StatusCode::OK),
        ("example.net", StatusCode::MISDIRECTED_REQUEST),
        ("ops.internal.evil", StatusCode::MISDIRECTED_REQUEST),
    ] {
        let r = env
            .ops("GET", "/health/live", &[("host", host)], None)
            .await;
        assert_eq!(r.status, status, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_credentials_never_reach_reload_answers_the_console_or_logs() {
    let env = start("auth-redact", "").await;
    let text = std::fs::read_to_string(&env.config).unwrap();
    // A password in every kind of URL the file takes, each made invalid so
    // that its error quotes it back.
    let secrets = [
        "PwStorage1",
        "PwRedis2",
        "PwCluster3",
        "PwAudit4",
        "PwIssuer5",
        "PwJwks6",
        "PwUpstream7",
        "PwQuery8",
        "PwPublic9",
        "PwKeysIssuer10",
    ];
    let mut bad: String = text
        .lines()
        .map(|l| {
            if l.starts_with("url = \"sqlite://") {
                "url = \"postgress://app:PwStorage1@db.test/x?password=PwQuery8\"\n\
                 redis = \"redsi://:PwRedis2@127.0.0.1:6379\"\n\
                 redis_cluster = [\"redsi://:PwCluster3@127.0.0.1:7000\"]"
                    .to_owned()
            } else if l.starts_with("sqlite = ") {
                format!("{l}\npostgres = \"postgress://app:PwAudit4@db.test/audit\"")
            } else if l.starts_with("issuer = ") {
                "issuer = \"https://u:PwKeysIssuer10@issuer.test/?q=1\"".to_owned()
            } else if l.starts_with("url = \"http://") {
                l.replace("http://", "htp://u:PwUpstream7@")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    bad.push_str(
        "\n[token_service]\npublic_url = \"https://u:PwPublic9@auth.test/?q=1\"\n\n[[keys.trusted_issuers]]\nissuer = \"ftp://u:PwIssuer5@idp.test\"\njwks_url = \"ftp://u:PwJwks6@idp.test/jwks\"\n",
    );
    std::fs::write(&env.config, &bad).unwrap();

    let r = env.admin("POST", "/reload", None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(
        r.body.contains("[redacted]"),
        "the URLs were quoted: {}",
        r.body
    );
    for s in secrets {
        assert!(!r.body.contains(s), "{s} in the reload answer: {}", r.body);
    }

    // The console's view of the last reload.
    let origin = format!("http://{}", env.gateway.ops);
    let signed = env
        .ops(
            "POST",
            "/console/session",
            &[("origin", &origin)],
            Some(json!({"key": env.key})),
        )
        .await;
    let cookie = signed
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let r = env
        .ops("GET", "/console/api/config", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["last_reload"]["result"], "error", "{}", r.body);
    for s in secrets {
        assert!(!r.body.contains(s), "{s} in the console: {}", r.body);
    }

    // `config check` of the same file.
    let out = portcullis(&["config", "check", &env.config]);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(printed.contains("[redacted]"), "{printed}");
    for s in secrets {
        assert!(!printed.contains(s), "{s} in config check: {printed}");
    }

    // Well-formed URLs of every kind, with passwords: the reload fails on
    // one conflict (`redis` and `redis_cluster` both set) and reports the
    // restart-only keys; no password is quoted anywhere.
    let valid_secrets = [
        "PwPostgres11",
        "PwRedis12",
        "PwRediss13",
        "PwAuditPg14",
        "PwUpstream15",
        "PwJwks16",
        "PwPublic17",
    ];
    let spool = env.dir.join("spool");
    let valid: String = text
        .lines()
        .map(|l| {
            if l.starts_with("url = \"sqlite://") {
                "url = \"postgres://app:PwPostgres11@127.0.0.1:1/x\"\n\
                 redis = \"redis://:PwRedis12@127.0.0.1:1\"\n\
                 redis_cluster = [\"rediss://u:PwRediss13@127.0.0.1:2\"]"
                    .to_owned()
            } else if l.starts_with("sqlite = ") {
                format!(
                    "postgres = \"postgresql://a:PwAuditPg14@127.0.0.1:1/audit\"\nspool_dir = \"{}\"",
                    spool.display()
                )
            } else if l.starts_with("url = \"http://") {
                l.replace("http://", "http://u:PwUpstream15@")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n[token_service]\npublic_url = \"https://u:PwPublic17@auth.test\"\n\n\
           [[keys.trusted_issuers]]\nissuer = \"https://idp.test\"\naudience = [\"api\"]\n\
           jwks_url = \"https://u:PwJwks16@idp.test/jwks\"\n";
    std::fs::write(&env.config, &valid).unwrap();
    let r = env.admin("POST", "/reload", None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body.contains("redis_cluster"), "{}", r.body);
    let r2 = env
        .ops("GET", "/console/api/config", &[("cookie", &cookie)], None)
        .await;
    let out = portcullis(&["config", "check", &env.config]);
    let checked = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for s in valid_secrets {
        assert!(!r.body.contains(s), "{s} in the reload answer: {}", r.body);
        assert!(!r2.body.contains(s), "{s} in the console: {}", r2.body);
        assert!(!checked.contains(s), "{s} in config check: {checked}");
    }

    // The gateway's log.
    let log = std::fs::read_to_string(&env.gateway.log).unwrap();
    assert!(log.contains("configuration reload failed"), "{log}");
    for s in secrets.iter().chain(&valid_secrets) {
        assert!(!log.contains(s), "{s} in the log: {log}");
    }
}

/// A gateway that cannot reach its Redis or PostgreSQL says so at start,
/// without the URL's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_credentials_never_reach_start_errors() {
    let dir = TempDir::new("auth-redact-start");
    let upstream = echo_upstream().await;
    let closed = free_port();
    let cases = [
        (
            "PwStartPg1",
            format!("postgres://app:PwStartPg1@{closed}/x"),
        ),
        ("PwStartRedis2", format!("redis://:PwStartRedis2@{closed}")),
        (
            "PwStartRediss3",
            format!("rediss://u:PwStartRediss3@{closed}"),
        ),
        (
            "PwStartCluster4",
            format!("redis://:PwStartCluster4@{closed}"),
        ),
    ];
    let mut runs = Vec::new();
    for (i, (secret, url)) in cases.iter().enumerate() {
        let config = gateway_config(&dir, upstream, "", None);
        let config = match i {
            0 => config.storage_url(url),
            3 => config.storage(&format!("redis_cluster = [{}]", toml_str(url))),
            _ => config.storage(&format!("redis = {}", toml_str(url))),
        };
        let path = config.write_as(&format!("start-{i}"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config", path.to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        runs.push((*secret, child));
    }
    for (secret, child) in runs {
        let out = child.wait_with_output().unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{secret}: started: {printed}");
        assert!(printed.contains("cannot start"), "{secret}: {printed}");
        assert!(!printed.contains(secret), "{secret} printed: {printed}");
    }
}
