//! No grant exceeds its granter, on the real binary (SQLite stores): an
//! admin key can give only what it holds (API keys, users' grants at
//! create, replace and import, app credentials, and the credentials that
//! take over a user or an app), refused 403 `authz.escalation` naming the
//! permission; only admin-owned keys reach the admin API, whatever their
//! grants; a user's `*` never reaches the `admin.` namespace; the token
//! service mints no key beyond its user; bootstrap refuses a `memory`
//! store; an invitation with a bad lifetime writes nothing.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use support::{
    Gateway, GatewayConfig, HttpClient, PASSWORD, Reply, Route, TempDir, Upstream, bootstrap_admin,
    client, echo_upstream, portcullis, post, send,
};

struct Env {
    _dir: TempDir,
    gateway: Gateway,
    client: HttpClient,
    config: String,
    /// The bootstrap key (`*`).
    root: String,
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(k) = bearer {
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

/// `portcullis admin bootstrap --config CONFIG EXTRA…`: the raw output.
fn bootstrap_output(config: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["admin", "bootstrap", "--config", config];
    args.extend_from_slice(extra);
    portcullis(&args)
}

async fn start() -> Env {
    let dir = TempDir::new("escalation");
    let upstream = echo_upstream().await;
    let gateway_config = GatewayConfig::new(&dir)
        .no_audit()
        .role("viewer", &["docs.read"])
        .role_including("editor", &["docs.write"], &["viewer"])
        .role("operator", &["admin.users.read"])
        .route(Route::new("api", "/api/**").credentials(&["jwt", "api_key"]))
        .upstream(Upstream::new(
            "echo",
            &format!("http://{upstream}"),
            &["api"],
        ));
    let path = gateway_config.write();
    let config = path.to_str().unwrap().to_owned();
    let root = bootstrap_admin(&path);
    let gateway = gateway_config.start(&dir, "gateway");
    let client = client();
    gateway.wait_ready(&client).await;
    Env {
        _dir: dir,
        gateway,
        client,
        config,
        root,
    }
}

impl Env {
    /// An admin call with `key` on the ops listener.
    async fn admin(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
        send(
            &self.client,
            request(self.gateway.ops, method, path, Some(key), body.as_ref()),
        )
        .await
    }

    /// An admin key (owner `admin:<name>`) holding `permissions`, minted by root.
    async fn admin_key(&self, name: &str, permissions: &[&str]) -> String {
        let r = self
            .admin(
                &self.root,
                "POST",
                &format!("/admin/users/admin:{name}/api-keys"),
                Some(json!({"name": name, "permissions": permissions})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.json()["key"].as_str().unwrap().to_owned()
    }

    async fn create_user(&self, key: &str, username: &str, permissions: &[&str]) -> Reply {
        self.admin(
            key,
            "POST",
            "/admin/users",
            Some(json!({"username": username, "password": PASSWORD, "permissions": permissions})),
        )
        .await
    }

    async fn user_id(&self, username: &str) -> Option<String> {
        let r = self
            .admin(
                &self.root,
                "GET",
                &format!("/admin/users?search={username}"),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.json()["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == json!(username))
            .map(|u| u["id"].as_str().unwrap().to_owned())
    }

    async fn public(&self, method: &str, path: &str, bearer: &str, body: Option<Value>) -> Reply {
        send(
            &self.client,
            request(
                self.gateway.public,
                method,
                path,
                Some(bearer),
                body.as_ref(),
            ),
        )
        .await
    }

    async fn login(&self, username: &str) -> String {
        let body = json!({"username": username, "password": PASSWORD}).to_string();
        let r = send(
            &self.client,
            post(
                self.gateway.public,
                "/auth/login",
                &[("content-type", "application/json")],
                &body,
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.json()["access_token"].as_str().unwrap().to_owned()
    }
}

#[track_caller]
fn assert_escalation(r: &Reply, naming: &str) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.code().as_deref(), Some("authz.escalation"), "{}", r.body);
    assert!(
        r.json()["detail"].as_str().unwrap_or("").contains(naming),
        "names `{naming}`: {}",
        r.body
    );
}

/// Issue 25, item 1: a key holding `admin.api_keys.write` asked for an
/// `admin.*` key; now refused, and the allowed delegations still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_key_grants_no_more_than_it_holds() {
    let env = start().await;
    let minter = env.admin_key("minter", &["admin.api_keys.write"]).await;
    assert_eq!(
        env.admin(&minter, "GET", "/admin/users", None).await.status,
        StatusCode::FORBIDDEN
    );
    let r = env
        .admin(
            &minter,
            "POST",
            "/admin/users/admin:evil/api-keys",
            Some(json!({"name": "evil", "permissions": ["admin.*"]})),
        )
        .await;
    assert_escalation(&r, "admin.*");
    assert!(r.json().get("key").is_none());
    // A narrower wildcard it does not hold either.
    let r = env
        .admin(
            &minter,
            "POST",
            "/admin/users/admin:evil/api-keys",
            Some(json!({"name": "evil", "permissions": ["admin.users.*"]})),
        )
        .await;
    assert_escalation(&r, "admin.users.*");
    // Nothing was written for admin:evil.
    let listed = env
        .admin(&env.root, "GET", "/admin/users/admin:evil/api-keys", None)
        .await;
    assert_eq!(listed.json()["api_keys"], json!([]), "{}", listed.body);

    // Allowed: `admin.*` gives `admin.users.read`; a key holding
    // `admin.api_keys.write` + `admin.users.read` hands on `admin.users.read`.
    let all_admin = env.admin_key("ops", &["admin.*"]).await;
    let r = env
        .admin(
            &all_admin,
            "POST",
            "/admin/users/admin:reader/api-keys",
            Some(json!({"name": "reader", "permissions": ["admin.users.read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let both = env
        .admin_key("both", &["admin.api_keys.write", "admin.users.read"])
        .await;
    let r = env
        .admin(
            &both,
            "POST",
            "/admin/users/admin:reader2/api-keys",
            Some(json!({"name": "reader2", "permissions": ["admin.users.read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let reader = r.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(
        env.admin(&reader, "GET", "/admin/users", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        env.admin(&reader, "GET", "/admin/keys", None).await.status,
        StatusCode::FORBIDDEN
    );
    // `admin.*` holds nothing outside its namespace, so it gives none of it.
    let r = env.create_user(&all_admin, "dora", &["docs.read"]).await;
    assert_escalation(&r, "docs.read");
}

/// A key holding `admin.api_keys.write` cannot revoke an admin key that
/// holds more (it would lock the broader key's operator out); it revokes
/// one within its own grants, and the broader key revokes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrow_admin_key_cannot_revoke_a_broader_one() {
    let env = start().await;
    let ops = env.admin_key("ops", &["admin.*"]).await;
    let minter = env.admin_key("minter", &["admin.api_keys.write"]).await;
    let _peer = env.admin_key("peer", &["admin.api_keys.write"]).await;
    let id_of = |owner: &'static str| {
        let env = &env;
        async move {
            let r = env
                .admin(
                    &env.root,
                    "GET",
                    &format!("/admin/users/admin:{owner}/api-keys"),
                    None,
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            r.json()["api_keys"][0]["id"].as_str().unwrap().to_owned()
        }
    };
    let (ops_id, minter_id, peer_id) = (
        id_of("ops").await,
        id_of("minter").await,
        id_of("peer").await,
    );

    let r = env
        .admin(
            &minter,
            "DELETE",
            &format!("/admin/api-keys/{ops_id}"),
            None,
        )
        .await;
    assert_escalation(&r, "admin.*");
    assert_eq!(
        env.admin(&ops, "GET", "/admin/keys", None).await.status,
        StatusCode::OK,
        "the broader key still works"
    );
    // Within its own grants: allowed.
    let r = env
        .admin(
            &minter,
            "DELETE",
            &format!("/admin/api-keys/{peer_id}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // The broader key revokes the narrow one.
    let r = env
        .admin(
            &ops,
            "DELETE",
            &format!("/admin/api-keys/{minter_id}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        env.admin(&minter, "GET", "/admin/keys", None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// Issue 25, item 2: `admin.users.write` → user `mallory` with `*` → her
/// own API key → the admin API. Each link is now cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_key_is_never_an_admin_key() {
    let env = start().await;
    let writer = env.admin_key("writer", &["admin.users.write"]).await;
    let r = env.create_user(&writer, "mallory", &["*"]).await;
    assert_escalation(&r, "`*`");
    assert!(env.user_id("mallory").await.is_none(), "nothing written");
    let r = env.create_user(&writer, "mallory", &["admin.*"]).await;
    assert_escalation(&r, "admin.*");

    // Even root may not give a user the admin namespace, nor a role carrying it.
    let r = env
        .create_user(&env.root, "mallory", &["admin.keys.read"])
        .await;
    assert_escalation(&r, "admin.keys.read");
    let r = env
        .admin(
            &env.root,
            "POST",
            "/admin/users",
            Some(json!({"username": "mallory", "password": PASSWORD, "roles": ["operator"]})),
        )
        .await;
    assert_escalation(&r, "operator");

    // Root may give a user `*` (for the protected app); it does not reach admin.
    let r = env.create_user(&env.root, "mallory", &["*"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let token = env.login("mallory").await;
    // Her key inherits `*`; explicit admin permissions are refused.
    let r = env
        .public(
            "POST",
            "/auth/api-keys",
            &token,
            Some(json!({"name": "sneaky", "permissions": ["admin.*"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = env
        .public(
            "POST",
            "/auth/api-keys",
            &token,
            Some(json!({"name": "sneaky", "permissions": ["admin.keys.read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = env
        .public(
            "POST",
            "/auth/api-keys",
            &token,
            Some(json!({"name": "all"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json()["permissions"], json!(["*"]));
    let key = r.json()["key"].as_str().unwrap().to_owned();
    // It works on the public listener...
    assert_eq!(
        env.public("GET", "/api/x", &key, None).await.status,
        StatusCode::OK
    );
    // ...and is no admin key: every admin route refuses it as a credential.
    for path in ["/admin/keys", "/admin/users", "/admin/audit"] {
        let r = env.admin(&key, "GET", path, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}: {}", r.body);
        assert_eq!(r.code().as_deref(), Some("auth.invalid_api_key"));
    }
    let r = env
        .admin(
            &key,
            "POST",
            "/admin/users/admin:mallory/api-keys",
            Some(json!({"name": "root2", "permissions": ["admin.*"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    // Nor does the console take it.
    let r = send(
        &env.client,
        request(
            env.gateway.ops,
            "POST",
            "/console/session",
            None,
            Some(&json!({"key": key})),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    // The token service mints no key beyond its user: a user holding
    // `docs.read` asks for `docs.*`.
    let r = env.create_user(&env.root, "dan", &["docs.read"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let dan = env.login("dan").await;
    let r = env
        .public(
            "POST",
            "/auth/api-keys",
            &dan,
            Some(json!({"name": "wide", "permissions": ["docs.*"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = env
        .public(
            "POST",
            "/auth/api-keys",
            &dan,
            Some(json!({"name": "same", "permissions": ["docs.read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

/// Every admin route that creates or widens a grant, or hands over a
/// credential, refuses a caller that holds the route's permission but not
/// what it would grant; root (`*`) passes each one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_granting_route_checks_the_granter() {
    let env = start().await;
    // A user holding `docs.write` (beyond `docs.read`), and an app holding it.
    let r = env.create_user(&env.root, "victim", &["docs.write"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let victim = r.json()["id"].as_str().unwrap().to_owned();
    let r = env
        .admin(
            &env.root,
            "POST",
            "/admin/apps",
            Some(json!({"name": "billing", "permissions": ["docs.write"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let app = r.json()["app"]["app_id"].as_str().unwrap().to_owned();

    // Each case: (method, path, body, the permission the route needs, what is named).
    let import = format!(
        "{}\n{}\n",
        json!({"username": "fine", "password": PASSWORD, "permissions": ["docs.read"]}),
        json!({"username": "bad", "password": PASSWORD, "permissions": ["docs.*"]})
    );
    let cases: Vec<(&str, String, Option<Value>, &str, &str)> = vec![
        (
            "POST",
            "/admin/users".into(),
            Some(json!({"username": "u1", "password": PASSWORD, "permissions": ["docs.write"]})),
            "admin.users.write",
            "docs.write",
        ),
        (
            "POST",
            "/admin/users".into(),
            Some(json!({"username": "u2", "password": PASSWORD, "roles": ["editor"]})),
            "admin.users.write",
            "editor",
        ),
        (
            "POST",
            "/admin/users".into(),
            Some(json!({"username": "u3", "password": PASSWORD, "roles": ["undefined-role"]})),
            "admin.users.write",
            "undefined-role",
        ),
        (
            "POST",
            "/admin/users/import".into(),
            None, // the JSON-lines body is sent raw below
            "admin.users.write",
            "docs.*",
        ),
        (
            "PUT",
            format!("/admin/users/{victim}/grants"),
            Some(json!({"roles": [], "permissions": ["docs.write", "docs.delete"]})),
            "admin.users.write",
            "docs.delete",
        ),
        (
            "POST",
            format!("/admin/users/{victim}/reset-token"),
            Some(json!({})),
            "admin.users.write",
            "docs.write",
        ),
        (
            "POST",
            format!("/admin/users/{victim}/password"),
            Some(json!({"password": "another-long-password-1"})),
            "admin.users.write",
            "docs.write",
        ),
        (
            "POST",
            format!("/admin/users/{victim}/api-keys"),
            Some(json!({"name": "k", "permissions": ["docs.write"]})),
            "admin.api_keys.write",
            "docs.write",
        ),
        (
            "POST",
            format!("/admin/users/{victim}/api-keys"),
            Some(json!({"name": "k", "roles": ["editor"]})),
            "admin.api_keys.write",
            "editor",
        ),
        (
            "POST",
            "/admin/users/admin:other/api-keys".into(),
            Some(json!({"name": "k", "permissions": ["admin.keys.write"]})),
            "admin.api_keys.write",
            "admin.keys.write",
        ),
        (
            "POST",
            "/admin/apps".into(),
            Some(json!({"name": "a1", "permissions": ["docs.write"]})),
            "admin.apps.write",
            "docs.write",
        ),
        (
            "POST",
            format!("/admin/apps/{app}/rotate"),
            Some(json!({})),
            "admin.apps.write",
            "docs.write",
        ),
    ];
    for (i, (method, path, body, needs, naming)) in cases.iter().enumerate() {
        // The route's permission and `docs.read`, not what it would grant.
        let key = env
            .admin_key(&format!("sweep{i}"), &[*needs, "docs.read"])
            .await;
        let what = format!("{method} {path} ({naming})");
        let r = match body {
            Some(b) => env.admin(&key, method, path, Some(b.clone())).await,
            None => {
                let mut req = request(env.gateway.ops, method, path, Some(&key), None);
                *req.body_mut() = Full::new(Bytes::from(import.clone()));
                send(&env.client, req).await
            }
        };
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", r.body);
        assert_escalation(&r, naming);
    }
    // Nothing was written: no user from the refused creates or the import,
    // the victim's grants and password unchanged, the app's secret too.
    for name in ["u1", "u2", "u3", "fine", "bad"] {
        assert!(env.user_id(name).await.is_none(), "{name} not created");
    }
    let shown = env
        .admin(&env.root, "GET", &format!("/admin/users/{victim}"), None)
        .await;
    assert_eq!(shown.json()["permissions"], json!(["docs.write"]));
    env.login("victim").await;
    let shown = env
        .admin(&env.root, "GET", &format!("/admin/apps/{app}"), None)
        .await;
    assert_eq!(shown.json()["secret_version"], json!(1), "{}", shown.body);
    let keys = env
        .admin(
            &env.root,
            "GET",
            &format!("/admin/users/{victim}/api-keys"),
            None,
        )
        .await;
    assert_eq!(keys.json()["api_keys"], json!([]));

    // Root (`*`) passes every one of them.
    for (method, path, body, _, naming) in &cases {
        if path.starts_with("/admin/users/admin:") || *naming == "undefined-role" {
            continue;
        }
        let r = match body {
            Some(b) => env.admin(&env.root, method, path, Some(b.clone())).await,
            None => {
                let mut req = request(env.gateway.ops, method, path, Some(&env.root), None);
                *req.body_mut() = Full::new(Bytes::from(import.clone()));
                send(&env.client, req).await
            }
        };
        assert!(
            r.status.is_success(),
            "{method} {path} as root: {} {}",
            r.status,
            r.body
        );
    }
    // Keeping a grant the caller does not hold is not widening: a key with
    // `docs.read` may replace the victim's grants by adding `docs.read`.
    let narrow = env
        .admin_key("narrow", &["admin.users.write", "docs.read"])
        .await;
    let r = env
        .admin(
            &narrow,
            "PUT",
            &format!("/admin/users/{victim}/grants"),
            Some(json!({"roles": [], "permissions": ["docs.write", "docs.delete", "docs.read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Roles the caller covers are granted (viewer = docs.read).
    let r = env
        .admin(
            &narrow,
            "POST",
            "/admin/users",
            Some(json!({"username": "vera", "password": PASSWORD, "roles": ["viewer"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

/// Issue 25, item 10 (admin side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_invitations_and_memory_bootstraps_write_nothing() {
    let env = start().await;
    let r = env
        .admin(
            &env.root,
            "POST",
            "/admin/users",
            Some(json!({"username": "ivy", "invite": true, "invite_ttl_seconds": 31 * 24 * 3600})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("invite_ttl_seconds"), "{}", r.body);
    assert!(env.user_id("ivy").await.is_none(), "nothing written");
    let r = env
        .admin(
            &env.root,
            "POST",
            "/admin/users",
            Some(json!({"username": "ivy", "invite": true, "invite_ttl_seconds": 3600})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // A bootstrap into a `memory` store would print a key nobody accepts.
    let text = std::fs::read_to_string(&env.config).unwrap();
    let memory = env.config.replace("gateway.toml", "memory.toml");
    let from = text.find("url = \"sqlite://").unwrap();
    let to = from + text[from..].find('\n').unwrap();
    std::fs::write(
        &memory,
        format!("{}url = \"memory\"{}", &text[..from], &text[to..]),
    )
    .unwrap();
    let out = bootstrap_output(&memory, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no key printed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory"), "{err}");
    // A malformed permission is refused too.
    let out = bootstrap_output(&env.config, &["--permission", "a..b"]);
    assert_eq!(out.status.code(), Some(2));
}
