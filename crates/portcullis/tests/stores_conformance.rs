//! One conformance suite for every store backend: each check below is
//! written once and run against memory, SQLite (a temporary file),
//! PostgreSQL (a fresh database per test) and Redis (a unique key prefix
//! per test, Cluster included) where the backend holds that store.

mod support;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use portcullis::stores::{
    Backends, NewApiKey, NewApp, NewSession, NewUser, RefreshRecord, Rotation, SecurityEvent,
    StoreError, Stores, StoresConfig, parse_basic_auth,
};
use portcullis_core::{Clock, ManualClock, SecretHasher, SystemClock};

const PEPPER: [u8; 32] = [42u8; 32];

/// One backend under test: its stores and whatever must live as long (a
/// database guard, a temp file).
struct Env {
    backends: Backends,
    _guard: Box<dyn Any + Send>,
}

impl Env {
    fn stores(&self, config: StoresConfig) -> Arc<Stores> {
        Arc::new(Stores::new(self.backends.clone(), config).expect("stores"))
    }

    fn stores_at(&self, config: StoresConfig, clock: Arc<dyn Clock>) -> Arc<Stores> {
        Arc::new(Stores::with_clock(self.backends.clone(), config, clock).expect("stores"))
    }
}

fn hasher() -> SecretHasher {
    SecretHasher::new(&PEPPER).expect("pepper")
}

fn config() -> StoresConfig {
    StoresConfig::new(hasher())
}

fn now() -> i64 {
    SystemClock.unix_seconds()
}

// ---------------------------------------------------------------- backends

async fn memory() -> Option<Env> {
    Some(Env {
        backends: Backends::all(Arc::new(portcullis::stores::memory::MemoryStores::new())),
        _guard: Box::new(()),
    })
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn sqlite() -> Option<Env> {
    let path = std::env::temp_dir().join(format!("{}.db", support::unique_name("pcx_stores")));
    let file = TempFile(path.clone());
    let stores = portcullis::stores::sqlite::SqliteStores::open(&path)
        .await
        .expect("open SQLite");
    // Opening again runs the migrations again: idempotent.
    portcullis::stores::sqlite::SqliteStores::open(&path)
        .await
        .expect("reopen SQLite");
    Some(Env {
        backends: Backends::all(Arc::new(stores)),
        _guard: Box::new(file),
    })
}

#[cfg(feature = "postgres")]
async fn postgres() -> Option<Env> {
    let db = support::FreshDatabase::create("stores").await?;
    let stores = portcullis::stores::postgres::PostgresStores::connect(&db.url, 16)
        .await
        .expect("connect PostgreSQL");
    Some(Env {
        backends: Backends::all(Arc::new(stores)),
        _guard: Box::new(db),
    })
}

/// Deletes a test's Redis keys when dropped (even after a panic).
#[cfg(feature = "redis")]
struct RedisKeys {
    urls: Vec<String>,
    prefix: String,
}

#[cfg(feature = "redis")]
impl Drop for RedisKeys {
    fn drop(&mut self) {
        let (urls, prefix) = (self.urls.clone(), self.prefix.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(support::redis_cluster_cleanup(&urls, &prefix));
        });
        let _ = cleanup.join();
    }
}

#[cfg(feature = "redis")]
async fn redis() -> Option<Env> {
    use portcullis::stores::redis::{RedisConnection, RedisStores};
    let url = support::redis_url()?;
    let prefix = support::unique_prefix("stores");
    let conn = RedisConnection::single(&url).await.expect("connect Redis");
    Some(Env {
        backends: Backends::all(Arc::new(RedisStores::new(conn, &prefix))),
        _guard: Box::new(RedisKeys {
            urls: vec![url],
            prefix,
        }),
    })
}

#[cfg(feature = "redis")]
async fn redis_cluster() -> Option<Env> {
    use portcullis::stores::redis::{RedisConnection, RedisStores};
    let urls = support::redis_cluster_urls()?;
    if urls.is_empty() {
        return None;
    }
    let prefix = support::unique_prefix("stores_cluster");
    let conn = RedisConnection::cluster(&urls)
        .await
        .expect("connect Redis Cluster");
    Some(Env {
        backends: Backends::all(Arc::new(RedisStores::new(conn, &prefix))),
        _guard: Box::new(RedisKeys { urls, prefix }),
    })
}

/// The typical split: durable state (users, API keys, apps) on SQLite,
/// hot state (sessions, refresh families, denylist) on Redis.
#[cfg(feature = "redis")]
async fn mixed() -> Option<Env> {
    let hot = redis().await?;
    let durable = sqlite().await?;
    Some(Env {
        backends: Backends {
            users: durable.backends.users.clone(),
            api_keys: durable.backends.api_keys.clone(),
            signing_keys: durable.backends.signing_keys.clone(),
            apps: durable.backends.apps.clone(),
            sessions: hot.backends.sessions.clone(),
            refresh: hot.backends.refresh.clone(),
            denylist: hot.backends.denylist.clone(),
        },
        _guard: Box::new((hot, durable)),
    })
}

// ------------------------------------------------------------------ checks

/// A refresh token and its record, as the token service would issue them.
fn issue_refresh(
    user: &str,
    sid: &str,
    family: &str,
    generation: u32,
    remember_me: bool,
    expires_at: i64,
) -> (String, RefreshRecord) {
    let token = portcullis_core::opaque::generate("pcr_").expect("random");
    let record = RefreshRecord {
        hash: hasher().hash(&token),
        family: family.to_owned(),
        generation,
        session_id: sid.to_owned(),
        user_id: user.to_owned(),
        expires_at,
        remember_me,
        created_at: now(),
        rotated_at: None,
        successor: None,
        revoked_at: None,
    };
    (token, record)
}

/// The successor of `prev` (same family, session, user and remember-me).
fn successor_of(prev: &RefreshRecord) -> (String, RefreshRecord) {
    let life = if prev.remember_me {
        30 * 86_400
    } else {
        7 * 86_400
    };
    issue_refresh(
        &prev.user_id,
        &prev.session_id,
        &prev.family,
        prev.generation + 1,
        prev.remember_me,
        now() + life,
    )
}

async fn session_for(stores: &Stores, user: &str, remember_me: bool) -> String {
    stores
        .create_session(&NewSession {
            user_id: user.to_owned(),
            ttl: Duration::from_secs(3600),
            user_agent: Some("conformance".into()),
            client_ip: Some("203.0.113.9".into()),
            remember_me,
        })
        .await
        .expect("session")
        .id
}

async fn concurrent_rotations_have_one_winner(env: Env) {
    let stores = env.stores(config());
    let sid = session_for(&stores, "user-rot", false).await;
    let (token, record) = issue_refresh("user-rot", &sid, "fam-rot", 0, false, now() + 600);
    stores.store_refresh(&record).await.expect("store");
    // Successors minted by derivation, as the token service does: every
    // racer builds the same successor, and the losers must not undo the
    // winner's (its lookup key, its record).
    let next = stores.successor_token(&token);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let stores = stores.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let (_, mint) = derived_successor(&stores, &token);
            stores.rotate_refresh(&token, mint).await
        }));
    }
    let (mut won, mut reused) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(Rotation::Rotated { .. }) => won += 1,
            Err(e) if e.code() == "auth.refresh_reused" => reused += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one rotation wins");
    assert_eq!(reused, 99, "every other one is a reuse");
    // The reuses revoked the family: the winner's successor is found (not
    // unknown) and refused as revoked.
    let record = env
        .backends
        .refresh
        .refresh_by_hash(&hasher().hash(&next))
        .await
        .expect("lookup");
    assert!(
        record.is_some_and(|r| r.revoked_at.is_some()),
        "the winner's successor is findable"
    );
}

async fn reuse_after_rotation_revokes_family_and_session(env: Env) {
    let stores = env.stores(config());
    let sid = session_for(&stores, "user-reuse", true).await;
    let (t0, r0) = issue_refresh("user-reuse", &sid, "fam-reuse", 0, true, now() + 600);
    stores.store_refresh(&r0).await.expect("store");
    let mut t1 = String::new();
    let rotation = stores
        .rotate_refresh(&t0, |prev| {
            let (t, r) = successor_of(prev);
            t1 = t;
            Ok(r)
        })
        .await
        .expect("first rotation");
    let Rotation::Rotated {
        previous,
        successor,
    } = rotation
    else {
        panic!("expected a rotation, got {rotation:?}");
    };
    assert_eq!(previous.family, "fam-reuse");
    assert_eq!(successor.generation, 1);
    assert!(successor.remember_me, "remember-me carries over");
    assert!(stores.session_is_active(&sid).await.expect("session"));

    // The spent token again: family and session revoked, security event.
    let err = stores
        .rotate_refresh(&t0, |prev| Ok(successor_of(prev).1))
        .await
        .expect_err("reuse is refused");
    assert_eq!(err.code(), "auth.refresh_reused");
    let StoreError::RefreshReused(SecurityEvent::RefreshReuse {
        family,
        session,
        user,
        generation,
    }) = err
    else {
        panic!("expected a reuse event, got {err:?}");
    };
    assert_eq!(
        (family.as_str(), session.as_str(), user.as_str(), generation),
        ("fam-reuse", sid.as_str(), "user-reuse", 0)
    );
    // The successor died with its family, and the session with it.
    let err = stores
        .rotate_refresh(&t1, |prev| Ok(successor_of(prev).1))
        .await
        .expect_err("revoked family");
    assert_eq!(err.code(), "auth.token_revoked");
    assert!(!stores.session_is_active(&sid).await.expect("session"));
    assert!(
        stores
            .sessions_of("user-reuse")
            .await
            .expect("list")
            .is_empty()
    );
}

