//! The running gateway itself: explaining one decision against it,
//! reloading its configuration.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis::service::{JsonBody, Problem};

use super::respond::{invalid_input, json};
use super::{AdminState, STORE_BUDGET};

/// `POST /admin/explain`: what the running gateway makes of one request,
/// with its live state (bans, revocation, rate-limit counters read and not
/// consumed). The request's token or key is never echoed back.
pub(super) async fn explain_request(
    State(s): State<AdminState>,
    JsonBody(req): JsonBody<crate::explain::ExplainRequest>,
) -> Result<Response, Problem> {
    let Some(source) = &s.explainer else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    let explainer = source();
    let report = tokio::time::timeout(STORE_BUDGET, explainer.explain(&req))
        .await
        .map_err(|_| Problem::unavailable(&"the stores did not answer in time"))?
        .map_err(|e| invalid_input(e.to_string()))?;
    Ok(json(StatusCode::OK, &report))
}

/// `POST /reload`: reloads the configuration file (see [`crate::ops::reload`]).
pub(super) async fn reload_config(
    State(s): State<AdminState>,
    peer: Option<axum::Extension<portcullis::http::PeerAddr>>,
) -> Response {
    let Some(reloader) = &s.reloader else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let peer = peer.map_or_else(
        || std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        |axum::Extension(p)| p.0,
    );
    let (status, body) =
        crate::ops::reload::handle_request(reloader, &http::Method::POST, peer).await;
    json(status, &body)
}
