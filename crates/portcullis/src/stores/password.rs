//! Password hashing: argon2id with the OWASP parameters (m = 19456 KiB,
//! t = 2, p = 1); bcrypt (`$2a$` / `$2b$`) accepted for imported accounts
//! and reported as needing a rehash. Hashing runs on the blocking pool,
//! at most one hash per core at a time (each takes 19 MiB): a caller waits
//! for a slot a bounded time, with a bounded number of others, and is then
//! refused with [`StoreError::Busy`] rather than queued without end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use super::{StoreError, StoreResult};

/// OWASP memory cost, KiB.
pub const ARGON2_M_KIB: u32 = 19_456;
/// OWASP iterations.
pub const ARGON2_T: u32 = 2;
/// OWASP parallelism.
pub const ARGON2_P: u32 = 1;

fn argon2() -> StoreResult<Argon2<'static>> {
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None)
        .map_err(|e| StoreError::Unavailable(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes `password` with argon2id (blocking; call from the blocking pool).
pub fn hash_blocking(password: &str) -> StoreResult<String> {
    let mut salt = [0u8; 16];
    portcullis_core::opaque::fill_random(&mut salt)
        .map_err(|_| StoreError::Unavailable("system random source".into()))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| StoreError::Unavailable(format!("argon2 salt: {e}")))?;
    argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Unavailable(format!("argon2: {e}")))
}

/// Whether `password` matches `stored` (argon2id PHC or bcrypt `$2a$`/`$2b$`); blocking.
pub fn verify_blocking(password: &str, stored: &str) -> bool {
    if is_bcrypt(stored) {
        return bcrypt::verify(password, stored).unwrap_or(false);
    }
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return false;
    }
    // Verify with the parameters in the hash itself (older ones still verify).
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A bcrypt hash of a random secret at `cost` (blocking).
fn make_bcrypt_dummy(cost: u32) -> Option<String> {
    let mut random = [0u8; 32];
    portcullis_core::opaque::fill_random(&mut random).ok()?;
    bcrypt::hash(portcullis_core::jose::b64_encode(&random), cost).ok()
}

fn is_bcrypt(stored: &str) -> bool {
    stored.starts_with("$2a$") || stored.starts_with("$2b$")
}

/// Whether `stored` should be replaced by a fresh argon2id hash at the next
/// successful login (bcrypt, or argon2 with other parameters).
pub fn needs_rehash(stored: &str) -> bool {
    if is_bcrypt(stored) {
        return true;
    }
    let Ok(parsed) = PasswordHash::new(stored) else {
        return true;
    };
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return true;
    }
    match Params::try_from(&parsed) {
        Ok(p) => p.m_cost() != ARGON2_M_KIB || p.t_cost() != ARGON2_T || p.p_cost() != ARGON2_P,
        Err(_) => true,
    }
}

/// Default longest wait for a hashing slot.
pub const DEFAULT_HASHING_WAIT: Duration = Duration::from_secs(2);
/// Callers allowed to wait for a slot, per slot; more are refused at once.
const WAITING_PER_SLOT: usize = 32;

/// Login password checks made (a known user's or the dummy): the metric
/// that shows a throttled client costs no hashing.
pub const PASSWORD_CHECKS_METRIC: &str = "portcullis_password_checks_total";

/// Login-check verifications by hash `kind` (`argon2id`, `bcrypt`): shows
/// that an unknown user's check runs the same hashers as a real one's.
pub const PASSWORD_VERIFICATIONS_METRIC: &str = "portcullis_password_verifications_total";

/// Highest bcrypt cost a padding dummy is made at (an imported hash above
/// it still verifies, at its own cost).
pub const MAX_BCRYPT_PADDING_COST: u32 = 14;

/// The bcrypt cost of `stored`, if it is a bcrypt hash.
pub(crate) fn bcrypt_cost(stored: &str) -> Option<u32> {
    if !is_bcrypt(stored) {
        return None;
    }
    stored.get(4..6)?.parse().ok()
}

/// Verifications made, by hash kind (observability and tests: which
/// hashers a login check ran).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verifications {
    /// argon2id verifications (hashes and dummies).
    pub argon2id: u64,
    /// bcrypt verifications (hashes and dummies).
    pub bcrypt: u64,
}

/// Per-kind verification counters shared by a hasher's clones.
#[derive(Debug, Default)]
struct KindCounts {
    argon2id: AtomicU64,
    bcrypt: AtomicU64,
}

