//! The operator console over real HTTP on the real binary (SQLite stores
//! and audit log, an echo upstream): only on the ops listener; nothing but
//! the sign-in page without the session cookie; state changes only with
//! the CSRF token and from the console's own origin; a strict
//! Content-Security-Policy and no inline script; the live stream passes
//! through as it streams; and the whole console driven in Debian's
//! chromium by `tests/e2e/console_browser.py` (Playwright for Python),
//! which writes a screenshot of each page at 1280 px and 390 px.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::{
    Gateway, GatewayConfig, HttpClient, PASSWORD, Reply, Route, TempDir, Upstream, bootstrap_admin,
    client, echo_upstream, get, send,
};

struct Console {
    dir: TempDir,
    gateway: Gateway,
    client: HttpClient,
    key: String,
}

async fn start(name: &str) -> Console {
    let dir = TempDir::new(name);
    let upstream = echo_upstream().await;
    let config = GatewayConfig::new(&dir)
        .raw("[guard.client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]")
        .route(Route::new("api", "/api/**").credentials(&["jwt", "api_key", "app"]))
        .route(Route::new("open", "/open/**").credentials(&["anonymous"]))
        .route(
            Route::new("trial", "/trial/**")
                .credentials(&["api_key"])
                .mode("dry_run"),
        )
        .upstream(Upstream::new(
            "echo",
            &format!("http://{upstream}"),
            &["api", "open", "trial"],
        ));
    let key = bootstrap_admin(&config.write());
    let gateway = config.start(&dir, "gateway");
    let client = client();
    gateway.wait_ready(&client).await;
    Console {
        dir,
        gateway,
        client,
        key,
    }
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

/// A signed-in console session: its cookie header and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

impl Console {
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

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let bearer = format!("Bearer {}", self.key);
        self.ops(method, path, &[("authorization", &bearer)], body)
            .await
    }

    fn origin(&self) -> String {
        format!("http://{}", self.gateway.ops)
    }

    async fn sign_in(&self, key: &str) -> Reply {
        let origin = self.origin();
        self.ops(
            "POST",
            "/console/session",
            &[("origin", &origin)],
            Some(json!({"key": key})),
        )
        .await
    }

    async fn session(&self) -> Session {
        let r = self.sign_in(&self.key).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let set = r.header("set-cookie").unwrap().to_owned();
        let cookie = set.split(';').next().unwrap().to_owned();
        Session {
            cookie,
            csrf: r.json()["csrf_token"].as_str().unwrap().to_owned(),
        }
    }

    /// A console call with the session's cookie and, when `csrf`, its
    /// token, from the console's origin.
    async fn call(
        &self,
        s: &Session,
        method: &str,
        path: &str,
        csrf: bool,
        body: Option<Value>,
    ) -> Reply {
        let origin = self.origin();
        let mut headers = vec![("cookie", s.cookie.as_str()), ("origin", origin.as_str())];
        if csrf {
            headers.push(("x-csrf-token", s.csrf.as_str()));
        }
        self.ops(method, path, &headers, body).await
    }

    async fn create_user(&self, username: &str) -> String {
        let r = self
            .admin(
                "POST",
                "/admin/users",
                Some(json!({"username": username, "password": PASSWORD})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.json()["id"].as_str().unwrap().to_owned()
    }
}

fn assert_hardened(r: &Reply) {
    let csp = r
        .header("content-security-policy")
        .expect("every console answer has a CSP");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(
        !csp.contains("unsafe"),
        "no unsafe-inline / unsafe-eval: {csp}"
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn the_page_is_strict_and_nothing_opens_without_the_cookie() {
    let c = start("console-security").await;

    // The sign-in page (the one thing open): strict headers, no inline script.
    let r = c.ops("GET", "/console", &[], None).await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.header("location"), Some("/console/"));
    let page = c.ops("GET", "/console/", &[], None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_hardened(&page);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let html = &page.body;
    assert!(html.contains("id=\"sign-in-form\""));
    assert!(!html.contains("<style"), "no inline style element");
    let mut scripts = 0;
    for tag in html.split("<script").skip(1) {
        let (open, rest) = tag.split_once('>').unwrap();
        assert!(open.contains("src=\"/console/assets/"), "{open}");
        assert!(rest.starts_with("</script>"), "no inline script content");
        scripts += 1;
    }
    assert_eq!(scripts, 1);
    // Its files are embedded: every one the page and its modules name is served.
    for asset in [
        "app.js",
        "api.js",
        "ui.js",
        "live.js",
        "threats.js",
        "people.js",
        "keys.js",
        "audit.js",
        "explain.js",
        "config.js",
        "console.css",
    ] {
        let r = c
            .ops("GET", &format!("/console/assets/{asset}"), &[], None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{asset}");
        assert_hardened(&r);
        assert!(
            !r.body.contains("innerHTML"),
            "{asset}: no markup from data"
        );
        assert!(!r.body.contains("eval("), "{asset}");
    }
    let r = c
        .ops("GET", "/console/assets/../admin/users", &[], None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Without the cookie, no console call works; a bearer key is not a
    // console credential.
    let bearer = format!("Bearer {}", c.key);
    for (method, path) in [
        ("GET", "/console/api/session"),
        ("GET", "/console/api/config"),
        ("GET", "/console/api/admin/users"),
        ("GET", "/console/api/admin/bans"),
        ("GET", "/console/api/admin/audit/stream"),
        ("POST", "/console/api/admin/bans"),
        ("DELETE", "/console/session"),
    ] {
        let r = c.ops(method, path, &[], None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(r.code().as_deref(), Some("auth.missing_credentials"));
        assert_hardened(&r);
        let r = c
            .ops(method, path, &[("authorization", &bearer)], None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        let r = c
            .ops(
                method,
                path,
                &[("cookie", "portcullis_console=forged")],
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(r.code().as_deref(), Some("auth.session_revoked"));
    }

    // Sign-in takes only an admin key; the cookie holds a session id, never the key.
    let r = c.sign_in("pck_nope").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code().as_deref(), Some("auth.invalid_api_key"));
    let alice = c.create_user("alice").await;
    // A user's key may not even hold the admin namespace...
    let r = c
        .admin(
            "POST",
            &format!("/admin/users/{alice}/api-keys"),
            Some(json!({"name": "mine", "permissions": ["admin.*"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.code().as_deref(), Some("authz.escalation"));
    // ...and whatever it holds, it is no admin key.
    let r = c
        .admin(
            "POST",
            &format!("/admin/users/{alice}/api-keys"),
            Some(json!({"name": "mine", "permissions": ["*"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let user_key = r.json()["key"].as_str().unwrap().to_owned();
    let r = c.sign_in(&user_key).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "a user's key is no admin key"
    );
    let r = c
        .ops(
            "POST",
            "/console/session",
            &[("origin", "http://evil.test")],
            Some(json!({"key": c.key})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "cross-origin sign-in");
    assert!(r.header("set-cookie").is_none());
    let r = c.sign_in(&c.key).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let set = r.header("set-cookie").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert!(!set.contains(&c.key) && !r.body.contains(&c.key));
    let first = c.session().await;
    let origin = c.origin();
    let r = c
        .ops(
            "POST",
            "/console/session",
            &[("origin", &origin), ("cookie", &first.cookie)],
            Some(json!({"key": c.key})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = c
        .call(&first, "GET", "/console/api/session", false, None)
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "signing in again replaces it"
    );
    let s = c.session().await;
    let r = c.call(&s, "GET", "/console/api/session", false, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["csrf_token"], s.csrf.as_str());
    assert!(r.json()["owner"].as_str().unwrap().starts_with("admin:"));
    let r = c
        .call(&s, "GET", "/console/api/admin/users?search=al", false, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["users"][0]["username"], "alice");
    assert_hardened(&r);

    // A state change needs the CSRF token, the right one, and the console's origin.
    let ban = json!({"target": "ip:203.0.113.50", "duration_seconds": 60});
    let r = c
        .call(
            &s,
            "POST",
            "/console/api/admin/bans",
            false,
            Some(ban.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.code().as_deref(), Some("authz.denied"));
    let origin = c.origin();
    let r = c
        .ops(
            "POST",
            "/console/api/admin/bans",
            &[
                ("cookie", &s.cookie),
                ("origin", &origin),
                ("x-csrf-token", "wrong"),
            ],
            Some(ban.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = c
        .ops(
            "POST",
            "/console/api/admin/bans",
            &[
                ("cookie", &s.cookie),
                ("origin", "http://evil.test"),
                ("x-csrf-token", &s.csrf),
            ],
            Some(ban.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "wrong Origin");
    // The ops listener refuses it before the console sees it.
    assert_eq!(r.code().as_deref(), Some("request.cross_site"));
    let r = c
        .ops(
            "POST",
            "/console/api/admin/bans",
            &[
                ("cookie", &s.cookie),
                ("x-csrf-token", &s.csrf),
                ("sec-fetch-site", "cross-site"),
            ],
            Some(ban.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "cross-site fetch");
    assert_eq!(r.code().as_deref(), Some("request.cross_site"));
    let r = c.admin("GET", "/admin/bans", None).await;
    assert_eq!(r.json()["bans"], json!([]), "nothing refused was done");
    let r = c
        .call(&s, "POST", "/console/api/admin/bans", true, Some(ban))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = c.admin("GET", "/admin/bans", None).await;
    assert_eq!(r.json()["bans"][0]["target"], "ip:203.0.113.50");

    // Bodies are bounded.
    let big = json!({"name": "x".repeat(70 * 1024)});
    let r = c
        .call(&s, "POST", "/console/api/admin/apps", true, Some(big))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Console calls are the admin API's: audited with the session's key.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = c
        .admin("GET", "/admin/audit?path_prefix=/admin/bans&limit=50", None)
        .await;
    let events = r.json()["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events.iter().any(|e| e["method"] == "POST"
            && e["decision"] == "allow"
            && e["auth_method"] == "api_key"),
        "{events:?}"
    );

    // The running configuration, redacted, with its load time.
    let r = c.call(&s, "GET", "/console/api/config", false, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v = r.json();
    assert!(v["loaded_at"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(v["last_reload"], Value::Null);
    assert_eq!(v["config"]["guard"]["routes"][0]["name"], "api");
    let r = c.admin("POST", "/reload", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = c.call(&s, "GET", "/console/api/config", false, None).await;
    assert_eq!(r.json()["last_reload"]["result"], "ok");

    // Sign-out ends the session: the cookie opens nothing any more.
    let r = c.call(&s, "DELETE", "/console/session", false, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "sign-out needs the token");
    let r = c.call(&s, "DELETE", "/console/session", true, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = c.call(&s, "GET", "/console/api/session", false, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Revoking the admin key ends its console sessions.
    let s = c.session().await;
    let me = c.call(&s, "GET", "/console/api/session", false, None).await;
    let key_id = me.json()["key_id"].as_str().unwrap().to_owned();
    let other = bootstrap_admin(&c.dir.join("gateway.toml"));
    let r = send(
        &c.client,
        request(
            c.gateway.ops,
            "DELETE",
            &format!("/admin/api-keys/{key_id}"),
            &[("authorization", &format!("Bearer {other}"))],
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // Revocation reaches the key cache within its bound (1 s).
    let mut refused = false;
    for _ in 0..40 {
        let r = c
            .call(&s, "GET", "/console/api/admin/users", false, None)
            .await;
        if r.status == StatusCode::UNAUTHORIZED {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the revoked key's session is refused");
    let r = c.call(&s, "GET", "/console/api/session", false, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "the session is gone");
}

#[tokio::test]
async fn the_console_is_absent_from_the_public_listener() {
    let c = start("console-public").await;
    for (method, path) in [
        ("GET", "/console"),
        ("GET", "/console/"),
        ("GET", "/console/assets/app.js"),
        ("GET", "/console/api/session"),
        ("POST", "/console/session"),
    ] {
        let r = send(
            &c.client,
            request(
                c.gateway.public,
                method,
                path,
                &[],
                Some(json!({"key": c.key})),
            ),
        )
        .await;
        // The public guard decides it like any other unrouted path.
        assert!(
            matches!(
                r.status,
                StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ),
            "{method} {path}: {}",
            r.status
        );
        assert!(r.header("set-cookie").is_none());
        assert!(!r.body.contains("Portcullis console"), "{}", r.body);
        assert!(!r.body.contains("import "), "{}", r.body);
        assert!(r.header("content-security-policy").is_none());
    }
}

#[tokio::test]
async fn the_live_stream_passes_through_as_it_streams() {
    let c = start("console-stream").await;
    let s = c.session().await;
    let req = request(
        c.gateway.ops,
        "GET",
        "/console/api/admin/audit/stream",
        &[("cookie", &s.cookie)],
        None,
    );
    let response = c.client.request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    assert!(response.headers().contains_key("content-security-policy"));
    let mut body = response.into_body();
    let r = send(
        &c.client,
        get(
            c.gateway.public,
            "/open/streamed",
            &[("x-forwarded-for", "198.51.100.4")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
                if seen.contains("/open/streamed") {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{seen}");
    assert!(seen.contains("event: decision"));
    assert!(
        seen.contains("198.51.100.4"),
        "the client IP from the trusted proxy"
    );
}

#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    let c = start("console-browser").await;
    c.create_user("alice").await;
    // Enough history for the audit page to have a second page.
    for i in 0..30 {
        let r = send(
            &c.client,
            get(
                c.gateway.public,
                &format!("/open/history/{i}"),
                &[("x-forwarded-for", "198.51.100.20")],
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/e2e-env.sh (it installs Debian's chromium)"
    );
    let artifacts = std::env::var_os("PORTCULLIS_ARTIFACTS").map_or_else(
        || std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"),
        std::path::PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&artifacts);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/console_browser.py");
    let python = support::venv_python();
    let mut command = std::process::Command::new(python);
    command
        .arg(&script)
        .env("CONSOLE_URL", format!("http://{}", c.gateway.ops))
        .env("PUBLIC_URL", format!("http://{}", c.gateway.public))
        .env("ADMIN_KEY", &c.key)
        .env("USERNAME", "alice")
        .env("PASSWORD", PASSWORD)
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .stdin(std::process::Stdio::null());
    // The gateway is another process: this runtime may block on the script.
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("console browser test: ok"));
    for page in [
        "sign-in", "live", "threats", "people", "apps", "keys", "explain", "audit", "config",
    ] {
        for shot in ["1280", "390", "dark-1280", "dark-390"] {
            let shot = artifacts.join(format!("{page}-{shot}.png"));
            let len = std::fs::metadata(&shot).map_or(0, |m| m.len());
            assert!(len > 1000, "{} is written", shot.display());
        }
    }
    println!("console screenshots: {}", artifacts.display());
}
