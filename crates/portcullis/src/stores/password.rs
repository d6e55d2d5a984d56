//! Password hashing: argon2id with the OWASP parameters (m = 19456 KiB,
//! t = 2, p = 1); bcrypt (`$2a$` / `$2b$`) accepted for imported accounts
//! and reported as needing a rehash. Hashing runs on the blocking pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Hashes and verifies passwords off the async threads; verifies a fixed
/// dummy hash for unknown users so both paths cost one argon2id verification.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    dummy: Arc<str>,
    dummy_verifications: Arc<AtomicU64>,
}

impl PasswordHasher {
    /// A hasher with a freshly made dummy hash (one argon2id hash, at start-up).
    pub fn new() -> StoreResult<Self> {
        let mut random = [0u8; 32];
        portcullis_core::opaque::fill_random(&mut random)
            .map_err(|_| StoreError::Unavailable("system random source".into()))?;
        let dummy = hash_blocking(&portcullis_core::jose::b64_encode(&random))?;
        Ok(Self {
            dummy: dummy.into(),
            dummy_verifications: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Hashes `password` with argon2id on the blocking pool.
    pub async fn hash(&self, password: &str) -> StoreResult<String> {
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || hash_blocking(&password))
            .await
            .map_err(|e| StoreError::Unavailable(format!("hashing task: {e}")))?
    }

    /// Verifies `password` against `stored` on the blocking pool.
    pub async fn verify(&self, password: &str, stored: &str) -> StoreResult<bool> {
        let (password, stored) = (password.to_owned(), stored.to_owned());
        tokio::task::spawn_blocking(move || verify_blocking(&password, &stored))
            .await
            .map_err(|e| StoreError::Unavailable(format!("hashing task: {e}")))
    }

    /// Verifies `password` against the dummy hash (always false): the cost of
    /// a login for a username that does not exist.
    pub async fn verify_dummy(&self, password: &str) -> StoreResult<bool> {
        self.dummy_verifications.fetch_add(1, Ordering::Relaxed);
        let dummy = self.dummy.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || verify_blocking(&password, &dummy))
            .await
            .map_err(|e| StoreError::Unavailable(format!("hashing task: {e}")))
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
