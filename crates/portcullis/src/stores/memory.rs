//! Every store in this process's memory: sharded maps behind short mutexes.
//! For a single gateway and for tests; nothing survives a restart and
//! nothing is shared with other replicas.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, MutexGuard};

use super::revocation_set::session_entry_expiry;
use super::{
    ApiKeyRecord, ApiKeyStore, AppRecord, AppStore, BoxFuture, Denylist, LoggedRevocation,
    PendingKey, RefreshRecord, RefreshStore, RevocationLog, RevocationPage, RevokedKind, Session,
    SessionStore, SigningKeyRecord, SigningKeyStore, StoreError, StoreResult, User, UserStore,
    Username,
};

const SHARDS: usize = 16;

/// A map split into mutex-guarded shards.
#[derive(Debug)]
struct Sharded<K, V> {
    hasher: foldhash::fast::RandomState,
    shards: Vec<Mutex<HashMap<K, V>>>,
}

impl<K: Hash + Eq, V> Default for Sharded<K, V> {
    fn default() -> Self {
        Self {
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard cannot leave a map half-updated in a
    // way that matters here: every update is a single insert or field write.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, HashMap<K, V>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        lock(&self.shards[i])
    }

    fn each(&self, mut f: impl FnMut(&mut HashMap<K, V>)) {
        for s in &self.shards {
            f(&mut lock(s));
        }
    }
}

#[derive(Debug, Default)]
struct Users {
    by_id: HashMap<String, User>,
    id_by_key: HashMap<String, String>,
}

/// All six stores in memory.
#[derive(Debug, Default)]
pub struct MemoryStores {
    users: Mutex<Users>,
    sessions: Sharded<String, Session>,
    refresh: Sharded<[u8; 32], RefreshRecord>,
    families: Sharded<String, Vec<[u8; 32]>>,
    /// Rotated tokens whose successor was handed back within the reuse window.
    grace_claims: Sharded<[u8; 32], i64>,
    denylist: Sharded<String, i64>,
    api_keys: Sharded<String, Arc<ApiKeyRecord>>,
    apps: Sharded<String, AppRecord>,
    signing_keys: Mutex<std::collections::BTreeMap<String, SigningKeyRecord>>,
    /// The revocation log: `seq` -> entry, appended under the lock of the
    /// state it revokes.
    revocations: Mutex<RevocationLogState>,
}

#[derive(Debug, Default)]
struct RevocationLogState {
    head: u64,
    entries: std::collections::BTreeMap<u64, (RevokedKind, String, i64)>,
}

impl MemoryStores {
    fn log_revocation(&self, kind: RevokedKind, subject: &str, expires_at: i64) {
        let mut log = lock(&self.revocations);
        log.head += 1;
        let seq = log.head;
        log.entries
            .insert(seq, (kind, subject.to_owned(), expires_at));
    }
}

impl RevocationLog for MemoryStores {
    fn revocations_after(
        &self,
        after: u64,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<RevocationPage>> {
        let log = lock(&self.revocations);
        let entries = log
            .entries
            .range(after.saturating_add(1)..)
            .filter(|(_, (_, _, exp))| *exp > now)
            .take(limit)
            .map(|(&seq, (kind, subject, exp))| LoggedRevocation {
                seq,
                kind: *kind,
                subject: subject.clone(),
                expires_at: *exp,
            })
            .collect();
        ready(Ok(RevocationPage {
            entries,
            head: log.head,
        }))
    }

    fn purge_revocations(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>> {
        let mut log = lock(&self.revocations);
        let before = log.entries.len();
        log.entries.retain(|_, (_, _, exp)| *exp > now);
        ready(Ok((before - log.entries.len()) as u64))
    }
}

impl MemoryStores {
    /// Empty stores.
    pub fn new() -> Self {
        Self::default()
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl UserStore for MemoryStores {
    fn insert_user<'a>(&'a self, user: &'a User) -> BoxFuture<'a, StoreResult<()>> {
        let key = user.username.to_lowercase();
        let mut users = lock(&self.users);
        let r = if users.id_by_key.contains_key(&key) || users.by_id.contains_key(&user.id) {
            Err(StoreError::Conflict("username"))
        } else {
            users.id_by_key.insert(key, user.id.clone());
            users.by_id.insert(user.id.clone(), user.clone());
            Ok(())
        };
        ready(r)
    }

    fn user_by_username<'a>(
        &'a self,
        username: &'a Username,
    ) -> BoxFuture<'a, StoreResult<Option<User>>> {
        let users = lock(&self.users);
        let found = users
            .id_by_key
            .get(username.key())
            .and_then(|id| users.by_id.get(id))
            .cloned();
        ready(Ok(found))
    }

    fn user_by_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<User>>> {
        ready(Ok(lock(&self.users).by_id.get(id).cloned()))
    }

    fn set_password_hash<'a>(
        &'a self,
        id: &'a str,
        hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        let mut users = lock(&self.users);
        let found = users.by_id.get_mut(id).map(|u| {
            u.password_hash = hash.to_owned();
            u.updated_at = now;
        });
        ready(Ok(found.is_some()))
    }

    fn replace_password_hash<'a>(
        &'a self,
        id: &'a str,
        expected: &'a str,
        hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        let mut users = lock(&self.users);
        let swapped = users
            .by_id
            .get_mut(id)
            .filter(|u| u.password_hash == expected)
            .map(|u| {
                u.password_hash = hash.to_owned();
                u.updated_at = now;
            });
        ready(Ok(swapped.is_some()))
    }

