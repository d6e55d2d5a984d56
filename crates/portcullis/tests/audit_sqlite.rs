//! The audit log on SQLite and in local files: every filter with pagination,
//! a 5 s outage in the middle of 200 000 events, shutdown with a full queue,
//! no secret in any sink; the spool's recovery (torn tail, corrupt record,
//! failed append, older record versions, size cap), a hanging sink and a
//! hanging prune.

mod audit_common;
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit_common::*;
use portcullis::audit::jsonl::JsonlSink;
use portcullis::audit::spool::Spool;
use portcullis::audit::sqlite::SqliteAudit;
use portcullis::audit::{
    AuditError, AuditEvent, AuditSink, AuditWriter, AuditWriterConfig, BoxFuture, FullPolicy,
    PrunePolicy, Recorded,
};
use portcullis_core::{Clock, ManualClock, SystemClock};
use sqlx::{Connection, SqliteConnection};

async fn open(dir: &TempDir, busy: Duration) -> SqliteAudit {
    SqliteAudit::open(&dir.0.join("audit.db"), busy)
        .await
        .unwrap()
}

async fn count(store: &SqliteAudit) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn every_filter_and_pagination_on_sqlite() {
    let dir = TempDir::new("audit_sqlite_query");
    let store = open(&dir, Duration::from_secs(5)).await;
    check_store(&store, &store).await;
    // Opening again keeps the data and the schema.
    let again = open(&dir, Duration::from_secs(5)).await;
    assert_eq!(count(&again).await, dataset().len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_events_survive_a_five_second_outage_exactly_once() {
    const N: u64 = 200_000;
    let dir = TempDir::new("audit_sqlite_outage");
    let db = dir.0.join("audit.db");
    let store = open(&dir, Duration::from_millis(100)).await;
    let mut config = AuditWriterConfig::new(dir.0.join("spool/audit.spool"));
    config.full_policy = FullPolicy::Block(Duration::from_secs(30));
    config.retry_interval = Duration::from_millis(200);
    let writer = Arc::new(
        AuditWriter::start(Arc::new(store.clone()), config, Arc::new(SystemClock)).unwrap(),
    );

    let producer = {
        let writer = Arc::clone(&writer);
        tokio::spawn(async move {
            for i in 0..N {
                assert_eq!(writer.record(event(i)).await, Recorded::Queued);
                if i % 1000 == 0 {
                    // Pace the producer so the outage falls in the middle.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    while writer.stats().written < 30_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The outage: another connection holds the write lock for 5 s.
    let mut locker = SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    let written_at_lock = writer.stats().written;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        writer.stats().spooled > 0,
        "the outage made the writer spool"
    );
    assert!(
        writer.stats().enqueued > written_at_lock,
        "events kept arriving during the outage"
    );
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);

    producer.await.unwrap();
    writer.shutdown().await;
    let stats = writer.stats();
    assert_eq!(stats.enqueued, N);
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.lost, 0);
    assert_eq!(stats.replayed, stats.spooled, "{stats:?}");
    assert_eq!(count(&store).await, N as i64);
    let distinct: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT id) FROM audit_events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(distinct, N as i64);
    let expected_ts: i64 = (0..N as i64).sum();
    let sum: i64 = sqlx::query_scalar("SELECT SUM(ts_us - 1795000000000000) FROM audit_events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        sum, expected_ts,
        "each of the 200 000 events is stored once"
    );
}

#[tokio::test]
async fn shutdown_with_a_full_queue_keeps_every_event() {
    const CAP: usize = 20_000;
    let dir = TempDir::new("audit_sqlite_full");
    let store = open(&dir, Duration::from_secs(5)).await;
    let mut config = AuditWriterConfig::new(dir.0.join("audit.spool"));
    config.queue_capacity = CAP;
    config.full_policy = FullPolicy::Drop;
    let writer =
        AuditWriter::start(Arc::new(store.clone()), config, Arc::new(SystemClock)).unwrap();
    // Single-threaded runtime: the batcher cannot run until we await, so the
    // queue really is full.
    for i in 0..CAP as u64 {
        assert_eq!(writer.try_record(event(i)), Recorded::Queued);
    }
    assert_eq!(writer.queued(), CAP);
    assert_eq!(writer.try_record(event(CAP as u64 + 1)), Recorded::Dropped);
    assert_eq!(
        writer.record(event(CAP as u64 + 1)).await,
        Recorded::Dropped
    );
    assert_eq!(writer.stats().dropped, 2);
    writer.shutdown().await;
    assert_eq!(count(&store).await, CAP as i64);
    assert_eq!(
        writer.try_record(event(1)),
        Recorded::Dropped,
        "closed after shutdown"
    );
}

#[tokio::test]
async fn the_block_policy_waits_for_room_and_counts_it() {
    let dir = TempDir::new("audit_sqlite_block");
    let store = open(&dir, Duration::from_secs(5)).await;
    let mut config = AuditWriterConfig::new(dir.0.join("audit.spool"));
    config.queue_capacity = 10;
    config.full_policy = FullPolicy::Block(Duration::from_secs(5));
    let writer =
        AuditWriter::start(Arc::new(store.clone()), config, Arc::new(SystemClock)).unwrap();
    for i in 0..10 {
        assert_eq!(writer.try_record(event(i)), Recorded::Queued);
    }
    // The queue is full; `record` waits while the batcher makes room.
    assert_eq!(writer.record(event(10)).await, Recorded::Queued);
    let stats = writer.stats();
    assert_eq!((stats.blocked, stats.dropped, stats.enqueued), (1, 0, 11));
    writer.shutdown().await;
    assert_eq!(count(&store).await, 11);
}

#[test]
fn starting_outside_a_runtime_is_an_error_not_a_panic() {
    let dir = TempDir::new("audit_no_runtime");
    let err = AuditWriter::start(
        Arc::new(JsonlSink::open(dir.0.join("a.jsonl"), 1 << 20, 1).unwrap()),
        AuditWriterConfig::new(dir.0.join("a.spool")),
        Arc::new(SystemClock),
    )
    .unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

#[tokio::test]
async fn events_spooled_at_shutdown_replay_on_next_start() {
    let dir = TempDir::new("audit_sqlite_restart");
    let db = dir.0.join("audit.db");
    let store = open(&dir, Duration::from_millis(50)).await;
    let spool = dir.0.join("audit.spool");
    let mut locker = SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    let writer = AuditWriter::start(
        Arc::new(store.clone()),
        AuditWriterConfig::new(&spool),
        Arc::new(SystemClock),
    )
    .unwrap();
    for i in 0..2500 {
        writer.record(event(i)).await;
    }
    writer.shutdown().await;
    assert_eq!(writer.stats().spooled, 2500);
    assert!(std::fs::metadata(&spool).unwrap().len() > 0);
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    assert_eq!(count(&store).await, 0);

    let writer = AuditWriter::start(
        Arc::new(store.clone()),
        AuditWriterConfig::new(&spool),
        Arc::new(SystemClock),
    )
    .unwrap();
    writer.shutdown().await;
    assert_eq!(writer.stats().replayed, 2500);
    assert_eq!(count(&store).await, 2500);
    assert_eq!(std::fs::metadata(&spool).unwrap().len(), 0, "spool emptied");
}

#[tokio::test]
async fn a_torn_spool_tail_is_cut_off_and_the_rest_replays() {
    let dir = TempDir::new("audit_spool_torn");
    let path = dir.0.join("audit.spool");
    let spool = Spool::open(&path).unwrap();
    let batch: Vec<_> = (0..10).map(event).collect();
    spool.append(&batch).await.unwrap();
    drop(spool);
    // A crash mid-write leaves a partial record.
    let mut bytes = std::fs::read(&path).unwrap();
    let good = bytes.len() as u64;
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&path, &bytes).unwrap();

    let spool = Spool::open(&path).unwrap();
    assert!(spool.pending());
    let (events, next) = spool.peek().await.unwrap().unwrap();
    assert_eq!(events, batch);
    assert_eq!(next, good);
    spool.advance(next).await.unwrap();
    assert_eq!(spool.peek().await.unwrap(), None);
    assert!(!spool.pending());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}

#[tokio::test]
async fn secrets_never_reach_sqlite_jsonl_or_the_spool() {
    let dir = TempDir::new("audit_secrets");
    let store = open(&dir, Duration::from_millis(50)).await;
    let writer = AuditWriter::start(
        Arc::new(store.clone()),
        AuditWriterConfig::new(dir.0.join("a.spool")),
        Arc::new(SystemClock),
    )
    .unwrap();
    let jsonl_path = dir.0.join("audit.jsonl");
    let jsonl = JsonlSink::open(&jsonl_path, 1 << 20, 2).unwrap();
    let jsonl_writer = AuditWriter::start(
        Arc::new(jsonl),
        AuditWriterConfig::new(dir.0.join("j.spool")),
        Arc::new(SystemClock),
    )
    .unwrap();
    for i in 0..50 {
        writer.record(secret_bearing_event(i)).await;
        jsonl_writer.record(secret_bearing_event(i)).await;
    }
    // Some go through the spool too.
    let db = dir.0.join("audit.db");
    let mut locker = SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    for i in 50..100 {
        writer.record(secret_bearing_event(i)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(writer.stats().spooled > 0);
    assert_no_secret("the spool", &std::fs::read(dir.0.join("a.spool")).unwrap());
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    writer.shutdown().await;
    jsonl_writer.shutdown().await;

    let stored = all_pages(&store, Default::default(), 1000).await;
    assert_eq!(stored.len(), 100);
    assert_redacted(&stored);
    for entry in std::fs::read_dir(&dir.0).unwrap() {
        let path = entry.unwrap().path();
        assert_no_secret(&path.display().to_string(), &std::fs::read(&path).unwrap());
    }
    let lines = std::fs::read_to_string(&jsonl_path).unwrap();
    let events: Vec<AuditEvent> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 50);
    assert_redacted(&events);
}

#[tokio::test]
async fn jsonl_rotates_by_size() {
    let dir = TempDir::new("audit_jsonl_rotate");
    let path = dir.0.join("audit.jsonl");
    let sink = JsonlSink::open(&path, 4096, 2).unwrap();
    for chunk in (0..200).collect::<Vec<u64>>().chunks(10) {
        let batch: Vec<_> = chunk.iter().copied().map(event).collect();
        sink.write_batch(&batch).await.unwrap();
    }
    let rotated = |i| std::path::PathBuf::from(format!("{}.{i}", path.display()));
    assert!(rotated(1).exists() && rotated(2).exists());
    assert!(!rotated(3).exists(), "only `keep` rotated files are kept");
    for p in [path.clone(), rotated(1), rotated(2)] {
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(len <= 4096, "{} is {len} bytes", p.display());
    }
    // The newest events are in the live file, every line is a whole event.
    let live = std::fs::read_to_string(&path).unwrap();
    let last: AuditEvent = serde_json::from_str(live.lines().last().unwrap()).unwrap();
    assert_eq!(last.ts_us, event(199).ts_us);
}

#[tokio::test]
async fn background_prune_deletes_old_events() {
    let dir = TempDir::new("audit_prune");
    let store = open(&dir, Duration::from_secs(5)).await;
    let now = 1_795_000_000u64;
    let clock = Arc::new(ManualClock::at_unix_seconds(now));
    let mut old = event(0);
    old.ts_us = ((now - 40 * 86_400) * 1_000_000) as i64;
    let mut fresh = event(1);
    fresh.ts_us = ((now - 86_400) * 1_000_000) as i64;
    store.write_batch(&[old, fresh.clone()]).await.unwrap();
    let mut config = AuditWriterConfig::new(dir.0.join("audit.spool"));
    config.prune = Some(PrunePolicy {
        older_than: Duration::from_secs(30 * 86_400),
        every: Duration::from_millis(100),
    });
    let writer = AuditWriter::start(
        Arc::new(store.clone()),
        config,
        clock.clone() as Arc<dyn Clock>,
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while writer.stats().pruned == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.shutdown().await;
    assert_eq!(writer.stats().pruned, 1);
    let left = all_pages(&store, Default::default(), 10).await;
    assert_eq!(left, vec![fresh]);
}

/// A sink in memory whose writes (or prunes) can be made to hang forever or fail.
#[derive(Default)]
struct TestSink {
    hang: AtomicBool,
    fail: AtomicBool,
    hang_prune: AtomicBool,
    stored: Mutex<BTreeMap<String, AuditEvent>>,
}

impl TestSink {
    fn stored(&self) -> usize {
        self.stored.lock().unwrap().len()
    }
}

impl AuditSink for TestSink {
    fn write_batch<'a>(
        &'a self,
        events: &'a [AuditEvent],
    ) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(AuditError::Database("test sink is down".into()));
            }
            let mut stored = self.stored.lock().unwrap();
            for e in events {
                stored.insert(e.id.clone(), e.clone());
            }
            Ok(())
        })
    }

    fn prune(&self, _before_us: i64) -> BoxFuture<'_, Result<u64, AuditError>> {
        Box::pin(async move {
            if self.hang_prune.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(0)
        })
    }
}

