//! Signing keys: their state, and starting a rotation.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use portcullis::anomaly::webhook::SecurityEventKind;
use portcullis::keyring::RotateError;
use portcullis::service::{JsonBody, Problem};
use serde::Deserialize;

use super::respond::{bad_param, invalid_input, json};
use super::{AdminState, Caller};

/// `GET /admin/keys`: every key's state and times, and the rotation settings.
pub(super) async fn list_keys(State(s): State<AdminState>) -> Response {
    json(StatusCode::OK, &s.keyring.status())
}

/// The body of `POST /admin/keys/rotate`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateKeys {
    /// The new key's algorithm (default: the active key's).
    #[serde(default)]
    alg: Option<String>,
    /// Accept an HMAC algorithm (HS256, …): its secret cannot be in the
    /// JWKS, so every outside verifier must be given it out of band.
    #[serde(default)]
    shared_out_of_band: bool,
}

/// Stable code: the rotation names a key the JWKS cannot publish.
pub const UNPUBLISHABLE_ALG: &str = "keys.unpublishable_algorithm";

/// `POST /admin/keys/rotate`: 202 with the new key, which signs from its
/// `activates_at`; 409 while an earlier rotation is pending.
pub(super) async fn rotate_keys(
    State(s): State<AdminState>,
    caller: Caller,
    JsonBody(req): JsonBody<RotateKeys>,
) -> Result<Response, Problem> {
    let alg = match req.alg.as_deref() {
        None => None,
        Some(name) => Some(portcullis_core::Algorithm::from_name(name).ok_or_else(|| {
            bad_param(
                "alg",
                &format!("`{name}` is not a supported algorithm (RS256, PS256, ES256, ES384, EdDSA, HS256, …)"),
            )
        })?),
    };
    // An HMAC key is a shared secret: it is never in the JWKS, so after
    // it activates no outside verifier could check a token. Refused unless
    // the caller says the secret is shared out of band.
    let resolved = alg.or_else(|| {
        s.keyring
            .status()
            .keys
            .iter()
            .find(|k| k.state == portcullis_core::jose::rotation::KeyState::Active)
            .map(|k| k.alg)
    });
    if let Some(a) = resolved
        && a.family() == portcullis_core::KeyFamily::Hmac
        && !req.shared_out_of_band
    {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            UNPUBLISHABLE_ALG,
            format!(
                "`{}` is an HMAC algorithm: its key is a shared secret that the JWKS cannot publish, so every outside verifier would reject the tokens it signs; rotate to a public-key algorithm (ES256, EdDSA, RS256, …), or send \"shared_out_of_band\": true if every verifier gets the secret another way",
                a.name()
            ),
        ));
    }
    match s.keyring.rotate(alg).await {
        Ok(key) => {
            s.notify(SecurityEventKind::SigningKeyRotated, &caller, || {
                (
                    key.kid.clone(),
                    format!(
                        "{} key, signs from {} (Unix seconds)",
                        key.alg.name(),
                        key.activates_at.unwrap_or_default()
                    ),
                )
            });
            Ok(json(StatusCode::ACCEPTED, &key))
        }
        Err(RotateError::Pending { kid, activates_at }) => Err(Problem::new(
            StatusCode::CONFLICT,
            "keys.rotation_pending",
            format!(
                "a rotation is already pending: key `{kid}` activates at {activates_at} (Unix seconds); rotate again after that"
            ),
        )),
        Err(RotateError::Store(e)) => Err(e.into()),
        Err(e) => Err(invalid_input(e.to_string())),
    }
}
