//! `portcullis audit query|tail|prune` against a real SQLite audit database
//! written by the library's store.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis::audit::sqlite::SqliteAudit;
use portcullis::audit::{AuditEvent, AuditSink, Decision, EventKind};
use serde_json::Value;

struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("pcx_cli_{label}_{}_{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn event(i: i64, ts_us: i64) -> AuditEvent {
    let mut e = AuditEvent::new(
        EventKind::Request,
        ts_us,
        if i % 2 == 0 {
            Decision::Allow
        } else {
            Decision::Deny
        },
    );
    e.subject = Some(if i % 3 == 0 { "alice" } else { "bob" }.to_owned());
    e.client_ip = Some("10.1.2.3".into());
    e.method = Some("GET".into());
    e.path = Some(format!("/api/items/{i}"));
    e.status = Some(if i % 2 == 0 { 200 } else { 401 });
    e.code = (i % 2 == 1).then(|| "auth.token_expired".to_owned());
    e
}

async fn write(db: &Path, events: &[AuditEvent]) {
    let store = SqliteAudit::open(db, Duration::from_secs(5)).await.unwrap();
    store.write_batch(events).await.unwrap();
    store.pool().close().await;
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .expect("run portcullis")
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json stdout")
}

#[tokio::test]
async fn query_filters_and_pages_through_the_sqlite_log() {
    let dir = TempDir::new("audit_query");
    let db = dir.0.join("audit.db");
    let base = now_us() - 3_600_000_000;
    let events: Vec<_> = (0..30).map(|i| event(i, base + i * 1000)).collect();
    write(&db, &events).await;
    let db_arg = db.to_str().unwrap();

    // alice: i % 3 == 0 -> 10 events, read 4 at a time.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = vec![
            "audit",
            "query",
            "--sqlite",
            db_arg,
            "--subject",
            "alice",
            "--limit",
            "4",
            "--format",
            "json",
        ];
        if let Some(c) = &cursor {
            args.extend(["--cursor", c.as_str()]);
        }
        let page = json(&run(&args));
        let batch = page["events"].as_array().unwrap();
        assert!(batch.len() <= 4);
        for e in batch {
            assert_eq!(e["subject"], "alice");
            seen.push(e["ts_us"].as_i64().unwrap());
        }
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut want: Vec<i64> = (0..30)
        .filter(|i| i % 3 == 0)
        .map(|i| base + i * 1000)
        .collect();
    want.reverse();
    assert_eq!(seen, want, "newest first, every alice event once");

    let denied = json(&run(&[
        "audit",
        "query",
        "--sqlite",
        db_arg,
        "--decision",
        "deny",
        "--code",
        "auth.token_expired",
        "--path-prefix",
        "/api/items/1",
        "--since",
        "2h",
        "--format",
        "json",
    ]));
    let paths: Vec<&str> = denied["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/items/19",
            "/api/items/17",
            "/api/items/15",
            "/api/items/13",
            "/api/items/11",
            "/api/items/1"
        ]
    );

    let table = run(&[
        "audit", "query", "--sqlite", db_arg, "--status", "401", "--limit", "2",
    ]);
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("TIME"), "{text}");
    assert!(text.contains("/api/items/29") && text.contains("auth.token_expired"));
    assert!(text.contains("more: --cursor "));

    let bad = run(&["audit", "query", "--sqlite", db_arg, "--limit", "1001"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("1 to 1000"));
    let missing = run(&[
        "audit",
        "query",
        "--sqlite",
        dir.0.join("nope.db").to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        !dir.0.join("nope.db").exists(),
        "a query never creates a database"
    );
}

#[tokio::test]
async fn prune_deletes_only_old_events() {
    let dir = TempDir::new("audit_prune");
    let db = dir.0.join("audit.db");
    let now = now_us();
    let day = 86_400_000_000i64;
    write(
        &db,
        &[
            event(0, now - 40 * day),
            event(1, now - 31 * day),
            event(2, now - day),
        ],
    )
    .await;
    let db_arg = db.to_str().unwrap();
    let out = json(&run(&[
        "audit",
        "prune",
        "--sqlite",
        db_arg,
        "--older-than",
        "30d",
    ]));
    assert_eq!(out["deleted"], 2);
    let left = json(&run(&[
        "audit", "query", "--sqlite", db_arg, "--format", "json",
    ]));
    let left = left["events"].as_array().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["path"], "/api/items/2");
    assert_eq!(
        run(&["audit", "prune", "--sqlite", db_arg, "--older-than", "0d"])
            .status
            .code(),
        Some(2)
    );
}

#[tokio::test]
async fn tail_prints_the_latest_then_follows_new_events() {
    let dir = TempDir::new("audit_tail");
    let db = dir.0.join("audit.db");
    let now = now_us();
    write(
        &db,
        &(0..5)
            .map(|i| event(i, now - 10_000 + i))
            .collect::<Vec<_>>(),
    )
    .await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "audit",
            "tail",
            "--sqlite",
            db.to_str().unwrap(),
            "--last",
            "2",
            "--max-events",
            "3",
            "--interval",
            "1s",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    write(
        &db,
        &(10..13).map(|i| event(i, now_us())).collect::<Vec<_>>(),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("tail did not stop after --max-events");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success());
    let lines = reader.join().unwrap();
    let paths: Vec<String> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        paths,
        [
            "/api/items/3",
            "/api/items/4",
            "/api/items/10",
            "/api/items/11",
            "/api/items/12"
        ]
    );
}

fn postgres_admin_url() -> Option<String> {
    let url = std::env::var("PORTCULLIS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or(rest);
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .map(|mut addrs| {
            addrs.any(|a| {
                std::net::TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok()
            })
        })
        .unwrap_or(false);
    if !reachable {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_BACKENDS").is_none(),
            "PostgreSQL at {url} is unreachable and PORTCULLIS_REQUIRE_BACKENDS is set"
        );
        eprintln!("skipping: PostgreSQL at {url} is unreachable");
        return None;
    }
    Some(url)
}

#[tokio::test]
async fn query_and_prune_against_postgres() {
    use portcullis::audit::postgres::PostgresAudit;
    use sqlx::Connection;
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!("pcx_cli_audit_{}_{nanos}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    let url = format!("{base}/{name}");
    let store = PostgresAudit::open(&url).await.unwrap();
    let now = now_us();
    let day = 86_400_000_000i64;
    store
        .write_batch(&[
            event(0, now - 40 * day),
            event(1, now - 2),
            event(2, now - 1),
        ])
        .await
        .unwrap();
    store.pool().close().await;

    let page = json(&run(&[
        "audit",
        "query",
        "--postgres",
        &url,
        "--since",
        "1d",
        "--format",
        "json",
    ]));
    let paths: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/api/items/2", "/api/items/1"]);
    let pruned = json(&run(&[
        "audit",
        "prune",
        "--postgres",
        &url,
        "--older-than",
        "30d",
    ]));
    assert_eq!(pruned["deleted"], 1);
    let all = json(&run(&[
        "audit",
        "query",
        "--postgres",
        &url,
        "--format",
        "json",
    ]));
    assert_eq!(all["events"].as_array().unwrap().len(), 2);

    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await;
}
