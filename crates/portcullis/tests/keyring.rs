//! The key ring on the memory stores with a manual clock: a rotation
//! publishes, activates and retires on the stored times; two rings over the
//! same store (two replicas) hold the same set at every step; a second
//! rotation waits for the first; a stored key that does not open is
//! refused at open and skipped (logged) when it arrives later.

use std::sync::Arc;
use std::time::Duration;

use portcullis::keyring::{KeyRing, KeyRingConfig, RotateError};
use portcullis::stores::{
    Backends, BoxFuture, SigningKeyRecord, SigningKeyStore, StoreResult, Stores, StoresConfig,
};
use portcullis_core::{Algorithm, Key, KeySet, KeyState, ManualClock, SecretHasher};

fn hasher(pepper: u8) -> SecretHasher {
    SecretHasher::new(&[pepper; 32]).unwrap()
}

fn configured() -> KeySet {
    let mut set = KeySet::new();
    set.insert(Key::generate(Algorithm::ES256).unwrap().with_kid("dir"))
        .unwrap();
    set
}

fn config() -> KeyRingConfig {
    let mut c = KeyRingConfig::new(Duration::from_secs(100));
    c.propagation_delay = Duration::from_secs(60);
    c.poll_interval = Duration::from_secs(5);
    c
}

struct Replica {
    ring: Arc<KeyRing>,
}

async fn replicas(n: usize) -> (Vec<Replica>, Arc<ManualClock>, Backends) {
    let clock = Arc::new(ManualClock::at_unix_seconds(1_000_000));
    let backends = Backends::all(Arc::new(portcullis::stores::memory::MemoryStores::new()));
    let mut out = Vec::new();
    let base = configured();
    for _ in 0..n {
        let stores = Arc::new(
            Stores::with_clock(
                backends.clone(),
                StoresConfig::new(hasher(1)),
                clock.clone(),
            )
            .unwrap(),
        );
        let ring = KeyRing::open(base.clone(), stores, &hasher(1), config())
            .await
            .unwrap();
        out.push(Replica { ring });
    }
    (out, clock, backends)
}

fn active(ring: &KeyRing) -> String {
    ring.keys().active().unwrap().kid().to_owned()
}

fn kids(ring: &KeyRing) -> Vec<String> {
    let mut k: Vec<String> = ring.keys().iter().map(|k| k.kid().to_owned()).collect();
    k.sort();
    k
}

#[tokio::test]
async fn a_rotation_is_followed_alike_by_every_replica() {
    let (replicas, clock, _) = replicas(2).await;
    let (a, b) = (&replicas[0].ring, &replicas[1].ring);
    let changes = b.subscribe();
    assert_eq!(active(a), "dir");

    let new = a.rotate(None).await.unwrap();
    assert_eq!(new.state, KeyState::Published);
    assert_eq!(new.alg, Algorithm::ES256);
    assert_eq!(new.activates_at, Some(1_000_060));
    // A knows at once; B after its next read.
    assert_eq!(kids(a).len(), 2);
    assert_eq!(kids(b), ["dir"]);
    b.sync().await.unwrap();
    assert!(changes.has_changed().unwrap());
    assert_eq!(kids(a), kids(b));
    assert_eq!(active(b), "dir", "published is not signing");

    // A second rotation while this one is pending is refused, on any replica.
    assert!(matches!(
        b.rotate(None).await,
        Err(RotateError::Pending { .. })
    ));

    // At the activation time both sign with the new key, from the clock
    // alone (no store read needed).
    clock.advance(Duration::from_secs(59));
    a.tick();
    b.tick();
    assert_eq!(active(a), "dir");
    clock.advance(Duration::from_secs(1));
    a.tick();
    b.tick();
    assert_eq!(active(a), new.kid);
    assert_eq!(active(b), new.kid);
    assert!(
        kids(b).contains(&"dir".to_owned()),
        "the old key still verifies"
    );
    let status = b.status();
    let old = status.keys.iter().find(|k| k.kid == "dir").unwrap();
    assert_eq!(old.state, KeyState::Retiring);
    assert_eq!(old.retires_at, Some(1_000_160));
    assert_eq!(status.next_transition_at, Some(1_000_160));

    // Retired after retire_after: only the new key is left.
    clock.advance(Duration::from_secs(100));
    a.tick();
    b.tick();
    assert_eq!(kids(a), std::slice::from_ref(&new.kid));
    assert_eq!(kids(b), std::slice::from_ref(&new.kid));

    // Another rotation may start now, in another algorithm.
    let third = b.rotate(Some(Algorithm::EdDSA)).await.unwrap();
    assert_eq!(third.alg, Algorithm::EdDSA);
    a.sync().await.unwrap();
    assert_eq!(kids(a), kids(b));
}