async fn reuse_interval_returns_the_issued_successor(env: Env) {
    let mut cfg = config();
    cfg.reuse_interval = Duration::from_secs(10);
    let stores = env.stores(cfg);
    let sid = session_for(&stores, "user-grace", false).await;
    let (t0, r0) = issue_refresh("user-grace", &sid, "fam-grace", 0, false, now() + 600);
    stores.store_refresh(&r0).await.expect("store");
    // The token service mints the successor by derivation, so a racing
    // duplicate of the request can be handed the very same token.
    let t1 = stores.successor_token(&t0);
    let mint = |prev: &RefreshRecord| {
        Ok(RefreshRecord {
            hash: hasher().hash(&t1),
            ..successor_of(prev).1
        })
    };
    let Rotation::Rotated { successor, .. } =
        stores.rotate_refresh(&t0, mint).await.expect("rotation")
    else {
        panic!("expected a rotation");
    };
    let again = stores
        .rotate_refresh(&t0, |prev| Ok(successor_of(prev).1))
        .await
        .expect("within the reuse interval");
    match again {
        Rotation::AlreadyRotated {
            successor_hash,
            successor_token,
            ..
        } => {
            assert_eq!(successor_hash, successor.hash);
            assert_eq!(successor_token.as_deref(), Some(t1.as_str()));
        }
        other => panic!("expected the issued successor, got {other:?}"),
    }
    assert!(stores.session_is_active(&sid).await.expect("session"));
    // The successor handed out is a working token: it rotates in turn.
    assert!(matches!(
        stores
            .rotate_refresh(&t1, |prev| Ok(successor_of(prev).1))
            .await
            .expect("successor rotates"),
        Rotation::Rotated { .. }
    ));
}

async fn expired_and_unknown_refresh_tokens_are_rejected(env: Env) {
    let stores = env.stores(config());
    let sid = session_for(&stores, "user-exp", false).await;
    let (t, r) = issue_refresh("user-exp", &sid, "fam-exp", 0, false, now() - 1);
    stores.store_refresh(&r).await.expect("store");
    let err = stores
        .rotate_refresh(&t, |prev| Ok(successor_of(prev).1))
        .await
        .expect_err("expired");
    assert_eq!(err.code(), "auth.token_expired");
    let unknown = portcullis_core::opaque::generate("pcr_").expect("random");
    let err = stores
        .rotate_refresh(&unknown, |prev| Ok(successor_of(prev).1))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), "auth.token_revoked");
    let mut typo = unknown.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).expect("ascii");
    for bad in ["", "pcr_short", "not a token", typo.as_str()] {
        let err = stores
            .rotate_refresh(bad, |prev| Ok(successor_of(prev).1))
            .await
            .expect_err("malformed");
        assert_eq!(err.code(), "auth.malformed_token");
    }
    // A successor that changes the family is refused and nothing rotates.
    let (t2, r2) = issue_refresh("user-exp", &sid, "fam-exp2", 0, false, now() + 600);
    stores.store_refresh(&r2).await.expect("store");
    let err = stores
        .rotate_refresh(&t2, |prev| {
            let mut next = successor_of(prev).1;
            next.family = "other".into();
            Ok(next)
        })
        .await
        .expect_err("family must be kept");
    assert_eq!(err.code(), "store.invalid_input");
    assert!(matches!(
        stores
            .rotate_refresh(&t2, |prev| Ok(successor_of(prev).1))
            .await,
        Ok(Rotation::Rotated { .. })
    ));
}

async fn denylist_entries_expire(env: Env) {
    let stores = env.stores(config());
    // Two seconds: `exp` has whole-second resolution, Redis expires by the ms.
    let exp = now() + 2;
    stores.revoke_jti("jti-expiring", exp).await.expect("deny");
    stores
        .revoke_jti("jti-long", now() + 3600)
        .await
        .expect("deny");
    stores
        .revoke_jti("jti-past", now() - 5)
        .await
        .expect("no-op");
    assert!(stores.is_jti_revoked("jti-expiring").await.expect("check"));
    assert!(stores.is_jti_revoked("jti-long").await.expect("check"));
    assert!(!stores.is_jti_revoked("jti-past").await.expect("check"));
    assert!(!stores.is_jti_revoked("jti-other").await.expect("check"));
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!stores.is_jti_revoked("jti-expiring").await.expect("check"));
    assert!(stores.is_jti_revoked("jti-long").await.expect("check"));
    stores.purge_expired_denylist().await.expect("purge");
    assert!(stores.is_jti_revoked("jti-long").await.expect("check"));
    // The revocation log drops the expired entry too, and the local set
    // of a replica loading now refuses only the live one.
    use portcullis::stores::RevokedKind;
    let report = stores.purge_expired().await.expect("purge");
    if stores.revocation_in_set(RevokedKind::Jti) {
        assert!(report.revocation_log >= 1, "{report:?}");
        let fresh = env.stores(config());
        fresh
            .revocations()
            .ready(Duration::from_secs(5))
            .await
            .expect("loads");
        assert!(fresh.revocations().contains(RevokedKind::Jti, "jti-long"));
        assert!(
            !fresh
                .revocations()
                .contains(RevokedKind::Jti, "jti-expiring")
        );
    }
    assert_eq!(
        stores.is_jti_revoked("").await.map_err(|e| e.code()),
        Err("store.invalid_input")
    );
}

async fn api_keys_create_list_verify_revoke(env: Env) {
    let stores = env.stores(config());
    let created = stores
        .create_api_key(&NewApiKey {
            name: "ci deploy".into(),
            owner: "owner-1".into(),
            roles: vec!["deployer".into()],
            permissions: vec!["deploy:*".into()],
            scopes: vec!["write".into()],
            expires_at: None,
        })
        .await
        .expect("create");
    assert!(created.key.starts_with("pck_"));
    let ok = stores.verify_api_key(&created.key).await.expect("verify");
    assert_eq!(ok.roles, vec!["deployer".to_owned()]);
    assert_eq!(ok.scopes, vec!["write".to_owned()]);
    let listed = stores.api_keys_of("owner-1").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_used_at.is_some(), "first use is recorded");
    assert_ne!(&listed[0].hash[..], created.key.as_bytes(), "stored hashed");
    // A typo never reaches the store; another key's id with this secret fails.
    let mut typo = created.key.clone().into_bytes();
    typo[40] = if typo[40] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).expect("ascii");
    assert_eq!(
        stores
            .verify_api_key(&typo)
            .await
            .map(|_| ())
            .map_err(|e| e.code()),
        Err("auth.invalid_api_key")
    );
    assert!(
        stores
            .revoke_api_key(&created.record.id)
            .await
            .expect("revoke")
    );
    assert!(
        !stores
            .revoke_api_key(&created.record.id)
            .await
            .expect("again")
    );
    assert_eq!(
        stores
            .verify_api_key(&created.key)
            .await
            .map(|_| ())
            .map_err(|e| e.code()),
        Err("auth.invalid_api_key")
    );
}

async fn revocation_reaches_other_replicas_within_a_second(env: Env) {
    // Two replicas over the same backend, each with 1 s caches.
    let a = env.stores(config());
    let b = env.stores(config());
    let key = a
        .create_api_key(&NewApiKey {
            name: "k".into(),
            owner: "owner-rep".into(),
            ..NewApiKey::default()
        })
        .await
        .expect("create")
        .key;
    let app = a
        .create_app(&NewApp {
            name: "billing".into(),
            ..NewApp::default()
        })
        .await
        .expect("app");
    let sid = session_for(&a, "user-rep", false).await;
    b.verify_api_key(&key).await.expect("b caches the key");
    b.verify_app(&app.record.app_id, &app.secret)
        .await
        .expect("b caches the app");
    assert!(
        b.session_is_active(&sid)
            .await
            .expect("b caches the session")
    );
    let id = portcullis::stores::api_keys::parse_api_key(&key)
        .expect("well formed")
        .0
        .to_owned();
    a.revoke_api_key(&id).await.expect("revoke");
    a.set_app_disabled(&app.record.app_id, true)
        .await
        .expect("disable");
    a.revoke_session(&sid).await.expect("revoke session");
    // The revoking replica knows at once.
    assert!(a.verify_api_key(&key).await.is_err());
    assert!(a.verify_app(&app.record.app_id, &app.secret).await.is_err());
    assert!(!a.session_is_active(&sid).await.expect("session"));
    // The other replica within the cache TTL (1 s).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(b.verify_api_key(&key).await.is_err());
    assert!(b.verify_app(&app.record.app_id, &app.secret).await.is_err());
    assert!(!b.session_is_active(&sid).await.expect("session"));
}

