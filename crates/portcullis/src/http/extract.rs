//! axum extractors: [`Principal`] (401 when the request has none),
//! `Option<Principal>`, [`RequestId`], and [`Forbidden`], the 403 that
//! [`Principal::require`] returns.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use portcullis_core::ErrorCode;

use super::{Principal, ProblemJson, RequestId, refusal_response};
use crate::guard::Refusal;

fn request_id(parts: &Parts) -> String {
    parts.extensions.get::<RequestId>().map_or_else(
        || portcullis_core::audit::EventIds::global().next_id(),
        |r| r.0.clone(),
    )
}

/// The 401 of a handler that needs a [`Principal`] where none was found
/// (no guard layer in front, or an anonymous route).
#[derive(Debug)]
pub struct Unauthenticated {
    request_id: String,
}

impl IntoResponse for Unauthenticated {
    fn into_response(self) -> Response {
        let mut refusal = Refusal::new(
            ErrorCode::MissingCredentials,
            "this endpoint needs an authenticated caller",
        );
        refusal.headers.push((
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        ));
        refusal_response(&ProblemJson, &refusal, &self.request_id).map(axum::body::Body::new)
    }
}

/// A 403 naming what the caller lacks.
#[derive(Debug)]
pub struct Forbidden {
    detail: String,
    request_id: Option<String>,
}

impl Forbidden {
    /// The caller lacks `permission`.
    pub fn missing_permission(permission: &str) -> Self {
        Self {
            detail: format!("missing permission `{permission}`"),
            request_id: None,
        }
    }

    /// A 403 with this detail.
    pub fn new(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            request_id: None,
        }
    }
}

impl std::fmt::Display for Forbidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Forbidden {}

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        let refusal = Refusal::new(ErrorCode::Denied, self.detail);
        let id = self
            .request_id
            .unwrap_or_else(|| portcullis_core::audit::EventIds::global().next_id());
        refusal_response(&ProblemJson, &refusal, &id).map(axum::body::Body::new)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Unauthenticated;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Unauthenticated {
                request_id: request_id(parts),
            })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestId(request_id(parts)))
    }
}