impl KindCounts {
    /// [`verify_blocking`], counted by the kind of `stored`.
    fn verify(&self, password: &str, stored: &str) -> bool {
        let (counter, kind) = if is_bcrypt(stored) {
            (&self.bcrypt, "bcrypt")
        } else {
            (&self.argon2id, "argon2id")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(PASSWORD_VERIFICATIONS_METRIC, "kind" => kind).increment(1);
        verify_blocking(password, stored)
    }
}

/// A bcrypt dummy hash and its cost.
#[derive(Debug)]
struct BcryptDummy {
    cost: u32,
    hash: Arc<str>,
}

/// Hashes and verifies passwords off the async threads, a bounded number at
/// a time; verifies a fixed dummy hash for unknown users so both paths cost
/// the same.
///
/// Every login check costs one verification of each hash kind present:
/// argon2id always; bcrypt as soon as this process has seen a bcrypt hash
/// (imported, or verified at a login), at the highest cost seen. An unknown
/// user verifies a dummy of each kind; a known user its own hash plus a
/// dummy of each other kind ([`Self::verify_login`]). So bcrypt-imported
/// accounts, timed at bcrypt cost until their first login rehashes them,
/// cannot be told from unknown names by timing.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    dummy: Arc<str>,
    dummy_verifications: Arc<AtomicU64>,
    /// The bcrypt dummy, once a bcrypt hash was seen.
    bcrypt_dummy: Arc<std::sync::RwLock<Option<BcryptDummy>>>,
    /// Verifications of a dummy made only to equalise cost.
    padding_verifications: Arc<AtomicU64>,
    /// Login-check verifications by hash kind.
    kinds: Arc<KindCounts>,
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    wait: Duration,
}

