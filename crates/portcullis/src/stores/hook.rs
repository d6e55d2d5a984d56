//! The revocation hook backed by the stores: a verified access token is
//! refused when its `jti` is on the denylist or its `sid` names a session
//! that is revoked or expired.

use std::sync::Arc;

use portcullis_core::{ErrorCode, Principal};

use super::Stores;
use crate::token_cache::RevocationHook;

/// Checks every verified token against the denylist (`jti`) and the
/// session store (`sid`), within the stores' revocation bound (≤ 1 s).
///
/// A backend that cannot answer refuses the token
/// (`backend.unavailable`): revocation fails closed.
#[derive(Debug, Clone)]
pub struct StoresRevocation {
    stores: Arc<Stores>,
    sessions: bool,
}

impl StoresRevocation {
    /// A hook over `stores` checking `jti` and `sid`: for tokens this
    /// deployment issued itself.
    pub fn new(stores: Arc<Stores>) -> Self {
        Self {
            stores,
            sessions: true,
        }
    }

    /// A hook checking only the `jti` denylist: for tokens of a remote
    /// issuer, whose `sid` names a session of that issuer, not ours.
    pub fn jti_only(stores: Arc<Stores>) -> Self {
        Self {
            stores,
            sessions: false,
        }
    }

    /// The stores checked.
    pub fn stores(&self) -> &Arc<Stores> {
        &self.stores
    }

    async fn check_principal(&self, principal: &Principal) -> Result<(), ErrorCode> {
        if let Some(jti) = principal.token_id.as_deref() {
            match self.stores.is_jti_revoked(jti).await {
                Ok(false) => {}
                Ok(true) => return Err(ErrorCode::TokenRevoked),
                // An id the store cannot hold was never revoked by it, but a
                // token carrying one is not ours to trust either.
                Err(super::StoreError::InvalidInput { .. }) => {
                    return Err(ErrorCode::MalformedToken);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "denylist check failed; refusing the token");
                    return Err(ErrorCode::BackendUnavailable);
                }
            }
        }
        if let Some(sid) = principal.session_id.as_deref().filter(|_| self.sessions) {
            match self.stores.session_is_active(sid).await {
                Ok(true) => {}
                Ok(false) => return Err(ErrorCode::SessionRevoked),
                Err(super::StoreError::InvalidInput { .. }) => {
                    return Err(ErrorCode::MalformedToken);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "session check failed; refusing the token");
                    return Err(ErrorCode::BackendUnavailable);
                }
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