    fn set_user_disabled<'a>(
        &'a self,
        id: &'a str,
        disabled: bool,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        let mut users = lock(&self.users);
        let found = users.by_id.get_mut(id).map(|u| {
            u.disabled = disabled;
            u.updated_at = now;
        });
        if found.is_some() {
            // Under the users lock: log order is the order of the changes.
            let kind = RevokedKind::user_status(disabled);
            self.log_revocation(kind, id, session_entry_expiry(now));
        }
        ready(Ok(found.is_some()))
    }

    fn set_user_grants<'a>(
        &'a self,
        id: &'a str,
        roles: &'a [String],
        permissions: &'a [String],
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        let mut users = lock(&self.users);
        let found = users.by_id.get_mut(id).map(|u| {
            u.roles = roles.to_vec();
            u.permissions = permissions.to_vec();
            u.updated_at = now;
        });
        ready(Ok(found.is_some()))
    }

    fn list_users<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<User>>> {
        let users = lock(&self.users);
        // One process's users: a sort per page is fine at this size.
        let mut keys: Vec<&String> = users
            .id_by_key
            .keys()
            .filter(|k| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a))
            .collect();
        keys.sort_unstable();
        let page = keys
            .into_iter()
            .take(limit)
            .filter_map(|k| users.id_by_key.get(k).and_then(|id| users.by_id.get(id)))
            .cloned()
            .collect();
        ready(Ok(page))
    }

    fn delete_user<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        let mut users = lock(&self.users);
        let removed = users.by_id.remove(id);
        if let Some(u) = &removed {
            users.id_by_key.remove(&u.username.to_lowercase());
        }
        ready(Ok(removed.is_some()))
    }

    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        Some(self)
    }
}

impl SessionStore for MemoryStores {
    fn insert_session<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, StoreResult<()>> {
        let mut shard = self.sessions.shard(session.id.as_str());
        let r = if shard.contains_key(&session.id) {
            Err(StoreError::Conflict("session"))
        } else {
            shard.insert(session.id.clone(), session.clone());
            Ok(())
        };
        ready(r)
    }

    fn session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Session>>> {
        ready(Ok(self.sessions.shard(id).get(id).cloned()))
    }

    fn live_session_expiry<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<i64>>> {
        let live = self
            .sessions
            .shard(id)
            .get(id)
            .filter(|s| s.revoked_at.is_none())
            .map(|s| s.expires_at);
        ready(Ok(live))
    }

    fn sessions_of<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, StoreResult<Vec<Session>>> {
        let mut out = Vec::new();
        self.sessions.each(|m| {
            out.extend(m.values().filter(|s| s.user_id == user_id).cloned());
        });
        ready(Ok(out))
    }