/// The local revocation set: a revocation made through one replica (a
/// denied `jti`, a logout, a logout-all) is in the other replica's set
/// within the 1 s bound, the revoking replica's at once, and a replica
/// started afterwards holds them all as soon as it reports loaded.
async fn the_revocation_set_follows_revocations_made_on_another_replica(env: Env) {
    use portcullis::stores::RevokedKind;
    let a = env.stores(config());
    let b = env.stores(config());
    if !a.revocation_in_set(RevokedKind::Session) || !a.revocation_in_set(RevokedKind::Jti) {
        // A backend without a revocation log is asked on each check instead.
        return;
    }
    b.revocations()
        .ready(Duration::from_secs(5))
        .await
        .expect("b loads");
    let s1 = session_for(&a, "user-set", false).await;
    let s2 = session_for(&a, "user-set", false).await;
    let s3 = session_for(&a, "user-set", false).await;
    let jti = format!("jti-{}", support::unique_name("set"));
    assert!(!b.revocations().contains(RevokedKind::Session, &s1));

    let started = std::time::Instant::now();
    a.revoke_jti(&jti, now() + 600).await.expect("deny");
    a.revoke_session(&s1).await.expect("logout");
    assert!(
        a.revocations().contains(RevokedKind::Jti, &jti),
        "a knows at once"
    );
    assert!(
        a.revocations().contains(RevokedKind::Session, &s1),
        "a knows at once"
    );
    loop {
        let set = b.revocations();
        if set.contains(RevokedKind::Jti, &jti) && set.contains(RevokedKind::Session, &s1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "b did not see the revocations within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "revocation set: revoked on a, in b's set after {:?}",
        started.elapsed()
    );
    assert!(!b.revocations().contains(RevokedKind::Session, &s2));

    // Logout-all: every live session of the user.
    assert_eq!(a.revoke_all_sessions("user-set").await.expect("all"), 2);
    assert!(
        a.revocations().contains(RevokedKind::Session, &s3),
        "a knows at once"
    );
    let started = std::time::Instant::now();
    while !(b.revocations().contains(RevokedKind::Session, &s2)
        && b.revocations().contains(RevokedKind::Session, &s3))
    {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "logout-all not seen by b"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lag = b.revocations().lag().expect("loaded");
    assert!(lag < Duration::from_secs(1), "lag {lag:?}");

    // A replica started now: loaded means it holds every live revocation.
    let c = env.stores(config());
    assert!(!c.revocations().is_loaded());
    c.revocations()
        .ready(Duration::from_secs(5))
        .await
        .expect("c loads");
    for (kind, id) in [
        (RevokedKind::Jti, jti.as_str()),
        (RevokedKind::Session, s1.as_str()),
        (RevokedKind::Session, s2.as_str()),
        (RevokedKind::Session, s3.as_str()),
    ] {
        assert!(
            c.revocations().contains(kind, id),
            "{kind:?} {id} missing after load"
        );
    }
    let stats = c.revocations().stats();
    assert!(stats.entries >= 4 && stats.bytes > 0, "{stats:?}");
}

async fn app_secret_rotation_keeps_the_old_one_for_the_grace_period(env: Env) {
    let clock = Arc::new(ManualClock::at_unix_seconds(now() as u64));
    let mut cfg = config();
    cfg.revocation_cache_ttl = Duration::ZERO;
    let stores = env.stores_at(cfg, clock.clone());
    let app = stores
        .create_app(&NewApp {
            name: "payments".into(),
            services: vec!["ledger".into()],
            permissions: vec!["ledger:read".into()],
            tenant: Some("acme".into()),
        })
        .await
        .expect("create");
    let id = app.record.app_id.clone();
    let old = app.secret.clone();
    assert_eq!(
        stores
            .verify_app(&id, &old)
            .await
            .expect("verify")
            .secret_version,
        1
    );
    let new = stores
        .rotate_app_secret(&id, Duration::from_secs(60))
        .await
        .expect("rotate");
    let rec = stores.verify_app(&id, &new).await.expect("new secret");
    assert_eq!(rec.secret_version, 2);
    stores
        .verify_app(&id, &old)
        .await
        .expect("old secret in grace");
    // Also through HTTP Basic.
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{id}:{old}")
        )
    );
    let (bid, bsecret) = parse_basic_auth(basic.as_bytes()).expect("basic");
    stores
        .verify_app(&bid, &bsecret)
        .await
        .expect("basic, in grace");
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        stores
            .verify_app(&id, &old)
            .await
            .map(|_| ())
            .map_err(|e| e.code()),
        Err("auth.invalid_app_credentials")
    );
    stores.verify_app(&id, &new).await.expect("new still valid");
    assert!(stores.verify_app(&id, "pcs_wrong").await.is_err());
    assert!(stores.verify_app("", &new).await.is_err());
    stores.set_app_disabled(&id, true).await.expect("disable");
    assert!(stores.verify_app(&id, &new).await.is_err());
    assert_eq!(
        stores
            .rotate_app_secret("app_missing", Duration::ZERO)
            .await
            .map_err(|e| e.code()),
        Err("store.not_found")
    );
}

async fn unknown_user_login_costs_a_hash_verification(env: Env) {
    let stores = env.stores(config());
    stores
        .create_user(&NewUser {
            username: "known".into(),
            password: Some("right password".into()),
            ..NewUser::default()
        })
        .await
        .expect("user");
    let before = stores.passwords().dummy_verifications();
    let err = stores
        .login(b"nobody-here", b"whatever")
        .await
        .expect_err("unknown user");
    assert_eq!(err.code(), "auth.invalid_credentials");
    assert_eq!(stores.passwords().dummy_verifications(), before + 1);
    // A known user with a wrong password fails the same way, on its own hash.
    let err = stores
        .login(b"known", b"wrong password")
        .await
        .expect_err("wrong password");
    assert_eq!(err.code(), "auth.invalid_credentials");
    assert_eq!(stores.passwords().dummy_verifications(), before + 1);
    stores
        .login(b"known", b"right password")
        .await
        .expect("login");
}

async fn bcrypt_hashes_are_accepted_and_rehashed(env: Env) {
    let stores = env.stores(config());
    let bcrypt_hash = bcrypt::hash("imported pw", 4).expect("bcrypt");
    let user = stores
        .create_user(&NewUser {
            username: "legacy".into(),
            password_hash: Some(bcrypt_hash.clone()),
            roles: vec!["user".into()],
            ..NewUser::default()
        })
        .await
        .expect("import");
    assert!(user.password_hash.starts_with("$2b$"));
    let logged = stores
        .login(b"legacy", b"imported pw")
        .await
        .expect("bcrypt login");
    assert!(logged.password_hash.starts_with("$argon2id$"));
    let stored = stores
        .user_by_username("legacy")
        .await
        .expect("lookup")
        .expect("exists");
    assert!(
        stored
            .password_hash
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
    );
    stores
        .login(b"legacy", b"imported pw")
        .await
        .expect("argon2id login");
    assert!(stores.login(b"legacy", b"wrong").await.is_err());
}

/// Which hashers one login check ran: (argon2id, bcrypt) verifications.
async fn hashers_run(stores: &Stores, username: &[u8], password: &[u8]) -> (u64, u64) {
    let before = stores.passwords().verifications();
    let err = stores
        .login(username, password)
        .await
        .expect_err("a failed login");
    assert_eq!(err.code(), "auth.invalid_credentials");
    let after = stores.passwords().verifications();
    (
        after.argon2id - before.argon2id,
        after.bcrypt - before.bcrypt,
    )
}

/// Accounts imported with bcrypt hashes cannot be told from unknown names
/// by timing: once a bcrypt hash is stored, an unknown user's check runs a
/// bcrypt dummy as well as the argon2id one, and every known user's check
/// runs both kinds too. A replica that did not see the import (a new
/// `Stores`, as after a restart) learns it by reading the stored hashes.
/// Asserted on which hashers ran, not on time.
async fn bcrypt_imported_users_are_timed_like_unknown_ones(env: Env) {
    let stores = env.stores(config());
    stores
        .create_user(&NewUser {
            username: "modern".into(),
            password: Some("argon pw".into()),
            ..NewUser::default()
        })
        .await
        .expect("user");
    // Without bcrypt hashes, one argon2id verification each.
    assert_eq!(hashers_run(&stores, b"nobody", b"pw").await, (1, 0));
    assert_eq!(hashers_run(&stores, b"modern", b"pw").await, (1, 0));
    for (name, cost) in [("legacy4", 4), ("legacy5", 5)] {
        stores
            .create_user(&NewUser {
                username: name.into(),
                password_hash: Some(bcrypt::hash("imported pw", cost).expect("bcrypt")),
                ..NewUser::default()
            })
            .await
            .expect("import");
    }
    for name in [&b"nobody"[..], b"modern", b"legacy4", b"legacy5"] {
        assert_eq!(hashers_run(&stores, name, b"pw").await, (1, 1));
    }

    // Another replica (or this one restarted): the stored hashes tell it.
    let replica = env.stores(config());
    assert_eq!(hashers_run(&replica, b"nobody", b"pw").await, (1, 0));
    assert_eq!(
        replica.note_stored_password_hashes().await.expect("scan"),
        2
    );
    for name in [&b"nobody"[..], b"modern", b"legacy4", b"legacy5"] {
        assert_eq!(hashers_run(&replica, name, b"pw").await, (1, 1));
    }
}

async fn usernames_are_unique_case_insensitively(env: Env) {
    let stores = env.stores(config());
    let alice = stores
        .create_user(&NewUser {
            username: "Alice".into(),
            password: Some("pw-alice".into()),
            tenant: Some("acme".into()),
            ..NewUser::default()
        })
        .await
        .expect("create");
    for dup in ["alice", "ALICE", "  Alice  "] {
        let err = stores
            .create_user(&NewUser {
                username: dup.into(),
                password: Some("pw".into()),
                ..NewUser::default()
            })
            .await
            .expect_err("taken");
        assert_eq!(err.code(), "store.conflict");
    }
    let logged = stores.login(b"aLiCe", b"pw-alice").await.expect("login");
    assert_eq!(logged.id, alice.id);
    assert_eq!(logged.username, "Alice");
    assert_eq!(logged.tenant.as_deref(), Some("acme"));
    stores
        .set_user_disabled(&alice.id, true)
        .await
        .expect("disable");
    assert_eq!(
        stores
            .login(b"alice", b"pw-alice")
            .await
            .map(|_| ())
            .map_err(|e| e.code()),
        Err("auth.invalid_credentials")
    );
}

