//! `portcullis explain`, `portcullis test`, `[tests]` and `POST /admin/explain`,
//! outside in against the real binary: each step of a decision is shown
//! (canonical request, matching routes and the precedence rule that
//! decided, credential, caller and the missing grant, rate-rule keys, mode,
//! upstream header changes, decision); secrets never come back; the live
//! form sees bans and revocation the offline one cannot; pinned cases fail
//! with a readable diff when a route is loosened, refuse a reload, and
//! explain decides what the running gateway decides.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use serde_json::{Value, json};
use support::*;

/// The route table every test here decides under, `extra` (a section)
/// after it.
fn gateway_config(dir: &TempDir, upstream: &str, extra: &str) -> GatewayConfig {
    let auth = ["jwt", "api_key"];
    let config = GatewayConfig::new(dir)
        .audit("flush_interval = \"50ms\"")
        .role("viewer", &["docs.read"])
        .role_including("editor", &["docs.write"], &["viewer"])
        .rate_limit(RateLimit::fixed_window("per-caller", 100, 60, &["subject"]))
        .route(
            Route::new("docs-read", "/docs/**")
                .methods(&["GET"])
                .credentials(&auth)
                .permissions_all(&["docs.read"])
                .rate_limits(&["per-caller"]),
        )
        .route(
            Route::new("docs-one", "/docs/{id}")
                .methods(&["GET", "DELETE"])
                .credentials(&auth)
                .permissions_all(&["docs.read"]),
        )
        .route(
            Route::new("docs-delete", "/docs/{id}")
                .methods(&["DELETE"])
                .credentials(&auth)
                .permissions_all(&["docs.delete"]),
        )
        .route(
            Route::new("no-secrets", "/docs/secret/**")
                .line("effect = \"deny\"")
                .credentials(&auth),
        )
        .route(
            Route::new("beta", "/beta/**")
                .credentials(&["jwt"])
                .roles_any(&["beta"])
                .mode("dry_run"),
        )
        .route(
            Route::new("health", "/health")
                .methods(&["GET"])
                .credentials(&["anonymous"]),
        )
        .upstream(Upstream::new(
            "docs",
            &format!("http://{upstream}"),
            &["docs-read", "docs-one", "docs-delete", "beta", "health"],
        ));
    if extra.trim().is_empty() {
        config
    } else {
        config.raw(extra)
    }
}

const CASES: &str = r#"
[[case]]
name = "editors cannot delete"
request = "DELETE https://api.example.com/docs/1"
as = { roles = ["editor"] }
expect = "authz.denied"

[[case]]
name = "viewers read a document"
request = "GET /docs/1"
as = { roles = ["viewer"] }
expect = { allow = true, upstream = "docs", route = "docs-one" }

[[case]]
name = "secrets are never served"
request = "GET /docs/secret/plan"
as = { roles = ["editor"], permissions = ["*"] }
expect = { allow = false, code = "authz.denied", route = "no-secrets" }

[[case]]
name = "anonymous callers need credentials"
request = "GET /docs/1"
anonymous = true
expect = { code = "auth.missing_credentials", status = 401 }

[[case]]
name = "health is public"
request = "/health"
anonymous = true
expect = "allow"
"#;

struct Files {
    dir: TempDir,
    config: std::path::PathBuf,
    public: SocketAddr,
    ops: SocketAddr,
}

fn files(name: &str, upstream: &str, extra: &str) -> Files {
    let dir = TempDir::new(name);
    let gateway_config = gateway_config(&dir, upstream, extra);
    let (public, ops) = (gateway_config.public, gateway_config.ops);
    let config = gateway_config.write();
    std::fs::write(dir.join("cases.toml"), CASES).unwrap();
    Files {
        dir,
        config,
        public,
        ops,
    }
}

impl Files {
    fn path(&self) -> &str {
        self.config.to_str().unwrap()
    }

