//! `portcullis test --replay-audit`, outside in against the real binary: a
//! gateway records its decisions (allowed, denied by role, anonymous
//! refused, an API key, a bad token, the admin API's own calls) in SQLite
//! or PostgreSQL; the log is then decided again under a configuration
//! that tightens one route, and exactly the decisions it changes are
//! reported, grouped by route and old → new outcome, with what cannot be
//! decided again from the record (a refused token, events written before
//! schema v3) counted by reason. `--fail-on-change` turns a change into
//! exit 1; the same configuration changes nothing.

mod support;

use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{Value, json};
use support::*;

/// The gateway's configuration; `audit` is its `[audit]` body.
fn gateway_config(dir: &TempDir, upstream: SocketAddr, audit: &str) -> GatewayConfig {
    GatewayConfig::new(dir)
        .audit_lines(audit)
        .audit("flush_interval = \"50ms\"")
        .role("viewer", &["docs.read"])
        .route(
            Route::new("docs", "/docs/**")
                .methods(&["GET"])
                .credentials(&["jwt", "api_key"])
                .permissions_all(&["docs.read"]),
        )
        .route(
            Route::new("reports", "/reports/**")
                .methods(&["GET"])
                .credentials(&["jwt"])
                .roles_any(&["auditor"]),
        )
        .route(
            Route::new("health", "/health")
                .methods(&["GET"])
                .credentials(&["anonymous"]),
        )
        .upstream(Upstream::new(
            "app",
            &format!("http://{upstream}"),
            &["docs", "reports", "health"],
        ))
}

/// The same configuration with `docs` tightened: reading needs `docs.export` too.
fn sqlite_audit(dir: &TempDir) -> String {
    format!("sqlite = \"{}\"", dir.join("audit.db").display())
}

