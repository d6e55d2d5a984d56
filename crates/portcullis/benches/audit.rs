//! Audit writer costs: enqueue on the request path, and sustained events/s
//! through the writer into SQLite and (with `--features postgres`) the local
//! PostgreSQL (`PORTCULLIS_POSTGRES_URL`, default postgres://postgres@127.0.0.1:5432/test).
//! `BENCH_AUDIT_BATCH=N` overrides the writer's batch size (default 1 000).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use portcullis::audit::sqlite::SqliteAudit;
use portcullis::audit::{
    AuditError, AuditEvent, AuditSink, AuditWriter, AuditWriterConfig, BoxFuture, Decision,
    EventKind, FullPolicy,
};
use portcullis_core::SystemClock;

/// Events per throughput sample.
const SUSTAINED: usize = 50_000;

struct NullSink;

impl AuditSink for NullSink {
    fn write_batch<'a>(
        &'a self,
        events: &'a [AuditEvent],
    ) -> BoxFuture<'a, Result<(), AuditError>> {
        black_box(events);
        Box::pin(async { Ok(()) })
    }
}

fn event(i: usize) -> AuditEvent {
    let mut e = AuditEvent::new(
        EventKind::Request,
        1_795_000_000_000_000 + i as i64,
        Decision::Allow,
    );
    e.request_id = Some(format!("req-{i}"));
    e.client_ip = Some(format!("10.0.{}.{}", (i >> 8) & 255, i & 255));
    e.method = Some("GET".into());
    e.route = Some("/api/orders/{id}".into());
    e.path = Some(format!("/api/orders/{i}?page=2"));
    e.status = Some(200);
    e.latency_us = Some(850);
    e.upstream_latency_us = Some(700);
    e.subject = Some(format!("user-{}", i % 1000));
    e.tenant = Some("acme".into());
    e.auth_method = Some("jwt".into());
    e.credential_id = Some(format!("jti-{i}"));
    e.rate_limit_remaining = Some(99);
    e.user_agent = Some("bench-client/1.0".into());
    e
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn spool(label: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pcx_bench_audit_{label}_{}", std::process::id()))
}

fn bench_enqueue(c: &mut Criterion) {
    let rt = runtime();
    let mut config = AuditWriterConfig::new(spool("enqueue.spool"));
    config.full_policy = FullPolicy::Drop;
    config.queue_capacity = 1 << 20;
    let writer = rt.block_on(async {
        AuditWriter::start(Arc::new(NullSink), config, Arc::new(SystemClock)).unwrap()
    });
    let mut group = c.benchmark_group("audit");
    let mut i = 0;
    group.bench_function("enqueue (try_record of a built event)", |b| {
        b.iter_batched(
            || {
                i += 1;
                event(i)
            },
            |e| black_box(writer.try_record(e)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    rt.block_on(writer.shutdown());
    let _ = std::fs::remove_file(spool("enqueue.spool"));
}

/// Records `SUSTAINED` events through a fresh writer and waits for the
/// drain; returns the elapsed time.
fn sustained(
    rt: &tokio::runtime::Runtime,
    sink: Arc<dyn AuditSink>,
    label: &str,
    offset: &mut usize,
) -> Duration {
    let events: Vec<AuditEvent> = (0..SUSTAINED).map(|i| event(*offset + i)).collect();
    *offset += SUSTAINED;
    let mut config = AuditWriterConfig::new(spool(label));
    config.full_policy = FullPolicy::Block(Duration::from_secs(60));
    if let Ok(n) = std::env::var("BENCH_AUDIT_BATCH") {
        config.batch_size = n.parse().unwrap();
    }
    rt.block_on(async {
        let writer = AuditWriter::start(sink, config, Arc::new(SystemClock)).unwrap();
        let start = Instant::now();
        for e in events {
            writer.record(e).await;
        }
        writer.shutdown().await;
        let took = start.elapsed();
        let stats = writer.stats();
        assert_eq!(stats.written, SUSTAINED as u64, "{stats:?}");
        took
    })
}

fn bench_sqlite(c: &mut Criterion) {
    let rt = runtime();
    let dir = spool("sqlite_dir");
    std::fs::create_dir_all(&dir).unwrap();
    let store = rt
        .block_on(SqliteAudit::open(
            &dir.join("audit.db"),
            Duration::from_secs(5),
        ))
        .unwrap();
    let sink: Arc<dyn AuditSink> = Arc::new(store);
    let mut group = c.benchmark_group("audit");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(SUSTAINED as u64));
    let mut offset = 0;
    group.bench_function("sustained into SQLite", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| sustained(&rt, Arc::clone(&sink), "sqlite.spool", &mut offset))
                .sum()
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(spool("sqlite.spool"));
}

#[cfg(feature = "postgres")]
fn bench_postgres(c: &mut Criterion) {
    use portcullis::audit::postgres::PostgresAudit;
    use sqlx::Connection;
    let admin = std::env::var("PORTCULLIS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let rt = runtime();
    let name = format!("pcx_bench_audit_{}", std::process::id());
    let Ok(mut conn) = rt.block_on(sqlx::PgConnection::connect(&admin)) else {
        eprintln!("skipping the PostgreSQL bench: {admin} is unreachable");
        return;
    };
    rt.block_on(sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut conn))
        .unwrap();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    let store = rt
        .block_on(PostgresAudit::open(&format!("{base}/{name}")))
        .unwrap();
    let sink: Arc<dyn AuditSink> = Arc::new(store.clone());
    let mut group = c.benchmark_group("audit");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(SUSTAINED as u64));
    let mut offset = 0;
    group.bench_function("sustained into PostgreSQL", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| sustained(&rt, Arc::clone(&sink), "pg.spool", &mut offset))
                .sum()
        })
    });
    group.finish();
    drop(sink);
    let _ = std::fs::remove_file(spool("pg.spool"));
    rt.block_on(store.pool().close());
    let _ = rt.block_on(
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut conn),
    );
}

#[cfg(not(feature = "postgres"))]
fn bench_postgres(_: &mut Criterion) {
    eprintln!("PostgreSQL bench skipped: run with --features postgres");
}

criterion_group!(benches, bench_enqueue, bench_sqlite, bench_postgres);
criterion_main!(benches);