async fn bad_input_gives_typed_errors_and_changes_nothing(env: Env) {
    let stores = env.stores(config());
    let invalid = |r: Result<(), StoreError>| {
        assert_eq!(r.map_err(|e| e.code()), Err("store.invalid_input"));
    };
    let user = |name: &str, pw: &str| NewUser {
        username: name.into(),
        password: Some(pw.into()),
        ..NewUser::default()
    };
    invalid(
        stores
            .create_user(&user(&"x".repeat(65), "pw"))
            .await
            .map(|_| ()),
    );
    invalid(stores.create_user(&user("", "pw")).await.map(|_| ()));
    invalid(stores.create_user(&user("   ", "pw")).await.map(|_| ()));
    invalid(stores.create_user(&user("bob", "")).await.map(|_| ()));
    invalid(
        stores
            .create_user(&user("bob\u{0}", "pw"))
            .await
            .map(|_| ()),
    );
    invalid(
        stores
            .create_user(&NewUser {
                roles: vec![String::new()],
                ..user("bob", "pw")
            })
            .await
            .map(|_| ()),
    );
    invalid(stores.login(&[0x62, 0xff, 0x6f], b"pw").await.map(|_| ()));
    invalid(stores.login(b"bob", &[0xc3, 0x28]).await.map(|_| ()));
    invalid(stores.login(b"", b"pw").await.map(|_| ()));
    invalid(stores.login(&[b'a'; 300], b"pw").await.map(|_| ()));
    // Nothing was created by any of those.
    assert!(
        stores
            .user_by_username("bob")
            .await
            .expect("lookup")
            .is_none()
    );

    // SQL metacharacters are data, stored and found literally.
    let nasty = "Robert'); DROP TABLE users;--";
    stores
        .create_user(&user(nasty, "pw"))
        .await
        .expect("create");
    let found = stores
        .user_by_username(nasty)
        .await
        .expect("lookup")
        .expect("exists");
    assert_eq!(found.username, nasty);
    assert!(
        stores
            .user_by_username("Robert")
            .await
            .expect("lookup")
            .is_none()
    );
    stores.login(nasty.as_bytes(), b"pw").await.expect("login");
    let percent = stores
        .create_api_key(&NewApiKey {
            name: "50% off' OR '1'='1".into(),
            owner: "o'wner\"%_".into(),
            ..NewApiKey::default()
        })
        .await
        .expect("key");
    let listed = stores.api_keys_of("o'wner\"%_").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, percent.record.name);
    assert!(stores.api_keys_of("o").await.expect("list").is_empty());

    invalid(
        stores
            .create_api_key(&NewApiKey {
                name: String::new(),
                owner: "owner-bad".into(),
                ..NewApiKey::default()
            })
            .await
            .map(|_| ()),
    );
    invalid(
        stores
            .create_api_key(&NewApiKey {
                name: "n".into(),
                owner: "owner-bad".into(),
                expires_at: Some(now() - 10),
                ..NewApiKey::default()
            })
            .await
            .map(|_| ()),
    );
    assert!(
        stores
            .api_keys_of("owner-bad")
            .await
            .expect("list")
            .is_empty()
    );
    invalid(
        stores
            .create_session(&NewSession {
                user_id: "u-bad".into(),
                ttl: Duration::from_secs(60),
                client_ip: Some("999.1.1.1".into()),
                ..NewSession::default()
            })
            .await
            .map(|_| ()),
    );
    invalid(
        stores
            .create_app(&NewApp {
                name: "x".repeat(129),
                ..NewApp::default()
            })
            .await
            .map(|_| ()),
    );
    assert!(stores.sessions_of("u-bad").await.expect("list").is_empty());
    invalid(stores.revoke_session("").await.map(|_| ()));
    invalid(stores.revoke_jti(&"j".repeat(200), now() + 60).await);
}

async fn sessions_list_revoke_and_revoke_all(env: Env) {
    let stores = env.stores(config());
    let s1 = session_for(&stores, "user-s", false).await;
    let s2 = session_for(&stores, "user-s", true).await;
    let s3 = session_for(&stores, "user-s", false).await;
    let other = session_for(&stores, "user-t", false).await;
    let listed = stores.sessions_of("user-s").await.expect("list");
    assert_eq!(listed.len(), 3);
    let stored = stores.session(&s2).await.expect("get").expect("exists");
    assert!(stored.remember_me);
    // Seen just now: a touch within the minute writes nothing.
    assert!(!stores.touch_session(&s2).await.expect("touch"));
    assert_eq!(stored.client_ip.as_deref(), Some("203.0.113.9"));
    assert_eq!(stored.user_agent.as_deref(), Some("conformance"));
    assert!(stores.revoke_session(&s1).await.expect("revoke"));
    assert!(!stores.revoke_session(&s1).await.expect("again"));
    assert!(!stores.session_is_active(&s1).await.expect("check"));
    assert_eq!(stores.sessions_of("user-s").await.expect("list").len(), 2);
    assert_eq!(stores.revoke_all_sessions("user-s").await.expect("all"), 2);
    assert!(stores.sessions_of("user-s").await.expect("list").is_empty());
    assert!(!stores.session_is_active(&s3).await.expect("check"));
    assert!(stores.session_is_active(&other).await.expect("untouched"));
    assert!(
        !stores
            .session_is_active("no-such-session")
            .await
            .expect("check")
    );

    // last_seen_at is written at most once a minute.
    let clock = Arc::new(ManualClock::at_unix_seconds(now() as u64));
    let timed = env.stores_at(config(), clock.clone());
    let sid = session_for(&timed, "user-seen", false).await;
    let created = timed.session(&sid).await.expect("get").expect("exists");
    assert!(!timed.touch_session(&sid).await.expect("touch"));
    clock.advance(Duration::from_secs(61));
    assert!(timed.touch_session(&sid).await.expect("touch"));
    assert!(!timed.touch_session(&sid).await.expect("touch again"));
    let seen = timed.session(&sid).await.expect("get").expect("exists");
    assert_eq!(seen.last_seen_at, created.last_seen_at + 61);
}

/// A derived successor for `prev`, minted as the token service does.
fn derived_successor(
    stores: &Stores,
    token: &str,
) -> (
    String,
    impl FnOnce(&RefreshRecord) -> Result<RefreshRecord, StoreError>,
) {
    let next = stores.successor_token(token);
    let hash = hasher().hash(&next);
    (next, move |prev: &RefreshRecord| {
        Ok(RefreshRecord {
            hash,
            ..successor_of(prev).1
        })
    })
}

async fn reuse_grace_is_checked_first_and_handed_out_once(env: Env) {
    let mut cfg = config();
    cfg.reuse_interval = Duration::from_secs(10);
    let stores = env.stores(cfg);

    // Once per token: a second replay within the window is a reuse.
    let sid = session_for(&stores, "user-once", false).await;
    let (t0, r0) = issue_refresh("user-once", &sid, "fam-once", 0, false, now() + 600);
    stores.store_refresh(&r0).await.expect("store");
    let (t1, mint) = derived_successor(&stores, &t0);
    assert!(matches!(
        stores.rotate_refresh(&t0, mint).await.expect("rotation"),
        Rotation::Rotated { .. }
    ));
    let again = stores
        .rotate_refresh(&t0, |prev| Ok(successor_of(prev).1))
        .await
        .expect("first replay within the window");
    let Rotation::AlreadyRotated {
        successor_token, ..
    } = &again
    else {
        panic!("expected the issued successor, got {again:?}");
    };
    assert_eq!(successor_token.as_deref(), Some(t1.as_str()));
    assert_eq!(
        again.security_event(),
        Some(SecurityEvent::RefreshGraceReplay {
            family: "fam-once".into(),
            session: sid.clone(),
            user: "user-once".into(),
            generation: 0,
        }),
        "the hand-out is audited"
    );
    let err = stores
        .rotate_refresh(&t0, |prev| Ok(successor_of(prev).1))
        .await
        .expect_err("a second replay is a reuse");
    assert_eq!(err.code(), "auth.refresh_reused");
    assert_eq!(
        stores
            .rotate_refresh(&t1, |prev| Ok(successor_of(prev).1))
            .await
            .map(|_| ())
            .map_err(|e| e.code()),
        Err("auth.token_revoked"),
        "the successor died with its family"
    );

    // After logout, the window hands out nothing.
    let sid = session_for(&stores, "user-logout", false).await;
    let (u0, r0) = issue_refresh("user-logout", &sid, "fam-logout", 0, false, now() + 600);
    stores.store_refresh(&r0).await.expect("store");
    let (_, mint) = derived_successor(&stores, &u0);
    stores.rotate_refresh(&u0, mint).await.expect("rotation");
    assert!(stores.revoke_session(&sid).await.expect("logout"));
    let replay = stores
        .rotate_refresh(&u0, |prev| Ok(successor_of(prev).1))
        .await;
    assert!(replay.is_err(), "no successor after logout, got {replay:?}");

    // A revoked family hands out nothing either.
    let sid = session_for(&stores, "user-famrev", false).await;
    let (v0, r0) = issue_refresh("user-famrev", &sid, "fam-famrev", 0, false, now() + 600);
    stores.store_refresh(&r0).await.expect("store");
    let (_, mint) = derived_successor(&stores, &v0);
    stores.rotate_refresh(&v0, mint).await.expect("rotation");
    env.backends
        .refresh
        .revoke_family("fam-famrev", now())
        .await
        .expect("revoke family");
    let replay = stores
        .rotate_refresh(&v0, |prev| Ok(successor_of(prev).1))
        .await;
    assert!(
        replay.is_err(),
        "no successor from a revoked family, got {replay:?}"
    );
}

async fn disabling_a_user_ends_its_sessions_and_refresh_families(env: Env) {
    let stores = env.stores(config());
    let user = stores
        .create_user(&NewUser {
            username: "to-disable".into(),
            password: Some("pw-disable".into()),
            ..NewUser::default()
        })
        .await
        .expect("user");
    let sid = session_for(&stores, &user.id, false).await;
    let (t0, r0) = issue_refresh(&user.id, &sid, "fam-disable", 0, false, now() + 600);
    stores.store_refresh(&r0).await.expect("store");
    stores
        .set_user_disabled(&user.id, true)
        .await
        .expect("disable");
    assert!(!stores.session_is_active(&sid).await.expect("session"));
    let family = env
        .backends
        .refresh
        .refresh_by_hash(&r0.hash)
        .await
        .expect("lookup")
        .expect("exists");
    assert!(family.revoked_at.is_some(), "the family is revoked");
    assert_eq!(
        stores
            .rotate_refresh(&t0, |prev| Ok(successor_of(prev).1))
            .await
            .map(|_| ())
            .map_err(|e| e.code()),
        Err("auth.token_revoked")
    );

    // Rotation itself refuses a disabled user, whatever the session says.
    let other = stores
        .create_user(&NewUser {
            username: "disabled-behind".into(),
            password: Some("pw-behind".into()),
            ..NewUser::default()
        })
        .await
        .expect("user");
    let sid = session_for(&stores, &other.id, false).await;
    let (t0, r0) = issue_refresh(&other.id, &sid, "fam-behind", 0, false, now() + 600);
    stores.store_refresh(&r0).await.expect("store");
    env.backends
        .users
        .set_user_disabled(&other.id, true, now())
        .await
        .expect("disable in the backend only");
    assert_eq!(
        stores
            .rotate_refresh(&t0, |prev| Ok(successor_of(prev).1))
            .await
            .map(|_| ())
            .map_err(|e| e.code()),
        Err("auth.token_revoked")
    );
}

