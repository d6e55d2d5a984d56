//! The revocation hook backed by the stores: a verified access token is
//! refused when its `jti` is denied or its `sid` names a revoked session,
//! both read from the replica's local [`super::RevocationSet`] (a backend
//! without a revocation log is asked instead).

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{ErrorCode, Principal};

use super::{RevokedKind, Stores};
use crate::token_cache::RevocationHook;

/// Longest a revocation lookup may take on the request path by default.
pub const DEFAULT_REVOCATION_BUDGET: Duration = Duration::from_millis(250);

/// `call` within `budget`: a store that does not answer in time is a store
/// that is down ([`super::StoreError::Unavailable`], so `backend.unavailable`).
/// A late call is dropped, which leaves the backend as a lost connection
/// would (the stores are written for that).
pub async fn within_budget<T>(
    budget: Duration,
    call: impl std::future::Future<Output = super::StoreResult<T>>,
) -> super::StoreResult<T> {
    tokio::time::timeout(budget, call)
        .await
        .unwrap_or_else(|_| {
            Err(super::StoreError::Unavailable(format!(
                "no answer within {} ms",
                budget.as_millis()
            )))
        })
}

/// Checks every verified token against the denied `jti`s and revoked
/// sessions of the local revocation set (an in-memory lookup; every
/// replica's set follows the shared logs within the revocation bound).
///
/// Before the set's initial load (waited for at most the budget, 250 ms by
/// default) a token is refused with `backend.unavailable`; once the feed
/// is behind by more than `revocation.max_stale`, `revocation.on_stale`
/// decides (default `deny`: `backend.unavailable`). Only for a backend that
/// keeps no revocation log is the backend asked, within the budget, failing
/// closed.
#[derive(Debug, Clone)]
pub struct StoresRevocation {
    stores: Arc<Stores>,
    sessions: bool,
    budget: Duration,
}

impl StoresRevocation {
    /// A hook over `stores` checking `jti` and `sid`: for tokens this
    /// deployment issued itself.
    pub fn new(stores: Arc<Stores>) -> Self {
        Self {
            stores,
            sessions: true,
            budget: DEFAULT_REVOCATION_BUDGET,
        }
    }

    /// A hook checking only the `jti` denylist: for tokens of a remote
    /// issuer, whose `sid` names a session of that issuer, not ours.
    pub fn jti_only(stores: Arc<Stores>) -> Self {
        Self {
            sessions: false,
            ..Self::new(stores)
        }
    }

    /// Sets the time budget of each lookup.
    #[must_use]
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// The stores checked.
    pub fn stores(&self) -> &Arc<Stores> {
        &self.stores
    }

    /// `Ok(answer)` of one lookup within the budget; a malformed id is
    /// `auth.malformed_token` (never revoked by us, but not ours to trust),
    /// a failed or late lookup `backend.unavailable`.
    async fn lookup(
        &self,
        what: &'static str,
        check: impl std::future::Future<Output = super::StoreResult<bool>>,
    ) -> Result<bool, ErrorCode> {
        match tokio::time::timeout(self.budget, check).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(super::StoreError::InvalidInput { .. })) => Err(ErrorCode::MalformedToken),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, what, "revocation lookup failed; refusing the token");
                Err(ErrorCode::BackendUnavailable)
            }
            Err(_) => {
                tracing::warn!(what, budget = ?self.budget, "revocation lookup timed out; refusing the token");
                Err(ErrorCode::BackendUnavailable)
            }
        }
    }

    /// Whether the local set may answer now: loaded (waited for within the
    /// budget) and fresh, or stale under `on_stale = "allow"`.
    async fn set_usable(&self) -> Result<(), ErrorCode> {
        let set = self.stores.revocations();
        if let Err(e) = set.ready(self.budget).await {
            tracing::warn!(error = %e, "revocation set not loaded yet; refusing the token");
            return Err(ErrorCode::BackendUnavailable);
        }
        set.admit_staleness()
            .map_err(|_| ErrorCode::BackendUnavailable)
    }

    async fn check_principal(&self, principal: &Principal) -> Result<(), ErrorCode> {
        let jti = principal.token_id.as_deref();
        let sid = principal.session_id.as_deref().filter(|_| self.sessions);
        let jti_local = jti.is_some() && self.stores.revocation_in_set(RevokedKind::Jti);
        let sid_local = sid.is_some() && self.stores.revocation_in_set(RevokedKind::Session);
        if jti_local || sid_local {
            self.set_usable().await?;
        }
        let set = self.stores.revocations();
        if let Some(jti) = jti {
            let revoked = if jti_local {
                super::input::jti(jti).map_err(|_| ErrorCode::MalformedToken)?;
                set.contains(RevokedKind::Jti, jti)
            } else {
                let call = self.stores.is_jti_revoked(jti);
                self.lookup("jti", self.stores.on_request_path(self.budget, call))
                    .await?
            };
            if revoked {
                return Err(ErrorCode::TokenRevoked);
            }
        }
        if let Some(sid) = sid {
            let revoked = if sid_local {
                super::input::bounded_str("session_id", sid, super::input::MAX_ID)
                    .map_err(|_| ErrorCode::MalformedToken)?;
                set.contains(RevokedKind::Session, sid)
            } else {
                let call = self.stores.session_is_active(sid);
                !self
                    .lookup("session", self.stores.on_request_path(self.budget, call))
                    .await?
            };
            if revoked {
                return Err(ErrorCode::SessionRevoked);
            }
        }
        Ok(())
    }
}

impl RevocationHook for StoresRevocation {
    fn check(
        &self,
        principal: &Principal,
    ) -> impl std::future::Future<Output = Result<(), ErrorCode>> + Send {
        self.check_principal(principal)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::stores::memory::MemoryStores;
    use crate::stores::{Backends, StoreError, StoresConfig};

    fn stores() -> Stores {
        let hasher = portcullis_core::SecretHasher::new(&[7; 32]).expect("pepper");
        Stores::new(
            Backends::all(Arc::new(MemoryStores::new())),
            StoresConfig::new(hasher),
        )
        .expect("stores")
    }

    #[tokio::test]
    async fn a_backend_known_down_costs_a_request_nothing() {
        let stores = stores();
        let calls = AtomicU32::new(0);
        let failing = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(StoreError::Unavailable("down".into()))
        };
        for _ in 0..3 {
            let r = stores
                .on_request_path(Duration::from_millis(50), failing())
                .await;
            assert!(matches!(r, Err(StoreError::Unavailable(_))));
        }
        assert!(stores.request_breaker_open());
        // Open: refused at once, the backend not called.
        let r = stores
            .on_request_path(Duration::from_millis(50), failing())
            .await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // A hung call counts as a failure too (its budget, then down), and
        // after the probe interval one call goes through and closes it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = stores
            .on_request_path(Duration::from_millis(50), async { Ok(1) })
            .await;
        assert_eq!(r.ok(), Some(1));
        assert!(!stores.request_breaker_open());
    }

    #[tokio::test]
    async fn a_hung_backend_opens_the_breaker_after_three_budgets() {
        let stores = stores();
        for _ in 0..3 {
            let r = stores
                .on_request_path(
                    Duration::from_millis(20),
                    std::future::pending::<crate::stores::StoreResult<()>>(),
                )
                .await;
            assert!(matches!(r, Err(StoreError::Unavailable(_))));
        }
        assert!(stores.request_breaker_open());
    }
}
