//! Login regulation shared on the real PostgreSQL (127.0.0.1:5432, a fresh
//! database per test), with two `Regulator`s on two pools standing for two
//! replicas: the table's state machine is `FailureRecord`'s (limits per IP
//! and per (account, IP), bans, windows, successes given back), and many
//! attempts at one key at once from both admit exactly the limit, each
//! answered by the database (no fallback to local state).
#![cfg(feature = "postgres")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use portcullis::regulation::Regulator;
use portcullis::stores::postgres::PostgresStores;
use portcullis_core::SystemClock;
use portcullis_core::regulation::{Attempt, RegulationPolicy, Surface};
use support::FreshDatabase;

/// Two regulators ("replicas") on their own pools of one fresh database.
async fn replicas(
    label: &str,
    policy: RegulationPolicy,
) -> Option<(FreshDatabase, sqlx::PgPool, [Arc<Regulator>; 2])> {
    let db = FreshDatabase::create(label).await?;
    let mut pools = Vec::new();
    for _ in 0..2 {
        // Migrates the schema (the `regulation` table) on first use.
        let stores = PostgresStores::connect(&db.url, 16).await.unwrap();
        let pool = stores.pool().clone();
        // Open all 16 connections now: a burst on a cold pool pays for
        // connecting inside the 250 ms budget, which a loaded machine can
        // exceed (the attempts are then answered locally, as designed).
        let warm: Vec<_> = (0..16)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(
                    async move { sqlx::query("SELECT pg_sleep(0.05)").execute(&pool).await },
                )
            })
            .collect();
        for t in warm {
            t.await.unwrap().unwrap();
        }
        pools.push(pool);
    }
    let make = |pool: sqlx::PgPool| {
        Arc::new(
            Regulator::memory(policy, Arc::new(SystemClock))
                .unwrap()
                .on_postgres(pool),
        )
    };
    let regulators = [make(pools[0].clone()), make(pools[1].clone())];
    Some((db, pools[0].clone(), regulators))
}

async fn row_count(pool: &sqlx::PgPool, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count FROM regulation WHERE key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(-1)
}

/// The per-account and per-IP limits, the ban and its `Retry-After`, the
/// refused attempt charged to the IP, and a success giving its charges
/// back, across two replicas taking turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_state_machine_is_the_failure_records() {
    let policy = RegulationPolicy {
        max_failures_per_account: 3,
        max_failures_per_ip: 6,
        window: Duration::from_secs(60),
        ban_time: Duration::from_secs(30),
    };
    let Some((_db, pool, [a, b])) = replicas("regulation_machine", policy).await else {
        return;
    };
    let at = |r: &Arc<Regulator>, ip: &'static str, account: &'static str| {
        let r = Arc::clone(r);
        async move { r.attempt(Surface::Login, Some(ip), Some(account)).await }
    };
    for r in [&a, &b, &a] {
        assert!(at(r, "192.0.2.1", "alice").await.admitted());
    }
    // The pair used up its 3: refused for the ban time, on either replica.
    let t = at(&b, "192.0.2.1", "alice").await;
    assert_eq!(t.attempt.retry_after_secs(), Some(30));
    let t = at(&a, "192.0.2.1", "alice").await;
    assert!(
        matches!(t.attempt, Attempt::Refused { retry_after_ms } if retry_after_ms <= 30_000),
        "{t:?}"
    );
    // The account from elsewhere is untouched.
    assert!(at(&b, "192.0.2.2", "alice").await.admitted());
    // The IP has 5 charges (the refused attempts count): one more, then refused.
    assert_eq!(row_count(&pool, "login:ip:192.0.2.1").await, 5);
    assert!(at(&a, "192.0.2.1", "bob").await.admitted());
    let t = at(&b, "192.0.2.1", "carol").await;
    assert_eq!(t.attempt.retry_after_secs(), Some(30), "{t:?}");

    // A success gives the IP's charge back and clears its pair.
    let t = at(&a, "192.0.2.3", "dave").await;
    assert!(t.admitted());
    assert!(at(&b, "192.0.2.3", "dave").await.admitted());
    assert_eq!(row_count(&pool, "login:ip:192.0.2.3").await, 2);
    b.succeeded(t).await;
    assert_eq!(row_count(&pool, "login:ip:192.0.2.3").await, 1);
    assert_eq!(row_count(&pool, "login:acct:192.0.2.3:dave").await, -1);

    assert_eq!(
        (a.fallbacks(), b.fallbacks()),
        (0, 0),
        "all in the database"
    );
    assert_eq!(a.refused() + b.refused(), 3);
}

/// A window that passes starts the count afresh; a ban that passes admits
/// again (1 s each, the shortest the policy allows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_and_bans_end_on_the_database_clock() {
    let policy = RegulationPolicy {
        max_failures_per_account: 2,
        max_failures_per_ip: 100,
        window: Duration::from_secs(1),
        ban_time: Duration::from_secs(1),
    };
    let Some((_db, _pool, [a, b])) = replicas("regulation_windows", policy).await else {
        return;
    };
    let at = |r: &Arc<Regulator>| {
        let r = Arc::clone(r);
        async move {
            r.attempt(Surface::Console, Some("192.0.2.9"), Some("eve"))
                .await
        }
    };
    assert!(at(&a).await.admitted());
    assert!(at(&b).await.admitted());
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // A new window: two more, then the ban.
    assert!(at(&b).await.admitted());
    assert!(at(&a).await.admitted());
    assert_eq!(at(&b).await.attempt.retry_after_secs(), Some(1));
    assert!(!at(&a).await.admitted(), "banned on the other replica too");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(at(&a).await.admitted(), "the ban ended");
    assert_eq!((a.fallbacks(), b.fallbacks()), (0, 0));
}

/// 120 attempts at one account at once, half on each replica, against a
/// limit of 10: exactly 10 are admitted, every answer the database's (an
/// attempt that waited past the 250 ms budget would have been answered
/// from local state and counted as a fallback, and could admit an 11th).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_at_one_key_from_two_replicas_admits_exactly_the_limit() {
    const LIMIT: u32 = 10;
    let policy = RegulationPolicy {
        max_failures_per_account: LIMIT,
        max_failures_per_ip: 10_000,
        window: Duration::from_secs(60),
        ban_time: Duration::from_secs(60),
    };
    let Some((_db, pool, regulators)) = replicas("regulation_burst", policy).await else {
        return;
    };
    let mut tasks = Vec::new();
    for i in 0..120 {
        let r = Arc::clone(&regulators[i % 2]);
        tasks.push(tokio::spawn(async move {
            r.attempt(Surface::Login, Some("192.0.2.40"), Some("alice"))
                .await
                .admitted()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += u32::from(t.await.unwrap());
    }
    let fallbacks: Vec<u64> = regulators.iter().map(|r| r.fallbacks()).collect();
    assert_eq!(
        admitted, LIMIT,
        "admitted {admitted} of 120 against a limit of {LIMIT}; fallbacks {fallbacks:?}"
    );
    assert_eq!(fallbacks, [0, 0]);
    assert_eq!(row_count(&pool, "login:ip:192.0.2.40").await, 120);
}
