//! Request-path store costs: the access-token denylist check and API-key
//! verification, in memory (polled directly: the memory futures are ready
//! at once) and on the servers that are reachable (SQLite always).

use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::stores::memory::MemoryStores;
use portcullis::stores::{Backends, NewApiKey, Stores, StoresConfig};
use portcullis_core::SecretHasher;

/// Polls a future once; the memory backend never waits.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("memory store future was not ready"),
    }
}

fn config() -> StoresConfig {
    let mut c = StoresConfig::new(SecretHasher::new(&[7u8; 32]).expect("pepper"));
    c.revocation_cache_ttl = std::time::Duration::ZERO;
    c
}

fn bench_memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stores = rt.block_on(async {
        Stores::new(Backends::all(Arc::new(MemoryStores::new())), config()).expect("stores")
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    for i in 0..100_000 {
        ready(stores.revoke_jti(&format!("jti-{i}"), now + 3600)).expect("deny");
    }
    let key = rt
        .block_on(stores.create_api_key(&NewApiKey {
            name: "bench".into(),
            owner: "owner".into(),
            roles: vec!["reader".into()],
            ..NewApiKey::default()
        }))
        .expect("create key")
        .key;

    let mut group = c.benchmark_group("stores/memory");
    group.bench_function("denylist check (hit, 100k entries)", |b| {
        b.iter(|| black_box(ready(stores.is_jti_revoked(black_box("jti-4242"))).expect("check")))
    });
    group.bench_function("denylist check (miss)", |b| {
        b.iter(|| black_box(ready(stores.is_jti_revoked(black_box("not-there"))).expect("check")))
    });
    group.bench_function(
        "api key verify (no cache: parse, keyed hash, lookup)",
        |b| b.iter(|| black_box(ready(stores.verify_api_key(black_box(&key))).expect("verify"))),
    );
    group.bench_function("api key parse + checksum only", |b| {
        b.iter(|| black_box(portcullis::stores::api_keys::parse_api_key(black_box(&key))))
    });
    // The default configuration: a repeated key within the 1 s revocation
    // bound is answered by the replica's verified-key cache.
    let cached = Stores::new(
        Backends::all(Arc::new(MemoryStores::new())),
        StoresConfig::new(SecretHasher::new(&[7u8; 32]).expect("pepper")),
    )
    .expect("stores");
    let cached_key = rt
        .block_on(cached.create_api_key(&NewApiKey {
            name: "bench".into(),
            owner: "owner".into(),
            ..NewApiKey::default()
        }))
        .expect("create key")
        .key;
    group.bench_function("api key verify (repeat key, default 1 s cache)", |b| {
        b.iter(|| black_box(ready(cached.verify_api_key(black_box(&cached_key))).expect("verify")))
    });
    group.finish();
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Denylist check and API-key verify through `stores` (no caches: every
/// call reaches the backend), driven from a tokio runtime.
fn bench_backend(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, stores: &Stores) {
    let key = rt
        .block_on(async {
            stores.revoke_jti("bench-jti", now_secs() + 3600).await?;
            stores
                .create_api_key(&NewApiKey {
                    name: "bench".into(),
                    owner: "bench-owner".into(),
                    ..NewApiKey::default()
                })
                .await
        })
        .expect("seed")
        .key;
    let mut group = c.benchmark_group(format!("stores/{name}"));
    group.bench_function("denylist check (hit)", |b| {
        b.iter(|| {
            rt.block_on(stores.is_jti_revoked(black_box("bench-jti")))
                .expect("check")
        })
    });
    group.bench_function("api key verify", |b| {
        b.iter(|| {
            rt.block_on(stores.verify_api_key(black_box(&key)))
                .expect("verify")
        })
    });
    group.finish();
}

/// Refresh rotations per second with `clients` concurrent clients, each
/// rotating its own family for `secs` seconds.
#[cfg(any(feature = "redis", feature = "postgres"))]
fn rotations_per_second(
    rt: &tokio::runtime::Runtime,
    name: &str,
    stores: Arc<Stores>,
    clients: usize,
    secs: u64,
) {
    let hasher = SecretHasher::new(&[7u8; 32]).expect("pepper");
    let total = rt.block_on(async move {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for c in 0..clients {
            let stores = stores.clone();
            let hasher = hasher.clone();
            tasks.push(tokio::spawn(async move {
                let sid = stores
                    .create_session(&portcullis::stores::NewSession {
                        user_id: format!("bench-user-{c}"),
                        ttl: std::time::Duration::from_secs(3600),
                        ..Default::default()
                    })
                    .await
                    .expect("session")
                    .id;
                let issue = |generation: u32, family: &str| {
                    let token = portcullis_core::opaque::generate("pcr_").expect("random");
                    let record = portcullis::stores::RefreshRecord {
                        hash: hasher.hash(&token),
                        family: family.to_owned(),
                        generation,
                        session_id: sid.clone(),
                        user_id: format!("bench-user-{c}"),
                        expires_at: now_secs() + 3600,
                        remember_me: false,
                        created_at: now_secs(),
                        rotated_at: None,
                        successor: None,
                        revoked_at: None,
                    };
                    (token, record)
                };
                let family = format!("bench-fam-{c}-{}", now_secs());
                let (mut token, first) = issue(0, &family);
                stores.store_refresh(&first).await.expect("store");
                let mut n = 0u64;
                while tokio::time::Instant::now() < deadline {
                    let mut next_token = String::new();
                    stores
                        .rotate_refresh(&token, |prev| {
                            let (t, r) = issue(prev.generation + 1, &prev.family);
                            next_token = t;
                            Ok(r)
                        })
                        .await
                        .expect("rotate");
                    token = next_token;
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("task");
        }
        total
    });
    println!(
        "stores/{name}: {:.0} refresh rotations/s with {clients} concurrent clients",
        total as f64 / secs as f64
    );
}

fn remote_config() -> StoresConfig {
    config()
}

fn bench_remote(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    #[cfg(feature = "sqlite")]
    {
        let path = std::env::temp_dir().join(format!("pcx_bench_stores_{}.db", std::process::id()));
        let sqlite = rt
            .block_on(portcullis::stores::sqlite::SqliteStores::open(&path))
            .expect("SQLite");
        let stores = Stores::new(Backends::all(Arc::new(sqlite)), remote_config()).expect("stores");
        bench_backend(c, &rt, "sqlite", &stores);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    #[cfg(feature = "redis")]
    {
        let url = std::env::var("PORTCULLIS_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let prefix = format!("pcx_bench_stores_{}", std::process::id());
        match rt.block_on(portcullis::stores::redis::RedisConnection::single(&url)) {
            Ok(conn) => {
                let backend = portcullis::stores::redis::RedisStores::new(conn.clone(), &prefix);
                let stores = Arc::new(
                    Stores::new(Backends::all(Arc::new(backend)), remote_config()).expect("stores"),
                );
                bench_backend(c, &rt, "redis", &stores);
                rotations_per_second(&rt, "redis", stores, 32, 3);
                rt.block_on(delete_prefix(conn, &prefix));
            }
            Err(e) => eprintln!("skipping Redis: {e}"),
        }
    }
    #[cfg(feature = "postgres")]
    {
        let admin = std::env::var("PORTCULLIS_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let name = format!("pcx_bench_stores_{}", std::process::id());
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(b, _)| b)
            .to_owned();
        let created = rt.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut conn)
                .await?;
            Ok::<_, sqlx::Error>(())
        });
        match created {
            Ok(()) => {
                let pg = rt
                    .block_on(portcullis::stores::postgres::PostgresStores::connect(
                        &format!("{base}/{name}"),
                        32,
                    ))
                    .expect("PostgreSQL");
                let pool = pg.pool().clone();
                let stores = Arc::new(
                    Stores::new(Backends::all(Arc::new(pg)), remote_config()).expect("stores"),
                );
                bench_backend(c, &rt, "postgres", &stores);
                rotations_per_second(&rt, "postgres", stores, 32, 3);
                rt.block_on(pool.close());
                let _ = rt.block_on(async {
                    use sqlx::Connection;
                    let mut conn = sqlx::PgConnection::connect(&admin).await?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut conn)
                        .await
                });
            }
            Err(e) => eprintln!("skipping PostgreSQL: {e}"),
        }
    }
}

#[cfg(feature = "redis")]
async fn delete_prefix(mut conn: portcullis::stores::redis::RedisConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    for k in keys {
        let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(k).query_async(&mut conn).await;
    }
}

criterion_group!(benches, bench_memory, bench_remote);
criterion_main!(benches);
