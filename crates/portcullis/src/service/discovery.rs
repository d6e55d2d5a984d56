//! The public key set (`/.well-known/jwks.json`) and OpenID discovery
//! (`/.well-known/openid-configuration`) of the local issuer.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use portcullis_core::KeySet;
use serde_json::{Value, json};

use super::Inner;

/// The discovery document, built once at start-up.
pub(super) fn document(issuer: &str, public_url: &str, keys: &KeySet) -> Value {
    let algs: BTreeSet<&'static str> = keys
        .iter()
        .filter(|k| !k.is_symmetric())
        .map(|k| k.signing_algorithm().name())
        .collect();
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{public_url}/.well-known/jwks.json"),
        "token_endpoint": format!("{public_url}/login"),
        "refresh_endpoint": format!("{public_url}/refresh"),
        "revocation_endpoint": format!("{public_url}/logout"),
        "grant_types_supported": ["password", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        // Required by OpenID discovery; the access tokens are signed with these.
        "id_token_signing_alg_values_supported": algs,
    })
}

/// A JSON document public caches may keep for five minutes.
fn public_json(body: &str) -> Response {
    let mut response = body.to_owned().into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// `GET /.well-known/jwks.json`: public asymmetric keys only.
pub(super) async fn jwks(State(s): State<Arc<Inner>>) -> Response {
    public_json(&s.signing().jwks)
}

/// `GET /.well-known/openid-configuration`.
pub(super) async fn openid_configuration(State(s): State<Arc<Inner>>) -> Response {
    public_json(&s.signing().discovery)
}