/// One spool frame around `payload`, as the spool writes it.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in payload {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Every batch left in the spool at `path`, in order, replaying it as it goes.
async fn drain(spool: &Spool) -> Vec<Vec<AuditEvent>> {
    let mut out = Vec::new();
    while let Some((events, next)) = spool.peek().await.unwrap() {
        out.push(events);
        spool.advance(next).await.unwrap();
    }
    out
}

fn files_named(dir: &std::path::Path, prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect()
}

#[tokio::test]
async fn a_torn_tail_is_cut_at_open_so_later_batches_survive() {
    let dir = TempDir::new("audit_spool_torn_then_append");
    let path = dir.0.join("audit.spool");
    let a: Vec<_> = (0..10).map(event).collect();
    let b: Vec<_> = (10..20).map(event).collect();
    let spool = Spool::open(&path).unwrap();
    spool.append(&a).await.unwrap();
    drop(spool);
    // A crash in mid-append leaves a partial record...
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&path, &bytes).unwrap();
    // ...and the next run appends behind it.
    let spool = Spool::open(&path).unwrap();
    spool.append(&b).await.unwrap();
    assert_eq!(drain(&spool).await, vec![a.clone(), b.clone()]);

    // The same across a restart (the read position is not persisted).
    let spool = Spool::open(&path).unwrap();
    assert!(!spool.pending(), "replayed batches are gone");
    spool.append(&a).await.unwrap();
    drop(spool);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0; 40]); // a tail of zeros: also a torn append
    std::fs::write(&path, &bytes).unwrap();
    let spool = Spool::open(&path).unwrap();
    spool.append(&b).await.unwrap();
    drop(spool);
    let spool = Spool::open(&path).unwrap();
    assert_eq!(drain(&spool).await, vec![a, b]);
}

