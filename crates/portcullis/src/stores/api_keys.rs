//! API keys: `pck_` + id (16 random bytes) + secret (32 random bytes) +
//! checksum, base64url. The checksum is the first 4 bytes of the SHA-256 of
//! the rest, public so that a mistyped key is rejected without a lookup and
//! secret scanners can recognise a key offline. At rest only a keyed hash
//! (HMAC-SHA256 with the server pepper) is stored, as for every secret.
//!
//! A replica keeps the keys it verified in the last `revocation_cache_ttl`
//! (at most 1 s) in memory, so a repeated key skips hashing and the store:
//! revocation still reaches every replica within that bound, and the
//! replica that revokes forgets every verified key at once. An entry is
//! trusted until the time its record was fetched from the backend + the
//! TTL, whatever happens to it meanwhile (hits and `last_used_at` touches
//! do not extend it).

use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use foldhash::quality::FixedState;
use portcullis_core::SecretHasher;
use portcullis_core::jose::b64_encode;
use portcullis_core::opaque::ct_eq;

use super::input;
use super::{ApiKeyRecord, StoreError, StoreResult, Stores};

/// Prefix of every API key.
pub const API_KEY_PREFIX: &str = "pck_";
const ID_CHARS: usize = 22; // 16 bytes
const SECRET_CHARS: usize = 43; // 32 bytes
const CHECKSUM_CHARS: usize = 6; // 4 bytes
const KEY_LEN: usize = 4 + ID_CHARS + SECRET_CHARS + CHECKSUM_CHARS;

/// What is needed to create an API key.
#[derive(Debug, Clone, Default)]
pub struct NewApiKey {
    /// Human name.
    pub name: String,
    /// Owner (user or service id).
    pub owner: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Optional expiry, Unix seconds.
    pub expires_at: Option<i64>,
}

/// A created key: the raw key is shown once and never stored.
#[derive(Clone)]
pub struct CreatedApiKey {
    /// The raw key; give it to the caller once.
    pub key: String,
    /// What was stored.
    pub record: ApiKeyRecord,
}

impl std::fmt::Debug for CreatedApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApiKey")
            .field("key", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

fn checksum(body: &[u8]) -> [u8; 4] {
    let d = digest::digest(&digest::SHA256, body);
    let mut out = [0u8; 4];
    out.copy_from_slice(&d.as_ref()[..4]);
    out
}

/// Splits a presented key into (id, everything before the checksum) when
/// its shape and checksum are right.
pub fn parse_api_key(key: &str) -> Option<(&str, &str)> {
    if key.len() != KEY_LEN || !key.starts_with(API_KEY_PREFIX) || !key.is_ascii() {
        return None;
    }
    let (body, sum) = key.split_at(KEY_LEN - CHECKSUM_CHARS);
    let mut given = [0u8; 6];
    let n = portcullis_core::jose::b64_decode_into(sum.as_bytes(), &mut given)?;
    if n != 4 || given[..4] != checksum(body.as_bytes()) {
        return None;
    }
    Some((&body[4..4 + ID_CHARS], body))
}

/// A new key: (id, raw key, keyed hash to store).
fn generate(hasher: &SecretHasher) -> StoreResult<(String, String, [u8; 32])> {
    let mut random = [0u8; 48];
    portcullis_core::opaque::fill_random(&mut random)
        .map_err(|_| StoreError::Unavailable("system random source".into()))?;
    let id = b64_encode(&random[..16]);
    let body = format!("{API_KEY_PREFIX}{id}{}", b64_encode(&random[16..]));
    let key = format!("{body}{}", b64_encode(&checksum(body.as_bytes())));
    Ok((id, key, hasher.hash(&body)))
}

/// Keys this replica verified within the revocation bound (see the module
/// docs). Entries are found by a seeded hash of the raw key and confirmed by
/// a constant-time comparison of the whole key.
pub(crate) struct VerifiedKeys {
    seed: FixedState,
    cache: Option<moka::sync::Cache<u64, Arc<Verified>>>,
    /// Bumped by every local revocation: older entries no longer count.
    generation: AtomicU64,
}

pub(crate) struct Verified {
    key: Box<str>,
    record: Arc<ApiKeyRecord>,
    generation: u64,
    /// Fetch time of the record + TTL: never extended.
    deadline: Instant,
}

impl std::fmt::Debug for VerifiedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedKeys").finish_non_exhaustive()
    }
}

