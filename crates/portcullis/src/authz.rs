//! The runtime authorizer: core route rules plus custom async policies, and
//! signed service requests with nonce stores (memory, Redis) that refuse
//! replays within the signature window.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_core::authz::signed_request::{
    self, HEADER_APP, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, MIN_SECRET_BYTES,
    SignatureError, SignatureHeaders, SignedParts,
};
use portcullis_core::authz::{
    AccessPolicy, AuthzConfig, AuthzConfigError, Decision, Reason, RequestFacts,
};
use portcullis_core::{AuthMethod, Clock, ErrorCode, Principal, SystemClock};

/// A boxed future, as returned by [`Policy`] and [`NonceStore`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A custom policy over the principal and the request's facts; attached to
/// rules by name (`require.policies`). It runs only after the rule's own
/// requirements hold.
pub trait Policy: Send + Sync {
    /// `true` allows, `false` denies (the decision then names the policy).
    fn allows<'a>(
        &'a self,
        principal: Option<&'a Principal>,
        facts: &'a RequestFacts<'a>,
    ) -> BoxFuture<'a, bool>;
}

/// A [`Policy`] from a synchronous closure.
pub struct FnPolicy<F>(pub F);

impl<F> Policy for FnPolicy<F>
where
    F: Fn(Option<&Principal>, &RequestFacts<'_>) -> bool + Send + Sync,
{
    fn allows<'a>(
        &'a self,
        principal: Option<&'a Principal>,
        facts: &'a RequestFacts<'a>,
    ) -> BoxFuture<'a, bool> {
        let answer = (self.0)(principal, facts);
        Box::pin(std::future::ready(answer))
    }
}

/// Builds an [`Authorizer`]: configuration plus named custom policies.
pub struct AuthorizerBuilder {
    config: AuthzConfig,
    policies: HashMap<String, Arc<dyn Policy>>,
}

impl AuthorizerBuilder {
    /// Registers the custom policy `name`.
    #[must_use]
    pub fn policy(mut self, name: impl Into<String>, policy: impl Policy + 'static) -> Self {
        self.policies.insert(name.into(), Arc::new(policy));
        self
    }

    /// Compiles the rules; every policy a rule names must be registered.
    pub fn build(self) -> Result<Authorizer, AuthzConfigError> {
        let access = AccessPolicy::new(&self.config)?;
        for (rule, name) in access.policy_names() {
            if !self.policies.contains_key(name) {
                return Err(AuthzConfigError::Rule {
                    rule: rule.to_owned(),
                    field: "require.policies",
                    message: format!("policy `{name}` is not registered; add it to the builder"),
                });
            }
        }
        Ok(Authorizer {
            access,
            policies: self.policies,
        })
    }
}

/// Route rules, roles and custom policies: decides whether a request may proceed.
pub struct Authorizer {
    access: AccessPolicy,
    policies: HashMap<String, Arc<dyn Policy>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("policies", &self.policies.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// A builder over `config`.
    pub fn builder(config: AuthzConfig) -> AuthorizerBuilder {
        AuthorizerBuilder {
            config,
            policies: HashMap::new(),
        }
    }

    /// The compiled rules and roles.
    pub fn access(&self) -> &AccessPolicy {
        &self.access
    }

    /// Decides for `principal` (`None` when no credentials were presented);
    /// the decision names the rule and the reason, for audit and 403 bodies.
    pub async fn authorize<'s>(
        &'s self,
        principal: Option<&Principal>,
        facts: &RequestFacts<'_>,
    ) -> Decision<'s> {
        self.authorize_matched(principal, facts, self.access.match_route(facts))
            .await
    }

    /// [`Self::authorize`] with the rules `AccessPolicy::match_route` found.
    pub async fn authorize_matched<'s>(
        &'s self,
        principal: Option<&Principal>,
        facts: &RequestFacts<'_>,
        matched: portcullis_core::authz::routes::RouteMatch,
    ) -> Decision<'s> {
        let decision = self.access.decide_matched(principal, facts, matched);
        if !decision.allowed {
            return decision;
        }
        for name in decision.policies {
            let allowed = match self.policies.get(&**name) {
                Some(p) => p.allows(principal, facts).await,
                None => false,
            };
            if !allowed {
                tracing::debug!(policy = &**name, rule = ?decision.rule, "custom policy denied");
                return Decision {
                    allowed: false,
                    rule: decision.rule,
                    reason: Reason::Policy(name),
                    policies: &[],
                };
            }
        }
        decision
    }
}

/// A nonce store could not answer; signed requests then fail closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nonce store unavailable: {0}")]
pub struct NonceStoreError(pub String);

/// Remembers signed-request nonces for the signature window.
pub trait NonceStore: Send + Sync {
    /// Records `nonce` of `app` for `ttl`; `Ok(true)` when it was new,
    /// `Ok(false)` when it was already seen (a replay).
    fn remember<'a>(
        &'a self,
        app: &'a str,
        nonce: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, NonceStoreError>>;
}

/// Nonces in process memory, expiring; bounded (full means fail closed).
#[derive(Debug)]
pub struct MemoryNonceStore {
    seen: Mutex<HashMap<String, Instant>>,
    max_entries: usize,
}

impl Default for MemoryNonceStore {
    fn default() -> Self {
        Self::new(1_000_000)
    }
}

