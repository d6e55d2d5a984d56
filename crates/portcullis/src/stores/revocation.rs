//! How revocation of API keys, apps and users reaches every replica:
//! short-lived caches. (Denied `jti`s and revoked sessions are held by the
//! local [`super::RevocationSet`] instead.)
//!
//! API-key, app and user-status lookups go
//! through per-replica caches whose entries live at most
//! `revocation_cache_ttl` (at most 1 s, enforced at start-up). A revocation
//! written to the shared backend (PostgreSQL, Redis) is therefore honoured
//! by every replica within that TTL; the replica that revokes drops its own
//! entry at once. An entry's deadline is fixed when the backend is asked
//! (fetch time + TTL) and nothing extends it: not a hit, not a re-insert,
//! not an API key's `last_used_at` touch. With the TTL set to zero there is
//! no cache and every check asks the backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use super::{ApiKeyRecord, AppRecord};

/// Most entries per cache.
const MAX_ENTRIES: u64 = 100_000;

/// A cache that may be switched off (TTL zero). Each value carries the
/// deadline it got when it was fetched; a value past it is never returned.
#[derive(Debug, Clone)]
pub struct TtlCache<V: Clone + Send + Sync + 'static> {
    inner: Option<Cache<String, (V, Instant)>>,
    ttl: Duration,
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
            ttl,
        }
    }

    /// The cached value, if still within its deadline.
    pub fn get(&self, key: &str) -> Option<V> {
        self.get_entry(key).map(|(v, _)| v)
    }

    /// The cached value and its deadline (fetch time + TTL).
    pub(crate) fn get_entry(&self, key: &str) -> Option<(V, Instant)> {
        let (value, deadline) = self.inner.as_ref()?.get(key)?;
        (Instant::now() < deadline).then_some((value, deadline))
    }

    /// Caches a value fetched just now.
    pub fn insert(&self, key: &str, value: V) {
        self.insert_fetched(key, value, Instant::now());
    }

    /// Caches a value the backend was asked for at `fetched_at`: it is
    /// trusted until `fetched_at` + TTL, and not a moment longer.
    pub(crate) fn insert_fetched(&self, key: &str, value: V, fetched_at: Instant) {
        if let Some(c) = &self.inner {
            c.insert(key.to_owned(), (value, self.deadline(fetched_at)));
        }
    }

    /// The deadline of a value fetched at `fetched_at`.
    pub(crate) fn deadline(&self, fetched_at: Instant) -> Instant {
        fetched_at + self.ttl
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
    /// API key id -> record.
    pub api_keys: TtlCache<Option<Arc<ApiKeyRecord>>>,
    /// App id -> record.
    pub apps: TtlCache<Option<AppRecord>>,
    /// User id -> whether that user is disabled (`false` also for an id
    /// that names no user).
    pub users_disabled: TtlCache<bool>,
}

impl RevocationCaches {
    /// Caches whose entries live `ttl` (zero: no caching).
    pub fn new(ttl: Duration) -> Self {
        Self {
            api_keys: TtlCache::new(ttl),
            apps: TtlCache::new(ttl),
            users_disabled: TtlCache::new(ttl),
        }
    }
}