    fn touch_session<'a>(
        &'a self,
        id: &'a str,
        now: i64,
        stale_before: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        let mut shard = self.sessions.shard(id);
        let touched = match shard.get_mut(id) {
            Some(s) if s.revoked_at.is_none() && s.last_seen_at <= stale_before => {
                s.last_seen_at = now;
                true
            }
            _ => false,
        };
        ready(Ok(touched))
    }

    fn revoke_session<'a>(&'a self, id: &'a str, now: i64) -> BoxFuture<'a, StoreResult<bool>> {
        let mut shard = self.sessions.shard(id);
        let revoked = match shard.get_mut(id) {
            Some(s) if s.revoked_at.is_none() => {
                s.revoked_at = Some(now);
                self.log_revocation(RevokedKind::Session, id, session_entry_expiry(now));
                true
            }
            _ => false,
        };
        ready(Ok(revoked))
    }

    fn revoke_sessions_of<'a>(
        &'a self,
        user_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        let mut n = 0;
        self.sessions.each(|m| {
            for s in m.values_mut() {
                if s.user_id == user_id && s.revoked_at.is_none() {
                    s.revoked_at = Some(now);
                    self.log_revocation(RevokedKind::Session, &s.id, session_entry_expiry(now));
                    n += 1;
                }
            }
        });
        ready(Ok(n))
    }

    fn purge_expired_sessions(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>> {
        let mut n = 0u64;
        self.sessions.each(|m| {
            let before = m.len();
            m.retain(|_, s| s.expires_at > now);
            n += (before - m.len()) as u64;
        });
        ready(Ok(n))
    }

    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        Some(self)
    }
}

impl MemoryStores {
    fn add_to_family(&self, family: &str, hash: [u8; 32]) {
        self.families
            .shard(family)
            .entry(family.to_owned())
            .or_default()
            .push(hash);
    }
}

impl RefreshStore for MemoryStores {
    fn insert_refresh<'a>(&'a self, record: &'a RefreshRecord) -> BoxFuture<'a, StoreResult<()>> {
        {
            let mut shard = self.refresh.shard(&record.hash);
            if shard.contains_key(&record.hash) {
                return ready(Err(StoreError::Conflict("refresh token")));
            }
            shard.insert(record.hash, record.clone());
        }
        self.add_to_family(&record.family, record.hash);
        ready(Ok(()))
    }

    fn refresh_by_hash<'a>(
        &'a self,
        hash: &'a [u8; 32],
    ) -> BoxFuture<'a, StoreResult<Option<RefreshRecord>>> {
        ready(Ok(self.refresh.shard(hash).get(hash).cloned()))
    }

    fn rotate_refresh<'a>(
        &'a self,
        old: &'a [u8; 32],
        successor: &'a RefreshRecord,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        // The family's lock is held throughout, as `revoke_family` holds it:
        // a rotation is wholly before or wholly after a family revocation.
        let mut family = self.families.shard(successor.family.as_str());
        // The compare-and-set happens under the old token's shard lock.
        let won = {
            let mut shard = self.refresh.shard(old);
            match shard.get_mut(old) {
                Some(r) if r.rotated_at.is_none() && r.revoked_at.is_none() => {
                    r.rotated_at = Some(now);
                    r.successor = Some(successor.hash);
                    true
                }
                _ => false,
            }
        };
        if won {
            self.refresh
                .shard(&successor.hash)
                .insert(successor.hash, successor.clone());
            family
                .entry(successor.family.clone())
                .or_default()
                .push(successor.hash);
        }
        ready(Ok(won))
    }

    fn revoke_family<'a>(&'a self, family: &'a str, now: i64) -> BoxFuture<'a, StoreResult<u64>> {
        ready(Ok(self.revoke_family_now(family, now)))
    }

    fn revoke_families_of<'a>(
        &'a self,
        user_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        let mut families = Vec::new();
        self.refresh.each(|m| {
            families.extend(
                m.values()
                    .filter(|r| r.user_id == user_id && r.revoked_at.is_none())
                    .map(|r| r.family.clone()),
            );
        });
        families.sort_unstable();
        families.dedup();
        let n = families
            .iter()
            .map(|f| self.revoke_family_now(f, now))
            .sum();
        ready(Ok(n))
    }

    fn purge_expired_refresh(&self, before: i64) -> BoxFuture<'_, StoreResult<u64>> {
        let mut gone = Vec::new();
        self.refresh.each(|m| {
            m.retain(|h, r| {
                let keep = r.expires_at > before;
                if !keep {
                    gone.push((r.family.clone(), *h));
                }
                keep
            });
        });
        for (family, hash) in &gone {
            let mut members = self.families.shard(family.as_str());
            if let Some(list) = members.get_mut(family) {
                list.retain(|h| h != hash);
                if list.is_empty() {
                    members.remove(family);
                }
            }
            self.grace_claims.shard(hash).remove(hash);
        }
        ready(Ok(gone.len() as u64))
    }

    fn claim_reuse_grace<'a>(
        &'a self,
        _family: &'a str,
        hash: &'a [u8; 32],
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        let shard = self.refresh.shard(hash);
        let claimed = match shard.get(hash) {
            Some(r) if r.revoked_at.is_none() => {
                let mut claims = self.grace_claims.shard(hash);
                if claims.contains_key(hash) {
                    false
                } else {
                    claims.insert(*hash, now);
                    true
                }
            }
            _ => false,
        };
        ready(Ok(claimed))
    }
}

