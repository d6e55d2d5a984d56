//! A bounded cache of verified access tokens: a repeated token skips the
//! signature check, while expiry and revocation are still checked on every hit.

use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use foldhash::quality::FixedState;
use moka::sync::Cache;
use portcullis_core::{ErrorCode, Key, KeySet, Principal, TokenError, Verifier};

/// Why a token was refused by the runtime verifier.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token itself is invalid.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A revocation hook refused it (`auth.token_revoked`, `auth.session_revoked`, ...).
    #[error("credential refused: {0}")]
    Revoked(ErrorCode),
}

impl AuthError {
    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Token(e) => e.code(),
            Self::Revoked(code) => *code,
        }
    }
}

/// Called for every verified token, cached or not: the place where jti
/// denylists and session revocation plug in.
pub trait RevocationHook: Send + Sync {
    /// `Err(code)` refuses the principal.
    fn check(&self, principal: &Principal) -> impl Future<Output = Result<(), ErrorCode>> + Send;
}

impl<H: RevocationHook> RevocationHook for Arc<H> {
    fn check(&self, principal: &Principal) -> impl Future<Output = Result<(), ErrorCode>> + Send {
        (**self).check(principal)
    }
}

/// A [`RevocationHook`] behind a pointer (`Arc<dyn DynRevocationHook>`),
/// for holders that cannot be generic over the hook (remote issuers).
/// Implemented for every `RevocationHook`.
pub trait DynRevocationHook: Send + Sync {
    /// [`RevocationHook::check`], boxed.
    fn check_dyn<'a>(
        &'a self,
        principal: &'a Principal,
    ) -> Pin<Box<dyn Future<Output = Result<(), ErrorCode>> + Send + 'a>>;
}

impl<H: RevocationHook> DynRevocationHook for H {
    fn check_dyn<'a>(
        &'a self,
        principal: &'a Principal,
    ) -> Pin<Box<dyn Future<Output = Result<(), ErrorCode>> + Send + 'a>> {
        Box::pin(self.check(principal))
    }
}

impl RevocationHook for Arc<dyn DynRevocationHook> {
    async fn check(&self, principal: &Principal) -> Result<(), ErrorCode> {
        (**self).check_dyn(principal).await
    }
}

/// A hook that revokes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRevocation;

impl RevocationHook for NoRevocation {
    fn check(&self, _: &Principal) -> impl Future<Output = Result<(), ErrorCode>> + Send {
        std::future::ready(Ok(()))
    }
}

/// Sizing of the verified-token cache. Both bounds hold: every entry is
/// weighed at its size in bytes, but at least `max_bytes / max_entries`.
#[derive(Debug, Clone)]
pub struct TokenCacheConfig {
    /// Most bytes of tokens and principals kept (default 32 MiB).
    pub max_bytes: u64,
    /// Most tokens kept (default 10 000); 0 turns the cache off.
    pub max_entries: u64,
    /// Longest a verified token is kept before it is verified again (default 5 min).
    pub time_to_live: Duration,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 32 * 1024 * 1024,
            max_entries: 10_000,
            time_to_live: Duration::from_secs(300),
        }
    }
}

struct Entry {
    token: Box<[u8]>,
    principal: Arc<Principal>,
    key: Arc<Key>,
}

/// Bytes an entry holds: the token, the principal's strings and claims JSON,
/// and the fixed-size parts (the key is shared with the key set).
fn entry_bytes(token: &[u8], p: &Principal) -> u64 {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let list = |v: &[String]| {
        v.iter()
            .map(|s| s.len() + size_of::<String>())
            .sum::<usize>()
    };
    let bytes = size_of::<Entry>()
        + size_of::<Principal>()
        + 64 // moka's per-entry bookkeeping, roughly
        + token.len()
        + p.subject.len()
        + opt(&p.issuer)
        + opt(&p.tenant)
        + opt(&p.email)
        + opt(&p.name)
        + opt(&p.session_id)
        + opt(&p.token_id)
        + list(&p.roles)
        + list(&p.permissions)
        + list(&p.scopes)
        + p.claims.as_json().len();
    bytes as u64
}

