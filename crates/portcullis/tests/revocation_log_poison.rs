//! A revocation-log entry a replica cannot read (a kind a newer version
//! wrote during a rolling upgrade, or a corrupt Redis member) is skipped and
//! counted: the feed goes on past it and keeps enforcing every revocation
//! around it. Before, one such entry failed every poll, so every replica
//! refused every token once `max_stale` passed. Real SQLite, PostgreSQL,
//! Redis and Redis Cluster, a fresh database / key prefix per test.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::stores::{Denylist, RevocationLog, RevocationPolicy, RevocationSet, RevokedKind};
use portcullis_core::{Clock, SystemClock};

fn far() -> i64 {
    SystemClock.unix_seconds() + 3600
}

/// Denies `before`, lets `poison` write what this build cannot read, denies
/// `after`; a set started then holds both, counts `poisoned` skipped
/// entries, and follows a revocation made after more poison.
async fn the_feed_skips_what_it_cannot_read<D, P, F>(denylist: Arc<D>, poison: P, poisoned: u64)
where
    D: Denylist + 'static,
    P: Fn() -> F,
    F: std::future::Future<Output = ()>,
{
    let log: Arc<dyn RevocationLog> = Arc::clone(&denylist)
        .revocation_log()
        .expect("this backend keeps a revocation log");
    denylist.deny("before", far()).await.expect("deny");
    poison().await;
    denylist.deny("after", far()).await.expect("deny");

    let set = RevocationSet::new(
        vec![log],
        RevocationPolicy::default(),
        Arc::new(SystemClock),
    );
    set.ready(Duration::from_secs(5))
        .await
        .expect("the feed loads past an entry it cannot read");
    assert!(set.contains(RevokedKind::Jti, "before"));
    assert!(set.contains(RevokedKind::Jti, "after"));
    assert_eq!(set.stats().unrecognized, poisoned);
    assert_eq!(set.stats().poll_failures, 0);

    // Following goes on past more of it.
    poison().await;
    denylist.deny("later", far()).await.expect("deny");
    let started = Instant::now();
    while !set.contains(RevokedKind::Jti, "later") {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the feed stopped at an entry it cannot read: {:?}",
            set.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(set.stats().unrecognized, 2 * poisoned);
    assert_eq!(set.stats().poll_failures, 0);
    assert!(!set.is_stale());
}

/// A row of a kind no build knows yet (tag 99).
const NEWER_KIND_SQL: &str =
    "INSERT INTO revocation_log (kind, subject, expires_at) VALUES (99, 'tenant-7', $1)";

#[tokio::test]
async fn sqlite_skips_a_newer_kind() {
    let path = std::env::temp_dir().join(format!("{}.db", support::unique_name("pcx_poison")));
    let stores = Arc::new(
        portcullis::stores::sqlite::SqliteStores::open(&path)
            .await
            .expect("open SQLite"),
    );
    let pool = stores.pool().clone();
    let poison = || {
        let pool = pool.clone();
        async move {
            sqlx::query(NEWER_KIND_SQL)
                .bind(far())
                .execute(&pool)
                .await
                .expect("insert");
        }
    };
    the_feed_skips_what_it_cannot_read(stores, poison, 1).await;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_skips_a_newer_kind() {
    let Some(db) = support::FreshDatabase::create("poison").await else {
        return;
    };
    let stores = Arc::new(
        portcullis::stores::postgres::PostgresStores::connect(&db.url, 4)
            .await
            .expect("connect PostgreSQL"),
    );
    let pool = stores.pool().clone();
    let poison = || {
        let pool = pool.clone();
        async move {
            sqlx::query(NEWER_KIND_SQL)
                .bind(far())
                .execute(&pool)
                .await
                .expect("insert");
        }
    };
    the_feed_skips_what_it_cannot_read(stores, poison, 1).await;
}

/// Appends, the way the store's own script does, one member of a newer
/// kind and one that does not parse at all.
#[cfg(feature = "redis")]
async fn redis_poison(conn: &mut (impl redis::aio::ConnectionLike + Send), prefix: &str) {
    let seq_key = format!("{prefix}:{{rev}}:seq");
    let log_key = format!("{prefix}:{{rev}}:log");
    for member in [format!(":99:{}:tenant-7", far()), "garbage".to_owned()] {
        let seq: u64 = redis::cmd("INCR")
            .arg(&seq_key)
            .query_async(conn)
            .await
            .expect("INCR");
        let member = if member.starts_with(':') {
            format!("{seq}{member}")
        } else {
            member
        };
        let _: u64 = redis::cmd("ZADD")
            .arg(&log_key)
            .arg(seq)
            .arg(member)
            .query_async(conn)
            .await
            .expect("ZADD");
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_skips_a_newer_kind_and_a_corrupt_member() {
    use portcullis::stores::redis::{RedisConnection, RedisStores};
    let Some(url) = support::redis_url() else {
        return;
    };
    let prefix = support::unique_prefix("poison");
    let stores = Arc::new(RedisStores::new(
        RedisConnection::single(&url).await.expect("connect Redis"),
        &prefix,
    ));
    let raw = redis::Client::open(url.as_str()).expect("client");
    let raw = raw
        .get_multiplexed_async_connection()
        .await
        .expect("connect Redis");
    let bare = prefix.trim_end_matches(':').to_owned();
    let poison = || {
        let mut raw = raw.clone();
        let bare = bare.clone();
        async move { redis_poison(&mut raw, &bare).await }
    };
    the_feed_skips_what_it_cannot_read(stores, poison, 2).await;
    support::redis_cleanup(&url, &prefix).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_cluster_skips_a_newer_kind_and_a_corrupt_member() {
    use portcullis::stores::redis::{RedisConnection, RedisStores};
    let Some(urls) = support::redis_cluster_urls() else {
        return;
    };
    if urls.is_empty() {
        return;
    }
    let prefix = support::unique_prefix("poison_cluster");
    let stores = Arc::new(RedisStores::new(
        RedisConnection::cluster(&urls)
            .await
            .expect("connect Redis Cluster"),
        &prefix,
    ));
    let raw = redis::cluster::ClusterClient::new(urls.clone()).expect("client");
    let raw = raw.get_async_connection().await.expect("connect cluster");
    let bare = prefix.trim_end_matches(':').to_owned();
    let poison = || {
        let mut raw = raw.clone();
        let bare = bare.clone();
        async move { redis_poison(&mut raw, &bare).await }
    };
    the_feed_skips_what_it_cannot_read(stores, poison, 2).await;
    support::redis_cluster_cleanup(&urls, &prefix).await;
}