impl MemoryStores {
    /// Revokes a family under its lock (see `rotate_refresh`).
    fn revoke_family_now(&self, family: &str, now: i64) -> u64 {
        let members = self.families.shard(family);
        let mut n = 0;
        for h in members.get(family).into_iter().flatten() {
            if let Some(r) = self.refresh.shard(h).get_mut(h)
                && r.revoked_at.is_none()
            {
                r.revoked_at = Some(now);
                n += 1;
            }
        }
        n
    }
}

impl Denylist for MemoryStores {
    fn deny<'a>(&'a self, jti: &'a str, expires_at: i64) -> BoxFuture<'a, StoreResult<()>> {
        let mut shard = self.denylist.shard(jti);
        let e = shard.entry(jti.to_owned()).or_insert(expires_at);
        *e = (*e).max(expires_at);
        self.log_revocation(RevokedKind::Jti, jti, expires_at);
        ready(Ok(()))
    }

    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        Some(self)
    }

    fn is_denied<'a>(&'a self, jti: &'a str, now: i64) -> BoxFuture<'a, StoreResult<bool>> {
        let denied = self.denylist.shard(jti).get(jti).is_some_and(|&e| e > now);
        ready(Ok(denied))
    }

    fn purge_expired(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>> {
        let mut n = 0u64;
        self.denylist.each(|m| {
            let before = m.len();
            m.retain(|_, e| *e > now);
            n += (before - m.len()) as u64;
        });
        ready(Ok(n))
    }
}

impl ApiKeyStore for MemoryStores {
    fn insert_api_key<'a>(&'a self, key: &'a ApiKeyRecord) -> BoxFuture<'a, StoreResult<()>> {
        let mut shard = self.api_keys.shard(key.id.as_str());
        let r = if shard.contains_key(&key.id) {
            Err(StoreError::Conflict("API key"))
        } else {
            shard.insert(key.id.clone(), Arc::new(key.clone()));
            Ok(())
        };
        ready(r)
    }

    fn api_key<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Arc<ApiKeyRecord>>>> {
        ready(Ok(self.api_keys.shard(id).get(id).cloned()))
    }

    fn api_keys_of<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, StoreResult<Vec<ApiKeyRecord>>> {
        let mut out = Vec::new();
        self.api_keys.each(|m| {
            out.extend(
                m.values()
                    .filter(|k| k.owner == owner)
                    .map(|k| ApiKeyRecord::clone(k)),
            );
        });
        ready(Ok(out))
    }

    fn revoke_api_key<'a>(&'a self, id: &'a str, now: i64) -> BoxFuture<'a, StoreResult<bool>> {
        let mut shard = self.api_keys.shard(id);
        let revoked = match shard.get_mut(id) {
            Some(k) if k.revoked_at.is_none() => {
                Arc::make_mut(k).revoked_at = Some(now);
                true
            }
            _ => false,
        };
        if revoked {
            self.log_revocation(RevokedKind::ApiKey, id, session_entry_expiry(now));
        }
        ready(Ok(revoked))
    }

