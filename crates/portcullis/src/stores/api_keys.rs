//! API keys: `pck_` + id (16 random bytes) + secret (32 random bytes) +
//! checksum, base64url. Only the SHA-256 of the key is stored: the key
//! carries 256 random bits, so an unkeyed fast hash cannot be brute-forced
//! and keeps verification in the hundreds of nanoseconds. The checksum is
//! the first 4 bytes of that same digest, so a mistyped key is rejected
//! without a store lookup and verification hashes once.

use std::sync::Arc;

use aws_lc_rs::digest;
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

fn digest_of(body: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, body);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Splits a presented key into (id, SHA-256 of everything before the
/// checksum) when its shape and checksum are right.
pub fn parse_api_key(key: &str) -> Option<(&str, [u8; 32])> {
    if key.len() != KEY_LEN || !key.starts_with(API_KEY_PREFIX) || !key.is_ascii() {
        return None;
    }
    let (body, sum) = key.split_at(KEY_LEN - CHECKSUM_CHARS);
    let hash = digest_of(body.as_bytes());
    let mut given = [0u8; 6];
    let n = portcullis_core::jose::b64_decode_into(sum.as_bytes(), &mut given)?;
    if n != 4 || given[..4] != hash[..4] {
        return None;
    }
    Some((&body[4..4 + ID_CHARS], hash))
}

fn generate() -> StoreResult<(String, String, [u8; 32])> {
    let mut random = [0u8; 48];
    portcullis_core::opaque::fill_random(&mut random)
        .map_err(|_| StoreError::Unavailable("system random source".into()))?;
    let id = b64_encode(&random[..16]);
    let body = format!("{API_KEY_PREFIX}{id}{}", b64_encode(&random[16..]));
    let hash = digest_of(body.as_bytes());
    let key = format!("{body}{}", b64_encode(&hash[..4]));
    Ok((id, key, hash))
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
        let (id, key, hash) = generate()?;
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

    /// Revokes a key by id; other replicas stop accepting it within the
    /// revocation cache TTL (at most 1 s).
    pub async fn revoke_api_key(&self, id: &str) -> StoreResult<bool> {
        let id = input::bounded("id", id, input::MAX_ID)?;
        let revoked = self
            .backends
            .api_keys
            .revoke_api_key(&id, self.now())
            .await?;
        self.caches.api_keys.invalidate(&id);
        Ok(revoked)
    }

    /// Verifies a presented key: shape and checksum, lookup by id, constant-
    /// time hash comparison, revocation and expiry. `last_used_at` is written
    /// at most once per `api_key_touch_interval` per key.
    pub async fn verify_api_key(&self, key: &str) -> StoreResult<Arc<ApiKeyRecord>> {
        let (id, hash) = parse_api_key(key).ok_or(StoreError::InvalidApiKey)?;
        let record = match self.caches.api_keys.get(id) {
            Some(hit) => hit,
            None => {
                let found = self.backends.api_keys.api_key(id).await?;
                self.caches.api_keys.insert(id, found.clone());
                found
            }
        };
        let record = record.ok_or(StoreError::InvalidApiKey)?;
        let now = self.now();
        if !ct_eq(&record.hash, &hash)
            || record.revoked_at.is_some()
            || record.expires_at.is_some_and(|e| e <= now)
        {
            return Err(StoreError::InvalidApiKey);
        }
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
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::jose::b64_decode;

    #[test]
    fn generated_keys_parse_and_typos_do_not() {
        let (id, key, hash) = generate().expect("random");
        assert_eq!(key.len(), KEY_LEN);
        let (pid, phash) = parse_api_key(&key).expect("well formed");
        assert_eq!(pid, id);
        assert_eq!(phash, hash);
        assert!(b64_decode(id.as_bytes()).is_some_and(|b| b.len() == 16));
        let mut bad = key.into_bytes();
        bad[30] = if bad[30] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).expect("ascii");
        assert!(parse_api_key(&bad).is_none());
        assert!(parse_api_key("pck_short").is_none());
    }
}
