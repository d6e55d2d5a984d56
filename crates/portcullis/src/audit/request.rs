//! Building a request's audit event from an `http` request: request id,
//! method, redacted path and truncated user agent. No other header (the
//! `Authorization` header least of all) is ever read into the event.

use std::net::IpAddr;

use http::HeaderMap;
use http::request::Parts;
use portcullis_core::audit::redact::{Redactor, user_agent};
use portcullis_core::audit::{AuditEvent, Decision, EventIds, EventKind};

/// Longest `x-request-id` adopted; longer or non-printable ones are replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// The request id: `x-request-id` when it is short printable ASCII, else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    inbound_request_id(headers).map_or_else(|| EventIds::global().next_id(), str::to_owned)
}

/// The inbound `x-request-id` when it is 1..=[`MAX_REQUEST_ID`] bytes of
/// printable ASCII (surrounding spaces ignored); `None` otherwise.
pub fn inbound_request_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic())
        })
}

/// A `request` event for `parts`, decided `allow` until told otherwise;
/// set status, latency, principal and decision once they are known.
pub fn request_event(
    parts: &Parts,
    client_ip: Option<IpAddr>,
    redactor: &Redactor,
    ts_us: i64,
) -> AuditEvent {
    request_event_with_id(
        parts,
        client_ip,
        redactor,
        ts_us,
        request_id(&parts.headers),
    )
}

/// [`request_event`] with a request id the caller already settled (the
/// guard adopts an inbound id only from a trusted proxy).
pub fn request_event_with_id(
    parts: &Parts,
    client_ip: Option<IpAddr>,
    redactor: &Redactor,
    ts_us: i64,
    request_id: String,
) -> AuditEvent {
    let mut event = AuditEvent::new(EventKind::Request, ts_us, Decision::Allow);
    event.request_id = Some(request_id);
    event.client_ip = client_ip.map(|ip| ip.to_string());
    event.method = Some(parts.method.as_str().to_owned());
    event.host = Some(
        portcullis_core::audit::bounded_host(
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| parts.uri.host())
                .unwrap_or(""),
        )
        .to_owned(),
    );
    event.path = Some(
        redactor.path(
            parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path(), |pq| pq.as_str()),
        ),
    );
    event.user_agent = parts
        .headers
        .get(http::header::USER_AGENT)
        .map(|v| user_agent(&String::from_utf8_lossy(v.as_bytes())));
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_redacted_event_and_ignores_authorization() {
        let req = http::Request::builder()
            .method("GET")
            .uri("/orders/7?token=abc&page=2")
            .header("authorization", "Bearer secret-token-value")
            .header("x-request-id", "req-1")
            .header("user-agent", "curl/8")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let e = request_event(
            &parts,
            Some("10.0.0.1".parse().unwrap()),
            &Redactor::default(),
            5,
        );
        assert_eq!(e.path.as_deref(), Some("/orders/7?page=2"));
        assert_eq!(e.request_id.as_deref(), Some("req-1"));
        assert_eq!(e.client_ip.as_deref(), Some("10.0.0.1"));
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("secret-token-value"));
        assert!(!json.contains("abc"));
    }

    #[test]
    fn a_bad_request_id_is_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "a b".parse().unwrap());
        assert_eq!(request_id(&h).len(), 32);
        h.insert("x-request-id", "x".repeat(200).parse().unwrap());
        assert_eq!(request_id(&h).len(), 32);
    }
}