    fn touch_api_key<'a>(&'a self, id: &'a str, at: i64) -> BoxFuture<'a, StoreResult<()>> {
        if let Some(k) = self.api_keys.shard(id).get_mut(id) {
            let k = Arc::make_mut(k);
            k.last_used_at = Some(k.last_used_at.map_or(at, |prev| prev.max(at)));
        }
        ready(Ok(()))
    }

    fn purge_expired_api_keys(&self, before: i64) -> BoxFuture<'_, StoreResult<u64>> {
        let mut n = 0u64;
        self.api_keys.each(|m| {
            let len = m.len();
            m.retain(|_, k| k.expires_at.is_none_or(|e| e > before));
            n += (len - m.len()) as u64;
        });
        ready(Ok(n))
    }

    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        Some(self)
    }
}

impl AppStore for MemoryStores {
    fn insert_app<'a>(&'a self, app: &'a AppRecord) -> BoxFuture<'a, StoreResult<()>> {
        let mut shard = self.apps.shard(app.app_id.as_str());
        let r = if shard.contains_key(&app.app_id) {
            Err(StoreError::Conflict("app"))
        } else {
            shard.insert(app.app_id.clone(), app.clone());
            Ok(())
        };
        ready(r)
    }

    fn app<'a>(&'a self, app_id: &'a str) -> BoxFuture<'a, StoreResult<Option<AppRecord>>> {
        ready(Ok(self.apps.shard(app_id).get(app_id).cloned()))
    }

    fn rotate_app_secret<'a>(
        &'a self,
        app_id: &'a str,
        new_hash: &'a [u8; 32],
        previous_valid_until: i64,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<Option<u32>>> {
        let mut shard = self.apps.shard(app_id);
        let version = shard.get_mut(app_id).map(|a| {
            a.previous_hash = Some(a.secret_hash);
            a.previous_valid_until = Some(previous_valid_until);
            a.secret_hash = *new_hash;
            a.secret_version = a.secret_version.saturating_add(1);
            a.updated_at = now;
            a.secret_version
        });
        ready(Ok(version))
    }

    fn set_app_disabled<'a>(
        &'a self,
        app_id: &'a str,
        disabled: bool,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        let mut shard = self.apps.shard(app_id);
        let found = shard.get_mut(app_id).map(|a| {
            a.disabled = disabled;
            a.updated_at = now;
        });
        if found.is_some() {
            // Under the app's shard lock: log order is the changes' order.
            let kind = RevokedKind::app_status(disabled);
            self.log_revocation(kind, app_id, session_entry_expiry(now));
        }
        ready(Ok(found.is_some()))
    }

    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        Some(self)
    }
}

impl SigningKeyStore for MemoryStores {
    fn insert_signing_key<'a>(
        &'a self,
        key: &'a SigningKeyRecord,
    ) -> BoxFuture<'a, StoreResult<()>> {
        let mut keys = lock(&self.signing_keys);
        let r = if keys.contains_key(&key.kid) {
            Err(StoreError::Conflict("signing key"))
        } else {
            keys.insert(key.kid.clone(), key.clone());
            Ok(())
        };
        ready(r)
    }

    fn insert_signing_key_unless_pending<'a>(
        &'a self,
        key: &'a SigningKeyRecord,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<Option<PendingKey>>> {
        // One lock for the check and the insert: the claim is atomic.
        let mut keys = lock(&self.signing_keys);
        if let Some(p) = keys
            .values()
            .filter(|k| k.activates_at > now)
            .min_by_key(|k| k.activates_at)
        {
            return ready(Ok(Some(PendingKey {
                kid: p.kid.clone(),
                activates_at: p.activates_at,
            })));
        }
        let r = if keys.contains_key(&key.kid) {
            Err(StoreError::Conflict("signing key"))
        } else {
            keys.insert(key.kid.clone(), key.clone());
            Ok(None)
        };
        ready(r)
    }

    fn signing_keys(&self) -> BoxFuture<'_, StoreResult<Vec<SigningKeyRecord>>> {
        ready(Ok(lock(&self.signing_keys).values().cloned().collect()))
    }

    fn delete_signing_key<'a>(&'a self, kid: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        ready(Ok(lock(&self.signing_keys).remove(kid).is_some()))
    }
}
