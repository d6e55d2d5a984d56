//! Helpers the admin handlers share: JSON answers, query strings, and the
//! problems several resources answer alike.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis::service::Problem;
use serde::Serialize;

/// The token service's JSON answer (`Cache-Control: no-store`: some carry
/// a key or secret shown once).
pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    portcullis::service::json_response(status, value)
}

/// 400 `request.invalid_input` with `detail` as it is.
pub(super) fn invalid_input(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        portcullis::service::INVALID_INPUT,
        detail,
    )
}

/// 400 `request.invalid_input`: `invalid <name>: <why>`.
pub(super) fn bad_param(name: &str, why: &str) -> Problem {
    invalid_input(format!("invalid {name}: {why}"))
}

/// The parsed query string, or 400 `request.invalid_body` (`invalid query: …`).
pub(super) fn query<T>(parsed: Result<Query<T>, QueryRejection>) -> Result<T, Problem> {
    let Query(q) = parsed.map_err(|e| Problem::bad_body(format!("invalid query: {e}")))?;
    Ok(q)
}

/// 503 `backend.unavailable`: the stores did not answer (in time).
pub(super) fn backend_unavailable(detail: String) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "backend.unavailable",
        detail,
    )
}

/// 409 `request.unavailable_feature`: `detail` says what is off and which
/// setting turns it on.
pub(super) fn unavailable_feature(detail: &'static str) -> Problem {
    Problem::new(StatusCode::CONFLICT, "request.unavailable_feature", detail)
}

/// 409: the audit query and the live stream need an audit log.
pub(super) fn no_audit_log() -> Problem {
    unavailable_feature("no audit log is configured ([audit])")
}

/// 204 when something was `found` (and removed), else 404 naming `what`.
pub(super) fn no_content_or_404(found: bool, what: &str) -> Result<Response, Problem> {
    if found {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found(what))
    }
}
