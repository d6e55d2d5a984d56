//! Refusals as HTTP responses: RFC 9457 `application/problem+json` by
//! default, or whatever a [`RenderRefusal`] of the application's makes.

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body_util::Full;

use crate::guard::Refusal;

/// Turns a refusal into a response. Implement it to answer with your own
/// JSON or HTML; the refusal's headers (`WWW-Authenticate`, `Retry-After`,
/// `RateLimit`) are added to whatever it returns.
pub trait RenderRefusal: Send + Sync + 'static {
    /// The response for `refusal` of request `request_id`.
    fn render(&self, refusal: &Refusal, request_id: &str) -> Response<Full<Bytes>>;
}

/// The default renderer: `application/problem+json` with `type`, `title`,
/// `status`, `detail`, `code` (the stable code) and `request_id`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemJson;

/// The problem+json body of `refusal`.
pub fn problem_body(refusal: &Refusal, request_id: &str) -> String {
    problem_json(
        refusal.status,
        refusal.code.as_str(),
        &refusal.detail,
        Some(request_id),
    )
}

/// An RFC 9457 body: `type` (`about:blank`), `title` (the status's reason
/// phrase), `status`, `detail`, the stable `code` and `request_id`. Every
/// problem answer (guard refusals, the token service, the gateway) is
/// rendered by this one function; `request_id` is `null` when unknown.
pub fn problem_json(
    status: http::StatusCode,
    code: &str,
    detail: &str,
    request_id: Option<&str>,
) -> String {
    serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "code": code,
        "request_id": request_id,
    })
    .to_string()
}

impl RenderRefusal for ProblemJson {
    fn render(&self, refusal: &Refusal, request_id: &str) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(problem_body(refusal, request_id))));
        *response.status_mut() = refusal.status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// The stable code and detail of a response the guard (or the gateway)
/// answered itself rather than the protected service: a response
/// extension, so an outer layer can answer the refusal in the caller's
/// protocol (a gRPC status) instead of the rendered body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The stable code (`auth.missing_credentials`, `gateway.upstream_unavailable`…).
    pub code: String,
    /// The detail shown to the caller.
    pub detail: String,
}

/// `refusal` rendered by `renderer`, with the refusal's headers, the
/// request id and the [`Refused`] extension.
pub fn refusal_response(
    renderer: &dyn RenderRefusal,
    refusal: &Refusal,
    request_id: &str,
) -> Response<Full<Bytes>> {
    let mut response = renderer.render(refusal, request_id);
    let headers = response.headers_mut();
    for (name, value) in &refusal.headers {
        headers.append(name.clone(), value.clone());
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(super::REQUEST_ID, v);
    }
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response.extensions_mut().insert(Refused {
        code: refusal.code.as_str().to_owned(),
        detail: refusal.detail.clone(),
    });
    response
}