#[tokio::test]
async fn keys_sealed_under_another_pepper_are_refused_at_open_and_skipped_later() {
    let (replicas, clock, backends) = replicas(1).await;
    let ring = &replicas[0].ring;
    let other = Arc::new(
        Stores::with_clock(
            backends.clone(),
            StoresConfig::new(hasher(1)),
            clock.clone(),
        )
        .unwrap(),
    );
    // A replica with another pepper writes a key this one cannot open.
    let wrong = KeyRing::open(configured(), Arc::clone(&other), &hasher(2), config())
        .await
        .unwrap();
    let foreign = wrong.rotate(None).await.unwrap();
    // Syncing skips it (logged); the set stays what it was.
    ring.sync().await.unwrap();
    assert_eq!(kids(ring), ["dir"]);
    // Opening afresh refuses to start, naming the key.
    let err = KeyRing::open(configured(), other, &hasher(1), config())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&foreign.kid), "{err}");
}

#[tokio::test]
async fn a_poison_record_is_refused_and_the_schedule_holds() {
    let (replicas, clock, backends) = replicas(1).await;
    let ring = &replicas[0].ring;
    let stores = Arc::new(
        Stores::with_clock(backends, StoresConfig::new(hasher(1)), clock.clone()).unwrap(),
    );
    let new = ring.rotate(None).await.unwrap();
    // Garbage in the sealed bytes of another record.
    stores
        .insert_signing_key(&SigningKeyRecord {
            kid: "poison".into(),
            alg: "ES256".into(),
            sealed: vec![1; 64],
            created_at: 1_000_000,
            activates_at: 1_000_010,
        })
        .await
        .unwrap();
    ring.sync().await.unwrap();
    clock.advance(Duration::from_secs(60));
    ring.tick();
    assert_eq!(active(ring), new.kid, "the poison record never signs");
    assert!(!kids(ring).contains(&"poison".to_owned()));
}

#[tokio::test]
async fn inconsistent_settings_are_refused() {
    let backends = Backends::all(Arc::new(portcullis::stores::memory::MemoryStores::new()));
    let stores = Arc::new(Stores::new(backends, StoresConfig::new(hasher(1))).unwrap());
    let mut c = config();
    c.propagation_delay = Duration::from_secs(5);
    let err = KeyRing::open(configured(), Arc::clone(&stores), &hasher(1), c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("propagation_delay"), "{err}");
    let mut c = config();
    c.poll_interval = Duration::from_millis(10);
    assert!(
        KeyRing::open(configured(), stores, &hasher(1), c)
            .await
            .is_err()
    );
}

/// The memory store's signing keys, or a store that never answers.
struct Hanging {
    inner: Arc<portcullis::stores::memory::MemoryStores>,
    hung: std::sync::atomic::AtomicBool,
}

impl SigningKeyStore for Hanging {
    fn insert_signing_key<'a>(
        &'a self,
        key: &'a SigningKeyRecord,
    ) -> BoxFuture<'a, StoreResult<()>> {
        self.inner.insert_signing_key(key)
    }

    fn insert_signing_key_unless_pending<'a>(
        &'a self,
        key: &'a SigningKeyRecord,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<Option<portcullis::stores::PendingKey>>> {
        self.inner.insert_signing_key_unless_pending(key, now)
    }

    fn signing_keys(&self) -> BoxFuture<'_, StoreResult<Vec<SigningKeyRecord>>> {
        if self.hung.load(std::sync::atomic::Ordering::SeqCst) {
            Box::pin(std::future::pending())
        } else {
            self.inner.signing_keys()
        }
    }

    fn delete_signing_key<'a>(&'a self, kid: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        self.inner.delete_signing_key(kid)
    }
}

#[tokio::test]
async fn a_hung_store_delays_news_but_known_transitions_happen_on_time() {
    let memory = Arc::new(portcullis::stores::memory::MemoryStores::new());
    let hanging = Arc::new(Hanging {
        inner: Arc::clone(&memory),
        hung: std::sync::atomic::AtomicBool::new(false),
    });
    let mut backends = Backends::all(memory);
    backends.signing_keys = hanging.clone();
    let clock = Arc::new(ManualClock::at_unix_seconds(1_000_000));
    let stores = Arc::new(
        Stores::with_clock(backends, StoresConfig::new(hasher(1)), clock.clone()).unwrap(),
    );
    let mut c = config();
    c.store_budget = Duration::from_millis(100);
    let ring = KeyRing::open(configured(), stores, &hasher(1), c)
        .await
        .unwrap();
    let new = ring.rotate(None).await.unwrap();

    hanging
        .hung
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    assert!(ring.sync().await.is_err(), "a hung store is a failed read");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "within the budget"
    );
    assert!(ring.status().last_error.is_some());
    assert!(matches!(
        ring.rotate(None).await,
        Err(RotateError::Store(_))
    ));

    // The known schedule goes on from the clock alone.
    clock.advance(Duration::from_secs(60));
    ring.tick();
    assert_eq!(active(&ring), new.kid);
    clock.advance(Duration::from_secs(100));
    ring.tick();
    assert_eq!(kids(&ring), std::slice::from_ref(&new.kid));
}