fn tightened(text: &str) -> String {
    let old = r#"require = { permissions_all = ["docs.read"] }"#;
    assert!(text.contains(old));
    text.replace(
        old,
        r#"require = { permissions_all = ["docs.read", "docs.export"] }"#,
    )
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

/// A gateway on `audit`, with its old and tightened configuration files.
struct Setup {
    dir: TempDir,
    public: SocketAddr,
    ops: SocketAddr,
    same: std::path::PathBuf,
    new: std::path::PathBuf,
    text: String,
}

/// `audit` gives the `[audit]` body for the test's directory.
async fn setup(label: &str, audit: impl FnOnce(&TempDir) -> String) -> Setup {
    let dir = TempDir::new(label);
    let audit = audit(&dir);
    let upstream = echo_upstream().await;
    let config = gateway_config(&dir, upstream, &audit);
    let (public, ops) = (config.public, config.ops);
    let text = config.text();
    let same = config.write_as("same");
    let new = dir.join("new.toml");
    std::fs::write(&new, tightened(&text)).unwrap();
    Setup {
        dir,
        public,
        ops,
        same,
        new,
        text,
    }
}

/// Runs the gateway, sends the requests below, waits until their events
/// are stored (`store` is `--sqlite PATH` / `--postgres URL`), stops it.
/// The decisions, as the gateway answered them:
/// - `v` (role viewer) reads `/docs/1`: allowed (tightened: denied);
/// - `x` (docs.read and docs.export) reads `/docs/2`: allowed (stays so);
/// - `v` reads `/reports/q`: `authz.denied` (no auditor role);
/// - anonymous reads `/docs/1`: `auth.missing_credentials`;
/// - anonymous `/health`: allowed;
/// - an API key with docs.read reads `/docs/3`: allowed (tightened: denied);
/// - a token that is not one: `auth.malformed_token` (not re-decidable);
/// - an encoded `/` in the path: 400 `request.malformed_path`, audited
///   with that code (not re-decidable: refused before any check).
async fn record(s: &Setup, store: [&str; 2]) {
    let admin_key = bootstrap_admin(&s.same);
    let gateway = Gateway::start(&s.dir, "gateway", &s.text, s.public, s.ops);
    let client = client();
    gateway.wait_ready(&client).await;

    // An API key of a user, made through the admin API (whose own calls
    // are audited too, and left out of the replay).
    let bearer = format!("Bearer {admin_key}");
    let admin_post = |path: &str, body: Value| {
        post(
            s.ops,
            path,
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            &body.to_string(),
        )
    };
    let r = send(
        &client,
        admin_post(
            "/admin/users",
            json!({"username": "carol", "password": PASSWORD}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let carol = r.json()["id"].as_str().unwrap().to_owned();
    let r = send(
        &client,
        admin_post(
            &format!("/admin/users/{carol}/api-keys"),
            json!({"name": "reader", "permissions": ["docs.read"]}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let api_key = r.json()["key"].as_str().unwrap().to_owned();

    let viewer = format!("Bearer {}", token(&s.dir, "v", &["roles=[\"viewer\"]"]));
    let exporter = format!(
        "Bearer {}",
        token(
            &s.dir,
            "x",
            &["permissions=[\"docs.read\", \"docs.export\"]"]
        )
    );
    let p = s.public;
    let sent = [
        (get(p, "/docs/1", &[("authorization", &viewer)]), 200, None),
        (
            get(p, "/docs/2", &[("authorization", &exporter)]),
            200,
            None,
        ),
        (
            get(p, "/reports/q", &[("authorization", &viewer)]),
            403,
            Some("authz.denied"),
        ),
        (
            get(p, "/docs/1", &[]),
            401,
            Some("auth.missing_credentials"),
        ),
        (get(p, "/health", &[]), 200, None),
        (get(p, "/docs/3", &[("x-api-key", &api_key)]), 200, None),
        (
            get(p, "/docs/1", &[("authorization", "Bearer not.a.token")]),
            401,
            Some("auth.malformed_token"),
        ),
        (
            get(p, "/docs/%2F1", &[]),
            400,
            Some("request.malformed_path"),
        ),
    ];
    for (req, status, code) in sent {
        let what = format!("{} {}", req.method(), req.uri());
        let r = send(&client, req).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {}", r.body);
        assert_eq!(r.code().as_deref(), code, "{what}");
    }

    // Every public request is stored before the gateway stops.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = portcullis(&[
            "audit", "query", store[0], store[1], "--format", "json", "--limit", "1000",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let page: Value = serde_json::from_slice(&out.stdout).unwrap();
        let public: Vec<&Value> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "request" && e["guard"].is_null() && e["host"].is_string())
            .collect();
        if public.len() >= 8 {
            assert_eq!(public.len(), 8);
            // The malformed request is audited with the code its client got.
            let malformed = public.iter().find(|e| e["status"] == 400).unwrap();
            assert_eq!(malformed["code"], "request.malformed_path", "{malformed}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} events stored",
            public.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(gateway);
}

fn replay(config: &std::path::Path, store: [&str; 2], extra: &[&str]) -> (Output, String) {
    let mut args = vec![
        "test",
        "--config",
        config.to_str().unwrap(),
        "--replay-audit",
        store[0],
        store[1],
    ];
    args.extend_from_slice(extra);
    let out = portcullis(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text)
}

/// The line of the report that starts with `prefix` (trimmed).
fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().map(str::trim).find(|l| l.starts_with(prefix))
}

/// The report's example lines under the group line `group`.
fn examples<'a>(text: &'a str, group: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| l.trim() != group)
        .skip(1)
        .take_while(|l| l.starts_with("      "))
        .collect()
}

/// What the tightened configuration changes, and only that.
fn assert_tightened_report(text: &str) {
    assert_eq!(
        line(text, "8 request events"),
        Some("8 request events: 2 decisions would change, 4 unchanged, 2 not re-decidable"),
        "{text}"
    );
    let group = "route `docs`: allow → authz.denied: 2";
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(" → "))
            .map(str::trim)
            .collect::<Vec<_>>(),
        [group],
        "{text}"
    );
    let shown = examples(text, group);
    assert_eq!(shown.len(), 2, "{text}");
    assert!(
        shown
            .iter()
            .any(|l| l.contains("GET 127.0.0.1:") && l.contains("/docs/1  v (jwt)")),
        "{text}"
    );
    assert!(
        shown
            .iter()
            .any(|l| l.contains("/docs/3") && l.contains("(api_key)")),
        "{text}"
    );
    assert_eq!(
        line(text, "not re-decidable: 2"),
        Some("not re-decidable: 2, by reason:"),
        "{text}"
    );
    for reason in ["credential refused", "refused before any check"] {
        assert!(
            line(text, reason).is_some_and(|l| l.ends_with(": 1")),
            "{reason}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tightened_route_reports_exactly_the_decisions_it_changes() {
    let s = setup("replay-sqlite", sqlite_audit).await;
    let db = s.dir.join("audit.db");
    let store = ["--sqlite", db.to_str().unwrap()];
    record(&s, store).await;

    let (out, text) = replay(&s.new, store, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_tightened_report(&text);

    let (out, text) = replay(&s.new, store, &["--fail-on-change"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_tightened_report(&text);
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 recorded decisions would change"));

    // The configuration that recorded them changes nothing.
    let (out, text) = replay(&s.same, store, &["--fail-on-change"]);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        line(&text, "8 request events"),
        Some("8 request events: 0 decisions would change, 6 unchanged, 2 not re-decidable"),
        "{text}"
    );
    assert!(!text.contains(" → "), "{text}");

    // --since: nothing recorded in the future.
    let (out, text) = replay(&s.new, store, &["--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(line(&text, "0 request events").is_some(), "{text}");
}

/// The `audit_events` table as schema v2 wrote it (no host, grants, guard).
const V2_SQLITE: &[&str] = &[
    "CREATE TABLE portcullis_audit_schema (version INTEGER NOT NULL)",
    "INSERT INTO portcullis_audit_schema (version) VALUES (2)",
    "CREATE TABLE audit_events (id TEXT NOT NULL, ts_us INTEGER NOT NULL, kind TEXT NOT NULL, \
     request_id TEXT, client_ip TEXT, method TEXT, route TEXT, path TEXT, status INTEGER, \
     latency_us INTEGER, upstream_latency_us INTEGER, subject TEXT, tenant TEXT, auth_method TEXT, \
     credential_id TEXT, decision TEXT NOT NULL, code TEXT, rate_limit_remaining INTEGER, \
     anomaly_flags TEXT, user_agent TEXT, reason TEXT, PRIMARY KEY (ts_us, id))",
];

/// Two v2 request events, an hour ago: one allowed caller, one anonymous refusal.
fn v2_rows(now_us: i64) -> [String; 2] {
    let ts = now_us - 3_600_000_000;
    [
        format!(
            "INSERT INTO audit_events (id, ts_us, kind, client_ip, method, route, path, status, \
             subject, auth_method, decision) VALUES ('old1', {ts}, 'request', '10.0.0.1', 'GET', \
             'docs', '/docs/1', 200, 'v', 'jwt', 'allow')"
        ),
        format!(
            "INSERT INTO audit_events (id, ts_us, kind, client_ip, method, route, path, status, \
             decision, code) VALUES ('old2', {}, 'request', '10.0.0.1', 'GET', 'docs', '/docs/1', \
             401, 'deny', 'auth.missing_credentials')",
            ts + 1
        ),
    ]
}

fn now_us() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

#[tokio::test]
async fn events_recorded_before_schema_v3_are_counted_not_guessed() {
    use sqlx::Connection;
    let s = setup("replay-v2", sqlite_audit).await;
    let db = s.dir.join("audit.db");
    {
        let url = format!("sqlite://{}?mode=rwc", db.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        for stmt in V2_SQLITE
            .iter()
            .map(|s| s.to_string())
            .chain(v2_rows(now_us()))
        {
            sqlx::query(&stmt).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
    }
    let store = ["--sqlite", db.to_str().unwrap()];
    let (out, text) = replay(&s.new, store, &["--fail-on-change"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        line(&text, "2 request events"),
        Some("2 request events: 0 decisions would change, 0 unchanged, 2 not re-decidable"),
        "{text}"
    );
    assert_eq!(
        line(&text, "recorded before schema v3"),
        Some("recorded before schema v3: 2"),
        "{text}"
    );

    // Opening it migrated it to v3; the old rows still read back.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM portcullis_audit_schema")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 3);
    let out = portcullis(&["audit", "query", store[0], store[1], "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e["host"].is_null() && e["grants"].is_null())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reads_postgres_and_its_v2_rows() {
    use sqlx::Connection;
    let Some(db) = FreshDatabase::create("replay").await else {
        return;
    };
    // A v2 table with two old rows, migrated to v3 by the gateway's start.
    {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        for stmt in V2_SQLITE
            .iter()
            .map(|s| s.replace("INTEGER", "BIGINT"))
            .chain(v2_rows(now_us()))
        {
            sqlx::query(&stmt).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
    }
    let s = setup("replay-pg", |dir| {
        format!(
            "postgres = \"{}\"\nspool_dir = \"{}\"",
            db.url,
            dir.join("audit.spool").display()
        )
    })
    .await;
    let store = ["--postgres", db.url.as_str()];
    record(&s, store).await;

    let (out, text) = replay(&s.new, store, &["--fail-on-change"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        line(&text, "10 request events"),
        Some("10 request events: 2 decisions would change, 4 unchanged, 4 not re-decidable"),
        "{text}"
    );
    assert!(
        line(&text, "route `docs`: allow → authz.denied: 2").is_some(),
        "{text}"
    );
    assert_eq!(
        line(&text, "recorded before schema v3"),
        Some("recorded before schema v3: 2"),
        "{text}"
    );

    let (out, text) = replay(&s.same, store, &["--fail-on-change"]);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        line(&text, "10 request events: 0 decisions would change").is_some(),
        "{text}"
    );
}
