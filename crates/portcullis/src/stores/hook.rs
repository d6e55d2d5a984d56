//! The revocation hook backed by the stores: a verified access token is
//! refused when its `jti` is on the denylist or its `sid` names a session
//! that is revoked or expired.

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{ErrorCode, Principal};

use super::Stores;
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

/// Checks every verified token against the denylist (`jti`) and the
/// session store (`sid`), within the stores' revocation bound (≤ 1 s).
///
/// A backend that cannot answer, or does not answer within the budget
/// (250 ms by default: a hung backend is a backend that is down), refuses
/// the token (`backend.unavailable`): revocation fails closed.
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

    async fn check_principal(&self, principal: &Principal) -> Result<(), ErrorCode> {
        if let Some(jti) = principal.token_id.as_deref()
            && self.lookup("jti", self.stores.is_jti_revoked(jti)).await?
        {
            return Err(ErrorCode::TokenRevoked);
        }
        if let Some(sid) = principal.session_id.as_deref().filter(|_| self.sessions)
            && !self
                .lookup("session", self.stores.session_is_active(sid))
                .await?
        {
            return Err(ErrorCode::SessionRevoked);
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