/// One caller in the waiting line; leaves it when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PasswordHasher {
    /// A hasher with a freshly made dummy hash (one argon2id hash, at
    /// start-up), one hashing slot per core and [`DEFAULT_HASHING_WAIT`].
    pub fn new() -> StoreResult<Self> {
        Self::with_limits(0, DEFAULT_HASHING_WAIT)
    }

    /// A hasher running at most `concurrency` hashes at once (0: one per
    /// core) whose callers wait at most `wait` for a slot.
    pub fn with_limits(concurrency: usize, wait: Duration) -> StoreResult<Self> {
        let concurrency = match concurrency {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let mut random = [0u8; 32];
        portcullis_core::opaque::fill_random(&mut random)
            .map_err(|_| StoreError::Unavailable("system random source".into()))?;
        let dummy = hash_blocking(&portcullis_core::jose::b64_encode(&random))?;
        Ok(Self {
            dummy: dummy.into(),
            dummy_verifications: Arc::new(AtomicU64::new(0)),
            bcrypt_dummy: Arc::new(std::sync::RwLock::new(None)),
            padding_verifications: Arc::new(AtomicU64::new(0)),
            kinds: Arc::default(),
            slots: Arc::new(Semaphore::new(concurrency)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: concurrency.saturating_mul(WAITING_PER_SLOT),
            wait,
        })
    }

    /// Runs `work` on the blocking pool once a slot is free: at most `wait`
    /// in a line of at most `max_waiting` callers, else [`StoreError::Busy`].
    /// The slot is held until the work ends, even if the caller goes away.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> StoreResult<T> {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(StoreError::Busy);
                }
                let _line = Waiting(&self.waiting);
                tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
                    .await
                    .map_err(|_| StoreError::Busy)?
                    .map_err(|_| StoreError::Busy)?
            }
        };
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("hashing task: {e}")))
    }

    /// Hashes `password` with argon2id on the blocking pool.
    pub async fn hash(&self, password: &str) -> StoreResult<String> {
        let password = password.to_owned();
        self.run(move || hash_blocking(&password)).await?
    }

    /// Verifies `password` against `stored` on the blocking pool.
    pub async fn verify(&self, password: &str, stored: &str) -> StoreResult<bool> {
        let (password, stored) = (password.to_owned(), stored.to_owned());
        self.run(move || verify_blocking(&password, &stored)).await
    }

    /// Verifies `password` against the dummy hash (always false): the cost of
    /// a login for a username that does not exist; with a bcrypt dummy too
    /// once bcrypt hashes are present (see the type's docs).
    pub async fn verify_dummy(&self, password: &str) -> StoreResult<bool> {
        self.dummy_verifications.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(PASSWORD_CHECKS_METRIC).increment(1);
        let dummy = self.dummy.clone();
        let bcrypt = self.bcrypt_padding();
        if bcrypt.is_some() {
            self.padding_verifications.fetch_add(1, Ordering::Relaxed);
        }
        let password = password.to_owned();
        let kinds = Arc::clone(&self.kinds);
        self.run(move || {
            let mut ok = kinds.verify(&password, &dummy);
            if let Some(b) = bcrypt {
                ok &= kinds.verify(&password, &b);
            }
            ok
        })
        .await
    }

    /// Verifies `password` against `stored` for a login: plus a dummy of
    /// each other hash kind present, so that every login costs the same as
    /// [`Self::verify_dummy`]. Notes a bcrypt `stored`.
    pub async fn verify_login(&self, password: &str, stored: &str) -> StoreResult<bool> {
        metrics::counter!(PASSWORD_CHECKS_METRIC).increment(1);
        let fresh = self.note_hash_prepare(stored);
        let pad: Option<Arc<str>> = if is_bcrypt(stored) {
            Some(self.dummy.clone())
        } else {
            self.bcrypt_padding()
        };
        if pad.is_some() {
            self.padding_verifications.fetch_add(1, Ordering::Relaxed);
        }
        let (password, stored) = (password.to_owned(), stored.to_owned());
        let kinds = Arc::clone(&self.kinds);
        let (ok, made) = self
            .run(move || {
                let made = fresh.and_then(|cost| make_bcrypt_dummy(cost).map(|h| (cost, h)));
                let ok = kinds.verify(&password, &stored);
                if let Some(pad) = pad {
                    let _ = kinds.verify(&password, &pad);
                }
                (ok, made)
            })
            .await?;
        if let Some((cost, hash)) = made {
            self.install_bcrypt_dummy(cost, hash);
        }
        Ok(ok)
    }

    /// Notes an imported `stored` hash: a bcrypt one makes every later
    /// login check pay a bcrypt verification too.
    pub async fn note_hash(&self, stored: &str) -> StoreResult<()> {
        if let Some(cost) = self.note_hash_prepare(stored) {
            let made = self.run(move || make_bcrypt_dummy(cost)).await?;
            if let Some(hash) = made {
                self.install_bcrypt_dummy(cost, hash);
            }
        }
        Ok(())
    }

    /// The bcrypt cost to make a dummy at, when `stored` is bcrypt at a
    /// higher cost than the current dummy's (capped).
    fn note_hash_prepare(&self, stored: &str) -> Option<u32> {
        let cost = bcrypt_cost(stored)?.clamp(4, MAX_BCRYPT_PADDING_COST);
        let current = self
            .bcrypt_dummy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|d| d.cost);
        match current {
            Some(c) if c >= cost => None,
            _ => Some(cost),
        }
    }

    fn install_bcrypt_dummy(&self, cost: u32, hash: String) {
        let mut slot = self.bcrypt_dummy.write().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|d| d.cost < cost) {
            *slot = Some(BcryptDummy {
                cost,
                hash: hash.into(),
            });
        }
    }

    fn bcrypt_padding(&self) -> Option<Arc<str>> {
        self.bcrypt_dummy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|d| d.hash.clone())
    }

    /// Login-check verifications made so far, by hash kind.
    pub fn verifications(&self) -> Verifications {
        Verifications {
            argon2id: self.kinds.argon2id.load(Ordering::Relaxed),
            bcrypt: self.kinds.bcrypt.load(Ordering::Relaxed),
        }
    }

    /// How many dummy verifications were made only to equalise the cost of
    /// hash kinds (observability and tests).
    pub fn padding_verifications(&self) -> u64 {
        self.padding_verifications.load(Ordering::Relaxed)
    }

    /// How many dummy verifications were made (observability and tests).
    pub fn dummy_verifications(&self) -> u64 {
        self.dummy_verifications.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_round_trip_and_rehash_policy() {
        let h = hash_blocking("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_blocking("correct horse", &h));
        assert!(!verify_blocking("wrong", &h));
        assert!(!needs_rehash(&h));
        assert!(!verify_blocking("x", "not a hash"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashing_is_bounded_and_so_is_waiting() {
        // One slot, 1 ms of patience: of 8 logins at once, the first hashes
        // and the others are refused as busy rather than queued.
        let hasher = PasswordHasher::with_limits(1, Duration::from_millis(1)).expect("hasher");
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let h = hasher.clone();
                tokio::spawn(async move { h.verify_dummy("pw").await })
            })
            .collect();
        let (mut ok, mut busy) = (0, 0);
        for t in tasks {
            match t.await.expect("task") {
                Ok(false) => ok += 1,
                Err(e) => {
                    assert_eq!(e.code(), "backend.unavailable");
                    assert!(matches!(e, StoreError::Busy));
                    busy += 1;
                }
                Ok(true) => panic!("the dummy hash never matches"),
            }
        }
        assert!(ok >= 1, "a slot was free");
        assert!(busy >= 1, "the others were refused, not queued");
        assert_eq!(hasher.waiting.load(Ordering::Acquire), 0);

        // Patience enough: everyone gets a slot in turn.
        let patient = PasswordHasher::with_limits(1, Duration::from_secs(30)).expect("hasher");
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let h = patient.clone();
                tokio::spawn(async move { h.verify_dummy("pw").await })
            })
            .collect();
        for t in tasks {
            assert!(!t.await.expect("task").expect("a slot in time"));
        }

        // The line itself is bounded: with no one allowed to wait, a
        // second caller is refused at once.
        let strict = PasswordHasher::with_limits(1, Duration::from_secs(30)).expect("hasher");
        let held = strict.slots.clone().try_acquire_owned().expect("free");
        let mut strict_line = strict.clone();
        strict_line.max_waiting = 0;
        assert!(matches!(
            strict_line.verify_dummy("pw").await,
            Err(StoreError::Busy)
        ));
        drop(held);
        assert!(!strict.verify_dummy("pw").await.expect("free again"));
    }

    /// What one login check ran, by hash kind.
    async fn ran(hasher: &PasswordHasher, check: impl Future<Output = bool>) -> (bool, u64, u64) {
        let before = hasher.verifications();
        let ok = check.await;
        let after = hasher.verifications();
        (
            ok,
            after.argon2id - before.argon2id,
            after.bcrypt - before.bcrypt,
        )
    }

    /// Once a bcrypt hash is present, every login check runs one argon2id
    /// and one bcrypt verification: an unknown user's (two dummies), an
    /// argon2id user's (plus the bcrypt dummy) and a bcrypt user's (plus
    /// the argon2id dummy). Asserted on which hashers ran, not on time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_login_check_pays_each_hash_kind_present() {
        let hasher = PasswordHasher::new().expect("hasher");
        let argon = hash_blocking("pw").expect("argon2id");
        // Only argon2id present: one argon2id verification each, no bcrypt.
        let dummy = ran(&hasher, async {
            hasher.verify_dummy("pw").await.expect("dummy")
        });
        assert_eq!(dummy.await, (false, 1, 0));
        let user = ran(&hasher, async {
            hasher.verify_login("pw", &argon).await.expect("argon")
        });
        assert_eq!(user.await, (true, 1, 0));
        assert_eq!(hasher.padding_verifications(), 0);
        // A bcrypt user logs in: padded with the argon2id dummy, and from
        // now on the others are padded with a bcrypt dummy at its cost.
        let bcrypt = bcrypt::hash("pw", 5).expect("bcrypt");
        let user = ran(&hasher, async {
            hasher.verify_login("pw", &bcrypt).await.expect("bcrypt")
        });
        assert_eq!(user.await, (true, 1, 1));
        let dummy = ran(&hasher, async {
            hasher.verify_dummy("pw").await.expect("dummy")
        });
        assert_eq!(dummy.await, (false, 1, 1));
        let user = ran(&hasher, async {
            hasher.verify_login("pw", &argon).await.expect("argon")
        });
        assert_eq!(user.await, (true, 1, 1));
        let wrong = ran(&hasher, async {
            hasher.verify_login("no", &bcrypt).await.expect("bcrypt")
        });
        assert_eq!(wrong.await, (false, 1, 1));
        assert_eq!(hasher.padding_verifications(), 4);
        let dummy = hasher.bcrypt_padding().expect("a bcrypt dummy");
        assert_eq!(bcrypt_cost(&dummy), Some(5));
        // An import alone is enough to start padding, at the import's cost.
        let imported = PasswordHasher::new().expect("hasher");
        imported
            .note_hash(&bcrypt::hash("x", 6).expect("bcrypt"))
            .await
            .expect("note");
        let dummy = ran(&imported, async {
            imported.verify_dummy("pw").await.expect("dummy")
        });
        assert_eq!(dummy.await, (false, 1, 1));
        let padding = imported.bcrypt_padding().expect("a bcrypt dummy");
        assert_eq!(bcrypt_cost(&padding), Some(6));
    }

    #[test]
    fn bcrypt_is_accepted_and_flagged_for_rehash() {
        let h = bcrypt::hash("hunter2", 4).expect("bcrypt");
        assert!(h.starts_with("$2b$"));
        assert!(verify_blocking("hunter2", &h));
        assert!(!verify_blocking("hunter3", &h));
        assert!(needs_rehash(&h));
        let a = h.replacen("$2b$", "$2a$", 1);
        assert!(verify_blocking("hunter2", &a));
    }
}