async fn api_key_revocation_reaches_a_busy_replica_within_a_second(env: Env) {
    let mut cfg = config();
    cfg.api_key_touch_interval = Duration::from_secs(1);
    let a = env.stores(cfg.clone());
    let b = env.stores(cfg);
    let created = a
        .create_api_key(&NewApiKey {
            name: "busy".into(),
            owner: "owner-busy".into(),
            ..NewApiKey::default()
        })
        .await
        .expect("create");
    b.verify_api_key(&created.key).await.expect("b caches it");
    assert!(a.revoke_api_key(&created.record.id).await.expect("revoke"));
    let revoked = std::time::Instant::now();
    // b is asked every 50 ms: touches must not keep its cache entry alive.
    while revoked.elapsed() < Duration::from_millis(2500) {
        if b.verify_api_key(&created.key).await.is_ok() {
            assert!(
                revoked.elapsed() < Duration::from_millis(1100),
                "a revoked key was accepted {:?} after revocation",
                revoked.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits at most 1 s (the revocation bound) for `what` to hold.
async fn within_the_bound(what: &str, mut holds: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !holds() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: not within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A key revoked and a user or app disabled on one replica are in the
/// other replica's revocation set within the bound (so it refuses them whatever
/// its caches hold); a user enabled again leaves it; a replica started
/// afterwards loads the same state.
async fn api_key_and_user_revocations_reach_the_set_of_other_replicas(env: Env) {
    use portcullis::stores::RevokedKind;
    let a = env.stores(config());
    let b = env.stores(config());
    b.revocations()
        .ready(Duration::from_secs(5))
        .await
        .expect("b loads");
    let user = a
        .create_user(&NewUser {
            username: support::unique_name("setuser"),
            password: Some("a long enough password".into()),
            ..NewUser::default()
        })
        .await
        .expect("user");
    let created = a
        .create_api_key(&NewApiKey {
            name: "set".into(),
            owner: user.id.clone(),
            ..NewApiKey::default()
        })
        .await
        .expect("create");
    let id = created.record.id.clone();
    b.verify_api_key(&created.key).await.expect("b caches it");
    assert!(!b.user_is_disabled(&user.id).await.expect("status"));

    assert!(a.revoke_api_key(&id).await.expect("revoke"));
    assert!(
        a.revocations().contains(RevokedKind::ApiKey, &id),
        "a knows at once"
    );
    within_the_bound("key revocation in b's set", || {
        b.revocations().contains(RevokedKind::ApiKey, &id)
    })
    .await;
    assert!(matches!(
        b.verify_api_key(&created.key).await,
        Err(StoreError::InvalidApiKey)
    ));

    a.set_user_disabled(&user.id, true).await.expect("disable");
    within_the_bound("disabled user in b's set", || {
        b.revocations()
            .contains(RevokedKind::UserDisabled, &user.id)
    })
    .await;
    assert!(b.user_is_disabled(&user.id).await.expect("status"));
    a.set_user_disabled(&user.id, false).await.expect("enable");
    assert!(
        !a.revocations()
            .contains(RevokedKind::UserDisabled, &user.id)
    );
    within_the_bound("enabled user out of b's set", || {
        !b.revocations()
            .contains(RevokedKind::UserDisabled, &user.id)
    })
    .await;

    // An app (client credentials): disabled on A, refused by B whatever
    // B's cache holds; enabled again, accepted.
    let app = a
        .create_app(&NewApp {
            name: "set-app".into(),
            services: vec!["ledger".into()],
            permissions: vec!["ledger:read".into()],
            tenant: None,
        })
        .await
        .expect("app");
    let app_id = app.record.app_id.clone();
    b.verify_app(&app_id, &app.secret)
        .await
        .expect("b caches the app");
    a.set_app_disabled(&app_id, true)
        .await
        .expect("disable app");
    within_the_bound("disabled app in b's set", || {
        b.revocations().contains(RevokedKind::AppDisabled, &app_id)
    })
    .await;
    assert!(matches!(
        b.verify_app(&app_id, &app.secret).await,
        Err(StoreError::InvalidAppCredentials)
    ));
    a.set_app_disabled(&app_id, false)
        .await
        .expect("enable app");
    within_the_bound("enabled app out of b's set", || {
        !b.revocations().contains(RevokedKind::AppDisabled, &app_id)
    })
    .await;

    // A replica started now loads the key's revocation, and the enables
    // after the disables (in log order).
    let c = env.stores(config());
    c.revocations()
        .ready(Duration::from_secs(5))
        .await
        .expect("c loads");
    assert!(c.revocations().contains(RevokedKind::ApiKey, &id));
    assert!(
        !c.revocations()
            .contains(RevokedKind::UserDisabled, &user.id)
    );
    assert!(!c.revocations().contains(RevokedKind::AppDisabled, &app_id));
    c.verify_app(&app_id, &app.secret)
        .await
        .expect("the enabled app is accepted");
    assert!(matches!(
        c.verify_api_key(&created.key).await,
        Err(StoreError::InvalidApiKey)
    ));
}

/// Disable and enable calls racing on one user leave the record as the log's
/// last entry says (Redis keeps them on different Cluster slots): a replica
/// starting afresh and one asking the record agree, every round.
async fn racing_status_changes_leave_the_record_as_the_log_ends(env: Env) {
    use portcullis::stores::RevokedKind;
    let a = env.stores(config());
    if !a.revocation_in_set(RevokedKind::UserDisabled) {
        return;
    }
    let user = a
        .create_user(&NewUser {
            username: support::unique_name("racer"),
            password: Some("a long enough password".into()),
            ..NewUser::default()
        })
        .await
        .expect("user");
    for round in 0..8 {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..8 {
            let users = env.backends.users.clone();
            let id = user.id.clone();
            calls.spawn(async move { users.set_user_disabled(&id, i % 2 == 0, now()).await });
        }
        while let Some(done) = calls.join_next().await {
            assert!(
                done.expect("task").expect("status change"),
                "the user exists"
            );
        }
        let record = env
            .backends
            .users
            .user_by_id(&user.id)
            .await
            .expect("read")
            .expect("exists")
            .disabled;
        let fresh = env.stores(config());
        fresh
            .revocations()
            .ready(Duration::from_secs(5))
            .await
            .expect("loads");
        assert_eq!(
            fresh
                .revocations()
                .contains(RevokedKind::UserDisabled, &user.id),
            record,
            "round {round}: the log's last entry and the record disagree"
        );
    }
}

async fn jti_rules_are_the_same_for_revoke_and_check(env: Env) {
    let stores = env.stores(config());
    stores
        .revoke_jti(" padded ", now() + 600)
        .await
        .expect("deny");
    assert!(stores.is_jti_revoked(" padded ").await.expect("check"));
    assert!(!stores.is_jti_revoked("padded").await.expect("check"));
    // 100 characters but 200 bytes: refused by both, the same way.
    let wide = "é".repeat(100);
    assert_eq!(
        stores
            .revoke_jti(&wide, now() + 600)
            .await
            .map_err(|e| e.code()),
        Err("store.invalid_input")
    );
    assert_eq!(
        stores.is_jti_revoked(&wide).await.map_err(|e| e.code()),
        Err("store.invalid_input")
    );
    let exact = "é".repeat(64);
    stores.revoke_jti(&exact, now() + 600).await.expect("deny");
    assert!(stores.is_jti_revoked(&exact).await.expect("check"));
}

async fn denylist_keeps_the_later_expiry(env: Env) {
    let stores = env.stores(config());
    let start = now();
    stores
        .revoke_jti("jti-twice", start + 3600)
        .await
        .expect("deny");
    stores
        .revoke_jti("jti-twice", start + 1)
        .await
        .expect("deny again, shorter");
    while now() <= start + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        stores.is_jti_revoked("jti-twice").await.expect("check"),
        "the later expiry is kept"
    );
}

async fn app_secret_rotations_at_once_get_distinct_versions(env: Env) {
    let mut cfg = config();
    cfg.revocation_cache_ttl = Duration::ZERO;
    let stores = env.stores(cfg);
    let app = stores
        .create_app(&NewApp {
            name: "racy".into(),
            ..NewApp::default()
        })
        .await
        .expect("create");
    let id = app.record.app_id.clone();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (stores, id) = (stores.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            stores.rotate_app_secret(&id, Duration::from_secs(60)).await
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        let secret = t.await.expect("task").expect("rotate");
        if let Ok(rec) = stores.verify_app(&id, &secret).await {
            versions.push(rec.secret_version);
        }
    }
    assert!(
        versions.contains(&9),
        "eight rotations make version 9, saw {versions:?}"
    );
    assert_eq!(
        stores
            .rotate_app_secret(&id, Duration::from_secs(8 * 86_400))
            .await
            .map(|_| ())
            .map_err(|e| e.code()),
        Err("store.invalid_input"),
        "the grace period is capped"
    );
}

async fn family_revocation_is_atomic_with_rotation(env: Env) {
    let stores = env.stores(config());
    for i in 0..20 {
        let user = format!("user-race-{i}");
        let sid = session_for(&stores, &user, false).await;
        let (t0, r0) = issue_refresh(&user, &sid, &format!("fam-race-{i}"), 0, false, now() + 600);
        stores.store_refresh(&r0).await.expect("store");
        let mut t1 = String::new();
        stores
            .rotate_refresh(&t0, |prev| {
                let (t, r) = successor_of(prev);
                t1 = t;
                Ok(r)
            })
            .await
            .expect("rotation");
        let legit = {
            let stores = stores.clone();
            tokio::spawn(async move {
                stores
                    .rotate_refresh(&t1, |prev| Ok(successor_of(prev).1))
                    .await
            })
        };
        let replay = {
            let stores = stores.clone();
            tokio::spawn(async move {
                stores
                    .rotate_refresh(&t0, |prev| Ok(successor_of(prev).1))
                    .await
            })
        };
        let (legit, replay) = (legit.await.expect("task"), replay.await.expect("task"));
        assert_eq!(
            replay.map(|_| ()).map_err(|e| e.code()),
            Err("auth.refresh_reused")
        );
        if let Ok(Rotation::Rotated { successor, .. }) = legit {
            let stored = env
                .backends
                .refresh
                .refresh_by_hash(&successor.hash)
                .await
                .expect("lookup")
                .expect("exists");
            assert!(
                stored.revoked_at.is_some(),
                "round {i}: a successor made during the family's revocation survived it"
            );
        }
    }
}

/// What `seed_purgeable` made: one expired and one live record of each kind.
struct Purgeable {
    old_session: String,
    live_session: String,
    old_refresh: String,
    live_refresh: String,
    live_key: String,
}

/// Seeds, through the facade, one record of each purgeable kind that expired
/// days ago (made on a clock three days back) and one that is live.
async fn seed_purgeable(backends: &Backends) -> (Arc<Stores>, Purgeable) {
    let then = now() - 3 * 86_400;
    let mut cfg = config();
    cfg.revocation_cache_ttl = Duration::ZERO;
    let old = Stores::with_clock(
        backends.clone(),
        cfg.clone(),
        Arc::new(ManualClock::at_unix_seconds(then as u64)),
    )
    .expect("stores");
    let stores = Arc::new(Stores::new(backends.clone(), cfg).expect("stores"));
    let old_session = session_for(&old, "user-purge", false).await;
    let live_session = session_for(&stores, "user-purge", false).await;
    old.create_api_key(&NewApiKey {
        name: "expired".into(),
        owner: "owner-purge".into(),
        expires_at: Some(then + 60),
        ..NewApiKey::default()
    })
    .await
    .expect("expired key");
    let live_key = stores
        .create_api_key(&NewApiKey {
            name: "live".into(),
            owner: "owner-purge".into(),
            ..NewApiKey::default()
        })
        .await
        .expect("live key")
        .record
        .id;
    old.revoke_jti("jti-purge-old", then + 60)
        .await
        .expect("old jti");
    stores
        .revoke_jti("jti-purge-live", now() + 600)
        .await
        .expect("live jti");
    let (old_refresh, r) = issue_refresh(
        "user-purge",
        &old_session,
        "fam-purge-old",
        0,
        false,
        now() - 2 * 86_400,
    );
    stores.store_refresh(&r).await.expect("old refresh");
    let (live_refresh, r) = issue_refresh(
        "user-purge",
        &live_session,
        "fam-purge-live",
        0,
        false,
        now() + 600,
    );
    stores.store_refresh(&r).await.expect("live refresh");
    let seeded = Purgeable {
        old_session,
        live_session,
        old_refresh,
        live_refresh,
        live_key,
    };
    (stores, seeded)
}

async fn purge_drops_expired_records_and_keeps_live_ones(env: Env) {
    let (stores, seeded) = seed_purgeable(&env.backends).await;
    stores.purge_expired().await.expect("purge");
    assert!(
        stores
            .session(&seeded.old_session)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        stores
            .session(&seeded.live_session)
            .await
            .expect("get")
            .is_some()
    );
    let keys: Vec<String> = stores
        .api_keys_of("owner-purge")
        .await
        .expect("list")
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(keys, vec![seeded.live_key]);
    assert!(!stores.is_jti_revoked("jti-purge-old").await.expect("check"));
    assert!(
        stores
            .is_jti_revoked("jti-purge-live")
            .await
            .expect("check")
    );
    assert_eq!(
        stores
            .rotate_refresh(&seeded.old_refresh, |prev| Ok(successor_of(prev).1))
            .await
            .map(|_| ())
            .map_err(|e| e.code()),
        Err("auth.token_revoked"),
        "an expired token's record is gone (unknown), not merely expired"
    );
    assert!(matches!(
        stores
            .rotate_refresh(&seeded.live_refresh, |prev| Ok(successor_of(prev).1))
            .await,
        Ok(Rotation::Rotated { .. })
    ));
}

/// Every field of every record comes back as written, each with a value no
/// other field has: a column mapped to the wrong field cannot pass.
async fn records_round_trip_every_field(env: Env) {
    let b = &env.backends;
    let user = portcullis::stores::User {
        id: "rt-user".into(),
        username: "RoundTrip".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        roles: vec!["role-a".into()],
        permissions: vec!["perm-a".into(), "perm-b".into()],
        tenant: Some("tenant-a".into()),
        disabled: true,
        created_at: 1_000_001,
        updated_at: 1_000_002,
    };
    b.users.insert_user(&user).await.expect("user");
    assert_eq!(
        b.users.user_by_id("rt-user").await.expect("get"),
        Some(user)
    );
    let session = portcullis::stores::Session {
        id: "rt-session".into(),
        user_id: "rt-user".into(),
        created_at: now() - 30,
        last_seen_at: now() - 20,
        expires_at: now() + 3600,
        user_agent: Some("agent".into()),
        client_ip: Some("192.0.2.7".into()),
        remember_me: true,
        revoked_at: None,
    };
    b.sessions.insert_session(&session).await.expect("session");
    assert_eq!(
        b.sessions.session("rt-session").await.expect("get"),
        Some(session)
    );
    let refresh = RefreshRecord {
        hash: [1u8; 32],
        family: "rt-family".into(),
        generation: 7,
        session_id: "rt-session".into(),
        user_id: "rt-user".into(),
        expires_at: now() + 600,
        remember_me: true,
        created_at: now() - 5,
        rotated_at: Some(now() - 4),
        successor: Some([2u8; 32]),
        revoked_at: Some(now() - 3),
    };
    b.refresh.insert_refresh(&refresh).await.expect("refresh");
    assert_eq!(
        b.refresh.refresh_by_hash(&[1u8; 32]).await.expect("get"),
        Some(refresh)
    );
    let key = portcullis::stores::ApiKeyRecord {
        id: "rt-key".into(),
        hash: [3u8; 32],
        name: "key-name".into(),
        owner: "key-owner".into(),
        roles: vec!["k-role".into()],
        permissions: vec!["k-perm".into()],
        scopes: vec!["k-scope".into()],
        expires_at: Some(now() + 7200),
        created_at: now() - 50,
        revoked_at: Some(now() - 40),
        last_used_at: Some(now() - 45),
    };
    b.api_keys.insert_api_key(&key).await.expect("key");
    assert_eq!(
        b.api_keys.api_key("rt-key").await.expect("get").as_deref(),
        Some(&key)
    );
    let app = portcullis::stores::AppRecord {
        app_id: "app_rt".into(),
        name: "app-name".into(),
        secret_hash: [4u8; 32],
        secret_version: 3,
        previous_hash: Some([5u8; 32]),
        previous_valid_until: Some(now() + 60),
        services: vec!["svc".into()],
        permissions: vec!["a-perm".into()],
        tenant: Some("a-tenant".into()),
        disabled: true,
        created_at: 2_000_001,
        updated_at: 2_000_002,
    };
    b.apps.insert_app(&app).await.expect("app");
    assert_eq!(b.apps.app("app_rt").await.expect("get"), Some(app));
}

/// What the admin API does to users: pages in username order with a
/// case-insensitive prefix search, replaces grants, resets passwords and
/// deletes (freeing the username), each revoking what it must.
async fn users_page_regrant_reset_and_delete(env: Env) {
    let stores = env.stores(config());
    let mut ids = std::collections::HashMap::new();
    for name in ["alpha-1", "Alpha-2", "beta-1", "alpha-3"] {
        let user = stores
            .create_user(&NewUser {
                username: name.into(),
                password: Some("pw-admin-1".into()),
                roles: vec!["reader".into()],
                ..NewUser::default()
            })
            .await
            .expect("user");
        ids.insert(name.to_lowercase(), user.id);
    }
    let names = |users: Vec<portcullis::stores::User>| -> Vec<String> {
        users.into_iter().map(|u| u.username).collect()
    };
    let first = stores.list_users("", None, 2).await.expect("page 1");
    assert_eq!(names(first), ["alpha-1", "Alpha-2"]);
    let second = stores
        .list_users("", Some("Alpha-2"), 2)
        .await
        .expect("page 2");
    assert_eq!(names(second), ["alpha-3", "beta-1"]);
    let last = stores
        .list_users("", Some("beta-1"), 2)
        .await
        .expect("page 3");
    assert!(last.is_empty());
    let alphas = stores.list_users("ALPHA", None, 10).await.expect("search");
    assert_eq!(names(alphas), ["alpha-1", "Alpha-2", "alpha-3"]);
    assert_eq!(
        stores.list_users("", None, 0).await.map_err(|e| e.code()),
        Err("store.invalid_input")
    );

    // Grants: validated, replaced, unknown users refused.
    let id = ids["alpha-1"].clone();
    stores
        .set_user_grants(&id, &["editor".into()], &["docs.write".into()])
        .await
        .expect("grants");
    let user = stores.user(&id).await.expect("load").expect("exists");
    assert_eq!(
        (user.roles, user.permissions),
        (vec!["editor".to_owned()], vec!["docs.write".to_owned()])
    );
    assert!(
        stores
            .set_user_grants(&id, &["r".repeat(200)], &[])
            .await
            .is_err()
    );
    assert_eq!(
        stores.user(&id).await.expect("load").expect("exists").roles,
        ["editor"]
    );
    assert_eq!(
        stores
            .set_user_grants("no-such-user", &[], &[])
            .await
            .map_err(|e| e.code()),
        Err("store.not_found")
    );

    // A password reset ends the user's sessions; only the new password works.
    let sid = session_for(&stores, &id, false).await;
    stores
        .reset_password(&id, "pw-admin-2")
        .await
        .expect("reset");
    assert!(!stores.session_is_active(&sid).await.expect("session"));
    assert!(stores.login(b"alpha-1", b"pw-admin-1").await.is_err());
    assert_eq!(
        stores
            .login(b"alpha-1", b"pw-admin-2")
            .await
            .expect("login")
            .id,
        id
    );

    // Delete: sessions and API keys go with it, the username is free again.
    let sid = session_for(&stores, &id, false).await;
    let key = stores
        .create_api_key(&NewApiKey {
            name: "k".into(),
            owner: id.clone(),
            ..NewApiKey::default()
        })
        .await
        .expect("key");
    stores.delete_user(&id).await.expect("delete");
    assert!(stores.user(&id).await.expect("load").is_none());
    assert!(!stores.session_is_active(&sid).await.expect("session"));
    assert!(stores.verify_api_key(&key.key).await.is_err());
    assert_eq!(
        names(stores.list_users("alpha", None, 10).await.expect("search")),
        ["Alpha-2", "alpha-3"]
    );
    assert_eq!(
        stores.delete_user(&id).await.map_err(|e| e.code()),
        Err("store.not_found")
    );
    stores
        .create_user(&NewUser {
            username: "ALPHA-1".into(),
            password: Some("pw-admin-3".into()),
            ..NewUser::default()
        })
        .await
        .expect("the username is free again");
}

/// Rotated-in signing keys: stored, listed with every field, unique by
/// kid, validated before the backend is touched, deleted.
async fn signing_keys_insert_list_delete(env: Env) {
    use portcullis::stores::SigningKeyRecord;
    let stores = env.stores(config());
    assert!(stores.signing_keys().await.unwrap().is_empty());
    let record = |kid: &str, activates_at: i64| SigningKeyRecord {
        kid: kid.to_owned(),
        alg: "ES256".to_owned(),
        sealed: vec![1, 2, 3, 0, 255],
        created_at: 100,
        activates_at,
    };
    stores.insert_signing_key(&record("k2", 700)).await.unwrap();
    stores.insert_signing_key(&record("k1", 600)).await.unwrap();
    assert!(matches!(
        stores.insert_signing_key(&record("k1", 900)).await,
        Err(StoreError::Conflict(_))
    ));
    let mut listed = stores.signing_keys().await.unwrap();
    listed.sort_by(|a, b| a.kid.cmp(&b.kid));
    assert_eq!(listed, vec![record("k1", 600), record("k2", 700)]);

    // Bad input changes nothing.
    for bad in [
        SigningKeyRecord {
            kid: "a/b".into(),
            ..record("x", 1)
        },
        SigningKeyRecord {
            kid: String::new(),
            ..record("x", 1)
        },
        SigningKeyRecord {
            alg: "none".into(),
            ..record("k3", 1)
        },
        SigningKeyRecord {
            sealed: Vec::new(),
            ..record("k3", 1)
        },
        SigningKeyRecord {
            sealed: vec![0; 17 * 1024],
            ..record("k3", 1)
        },
    ] {
        assert!(matches!(
            stores.insert_signing_key(&bad).await,
            Err(StoreError::InvalidInput { .. })
        ));
    }
    assert_eq!(stores.signing_keys().await.unwrap().len(), 2);

    assert!(stores.delete_signing_key("k1").await.unwrap());
    assert!(!stores.delete_signing_key("k1").await.unwrap());
    assert_eq!(
        stores.signing_keys().await.unwrap(),
        vec![record("k2", 700)]
    );
}

/// Of concurrent rotations exactly one stores its key: the claim "no key
/// activates later than now" and the insert are one atomic step, so the
/// other nine see the winner's key as the pending one.
async fn signing_key_claims_at_once_have_one_winner(env: Env) {
    use portcullis::stores::SigningKeyRecord;
    let stores = env.stores(config());
    let t = now();
    let record = |kid: String, activates_at: i64| SigningKeyRecord {
        kid,
        alg: "ES256".to_owned(),
        sealed: vec![1, 2, 3],
        created_at: t,
        activates_at,
    };
    // A key already active does not make a rotation wait.
    stores
        .insert_signing_key(&record("active".into(), t - 10))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let stores = stores.clone();
        let r = record(format!("k{i}"), t + 600);
        tasks.push(tokio::spawn(async move {
            (
                r.kid.clone(),
                stores.insert_signing_key_unless_pending(&r).await,
            )
        }));
    }
    let (mut winners, mut refused) = (Vec::new(), Vec::new());
    for task in tasks {
        match task.await.expect("task") {
            (kid, Ok(None)) => winners.push(kid),
            (_, Ok(Some(pending))) => refused.push(pending),
            (kid, Err(e)) => panic!("{kid}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one claim wins: {winners:?}");
    assert_eq!(refused.len(), 9);
    for p in &refused {
        assert_eq!(p.kid, winners[0], "the refusal names the winner");
        assert_eq!(p.activates_at, t + 600);
    }
    assert_eq!(stores.signing_keys().await.unwrap().len(), 2);
}

/// Of concurrent redemptions of one password reset token exactly one sets
/// its password: the write is a compare-and-set on the hash the token is
/// bound to.
async fn a_reset_token_redeemed_at_once_works_once(env: Env) {
    let stores = env.stores(config());
    let user = stores
        .create_user(&NewUser {
            username: "reset-race".into(),
            password: Some("pw-before-1".into()),
            ..NewUser::default()
        })
        .await
        .expect("user");
    let (token, _) = stores
        .password_reset_token(&user.id, Duration::from_secs(600))
        .await
        .expect("token");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let stores = stores.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let pw = format!("pw-after-{i}-x");
            (pw.clone(), stores.redeem_password_reset(&token, &pw).await)
        }));
    }
    let (mut won, mut spent) = (Vec::new(), 0);
    for task in tasks {
        match task.await.expect("task") {
            (pw, Ok(_)) => won.push(pw),
            (_, Err(StoreError::InvalidCredentials)) => spent += 1,
            (_, Err(e)) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one redemption wins");
    assert_eq!(spent, 7);
    // The winner's password is the one set.
    stores
        .login(b"reset-race", won[0].as_bytes())
        .await
        .expect("the winning password logs in");
    // And the token stays spent.
    assert!(matches!(
        stores.redeem_password_reset(&token, "pw-later-9x").await,
        Err(StoreError::InvalidCredentials)
    ));
}

/// PostgreSQL announces each append (`NOTIFY` at commit): another
/// replica whose poll is a second away reads the revocation when the
/// announcement arrives, counted in its feed's `wakeups`.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_announces_revocations_to_other_replicas() {
    use portcullis::stores::RevokedKind;
    let Some(env) = postgres().await else { return };
    let mut slow = config();
    slow.revocation.poll_interval = Duration::from_secs(1);
    let a = env.stores(config());
    let b = env.stores(slow);
    b.revocations()
        .ready(Duration::from_secs(5))
        .await
        .expect("b loads");
    // The listener connects in the background: until it listens, an
    // announcement is lost (the poll still brings the entry). Revoke until
    // one is announced, at most 20 times.
    let mut announced = None;
    for i in 0..20 {
        let before = b.revocations().stats().wakeups;
        let jti = format!("jti-notify-{i}-{}", support::unique_name("n"));
        let started = std::time::Instant::now();
        a.revoke_jti(&jti, now() + 600).await.expect("deny");
        while !b.revocations().contains(RevokedKind::Jti, &jti) {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "b never saw {jti}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if b.revocations().stats().wakeups > before {
            announced = Some(started.elapsed());
            break;
        }
    }
    let elapsed = announced.expect("no append was announced to b in 20 revocations");
    eprintln!("revocation set: announced on PostgreSQL, in b's set after {elapsed:?}");
}

/// Waits (10 s at most, else panics with `what`) until `done`.
#[cfg(feature = "postgres")]
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `LISTEN` connection of replica b's feed is killed on the server
/// (`pg_terminate_backend`, as a restart or a proxy would): the listener
/// reconnects and listens again (`listens` moves from 1 to 2), and the
/// next revocation made on replica a is announced to b over the new
/// connection (`notifications` moves) and enforced there. b polls only
/// every second, and the test waits for the notification itself: the poll
/// alone cannot pass it.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_listen_reconnects_after_its_connection_is_killed() {
    use portcullis::stores::RevokedKind;
    use std::time::Instant;
    let Some(db) = support::FreshDatabase::create("listen_kill").await else {
        return;
    };
    let backend = portcullis::stores::postgres::PostgresStores::connect(&db.url, 16)
        .await
        .expect("connect PostgreSQL");
    let backends = Backends::all(Arc::new(backend));
    let mut slow = config();
    slow.revocation.poll_interval = Duration::from_secs(1);
    let a = Arc::new(Stores::new(backends.clone(), config()).expect("stores"));
    let b = Arc::new(Stores::new(backends, slow).expect("stores"));
    b.revocations()
        .ready(Duration::from_secs(5))
        .await
        .expect("b loads");
    eventually("b never listened", || b.revocations().stats().listens >= 1).await;
    let before = b.revocations().stats();
    assert_eq!(before.listens, 1, "{before:?}");

    // Kill every LISTEN connection of this test's database (b's only: a's
    // feed never started).
    let mut admin = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&db.url).await.expect("connect")
    };
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    assert_eq!(killed, vec![true], "one LISTEN connection to kill");
    eventually("b's listener never came back", || {
        b.revocations().stats().listens >= 2
    })
    .await;
    let listening: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&mut admin)
    .await
    .expect("count listeners");
    assert_eq!(listening, 1, "one new LISTEN connection");

    // A revocation on a reaches b by notification, over the new connection.
    let after_reconnect = b.revocations().stats();
    let jti = format!("jti-relisten-{}", support::unique_name("n"));
    let started = Instant::now();
    a.revoke_jti(&jti, now() + 600).await.expect("deny");
    eventually("b was never notified", || {
        b.revocations().stats().notifications > after_reconnect.notifications
    })
    .await;
    eventually("b never enforced it", || {
        b.revocations().contains(RevokedKind::Jti, &jti)
    })
    .await;
    let stats = b.revocations().stats();
    assert_eq!(stats.listens, 2, "no spinning reconnects: {stats:?}");
    eprintln!(
        "revocation set: after the LISTEN kill, notified and enforced in {:?}",
        started.elapsed()
    );
}