/// A [`Verifier`] fronted by a bounded cache keyed by a keyed hash of the token.
pub struct CachedVerifier<H = NoRevocation> {
    verifier: RwLock<Arc<Verifier>>,
    cache: Cache<u64, Arc<Entry>>,
    hasher: FixedState,
    hook: H,
    /// `false` when `max_entries` or `max_bytes` is 0: every token is verified.
    enabled: bool,
}

impl<H> std::fmt::Debug for CachedVerifier<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedVerifier")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // Falls back to the std per-process random state if the system RNG fails.
    match portcullis_core::opaque::fill_random(&mut seed) {
        Ok(()) => u64::from_le_bytes(seed),
        Err(_) => std::collections::hash_map::RandomState::new().hash_one(0u8),
    }
}

impl CachedVerifier<NoRevocation> {
    /// A cache in front of `verifier` with no revocation hook.
    pub fn new(verifier: Verifier, config: TokenCacheConfig) -> Self {
        Self::with_hook(verifier, config, NoRevocation)
    }
}

impl<H: RevocationHook> CachedVerifier<H> {
    /// A cache in front of `verifier` calling `hook` on every token.
    pub fn with_hook(verifier: Verifier, config: TokenCacheConfig, hook: H) -> Self {
        let floor = config.max_bytes / config.max_entries.max(1);
        let cache = Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(move |_: &u64, e: &Arc<Entry>| {
                let bytes = entry_bytes(&e.token, &e.principal).max(floor);
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .time_to_live(config.time_to_live)
            .support_invalidation_closures()
            .build();
        Self {
            verifier: RwLock::new(Arc::new(verifier)),
            cache,
            hasher: FixedState::with_seed(random_seed()),
            hook,
            enabled: config.max_entries > 0 && config.max_bytes > 0,
        }
    }

    fn current(&self) -> Arc<Verifier> {
        match self.verifier.read() {
            Ok(v) => Arc::clone(&v),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Verifies `token`, from the cache when it was verified before.
    pub async fn verify(&self, token: &[u8]) -> Result<Arc<Principal>, AuthError> {
        let principal = self.verify_signature_cached(token)?;
        self.hook
            .check(&principal)
            .await
            .map_err(AuthError::Revoked)?;
        Ok(principal)
    }

    /// The cached part of [`Self::verify`]: signature and claims, no hook.
    /// Not public: every caller outside goes through the revocation hook.
    pub(crate) fn verify_signature_cached(
        &self,
        token: &[u8],
    ) -> Result<Arc<Principal>, AuthError> {
        let verifier = self.current();
        if !self.enabled {
            return Ok(Arc::new(verifier.verify_detailed(token)?.principal));
        }
        let id = self.hasher.hash_one(token);
        if let Some(entry) = self.cache.get(&id)
            && portcullis_core::opaque::ct_eq(&entry.token, token)
            && verifier
                .keys()
                .get(entry.key.kid())
                .is_some_and(|k| Arc::ptr_eq(k, &entry.key))
        {
            verifier.check_times(entry.principal.expires_at)?;
            return Ok(Arc::clone(&entry.principal));
        }
        let verified = verifier.verify_detailed(token)?;
        let principal = Arc::new(verified.principal);
        self.cache.insert(
            id,
            Arc::new(Entry {
                token: token.into(),
                principal: Arc::clone(&principal),
                key: verified.key,
            }),
        );
        Ok(principal)
    }

    /// Replaces the key set. Cached tokens of keys that are gone (or whose
    /// material changed) are invalidated at once.
    pub fn replace_keys(&self, keys: impl Into<Arc<KeySet>>) {
        let keys: Arc<KeySet> = keys.into();
        let mut guard = match self.verifier.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let next = guard.with_keys(Arc::clone(&keys));
        *guard = Arc::new(next);
        drop(guard);
        // Entries are already unreachable (the hit path checks the key's
        // identity); this frees their memory.
        let _ = self.cache.invalidate_entries_if(move |_, e| {
            keys.get(e.key.kid())
                .is_none_or(|k| !Arc::ptr_eq(k, &e.key))
        });
    }

    /// The verifier currently in use.
    pub fn verifier(&self) -> Arc<Verifier> {
        self.current()
    }

    /// Number of cached tokens (approximate).
    pub fn len(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Bytes held by cached entries, as weighed against `max_bytes` (after
    /// pending evictions ran).
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Whether the cache is empty (approximate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
