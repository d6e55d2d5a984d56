//! `[signed_requests]`: the apps' HMAC secrets, read from their files now
//! (so a reload picks up a rotated secret), as the library's
//! authenticator over a nonce store the caller chooses: the process's one
//! store when serving, one of its own for an offline explain.

use portcullis::authz::{NonceStore, SignedRequestAuthenticator};
use portcullis_core::{AuthMethod, Principal};

use crate::config::SignedRequestsConfig;

/// The apps of `signed` over `nonces`; an error names the configuration key
/// and says why.
pub fn authenticator<N: NonceStore>(
    signed: &SignedRequestsConfig,
    nonces: N,
) -> Result<SignedRequestAuthenticator<N>, (&'static str, String)> {
    let mut auth = SignedRequestAuthenticator::new(nonces).with_window(signed.window);
    for app in &signed.apps {
        let secret = app.read_secret().map_err(|m| {
            (
                "signed_requests.apps.secret_file",
                format!("app `{}`: {m}", app.id),
            )
        })?;
        let mut principal = Principal::new(app.id.clone(), AuthMethod::SignedRequest);
        principal.roles.clone_from(&app.roles);
        principal.permissions.clone_from(&app.permissions);
        principal.tenant.clone_from(&app.tenant);
        auth = auth
            .with_app_principal(&secret, principal)
            .map_err(|e| ("signed_requests.apps", e.to_string()))?;
    }
    Ok(auth)
}