impl MemoryNonceStore {
    /// A store holding at most `max_entries` live nonces.
    pub fn new(max_entries: usize) -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            max_entries,
        }
    }

    /// The number of nonces held (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.seen.lock().map_or(0, |m| m.len())
    }

    /// Whether no nonce is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl NonceStore for MemoryNonceStore {
    fn remember<'a>(
        &'a self,
        app: &'a str,
        nonce: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, NonceStoreError>> {
        let result = (|| {
            let mut seen = self
                .seen
                .lock()
                .map_err(|_| NonceStoreError("memory nonce store lock poisoned".into()))?;
            let now = Instant::now();
            let key = format!("{app}\n{nonce}");
            if let Some(expiry) = seen.get(&key)
                && *expiry > now
            {
                return Ok(false);
            }
            if seen.len() >= self.max_entries {
                seen.retain(|_, expiry| *expiry > now);
                if seen.len() >= self.max_entries {
                    return Err(NonceStoreError(format!(
                        "more than {} live nonces; raise the bound or use Redis",
                        self.max_entries
                    )));
                }
            }
            seen.insert(key, now + ttl);
            Ok(true)
        })();
        Box::pin(std::future::ready(result))
    }
}

/// Nonces on Redis (single server or Cluster): `SET key 1 NX PX ttl`, so
/// every replica refuses a nonce any replica has seen.
#[cfg(feature = "redis")]
#[derive(Debug, Clone)]
pub struct RedisNonceStore {
    conn: crate::redis_conn::RedisConnection,
    prefix: String,
}

#[cfg(feature = "redis")]
impl RedisNonceStore {
    /// Nonces under `<prefix>:nonce:` on `conn`.
    pub fn new(conn: crate::redis_conn::RedisConnection, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
        }
    }
}

#[cfg(feature = "redis")]
impl NonceStore for RedisNonceStore {
    fn remember<'a>(
        &'a self,
        app: &'a str,
        nonce: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, NonceStoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let reply: Option<String> = redis::cmd("SET")
                .arg(format!("{}:nonce:{app}:{nonce}", self.prefix))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async(&mut conn)
                .await
                .map_err(|e| NonceStoreError(e.to_string()))?;
            Ok(reply.is_some())
        })
    }
}

/// Why a signed request was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedRequestError {
    /// The signature, window, app or nonce is wrong (`auth.invalid_signature_request`).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The nonce store is down (`backend.unavailable`; fails closed).
    #[error(transparent)]
    Backend(#[from] NonceStoreError),
}

impl SignedRequestError {
    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Signature(e) => e.code(),
            Self::Backend(_) => ErrorCode::BackendUnavailable,
        }
    }
}

/// A per-app secret shorter than the minimum was configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("app `{0}`: the signing secret must be at least {MIN_SECRET_BYTES} random bytes")]
pub struct WeakAppSecret(pub String);

/// Reads the four signature headers from `headers` (non-UTF-8 values count as absent).
pub fn signature_headers(headers: &http::HeaderMap) -> SignatureHeaders<'_> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    SignatureHeaders {
        app_id: get(HEADER_APP),
        timestamp: get(HEADER_TIMESTAMP),
        nonce: get(HEADER_NONCE),
        signature: get(HEADER_SIGNATURE),
    }
}

/// Authenticates signed service requests: per-app HMAC secrets, a time
/// window, and a nonce store against replays.
pub struct SignedRequestAuthenticator<N> {
    secrets: HashMap<String, (Vec<u8>, Principal)>,
    nonces: N,
    clock: Arc<dyn Clock>,
    window: Duration,
}

impl<N> std::fmt::Debug for SignedRequestAuthenticator<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedRequestAuthenticator")
            .field("apps", &self.secrets.len())
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl<N: NonceStore> SignedRequestAuthenticator<N> {
    /// No apps yet, a 5-minute window, the system clock.
    pub fn new(nonces: N) -> Self {
        Self {
            secrets: HashMap::new(),
            nonces,
            clock: Arc::new(SystemClock),
            window: signed_request::DEFAULT_WINDOW,
        }
    }

    /// Trusts `app` with `secret` (at least 32 bytes); its principal has no grants.
    pub fn with_app(self, app: impl Into<String>, secret: &[u8]) -> Result<Self, WeakAppSecret> {
        let principal = Principal::new(app, AuthMethod::SignedRequest);
        self.with_app_principal(secret, principal)
    }

    /// Trusts the app `principal.subject` with `secret`; authenticated
    /// requests get this principal (its roles, permissions, tenant), with
    /// `auth_method` set to `signed_request`.
    pub fn with_app_principal(
        mut self,
        secret: &[u8],
        mut principal: Principal,
    ) -> Result<Self, WeakAppSecret> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(WeakAppSecret(principal.subject));
        }
        principal.auth_method = AuthMethod::SignedRequest;
        self.secrets
            .insert(principal.subject.clone(), (secret.to_vec(), principal));
        Ok(self)
    }

    /// Uses `clock` for the window.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the window (and so how long nonces are remembered).
    #[must_use]
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Verifies the request and records its nonce; the principal is the app.
    pub async fn authenticate(
        &self,
        headers: &SignatureHeaders<'_>,
        parts: &SignedParts<'_>,
    ) -> Result<Principal, SignedRequestError> {
        let sig = headers.parse()?;
        let (secret, principal) = self
            .secrets
            .get(sig.app_id)
            .ok_or(SignatureError::UnknownApp)?;
        signed_request::verify(secret, &sig, parts, self.clock.unix_seconds(), self.window)?;
        // Only a valid signature may spend a nonce. Remember it for the whole
        // span in which its timestamp stays acceptable (both sides of now).
        if !self
            .nonces
            .remember(sig.app_id, sig.nonce, self.window.saturating_mul(2))
            .await?
        {
            return Err(SignatureError::Replayed.into());
        }
        Ok(principal.clone())
    }
}
