//! How revocation reaches every replica: short-lived caches.
//!
//! Session, API-key and app lookups go through per-replica caches whose
//! entries live at most `revocation_cache_ttl` (at most 1 s, enforced at
//! start-up). A revocation written to the shared backend (PostgreSQL, Redis)
//! is therefore honoured by every replica within that TTL; the replica that
//! revokes drops its own entry at once. With the TTL set to zero there is no
//! cache and every check asks the backend. The access-token denylist is not
//! cached: every check is one O(1) backend lookup.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use super::{ApiKeyRecord, AppRecord};

/// Most entries per cache.
const MAX_ENTRIES: u64 = 100_000;

/// A cache that may be switched off (TTL zero).
#[derive(Debug, Clone)]
pub struct TtlCache<V: Clone + Send + Sync + 'static> {
    inner: Option<Cache<String, V>>,
}

impl<V: Clone + Send + Sync + 'static> TtlCache<V> {
    fn new(ttl: Duration) -> Self {
        Self {
            inner: (!ttl.is_zero()).then(|| {
                Cache::builder()
                    .max_capacity(MAX_ENTRIES)
                    .time_to_live(ttl)
                    .build()
            }),
        }
    }

    /// The cached value.
    pub fn get(&self, key: &str) -> Option<V> {
        self.inner.as_ref()?.get(key)
    }

    /// Caches a value.
    pub fn insert(&self, key: &str, value: V) {
        if let Some(c) = &self.inner {
            c.insert(key.to_owned(), value);
        }
    }

    /// Drops one entry.
    pub fn invalidate(&self, key: &str) {
        if let Some(c) = &self.inner {
            c.invalidate(key);
        }
    }

    /// Drops every entry.
    pub fn invalidate_all(&self) {
        if let Some(c) = &self.inner {
            c.invalidate_all();
        }
    }
}

/// The per-replica caches in front of the revocable stores.
#[derive(Debug, Clone)]
pub struct RevocationCaches {
    /// Session id -> expiry of a live session (`None`: absent or revoked).
    pub sessions: TtlCache<Option<i64>>,
    /// API key id -> record.
    pub api_keys: TtlCache<Option<Arc<ApiKeyRecord>>>,
    /// App id -> record.
    pub apps: TtlCache<Option<AppRecord>>,
}

impl RevocationCaches {
    /// Caches whose entries live `ttl` (zero: no caching).
    pub fn new(ttl: Duration) -> Self {
        Self {
            sessions: TtlCache::new(ttl),
            api_keys: TtlCache::new(ttl),
            apps: TtlCache::new(ttl),
        }
    }
}