#[tokio::test]
async fn a_corrupt_spool_is_moved_aside_not_truncated() {
    let dir = TempDir::new("audit_spool_corrupt");
    let path = dir.0.join("audit.spool");
    let a: Vec<_> = (0..10).map(event).collect();
    let b: Vec<_> = (10..20).map(event).collect();
    let c: Vec<_> = (20..30).map(event).collect();
    let spool = Spool::open(&path).unwrap();
    spool.append(&a).await.unwrap();
    let first = std::fs::metadata(&path).unwrap().len() as usize;
    spool.append(&b).await.unwrap();
    spool.append(&c).await.unwrap();
    drop(spool);
    // A bit flips inside the second record's payload.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[first + 40] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let spool = Spool::open(&path).unwrap();
    let aside = files_named(&dir.0, "audit.spool.corrupt-");
    assert_eq!(aside.len(), 1, "the corrupt file is kept aside");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes, "intact");
    assert_eq!(spool.set_aside(), 1);
    // The records before the corrupt one still replay.
    assert_eq!(drain(&spool).await, vec![a]);
}

#[tokio::test]
async fn a_failed_append_is_rolled_back_and_later_batches_stay_aligned() {
    let dir = TempDir::new("audit_spool_failed_append");
    let path = dir.0.join("audit.spool");
    let a: Vec<_> = (0..10).map(event).collect();
    let b: Vec<_> = (10..20).map(event).collect();
    let c: Vec<_> = (20..30).map(event).collect();
    let spool = Spool::open(&path).unwrap();
    spool.append(&a).await.unwrap();
    let good = std::fs::metadata(&path).unwrap().len();
    // The disk fills after 30 bytes of the next record.
    spool.fail_next_append_after(30);
    assert!(spool.append(&b).await.is_err());
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        good,
        "no partial record left behind"
    );
    spool.append(&c).await.unwrap();
    assert_eq!(drain(&spool).await, vec![a.clone(), c.clone()]);
    // And after a restart.
    spool.append(&a).await.unwrap();
    spool.fail_next_append_after(5);
    assert!(spool.append(&b).await.is_err());
    spool.append(&c).await.unwrap();
    drop(spool);
    let spool = Spool::open(&path).unwrap();
    assert_eq!(drain(&spool).await, vec![a, c]);
}

