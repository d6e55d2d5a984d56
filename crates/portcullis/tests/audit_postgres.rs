//! The audit log on the real PostgreSQL (127.0.0.1:5432): every filter with
//! pagination, 200 000 events across a 5 s loss of the writer's INSERT
//! privilege, shutdown with a full queue, no secret stored, a NUL byte, a
//! batch PostgreSQL keeps rejecting (dead-lettered), and chunked prune.
#![cfg(feature = "postgres")]

mod audit_common;
mod support;

use std::sync::Arc;
use std::time::Duration;

use audit_common::*;
use portcullis::audit::postgres::{PRUNE_CHUNK, PostgresAudit};
use portcullis::audit::spool::Spool;
use portcullis::audit::{
    AuditEvent, AuditSink, AuditWriter, AuditWriterConfig, FullPolicy, Recorded,
};
use portcullis_core::SystemClock;
use sqlx::Connection;
use support::FreshDatabase;

async fn count(store: &PostgresAudit) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// A login role dropped when this guard goes (declare it before the
/// `FreshDatabase` so it is dropped after the database).
struct Role {
    admin_url: String,
    name: String,
}

impl Role {
    async fn create(admin_url: &str) -> Self {
        let name = support::unique_name("pcx_audit_writer");
        let mut conn = sqlx::PgConnection::connect(admin_url).await.unwrap();
        sqlx::query(&format!("CREATE ROLE \"{name}\" LOGIN"))
            .execute(&mut conn)
            .await
            .unwrap();
        Self {
            admin_url: admin_url.to_owned(),
            name,
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP ROLE IF EXISTS \"{name}\""))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn every_filter_and_pagination_on_postgres() {
    let Some(db) = FreshDatabase::create("audit_query").await else {
        return;
    };
    let store = PostgresAudit::open(&db.url).await.unwrap();
    check_store(&store, &store).await;
    // Migrating again is a no-op.
    store.migrate().await.unwrap();
    assert_eq!(count(&store).await, dataset().len() as i64);
}

#[tokio::test]
async fn copy_round_trips_awkward_text_and_replays_are_idempotent() {
    let Some(db) = FreshDatabase::create("audit_copy").await else {
        return;
    };
    let store = PostgresAudit::open(&db.url).await.unwrap();
    let mut odd = event(0);
    odd.path = Some("/a\\b\tc\nd\re\\N".into());
    odd.user_agent = Some("ua\\N".into());
    odd.subject = Some("ünïcode ✓".into());
    odd.anomaly_flags = vec!["burst".into()];
    odd.host = Some("h\\o\tst".into());
    odd.grants = Some(portcullis_core::audit::Grants {
        roles: vec!["r\\N\t\n".into(), "ünï".into()],
        ..Default::default()
    });
    odd.code = None;
    let mut batch: Vec<AuditEvent> = (1..1000).map(event).collect();
    batch.push(odd.clone());
    store.write_batch(&batch).await.unwrap();
    // A replay of the whole batch, and one overlapping it, store nothing twice.
    store.write_batch(&batch).await.unwrap();
    let mut overlap: Vec<AuditEvent> = (1000..1600).map(event).collect();
    overlap.extend_from_slice(&batch[..600]);
    store.write_batch(&overlap).await.unwrap();
    assert_eq!(count(&store).await, 1600);
    // A batch big enough to be written as two concurrent halves, one of
    // them all replays.
    let big: Vec<AuditEvent> = (1600..2800)
        .map(event)
        .chain(batch.iter().cloned())
        .chain((3000..3200).map(event))
        .collect();
    assert!(big.len() >= 2000);
    store.write_batch(&big).await.unwrap();
    assert_eq!(count(&store).await, 1600 + 1200 + 200);
    let page = all_pages(
        &store,
        portcullis::audit::AuditQuery {
            subject: odd.subject.clone(),
            ..Default::default()
        },
        10,
    )
    .await;
    assert_eq!(page, vec![odd]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_events_survive_a_revoked_insert_privilege_exactly_once() {
    const N: u64 = 200_000;
    let Some(admin_url) = support::postgres_admin_url() else {
        return;
    };
    let role = Role::create(&admin_url).await;
    let Some(db) = FreshDatabase::create("audit_outage").await else {
        return;
    };
    let admin = PostgresAudit::open(&db.url).await.unwrap();
    let r = &role.name;
    for grant in [
        format!("GRANT CONNECT ON DATABASE \"{}\" TO \"{r}\"", db.name),
        format!("GRANT USAGE ON SCHEMA public TO \"{r}\""),
        format!("GRANT SELECT, INSERT ON audit_events TO \"{r}\""),
    ] {
        sqlx::query(&grant).execute(admin.pool()).await.unwrap();
    }
    let host_db = db.url.rsplit_once('@').map_or(db.url.as_str(), |(_, h)| h);
    let writer_store = PostgresAudit::connect(&format!("postgres://{r}@{host_db}"))
        .await
        .unwrap();

    let mut config = AuditWriterConfig::new(
        std::env::temp_dir().join(support::unique_name("pcx_audit_pg_spool")),
    );
    let spool_path = config.spool_path.clone();
    config.full_policy = FullPolicy::Block(Duration::from_secs(30));
    config.retry_interval = Duration::from_millis(200);
    let writer = Arc::new(
        AuditWriter::start(Arc::new(writer_store), config, Arc::new(SystemClock)).unwrap(),
    );
    let producer = {
        let writer = Arc::clone(&writer);
        tokio::spawn(async move {
            for i in 0..N {
                assert_eq!(writer.record(event(i)).await, Recorded::Queued);
                if i % 1000 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    while writer.stats().written < 30_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let revoke = format!("REVOKE INSERT ON audit_events FROM \"{r}\"");
    sqlx::query(&revoke).execute(admin.pool()).await.unwrap();
    let written_at_revoke = writer.stats().written;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        writer.stats().spooled > 0,
        "the outage made the writer spool"
    );
    assert!(writer.stats().enqueued > written_at_revoke);
    let grant = format!("GRANT INSERT ON audit_events TO \"{r}\"");
    sqlx::query(&grant).execute(admin.pool()).await.unwrap();

    producer.await.unwrap();
    writer.shutdown().await;
    let stats = writer.stats();
    assert_eq!((stats.enqueued, stats.dropped, stats.lost), (N, 0, 0));
    assert_eq!(stats.replayed, stats.spooled, "{stats:?}");
    assert_eq!(count(&admin).await, N as i64);
    let (distinct, sum): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(DISTINCT id), SUM(ts_us - 1795000000000000)::BIGINT FROM audit_events",
    )
    .fetch_one(admin.pool())
    .await
    .unwrap();
    assert_eq!(distinct, N as i64);
    let expected: i64 = (0..N as i64).sum();
    assert_eq!(sum, expected, "each of the 200 000 events is stored once");
    admin.pool().close().await;
    let _ = std::fs::remove_file(spool_path);
}

#[tokio::test]
async fn shutdown_with_a_full_queue_keeps_every_event_in_postgres() {
    const CAP: usize = 20_000;
    let Some(db) = FreshDatabase::create("audit_full").await else {
        return;
    };
    let store = PostgresAudit::open(&db.url).await.unwrap();
    let dir = TempDir::new("audit_pg_full");
    let mut config = AuditWriterConfig::new(dir.0.join("audit.spool"));
    config.queue_capacity = CAP;
    config.full_policy = FullPolicy::Drop;
    let writer =
        AuditWriter::start(Arc::new(store.clone()), config, Arc::new(SystemClock)).unwrap();
    for i in 0..CAP as u64 {
        assert_eq!(writer.try_record(event(i)), Recorded::Queued);
    }
    assert_eq!(writer.try_record(event(CAP as u64 + 1)), Recorded::Dropped);
    writer.shutdown().await;
    assert_eq!(count(&store).await, CAP as i64);
    assert_eq!(writer.stats().dropped, 1);
}

#[tokio::test]
async fn secrets_never_reach_postgres() {
    let Some(db) = FreshDatabase::create("audit_secrets").await else {
        return;
    };
    let store = PostgresAudit::open(&db.url).await.unwrap();
    let dir = TempDir::new("audit_pg_secrets");
    let writer = AuditWriter::start(
        Arc::new(store.clone()),
        AuditWriterConfig::new(dir.0.join("audit.spool")),
        Arc::new(SystemClock),
    )
    .unwrap();
    for i in 0..100 {
        writer.record(secret_bearing_event(i)).await;
    }
    writer.shutdown().await;
    let stored = all_pages(&store, Default::default(), 1000).await;
    assert_eq!(stored.len(), 100);
    assert_redacted(&stored);
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, E'\\n') FROM audit_events t")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(dump.contains("keep=yes"));
    assert_no_secret("audit_events", dump.as_bytes());
}

#[tokio::test]
async fn a_nul_byte_in_a_subject_does_not_block_the_log() {
    let Some(db) = FreshDatabase::create("audit_nul").await else {
        return;
    };
    let store = PostgresAudit::open(&db.url).await.unwrap();
    let dir = TempDir::new("audit_pg_nul");
    let mut config = AuditWriterConfig::new(dir.0.join("audit.spool"));
    config.retry_interval = Duration::from_millis(50);
    let writer =
        AuditWriter::start(Arc::new(store.clone()), config, Arc::new(SystemClock)).unwrap();
    let mut bad = event(0);
    bad.subject = Some("ali\0ce".into());
    bad.user_agent = Some("ua\0".into());
    bad.anomaly_flags = vec!["b\0urst".into()];
    writer.record(bad.clone()).await;
    for i in 1..100 {
        writer.record(event(i)).await;
    }
    writer.shutdown().await;
    assert_eq!(count(&store).await, 100, "{:?}", writer.stats());
    let stats = writer.stats();
    assert_eq!((stats.lost, stats.dead_lettered), (0, 0), "{stats:?}");
    let subject: String = sqlx::query_scalar("SELECT subject FROM audit_events WHERE id = $1")
        .bind(&bad.id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(subject, "ali\u{fffd}ce");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_postgres_keeps_rejecting_is_dead_lettered_and_the_log_moves_on() {
    const N: u64 = 300;
    let Some(db) = FreshDatabase::create("audit_poison").await else {
        return;
    };
    let store = PostgresAudit::open(&db.url).await.unwrap();
    // A permanently bad event: PostgreSQL refuses it whatever we retry.
    sqlx::query(
        "ALTER TABLE audit_events ADD CONSTRAINT no_poison CHECK (subject IS DISTINCT FROM 'poison')",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let dir = TempDir::new("audit_pg_poison");
    let spool = dir.0.join("audit.spool");
    let mut config = AuditWriterConfig::new(&spool);
    config.retry_interval = Duration::from_millis(50);
    config.batch_size = 100;
    let writer =
        AuditWriter::start(Arc::new(store.clone()), config, Arc::new(SystemClock)).unwrap();
    let mut poison = event(150);
    poison.subject = Some("poison".into());
    for i in 0..N {
        writer
            .record(if i == 150 { poison.clone() } else { event(i) })
            .await;
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Everything but the poison reaches PostgreSQL while the writer runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count(&store).await < N as i64 - 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&store).await, N as i64 - 1, "{:?}", writer.stats());
    writer.shutdown().await;
    let stats = writer.stats();
    assert_eq!(
        (stats.dead_lettered, stats.lost, stats.dropped),
        (1, 0, 0),
        "{stats:?}"
    );
    assert_eq!(std::fs::metadata(&spool).unwrap().len(), 0, "spool drained");
    // The poison is kept, in the spool's format, in the dead-letter file.
    let dead = Spool::open(&dir.0.join("audit.spool.dead")).unwrap();
    let (kept, _) = dead.peek().await.unwrap().unwrap();
    assert_eq!(kept, vec![poison]);
}

#[tokio::test]
async fn prune_deletes_in_chunks_of_at_most_ten_thousand_rows() {
    const OLD: u64 = 25_000;
    let Some(db) = FreshDatabase::create("audit_prune_chunks").await else {
        return;
    };
    let store = PostgresAudit::open(&db.url).await.unwrap();
    let events: Vec<AuditEvent> = (0..OLD + 10).map(event).collect();
    for chunk in events.chunks(5000) {
        store.write_batch(chunk).await.unwrap();
    }
    // Log the rows each DELETE statement removes.
    for stmt in [
        "CREATE TABLE prune_log (n BIGINT NOT NULL)",
        "CREATE FUNCTION log_prune() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO prune_log SELECT COUNT(*) FROM old_rows; RETURN NULL; END $$",
        "CREATE TRIGGER audit_prune_log AFTER DELETE ON audit_events \
         REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION log_prune()",
    ] {
        sqlx::query(stmt).execute(store.pool()).await.unwrap();
    }
    let cutoff = event(OLD).ts_us;
    assert_eq!(store.prune_before(cutoff).await.unwrap(), OLD);
    assert_eq!(count(&store).await, 10);
    let chunks: Vec<i64> = sqlx::query_scalar("SELECT n FROM prune_log")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert!(chunks.len() >= 3, "{chunks:?}");
    assert!(chunks.iter().all(|n| *n <= PRUNE_CHUNK), "{chunks:?}");
    assert_eq!(chunks.iter().sum::<i64>(), OLD as i64);
}

/// A PostgreSQL server of this test's own (never the shared one), in a
/// temporary directory, stopped and removed on drop. `None` when `initdb`
/// and `pg_ctl` are not installed.
struct PrivatePostgres {
    dir: std::path::PathBuf,
    as_postgres: bool,
    url: String,
}

impl PrivatePostgres {
    fn cmd(&self, script: &str) -> std::process::Output {
        let mut c = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", script]);
            c
        } else {
            let mut c = std::process::Command::new("sh");
            c.args(["-c", script]);
            c
        };
        c.output().expect("run a PostgreSQL tool")
    }

    fn start() -> Option<Self> {
        let found = |tool: &str| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !found("initdb") || !found("pg_ctl") {
            eprintln!("skipping: initdb/pg_ctl not installed");
            return None;
        }
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(support::unique_name("pcx_private_pg"));
        std::fs::create_dir_all(&dir).unwrap();
        let this = Self {
            dir: dir.clone(),
            as_postgres: root,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        };
        if root {
            let chown = std::process::Command::new("chown")
                .args(["postgres", &dir.display().to_string()])
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let d = dir.display();
        let out = this.cmd(&format!(
            "initdb -D {d}/data -A trust -U postgres >{d}/initdb.log 2>&1 && \
             pg_ctl -D {d}/data -l {d}/server.log -w -o \"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off\" start"
        ));
        assert!(
            out.status.success(),
            "private PostgreSQL failed to start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(this)
    }

    /// The postmaster and every backend it forked.
    fn pids(&self) -> Vec<u32> {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap();
        let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces, so parse after `)`.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    fn signal(&self, sig: &str) {
        let pids: Vec<String> = self.pids().iter().map(u32::to_string).collect();
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .args(&pids)
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} {pids:?}");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let pids: Vec<String> = self.pids().iter().map(u32::to_string).collect();
        let _ = std::process::Command::new("kill")
            .arg("-CONT")
            .args(&pids)
            .status();
        let d = self.dir.display();
        let _ = self.cmd(&format!("pg_ctl -D {d}/data -m immediate -w stop"));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_stopped_with_sigstop_is_timed_out_spooled_and_replayed() {
    const BEFORE: u64 = 500;
    const DURING: u64 = 3000;
    let Some(pg) = PrivatePostgres::start() else {
        return;
    };
    let store = PostgresAudit::open(&pg.url).await.unwrap();
    let dir = TempDir::new("audit_pg_sigstop");
    let spool = dir.0.join("audit.spool");
    let mut config = AuditWriterConfig::new(&spool);
    config.queue_capacity = 1000;
    config.batch_size = 100;
    config.full_policy = FullPolicy::Block(Duration::from_secs(3));
    config.write_timeout = Duration::from_millis(500);
    config.retry_interval = Duration::from_millis(100);
    config.shutdown_timeout = Duration::from_secs(2);
    let writer =
        AuditWriter::start(Arc::new(store.clone()), config, Arc::new(SystemClock)).unwrap();
    for i in 0..BEFORE {
        writer.record(event(i)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while writer.stats().written < BEFORE && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(writer.stats().written, BEFORE);

    // The server hangs: it accepts connections but never answers.
    pg.signal("STOP");
    for i in BEFORE..BEFORE + DURING {
        assert_eq!(writer.record(event(i)).await, Recorded::Queued, "event {i}");
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(6), writer.shutdown())
        .await
        .expect("shutdown is bounded while PostgreSQL hangs");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let stats = writer.stats();
    assert!(stats.sink_timeouts >= 1, "{stats:?}");
    assert_eq!((stats.dropped, stats.lost), (0, 0), "{stats:?}");
    assert_eq!(stats.written + stats.spooled, BEFORE + DURING, "{stats:?}");

    // It comes back: the next run replays the spool, every event once.
    pg.signal("CONT");
    let store = PostgresAudit::open(&pg.url).await.unwrap();
    let writer = AuditWriter::start(
        Arc::new(store.clone()),
        AuditWriterConfig::new(&spool),
        Arc::new(SystemClock),
    )
    .unwrap();
    writer.shutdown().await;
    assert_eq!(writer.stats().lost, 0);
    assert_eq!(count(&store).await, (BEFORE + DURING) as i64);
    let distinct: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT id) FROM audit_events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(distinct, (BEFORE + DURING) as i64);
}