// ------------------------------------------------------------- the matrix

macro_rules! suite {
    ($backend:ident, $make:path, [$($check:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    if let Some(env) = $make().await {
                        super::$check(env).await;
                    }
                }
            )*
        }
    };
}

macro_rules! full_suite {
    ($backend:ident, $make:path) => {
        suite!(
            $backend,
            $make,
            [
                concurrent_rotations_have_one_winner,
                reuse_after_rotation_revokes_family_and_session,
                reuse_interval_returns_the_issued_successor,
                expired_and_unknown_refresh_tokens_are_rejected,
                denylist_entries_expire,
                api_keys_create_list_verify_revoke,
                revocation_reaches_other_replicas_within_a_second,
                the_revocation_set_follows_revocations_made_on_another_replica,
                app_secret_rotation_keeps_the_old_one_for_the_grace_period,
                unknown_user_login_costs_a_hash_verification,
                bcrypt_hashes_are_accepted_and_rehashed,
                bcrypt_imported_users_are_timed_like_unknown_ones,
                usernames_are_unique_case_insensitively,
                bad_input_gives_typed_errors_and_changes_nothing,
                sessions_list_revoke_and_revoke_all,
                reuse_grace_is_checked_first_and_handed_out_once,
                disabling_a_user_ends_its_sessions_and_refresh_families,
                api_key_revocation_reaches_a_busy_replica_within_a_second,
                api_key_and_user_revocations_reach_the_set_of_other_replicas,
                racing_status_changes_leave_the_record_as_the_log_ends,
                jti_rules_are_the_same_for_revoke_and_check,
                denylist_keeps_the_later_expiry,
                app_secret_rotations_at_once_get_distinct_versions,
                family_revocation_is_atomic_with_rotation,
                purge_drops_expired_records_and_keeps_live_ones,
                records_round_trip_every_field,
                users_page_regrant_reset_and_delete,
                signing_keys_insert_list_delete,
                signing_key_claims_at_once_have_one_winner,
                a_reset_token_redeemed_at_once_works_once,
            ]
        );
    };
}