    fn explain_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["explain", "--config", self.path(), "--format", "json"];
        all.extend_from_slice(args);
        let out = portcullis(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Loosens `docs-delete`: any reader may delete.
    fn loosen(&self) {
        let text = std::fs::read_to_string(&self.config).unwrap().replace(
            "require = { permissions_all = [\"docs.delete\"] }",
            "require = { permissions_all = [\"docs.read\"] }",
        );
        std::fs::write(&self.config, text).unwrap();
    }
}

fn token(dir: &TempDir, sub: &str, claims: &[&str]) -> String {
    let key = dir.join("keys").join("k1.pem");
    let mut args = vec![
        "token",
        "issue",
        "--key",
        key.to_str().unwrap(),
        "--sub",
        sub,
        "--iss",
        "https://issuer.test",
    ];
    for c in claims {
        args.extend_from_slice(&["--claim", c]);
    }
    let out = portcullis(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect()
}

#[test]
fn explain_shows_every_step_of_a_refusal_and_its_missing_grant() {
    let f = files("explain-steps", "127.0.0.1:9", "");
    // A doubled slash is canonicalised before any route sees the path.
    let r = f.explain_json(&[
        "--method",
        "DELETE",
        "--host",
        "api.example.com",
        "//docs/1",
        "--as",
        "ed",
        "--roles",
        "editor",
    ]);
    assert_eq!(r["request"]["path"], "/docs/1");
    assert_eq!(r["request"]["host"], "api.example.com");
    assert_eq!(r["request"]["as_sent"]["path"], "//docs/1");
    assert_eq!(r["live"], false);
    // Both DELETE routes and the any-method catch-all match; the
    // one-method route wins over the two-method one, the one-segment
    // path over `**`.
    assert_eq!(
        names(&r["routes"]["matches"]),
        ["docs-delete", "docs-one"],
        "{r:#}"
    );
    assert_eq!(r["routes"]["decided_by"], "docs-delete");
    assert_eq!(r["routes"]["why"][0]["over"], "docs-one");
    assert_eq!(r["routes"]["why"][0]["rule"], "fewer_methods");
    // The assumed caller, its effective permissions, the missing grant.
    assert_eq!(r["credentials"]["outcome"], "assumed");
    assert_eq!(r["principal"]["subject"], "ed");
    assert_eq!(
        r["principal"]["effective_permissions"],
        json!(["docs.read", "docs.write"])
    );
    assert_eq!(r["requirement"]["permissions_all"], json!(["docs.delete"]));
    assert_eq!(r["authorization"]["reason"], "missing_permission");
    assert!(
        r["authorization"]["detail"]
            .as_str()
            .unwrap()
            .contains("docs.delete")
    );
    assert_eq!(r["mode"], "enforce");
    assert_eq!(r["bans"][0]["result"], "not_checked_offline");
    assert_eq!(r["decision"]["allow"], false);
    assert_eq!(r["decision"]["code"], "authz.denied");
    assert_eq!(r["decision"]["status"], 403);
    assert!(r["upstream"].is_null());

    // Deny overrides allow, and says so; the allow route's settings apply.
    let r = f.explain_json(&["/docs/secret/plan", "--as", "ed", "--roles", "editor"]);
    assert_eq!(r["routes"]["decided_by"], "no-secrets");
    assert_eq!(r["routes"]["settings_from"], "docs-read");
    assert_eq!(r["routes"]["why"][0]["rule"], "deny_overrides_allow");
    assert_eq!(r["decision"]["code"], "authz.denied");

    // The text form has the same steps, in order.
    let out = portcullis(&[
        "explain",
        "--config",
        f.path(),
        "--method",
        "DELETE",
        "/docs/1",
        "--as",
        "ed",
        "--roles",
        "editor",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let order = [
        "request",
        "routes",
        "credentials",
        "caller",
        "requirement",
        "rate limits",
        "mode",
        "decision",
    ];
    let mut at = 0;
    for section in order {
        let found = text[at..]
            .find(&format!("\n{section}"))
            .unwrap_or_else(|| panic!("no `{section}` after byte {at}:\n{text}"));
        at += found + 1;
    }
    assert!(text.contains("DENY 403 authz.denied"), "{text}");
    assert!(text.contains("missing permission `docs.delete`"), "{text}");
}

#[test]
fn explain_shows_rate_keys_upstream_headers_and_never_a_secret() {
    let f = files("explain-upstream", "127.0.0.1:9", "");
    let jwt = token(&f.dir, "alice", &["roles=[\"viewer\"]"]);
    let r = f.explain_json(&[
        "https://api.example.com/docs/a/b?x=1",
        "--token",
        &jwt,
        "--header",
        "X-Portcullis-Subject: mallory",
        "--header",
        "Cookie: session=s3cret",
        "--client-ip",
        "198.51.100.7",
    ]);
    let printed = r.to_string();
    assert!(!printed.contains(&jwt), "the token came back: {printed}");
    assert!(!printed.contains("s3cret"), "a cookie came back: {printed}");
    assert_eq!(r["credentials"]["outcome"], "verified", "{r:#}");
    assert_eq!(r["credentials"]["presented"], "a bearer JWT");
    assert_eq!(r["credentials"]["sources"][0]["source"], "jwt");
    assert_eq!(r["credentials"]["sources"][0]["present"], true);
    assert_eq!(r["credentials"]["revocation"], "not_checked_offline");
    assert_eq!(r["principal"]["subject"], "alice");
    assert_eq!(r["request"]["client_ip"], "198.51.100.7");
    // The rate rule and the key this caller counts under.
    assert_eq!(r["rate_limits"][0]["rule"], "per-caller");
    assert_eq!(r["rate_limits"][0]["key"], "sub=alice", "{r:#}");
    assert_eq!(r["decision"]["allow"], true);
    let up = &r["upstream"];
    assert_eq!(up["name"], "docs");
    assert_eq!(up["url"], "http://127.0.0.1:9/docs/a/b?x=1");
    let changed = |list: &str| -> Vec<String> {
        up["headers"][list]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                h["name"]
                    .as_str()
                    .unwrap_or_else(|| h.as_str().unwrap())
                    .to_owned()
            })
            .collect()
    };
    // The spoofed identity header is replaced by the verified subject,
    // the credential is stripped before the upstream sees it.
    assert!(
        changed("replaced").contains(&"x-portcullis-subject".to_owned()),
        "{up:#}"
    );
    let subject = up["headers"]["replaced"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "x-portcullis-subject")
        .unwrap();
    assert_eq!(subject["value"], "alice");
    assert!(
        changed("removed").contains(&"authorization".to_owned()),
        "{up:#}"
    );
    assert!(
        changed("added").contains(&"x-forwarded-for".to_owned()),
        "{up:#}"
    );

    // A forged token is refused with its stable code, not echoed either.
    let forged = format!("{jwt}x");
    let r = f.explain_json(&["/docs/1", "--token", &forged]);
    assert!(!r.to_string().contains(&forged));
    assert_eq!(r["credentials"]["outcome"], "refused");
    assert_eq!(r["decision"]["code"], r["credentials"]["code"]);
    assert_eq!(r["decision"]["status"], 401);

    // An API key lives in the stores: offline cannot decide it, and says so.
    let r = f.explain_json(&["/docs/1", "--api-key", "pck_notarealkey"]);
    assert!(!r.to_string().contains("pck_notarealkey"));
    assert_eq!(r["credentials"]["outcome"], "not_checked_offline", "{r:#}");
    assert!(r["decision"]["undetermined"].is_string());
}

#[test]
fn explain_reports_malformed_requests_and_dry_run_routes() {
    let f = files("explain-malformed", "127.0.0.1:9", "");
    let r = f.explain_json(&[
        "/docs/%2e%2e/secret/plan",
        "--as",
        "ed",
        "--roles",
        "editor",
    ]);
    assert!(r["malformed"]["reason"].is_string(), "{r:#}");
    assert_eq!(r["decision"]["code"], "request.malformed_path");
    assert_eq!(r["decision"]["status"], 400);
    assert!(r["routes"].is_null());

    // A dry-run route lets through what it would refuse, and says which code.
    let r = f.explain_json(&["/beta/x", "--as", "v", "--roles", "viewer"]);
    assert_eq!(r["mode"], "dry_run");
    assert_eq!(r["decision"]["allow"], true);
    assert_eq!(
        r["decision"]["dry_run_would_refuse"]["code"],
        "authz.denied"
    );
    assert_eq!(r["upstream"]["name"], "docs");
    let dry = r["upstream"]["headers"]["added"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "x-portcullis-dry-run")
        .cloned();
    assert_eq!(dry.unwrap()["value"], "would-deny authz.denied");
}

#[test]
fn test_command_passes_then_fails_with_a_diff_when_a_route_is_loosened() {
    let f = files("explain-test-cmd", "127.0.0.1:9", "");
    let cases = f.dir.join("cases.toml");
    let out = portcullis(&["test", "--config", f.path(), cases.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches("\nok    ").count() + usize::from(stdout.starts_with("ok    ")),
        5,
        "{stdout}"
    );
    assert!(stdout.contains("5 cases: 5 passed, 0 failed"), "{stdout}");

    f.loosen();
    let out = portcullis(&["test", "--config", f.path(), cases.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  editors cannot delete"), "{stdout}");
    assert!(stdout.contains("expected: deny authz.denied"), "{stdout}");
    assert!(
        stdout.contains("actual:   allow by route `docs-delete`"),
        "{stdout}"
    );
    assert!(stdout.contains("5 cases: 4 passed, 1 failed"), "{stdout}");

    // A case file with a typo in a code is refused, not run.
    let bad = f.dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[case]]\nname = \"x\"\nrequest = \"/health\"\nexpect = \"authz.deny\"\n",
    )
    .unwrap();
    let out = portcullis(&["test", "--config", f.path(), bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("authz.deny"));
}

#[test]
fn config_check_runs_the_pinned_cases() {
    let f = files(
        "explain-check",
        "127.0.0.1:9",
        "\n[tests]\nfiles = [\"cases.toml\"]\n",
    );
    let out = portcullis(&["config", "check", f.path()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("5 pinned decisions hold"));
    f.loosen();
    let out = portcullis(&["config", "check", f.path()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("case `editors cannot delete`"), "{stderr}");
}

#[test]
fn the_gateway_does_not_start_when_a_pinned_case_fails() {
    let f = files(
        "explain-start",
        "127.0.0.1:9",
        "\n[tests]\nfiles = [\"cases.toml\"]\n",
    );
    f.loosen();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config", f.path()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("editors cannot delete"), "{stderr}");
}

/// Starts the gateway of `f` with an admin key of `permissions` (none: `*`).
async fn start(f: &Files, permissions: &[&str]) -> (Gateway, HttpClient, String) {
    let mut args: Vec<&str> = Vec::new();
    for p in permissions {
        args.extend_from_slice(&["--permission", p]);
    }
    let key = bootstrap_admin_with(&f.config, &args);
    let text = std::fs::read_to_string(&f.config).unwrap();
    let gateway = Gateway::start(&f.dir, "gateway", &text, f.public, f.ops);
    let client = client();
    gateway.wait_ready(&client).await;
    (gateway, client, key)
}

async fn admin(client: &HttpClient, ops: SocketAddr, key: &str, path: &str, body: Value) -> Reply {
    let bearer = format!("Bearer {key}");
    send(
        client,
        post(
            ops,
            path,
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            &body.to_string(),
        ),
    )
    .await
}

#[tokio::test]
async fn a_reload_whose_cases_fail_is_refused_and_the_running_rules_keep_serving() {
    let upstream = echo_upstream().await;
    let f = files(
        "explain-reload",
        &upstream.to_string(),
        "\n[tests]\nfiles = [\"cases.toml\"]\n",
    );
    let (gateway, client, key) = start(&f, &[]).await;
    let jwt = token(&f.dir, "ed", &["roles=[\"editor\"]"]);
    let bearer = format!("Bearer {jwt}");
    let delete = |addr: SocketAddr| {
        http::Request::delete(format!("http://{addr}/docs/1"))
            .header("authorization", &bearer)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        send(&client, delete(gateway.public)).await.status,
        StatusCode::FORBIDDEN
    );

    f.loosen();
    let r = admin(&client, gateway.ops, &key, "/reload", json!({})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body.contains("editors cannot delete"), "{}", r.body);
    // The pinned rule still decides.
    assert_eq!(
        send(&client, delete(gateway.public)).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn admin_explain_sees_bans_and_revocation_that_offline_cannot() {
    let upstream = echo_upstream().await;
    let f = files("explain-live", &upstream.to_string(), "");
    let (gateway, client, key) = start(&f, &[]).await;
    let r = admin(
        &client,
        gateway.ops,
        &key,
        "/admin/users",
        json!({"username": "vera", "password": PASSWORD, "roles": ["viewer"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let jwt = login(&client, gateway.public, "vera").await;

    // Live and offline agree while nothing is banned or revoked; the
    // live report reads the rate counters without consuming them.
    let ask = json!({"target": "/docs/a/b", "token": jwt, "client_ip": "198.51.100.9"});
    for _ in 0..3 {
        let r = admin(&client, gateway.ops, &key, "/admin/explain", ask.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let v = r.json();
        assert!(!r.body.contains(&jwt), "the token came back");
        assert_eq!(v["live"], true);
        assert_eq!(v["decision"]["allow"], true, "{v:#}");
        assert_eq!(v["credentials"]["revocation"], "passed");
        // What would remain after this request: the same each time.
        assert_eq!(v["rate_limits"][0]["limit"], 100, "{v:#}");
        assert_eq!(v["rate_limits"][0]["remaining"], 99, "{v:#}");
        assert_eq!(v["bans"][0]["result"], "passed");
    }
    // A real request consumes one; explain reads it.
    let bearer = format!("Bearer {jwt}");
    let r = send(
        &client,
        get(
            gateway.public,
            "/docs/a/b",
            &[
                ("authorization", &bearer),
                ("x-forwarded-for", "198.51.100.9"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v = admin(&client, gateway.ops, &key, "/admin/explain", ask.clone())
        .await
        .json();
    assert_eq!(v["rate_limits"][0]["remaining"], 98, "{v:#}");

    // A ban on the client's address: live sees it, offline cannot.
    let r = admin(
        &client,
        gateway.ops,
        &key,
        "/admin/bans",
        json!({"target": "ip:198.51.100.9", "duration_seconds": 600}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let v = admin(&client, gateway.ops, &key, "/admin/explain", ask.clone())
        .await
        .json();
    assert_eq!(v["bans"][0]["on"], "ip");
    assert_eq!(v["bans"][0]["result"], "failed", "{v:#}");
    assert_eq!(v["decision"]["code"], "anomaly.banned");
    let offline = f.explain_json(&["/docs/a/b", "--token", &jwt, "--client-ip", "198.51.100.9"]);
    assert_eq!(offline["bans"][0]["result"], "not_checked_offline");
    assert_eq!(offline["decision"]["allow"], true, "{offline:#}");

    // A revoked token: live refuses it, offline verifies only its signature.
    let claims = claims(&jwt);
    let r = admin(
        &client,
        gateway.ops,
        &key,
        "/admin/tokens/revoke",
        json!({"jti": claims["jti"], "expires_at": claims["exp"]}),
    )
    .await;
    assert!(r.status.is_success(), "{}", r.body);
    let v = admin(
        &client,
        gateway.ops,
        &key,
        "/admin/explain",
        json!({"target": "/docs/a/b", "token": jwt, "client_ip": "198.51.100.10"}),
    )
    .await
    .json();
    assert_eq!(v["credentials"]["code"], "auth.token_revoked", "{v:#}");
    assert_eq!(v["credentials"]["revocation"], "failed");
    assert_eq!(v["decision"]["status"], 401);
    let offline = f.explain_json(&["/docs/a/b", "--token", &jwt]);
    assert_eq!(offline["credentials"]["revocation"], "not_checked_offline");

    // Every explain call is audited like any admin call, without the token.
    let bearer_admin = format!("Bearer {key}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let events = loop {
        let r = send(
            &client,
            get(
                gateway.ops,
                "/admin/audit?path_prefix=/admin/explain&limit=100",
                &[("authorization", &bearer_admin)],
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let events = r.json()["events"].as_array().cloned().unwrap_or_default();
        if events.len() >= 6 || std::time::Instant::now() > deadline {
            assert!(!r.body.contains(&jwt), "the token reached the audit log");
            break events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(events.len() >= 6, "{events:#?}");
    assert!(
        events.iter().all(|e| e["route"] == "POST /admin/explain"),
        "{events:#?}"
    );

    // `portcullis explain --admin` asks the same endpoint.
    let key_file = f.dir.join("admin.key");
    std::fs::write(&key_file, &key).unwrap();
    let out = portcullis(&[
        "explain",
        "--admin",
        &format!("http://{}", gateway.ops),
        "--key-file",
        key_file.to_str().unwrap(),
        "/health",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("explain (live"), "{text}");
    assert!(text.contains("ALLOW (anonymous_allowed)"), "{text}");
}

#[tokio::test]
async fn admin_explain_needs_its_permission() {
    let f = files("explain-perm", "127.0.0.1:9", "");
    let (gateway, client, key) = start(&f, &["admin.users.read"]).await;
    let r = admin(
        &client,
        gateway.ops,
        &key,
        "/admin/explain",
        json!({"target": "/health"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.code().as_deref(), Some("authz.denied"));
    let r = send(
        &client,
        post(
            gateway.ops,
            "/admin/explain",
            &[("content-type", "application/json")],
            "{\"target\": \"/health\"}",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// What `explain` decides is what the gateway does, over every request of
/// a small domain: methods × paths × callers against the route table.
#[tokio::test]
async fn explain_decides_what_the_gateway_decides() {
    let upstream = echo_upstream().await;
    let f = files("explain-agree", &upstream.to_string(), "");
    let (gateway, client, _key) = start(&f, &[]).await;
    let viewer = token(&f.dir, "v", &["roles=[\"viewer\"]"]);
    let deleter = token(
        &f.dir,
        "d",
        &["permissions=[\"docs.delete\", \"docs.read\"]"],
    );
    let callers: [Option<&str>; 3] = [None, Some(&viewer), Some(&deleter)];
    let methods = ["GET", "DELETE", "POST"];
    let paths = [
        "/docs/1",
        "/docs/a/b",
        "/docs/secret/x",
        "/docs",
        "/beta/1",
        "/health",
        "/nothing",
        "/docs/./1",
        "/docs/%2F1",
    ];
    let mut checked = 0;
    for caller in callers {
        for method in methods {
            for path in paths {
                let mut args = vec!["--method", method, path];
                if let Some(t) = caller {
                    args.extend_from_slice(&["--token", t]);
                }
                let explained = f.explain_json(&args);
                let mut b = http::Request::builder()
                    .method(method)
                    .uri(format!("http://{}{path}", gateway.public));
                if let Some(t) = caller {
                    b = b.header("authorization", format!("Bearer {t}"));
                }
                let got = send(
                    &client,
                    b.body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap(),
                )
                .await;
                let d = &explained["decision"];
                let what = format!(
                    "{method} {path} as {caller:?}: {got:?} vs {d}",
                    got = got.status
                );
                if d["allow"] == true {
                    assert_eq!(got.status, StatusCode::OK, "{what}");
                } else {
                    assert_eq!(
                        got.status.as_u16(),
                        d["status"].as_u64().unwrap() as u16,
                        "{what}"
                    );
                    assert_eq!(got.code().as_deref(), d["code"].as_str(), "{what}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 81);
}
