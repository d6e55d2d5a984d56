//! RFC 9457 `application/problem+json` answers of the token service: the one
//! place its errors become HTTP responses.

use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, StatusCode};
use portcullis_core::ErrorCode;
use portcullis_core::audit::EventIds;
use portcullis_core::ratelimit::headers::PROBLEM_JSON;

use crate::stores::StoreError;

/// The request body is not JSON of the expected shape (400).
pub const INVALID_BODY: &str = "request.invalid_body";
/// A field of a well-formed body is out of bounds (400).
pub const INVALID_INPUT: &str = "request.invalid_input";
/// The request body is larger than the service accepts (413).
pub const BODY_TOO_LARGE: &str = "request.body_too_large";
/// The request body is not `application/json` (415).
pub const UNSUPPORTED_MEDIA_TYPE: &str = "request.unsupported_media_type";
/// No such session or API key among the caller's own (404).
pub const NOT_FOUND: &str = "request.not_found";

/// The realm named in `WWW-Authenticate`.
const REALM: &str = "portcullis";

/// A refusal: status, stable code, a detail for the caller, extra headers.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    detail: String,
    headers: Vec<(HeaderName, String)>,
}

impl Problem {
    /// A problem with `status` and stable `code`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    /// The answer for a stable [`ErrorCode`], at the status the code maps to.
    pub fn code(code: ErrorCode, detail: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
        Self::new(status, code.as_str(), detail)
    }

    /// A malformed or unacceptable body (400 `request.invalid_body`).
    pub fn bad_body(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID_BODY, detail)
    }

    /// The caller's own session or key was not found (404).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            NOT_FOUND,
            format!("no such {what} among yours"),
        )
    }

    /// An infrastructure failure (503 `backend.unavailable`); the cause is
    /// logged, never shown.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "token service backend failure");
        Self::code(
            ErrorCode::BackendUnavailable,
            "a backend the token service needs is unavailable; retry shortly",
        )
    }

    /// Adds a response header (e.g. `Retry-After`, `RateLimit`).
    #[must_use]
    pub fn header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidInput { field, reason } => Self::new(
                StatusCode::BAD_REQUEST,
                INVALID_INPUT,
                format!("invalid {field}: {reason}"),
            ),
            StoreError::NotFound(what) => Self::not_found(what),
            StoreError::Conflict(what) => Self::new(
                StatusCode::CONFLICT,
                "store.conflict",
                format!("{what} already exists"),
            ),
            StoreError::InvalidCredentials => Self::code(
                ErrorCode::InvalidCredentials,
                "invalid username or password",
            ),
            StoreError::RefreshReused(_) => Self::code(
                ErrorCode::RefreshReused,
                "refresh token reused; its session was revoked, log in again",
            ),
            StoreError::RefreshMalformed => Self::code(
                ErrorCode::MalformedToken,
                "refresh token is malformed; log in again",
            ),
            StoreError::RefreshInvalid => Self::code(
                ErrorCode::TokenRevoked,
                "refresh token is invalid or revoked; log in again",
            ),
            StoreError::RefreshExpired => Self::code(
                ErrorCode::TokenExpired,
                "refresh token expired; log in again",
            ),
            StoreError::InvalidApiKey => Self::code(ErrorCode::InvalidApiKey, "invalid API key"),
            other => Self::unavailable(&other),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        problem(self)
    }
}

/// Renders `p` as `application/problem+json` with `type`, `title`,
/// `status`, `detail`, `code` and a fresh `request_id`; a 401 carries
/// `WWW-Authenticate: Bearer` (RFC 6750), with `error="invalid_token"`
/// unless no credential was presented.
pub fn problem(p: Problem) -> Response {
    let request_id = EventIds::global().next_id();
    let body = crate::http::problem_json(p.status, p.code, &p.detail, Some(&request_id));
    let mut response = (p.status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if p.status == StatusCode::UNAUTHORIZED {
        let challenge = if p.code == ErrorCode::MissingCredentials.as_str() {
            format!("Bearer realm=\"{REALM}\"")
        } else {
            format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                p.code
            )
        };
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            headers.insert(WWW_AUTHENTICATE, v);
        }
    }
    for (name, value) in p.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    if p.status == StatusCode::TOO_MANY_REQUESTS && !headers.contains_key(RETRY_AFTER) {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", v);
    }
    response
}