full_suite!(memory_backend, super::memory);
full_suite!(sqlite_backend, super::sqlite);
#[cfg(feature = "postgres")]
full_suite!(postgres_backend, super::postgres);
#[cfg(feature = "redis")]
full_suite!(redis_backend, super::redis);
#[cfg(feature = "redis")]
full_suite!(redis_cluster_backend, super::redis_cluster);
#[cfg(feature = "redis")]
full_suite!(sqlite_and_redis_backends, super::mixed);

/// Row counts of the purgeable SQL tables.
async fn purgeable_rows<DB>(pool: &sqlx::Pool<DB>) -> [i64; 4]
where
    DB: sqlx::Database,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    let mut out = [0; 4];
    for (i, table) in ["denylist", "refresh_tokens", "sessions", "api_keys"]
        .into_iter()
        .enumerate()
    {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .expect("count");
        out[i] = n;
    }
    out
}

/// The purge deletes exactly the expired rows: counted before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_purge_deletes_expired_rows() {
    let path = std::env::temp_dir().join(format!("{}.db", support::unique_name("pcx_purge")));
    let _file = TempFile(path.clone());
    let sqlite = Arc::new(
        portcullis::stores::sqlite::SqliteStores::open(&path)
            .await
            .expect("open SQLite"),
    );
    let (stores, _) = seed_purgeable(&Backends::all(sqlite.clone())).await;
    assert_eq!(purgeable_rows(sqlite.pool()).await, [2, 2, 2, 2]);
    let report = stores.purge_expired().await.expect("purge");
    assert_eq!(
        (
            report.denylist,
            report.refresh_tokens,
            report.sessions,
            report.api_keys
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(purgeable_rows(sqlite.pool()).await, [1, 1, 1, 1]);
    assert_eq!(
        stores.purge_expired().await.expect("again"),
        Default::default()
    );
}

/// The same on PostgreSQL.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_purge_deletes_expired_rows() {
    let Some(db) = support::FreshDatabase::create("stores_purge").await else {
        return;
    };
    let pg = Arc::new(
        portcullis::stores::postgres::PostgresStores::connect(&db.url, 4)
            .await
            .expect("connect PostgreSQL"),
    );
    let (stores, _) = seed_purgeable(&Backends::all(pg.clone())).await;
    assert_eq!(purgeable_rows(pg.pool()).await, [2, 2, 2, 2]);
    let report = stores.purge_expired().await.expect("purge");
    assert_eq!(
        (
            report.denylist,
            report.refresh_tokens,
            report.sessions,
            report.api_keys
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(purgeable_rows(pg.pool()).await, [1, 1, 1, 1]);
    pg.pool().close().await;
}

/// Out-of-bounds settings are refused at start-up, naming the field.
#[test]
fn stores_config_is_validated() {
    let backends = Backends::all(Arc::new(portcullis::stores::memory::MemoryStores::new()));
    let refused = |cfg: StoresConfig| match Stores::new(backends.clone(), cfg) {
        Err(StoreError::InvalidInput { field, .. }) => field,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let mut cfg = config();
    cfg.reuse_interval = Duration::from_secs(11);
    assert_eq!(refused(cfg), "reuse_interval");
    let mut cfg = config();
    cfg.api_key_touch_interval = Duration::from_millis(500);
    assert_eq!(refused(cfg), "api_key_touch_interval");
    let mut cfg = config();
    cfg.revocation_cache_ttl = Duration::from_millis(1500);
    assert_eq!(refused(cfg), "revocation_cache_ttl");
    let mut cfg = config();
    cfg.reuse_interval = Duration::from_secs(10);
    cfg.api_key_touch_interval = Duration::from_secs(1);
    Stores::new(backends.clone(), cfg).expect("the bounds themselves are fine");
}

/// Two replicas starting at once both run the migrations: sqlx takes an
/// advisory lock, so both succeed and the schema is created once.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_migrations_are_safe() {
    let Some(db) = support::FreshDatabase::create("stores_migrate").await else {
        return;
    };
    let connect = || async {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&db.url)
            .await
            .expect("connect")
    };
    let (p1, p2) = (connect().await, connect().await);
    let (a, b) = tokio::join!(
        portcullis::stores::postgres::migrate(&p1),
        portcullis::stores::postgres::migrate(&p2)
    );
    a.expect("replica 1 migrates");
    b.expect("replica 2 migrates");
    portcullis::stores::postgres::migrate(&p1)
        .await
        .expect("idempotent");
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&p1)
        .await
        .expect("count");
    assert_eq!(
        n,
        i64::try_from(portcullis::stores::postgres::MIGRATIONS.0.len()).unwrap(),
        "one row per migration file"
    );
    p1.close().await;
    p2.close().await;
}