#[tokio::test]
async fn an_older_spool_record_without_newer_fields_replays() {
    let dir = TempDir::new("audit_spool_v1");
    let path = dir.0.join("audit.spool");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/audit/spool-v1.bin");
    std::fs::copy(fixture, &path).unwrap();
    let spool = Spool::open(&path).unwrap();
    let (events, _) = spool.peek().await.unwrap().expect("the v1 record decodes");
    drop(spool);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].subject.as_deref(), Some("alice"));
    assert_eq!(events[0].status, Some(200));
    assert_eq!(events[0].upstream_latency_us, None);
    assert!(events[0].anomaly_flags.is_empty());
    assert_eq!(events[1].code.as_deref(), Some("auth.invalid_credentials"));

    // A writer started on it replays it into the store.
    let store = open(&dir, Duration::from_secs(5)).await;
    let writer = AuditWriter::start(
        Arc::new(store.clone()),
        AuditWriterConfig::new(&path),
        Arc::new(SystemClock),
    )
    .unwrap();
    writer.shutdown().await;
    assert_eq!(writer.stats().replayed, 2);
    let stored = all_pages(&store, Default::default(), 10).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1], events[0]);
}

#[tokio::test]
async fn a_record_this_build_cannot_read_is_dead_lettered_and_the_rest_replays() {
    let dir = TempDir::new("audit_spool_future");
    let path = dir.0.join("audit.spool");
    let a: Vec<_> = (0..10).map(event).collect();
    let c: Vec<_> = (20..30).map(event).collect();
    let spool = Spool::open(&path).unwrap();
    spool.append(&a).await.unwrap();
    drop(spool);
    // A record from a newer build (or a downgrade): whole, but not readable here.
    let future =
        br#"{"v":99,"events":[{"id":"x","ts_us":1,"kind":"request.v99","decision":"allow"}]}"#;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&frame(future));
    std::fs::write(&path, &bytes).unwrap();
    let spool = Spool::open(&path).unwrap();
    spool.append(&c).await.unwrap();

    assert_eq!(drain(&spool).await, vec![a, c]);
    assert_eq!(spool.set_aside(), 1);
    let dead = std::fs::read(spool.dead_letter_path()).unwrap();
    assert_eq!(dead, frame(future), "kept byte for byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_sink_is_timed_out_spooled_and_shutdown_is_bounded() {
    const N: u64 = 2000;
    let dir = TempDir::new("audit_hanging_sink");
    let spool = dir.0.join("audit.spool");
    let sink = Arc::new(TestSink::default());
    sink.hang.store(true, Ordering::SeqCst);
    let mut config = AuditWriterConfig::new(&spool);
    config.queue_capacity = 200;
    config.batch_size = 50;
    config.full_policy = FullPolicy::Block(Duration::from_secs(2));
    config.write_timeout = Duration::from_millis(200);
    config.retry_interval = Duration::from_millis(50);
    config.shutdown_timeout = Duration::from_secs(1);
    let writer = AuditWriter::start(sink.clone(), config, Arc::new(SystemClock)).unwrap();
    // Ten times the queue's capacity: only possible if batches leave the
    // queue although the sink never answers.
    for i in 0..N {
        assert_eq!(writer.record(event(i)).await, Recorded::Queued, "event {i}");
    }
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), writer.shutdown())
        .await
        .expect("shutdown finishes although the sink hangs");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let stats = writer.stats();
    assert!(stats.sink_timeouts >= 1, "{stats:?}");
    assert_eq!(
        (stats.dropped, stats.lost, stats.written),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.spooled, N, "{stats:?}");

    // The sink comes back: the next run replays every event once.
    sink.hang.store(false, Ordering::SeqCst);
    let writer = AuditWriter::start(
        sink.clone(),
        AuditWriterConfig::new(&spool),
        Arc::new(SystemClock),
    )
    .unwrap();
    writer.shutdown().await;
    assert_eq!(writer.stats().replayed, N);
    assert_eq!(sink.stored(), N as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_against_a_hanging_sink_do_not_back_up_the_queue() {
    const N: u64 = 1000;
    let dir = TempDir::new("audit_hanging_replay");
    let spool = dir.0.join("audit.spool");
    // An earlier run left a batch in the spool: the writer retries it first.
    let left: Vec<_> = (N..N + 10).map(event).collect();
    Spool::open(&spool).unwrap().append(&left).await.unwrap();
    let sink = Arc::new(TestSink::default());
    sink.hang.store(true, Ordering::SeqCst);
    let mut config = AuditWriterConfig::new(&spool);
    config.queue_capacity = 100;
    config.batch_size = 10;
    config.full_policy = FullPolicy::Block(Duration::from_millis(300));
    // Each retry waits a whole second on the sink: the queue fills in far less.
    config.write_timeout = Duration::from_secs(1);
    config.retry_interval = Duration::from_millis(20);
    config.shutdown_timeout = Duration::from_secs(2);
    let writer = AuditWriter::start(sink.clone(), config, Arc::new(SystemClock)).unwrap();
    for i in 0..N {
        assert_eq!(writer.record(event(i)).await, Recorded::Queued, "event {i}");
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    tokio::time::timeout(Duration::from_secs(6), writer.shutdown())
        .await
        .expect("bounded shutdown");
    let stats = writer.stats();
    assert!(stats.sink_timeouts >= 1, "{stats:?}");
    assert_eq!(
        (stats.dropped, stats.lost, stats.spooled),
        (0, 0, N),
        "{stats:?}"
    );
    sink.hang.store(false, Ordering::SeqCst);
    let writer = AuditWriter::start(
        sink.clone(),
        AuditWriterConfig::new(&spool),
        Arc::new(SystemClock),
    )
    .unwrap();
    writer.shutdown().await;
    assert_eq!(sink.stored(), N as usize + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_prune_does_not_stall_the_batcher() {
    let dir = TempDir::new("audit_hanging_prune");
    let sink = Arc::new(TestSink::default());
    sink.hang_prune.store(true, Ordering::SeqCst);
    let mut config = AuditWriterConfig::new(dir.0.join("audit.spool"));
    config.prune = Some(PrunePolicy {
        older_than: Duration::from_secs(86_400),
        every: Duration::from_millis(20),
    });
    config.shutdown_timeout = Duration::from_secs(1);
    let writer = AuditWriter::start(sink.clone(), config, Arc::new(SystemClock)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // the prune is running
    for i in 0..100 {
        writer.record(event(i)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sink.stored() < 100 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.stored(), 100, "writes go on while the prune runs");
    tokio::time::timeout(Duration::from_secs(5), writer.shutdown())
        .await
        .expect("shutdown stops the prune");
}

#[tokio::test]
async fn the_spool_is_capped_and_what_it_refuses_is_counted() {
    const N: u64 = 12_000;
    let dir = TempDir::new("audit_spool_cap");
    let spool = dir.0.join("audit.spool");
    let sink = Arc::new(TestSink::default());
    sink.fail.store(true, Ordering::SeqCst);
    let mut config = AuditWriterConfig::new(&spool);
    config.spool_max_bytes = 1 << 20;
    config.queue_capacity = N as usize;
    let writer = AuditWriter::start(sink.clone(), config, Arc::new(SystemClock)).unwrap();
    for i in 0..N {
        assert_eq!(writer.try_record(event(i)), Recorded::Queued);
    }
    writer.shutdown().await;
    let stats = writer.stats();
    assert!(stats.spool_overflow > 0, "{stats:?}");
    assert_eq!(stats.lost, stats.spool_overflow, "{stats:?}");
    assert_eq!(stats.spooled + stats.spool_overflow, N, "{stats:?}");
    assert!(std::fs::metadata(&spool).unwrap().len() <= 1 << 20);
    // What was spooled replays once the sink is back.
    sink.fail.store(false, Ordering::SeqCst);
    let writer = AuditWriter::start(
        sink.clone(),
        AuditWriterConfig::new(&spool),
        Arc::new(SystemClock),
    )
    .unwrap();
    writer.shutdown().await;
    assert_eq!(sink.stored() as u64, stats.spooled);
}

#[tokio::test]
async fn sqlite_prune_deletes_every_chunk() {
    // 25 000 rows to delete: three chunks of at most 10 000.
    let dir = TempDir::new("audit_sqlite_prune_chunks");
    let store = open(&dir, Duration::from_secs(5)).await;
    let events: Vec<_> = (0..25_010).map(event).collect();
    for chunk in events.chunks(5000) {
        store.write_batch(chunk).await.unwrap();
    }
    let cutoff = event(25_000).ts_us;
    let mut seen = Vec::new();
    let deleted = store
        .prune_before_with(cutoff, |n| seen.push(n))
        .await
        .unwrap();
    assert_eq!(deleted, 25_000);
    assert_eq!(count(&store).await, 10);
    // Progress after each full chunk; the last, partial one ends the prune.
    assert_eq!(seen, [10_000, 20_000]);
}