impl VerifiedKeys {
    /// At most 100 000 keys for `ttl` each (zero: no cache).
    pub(crate) fn new(ttl: Duration) -> Self {
        let mut seed = [0u8; 8];
        // Without randomness the cache is simply not used.
        let random = portcullis_core::opaque::fill_random(&mut seed).is_ok();
        Self {
            seed: FixedState::with_seed(u64::from_le_bytes(seed)),
            cache: (random && !ttl.is_zero()).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(ttl)
                    .build()
            }),
            generation: AtomicU64::new(0),
        }
    }

    /// The verified record and its deadline.
    fn get(&self, key: &str) -> Option<(Arc<ApiKeyRecord>, Instant)> {
        let hit = self.cache.as_ref()?.get(&self.seed.hash_one(key))?;
        (hit.generation == self.generation.load(Ordering::Acquire)
            && Instant::now() < hit.deadline
            && ct_eq(hit.key.as_bytes(), key.as_bytes()))
        .then(|| (Arc::clone(&hit.record), hit.deadline))
    }

    /// Remembers a verified key until `deadline` (its record's fetch time + TTL).
    fn insert(&self, key: &str, record: &Arc<ApiKeyRecord>, deadline: Instant) {
        if let Some(cache) = &self.cache {
            let entry = Verified {
                key: key.into(),
                record: Arc::clone(record),
                generation: self.generation.load(Ordering::Acquire),
                deadline,
            };
            cache.insert(self.seed.hash_one(key), Arc::new(entry));
        }
    }

    /// Forgets every key verified so far (a local revocation or touch).
    fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl Stores {
    /// Creates an API key; the raw key is in the answer and nowhere else.
    pub async fn create_api_key(&self, new: &NewApiKey) -> StoreResult<CreatedApiKey> {
        let name = input::bounded("name", &new.name, input::MAX_NAME)?;
        let owner = input::bounded("owner", &new.owner, input::MAX_ID)?;
        let roles = input::name_list("roles", &new.roles)?;
        let permissions = input::name_list("permissions", &new.permissions)?;
        let scopes = input::name_list("scopes", &new.scopes)?;
        let now = self.now();
        if new.expires_at.is_some_and(|e| e <= now) {
            return Err(StoreError::invalid("expires_at", "must be in the future"));
        }
        let (id, key, hash) = generate(&self.config.hasher)?;
        let record = ApiKeyRecord {
            id,
            hash,
            name,
            owner,
            roles,
            permissions,
            scopes,
            expires_at: new.expires_at,
            created_at: now,
            revoked_at: None,
            last_used_at: None,
        };
        self.backends.api_keys.insert_api_key(&record).await?;
        Ok(CreatedApiKey { key, record })
    }

    /// An owner's keys (hashes included, raw keys never).
    pub async fn api_keys_of(&self, owner: &str) -> StoreResult<Vec<ApiKeyRecord>> {
        let owner = input::bounded("owner", owner, input::MAX_ID)?;
        let mut keys = self.backends.api_keys.api_keys_of(&owner).await?;
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    /// The key with this id (hash included, never the raw key), revoked or
    /// not; `None` when there is none.
    pub async fn api_key(&self, id: &str) -> StoreResult<Option<Arc<ApiKeyRecord>>> {
        let id = input::bounded("id", id, input::MAX_ID)?;
        self.backends.api_keys.api_key(&id).await
    }

    /// Revokes a key by id: this replica refuses it before the call
    /// returns; the others when their revocation set reads the entry the
    /// backend appended (one poll, well under 1 s), or, for a backend
    /// without a log, when their cached record expires (at most 1 s).
    pub async fn revoke_api_key(&self, id: &str) -> StoreResult<bool> {
        let id = input::bounded("id", id, input::MAX_ID)?;
        let now = self.now();
        let revoked = self.backends.api_keys.revoke_api_key(&id, now).await?;
        if revoked {
            self.revocations.insert(
                super::RevokedKind::ApiKey,
                &id,
                super::revocation_set::session_entry_expiry(now),
            );
        }
        self.caches.api_keys.invalidate(&id);
        self.verified_keys.forget_all();
        Ok(revoked)
    }

    /// Whether the revocation set holds the key's revocation (the check
    /// that reaches other replicas' revocations before their caches expire).
    fn key_revoked_in_set(&self, id: &str) -> bool {
        self.revocations.contains(super::RevokedKind::ApiKey, id)
    }

    /// Verifies a presented key: shape and checksum, lookup by id, constant-
    /// time hash comparison, revocation and expiry. `last_used_at` is written
    /// at most once per `api_key_touch_interval` per key.
    pub async fn verify_api_key(&self, key: &str) -> StoreResult<Arc<ApiKeyRecord>> {
        let now = self.now();
        if let Some((record, deadline)) = self.verified_keys.get(key) {
            if record.expires_at.is_some_and(|e| e <= now) || self.key_revoked_in_set(&record.id) {
                return Err(StoreError::InvalidApiKey);
            }
            self.touch_if_due(key, &record, deadline, now).await;
            return Ok(record);
        }
        let (id, body) = parse_api_key(key).ok_or(StoreError::InvalidApiKey)?;
        if self.key_revoked_in_set(id) {
            return Err(StoreError::InvalidApiKey);
        }
        let cache = &self.caches.api_keys;
        let (record, deadline) = match cache.get_entry(id) {
            Some(hit) => hit,
            None => {
                let fetched_at = Instant::now();
                let found = self.backends.api_keys.api_key(id).await?;
                cache.insert_fetched(id, found.clone(), fetched_at);
                (found, cache.deadline(fetched_at))
            }
        };
        let record = record.ok_or(StoreError::InvalidApiKey)?;
        if !self.config.hasher.matches(body, &record.hash)
            || record.revoked_at.is_some()
            || record.expires_at.is_some_and(|e| e <= now)
        {
            return Err(StoreError::InvalidApiKey);
        }
        self.verified_keys.insert(key, &record, deadline);
        self.touch_if_due(key, &record, deadline, now).await;
        Ok(record)
    }

    /// Writes `last_used_at` when the last write is older than
    /// `api_key_touch_interval` (best effort: a failed touch never fails
    /// the request). The cached entry keeps its deadline: a touch never
    /// extends how long this replica trusts the record.
    async fn touch_if_due(&self, key: &str, record: &ApiKeyRecord, deadline: Instant, now: i64) {
        let id = record.id.as_str();
        let interval = i64::try_from(self.config.api_key_touch_interval.as_secs()).unwrap_or(60);
        if record
            .last_used_at
            .is_none_or(|at| now.saturating_sub(at) >= interval)
        {
            // Best effort: a failed touch must not fail the request.
            if let Err(e) = self.backends.api_keys.touch_api_key(id, now).await {
                tracing::warn!(error = %e, "API key last_used_at update failed");
            }
            self.caches.api_keys.invalidate(id);
            // This replica's next checks see the new time, until the
            // record's own deadline.
            let mut touched = record.clone();
            touched.last_used_at = Some(now);
            self.verified_keys.insert(key, &Arc::new(touched), deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::jose::b64_decode;

    #[test]
    fn generated_keys_parse_and_typos_do_not() {
        let hasher = SecretHasher::new(&[3u8; 32]).expect("pepper");
        let (id, key, hash) = generate(&hasher).expect("random");
        assert_eq!(key.len(), KEY_LEN);
        let (pid, body) = parse_api_key(&key).expect("well formed");
        assert_eq!(pid, id);
        // Stored: the keyed hash, never the plain digest the checksum uses.
        assert!(hasher.matches(body, &hash));
        assert_ne!(
            hash.as_slice(),
            digest::digest(&digest::SHA256, body.as_bytes()).as_ref()
        );
        assert!(b64_decode(id.as_bytes()).is_some_and(|b| b.len() == 16));
        let mut bad = key.into_bytes();
        bad[30] = if bad[30] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).expect("ascii");
        assert!(parse_api_key(&bad).is_none());
        assert!(parse_api_key("pck_short").is_none());
    }
}