/// A Redis ACL user that may read every key but write only the refresh
/// records and family sets under one prefix; deleted when dropped.
#[cfg(feature = "redis")]
struct RestrictedRedisUser {
    url: String,
    name: String,
}

#[cfg(feature = "redis")]
impl RestrictedRedisUser {
    async fn create(url: &str, prefix: &str) -> Self {
        let name = support::unique_name("pcx_acl");
        let p = prefix.trim_end_matches(':');
        let mut admin = redis::Client::open(url)
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&name)
            .arg("on")
            .arg(">pw")
            .arg("+@all")
            .arg("resetkeys")
            .arg("%R~*")
            .arg(format!("~{p}:rt:*"))
            .arg(format!("~{p}:rtf:*"))
            .arg(format!("~{p}:ufam:*"))
            .query_async(&mut admin)
            .await
            .expect("ACL SETUSER");
        let url = url.replacen("redis://", &format!("redis://{name}:pw@"), 1);
        Self { url, name }
    }
}

#[cfg(feature = "redis")]
impl Drop for RestrictedRedisUser {
    fn drop(&mut self) {
        let name = self.name.clone();
        let url = support::redis_url().unwrap_or_default();
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return;
            };
            if let Ok(mut c) = client.get_connection() {
                let _: redis::RedisResult<()> =
                    redis::cmd("ACL").arg("DELUSER").arg(&name).query(&mut c);
            }
        })
        .join();
    }
}

/// A rotation whose successor lookup cannot be written must not spend the
/// token: the client's retry then rotates normally instead of being taken
/// for a reuse (which would log the user out).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_rotation_never_spends_a_token_without_a_findable_successor() {
    use portcullis::stores::redis::{RedisConnection, RedisStores};
    let Some(url) = support::redis_url() else {
        return;
    };
    let prefix = support::unique_prefix("stores_rth");
    let _keys = RedisKeys {
        urls: vec![url.clone()],
        prefix: prefix.clone(),
    };
    let acl = RestrictedRedisUser::create(&url, &prefix).await;
    let full = Arc::new(RedisStores::new(
        RedisConnection::single(&url).await.expect("connect"),
        &prefix,
    ));
    let restricted = Arc::new(RedisStores::new(
        RedisConnection::single(&acl.url)
            .await
            .expect("connect restricted"),
        &prefix,
    ));
    let mut failing = Backends::all(full.clone());
    failing.refresh = restricted;
    let failing = Stores::new(failing, config()).expect("stores");
    let working = Stores::new(Backends::all(full), config()).expect("stores");
    let sid = session_for(&working, "user-rth", false).await;
    let (t0, r0) = issue_refresh("user-rth", &sid, "fam-rth", 0, false, now() + 600);
    working.store_refresh(&r0).await.expect("store");
    let err = failing
        .rotate_refresh(&t0, |prev| Ok(successor_of(prev).1))
        .await
        .expect_err("the successor lookup cannot be written");
    assert_eq!(err.code(), "store.unavailable");
    // The retry: the token was not spent, so it rotates.
    let retry = working
        .rotate_refresh(&t0, |prev| Ok(successor_of(prev).1))
        .await;
    assert!(
        matches!(retry, Ok(Rotation::Rotated { .. })),
        "the retry must rotate, got {retry:?}"
    );
    assert!(working.session_is_active(&sid).await.expect("session"));
}

/// Redis index sets expire with what they index: per-user session sets,
/// per-user family sets and per-owner API-key sets get TTLs, and expiring
/// API-key records expire.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_indexes_and_expiring_records_have_ttls() {
    use portcullis::stores::redis::{RedisConnection, RedisStores};
    let Some(url) = support::redis_url() else {
        return;
    };
    let prefix = support::unique_prefix("stores_ttl");
    let _keys = RedisKeys {
        urls: vec![url.clone()],
        prefix: prefix.clone(),
    };
    let p = prefix.trim_end_matches(':').to_owned();
    let stores = Stores::new(
        Backends::all(Arc::new(RedisStores::new(
            RedisConnection::single(&url).await.expect("connect"),
            &prefix,
        ))),
        config(),
    )
    .expect("stores");
    let sid = session_for(&stores, "user-ttl", false).await;
    let (_, r0) = issue_refresh("user-ttl", &sid, "fam-ttl", 0, false, now() + 600);
    stores.store_refresh(&r0).await.expect("store");
    let key = stores
        .create_api_key(&NewApiKey {
            name: "expiring".into(),
            owner: "owner-ttl".into(),
            expires_at: Some(now() + 600),
            ..NewApiKey::default()
        })
        .await
        .expect("key");
    let mut conn = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    for k in [
        format!("{p}:usess:user-ttl"),
        format!("{p}:ufam:user-ttl"),
        format!("{p}:ako:owner-ttl"),
        format!("{p}:ak:{}", key.record.id),
    ] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
    }
}
