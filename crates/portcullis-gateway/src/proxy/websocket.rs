//! WebSockets over HTTP/2 (RFC 8441): an extended `CONNECT` with
//! `:protocol = websocket` is shown to every surface as the `GET` of an
//! HTTP/1.1 handshake, so the guard routes, decides and audits it exactly
//! like one; the proxy then opens an HTTP/1.1 upgrade to the upstream with
//! a fresh `Sec-WebSocket-Key`, checks the upstream's
//! `Sec-WebSocket-Accept`, and answers the client's stream with 200.

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;

/// The RFC 6455 GUID appended to a key to make its accept value.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Marks a request that arrived as an HTTP/2 extended `CONNECT` for a
/// WebSocket (its method is now `GET`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct H2WebSocket;

/// An extended `CONNECT` for a protocol other than `websocket`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("extended CONNECT for protocol {0:?} is not supported; only \"websocket\" is")]
pub(crate) struct UnsupportedProtocol(pub(crate) String);

/// Rewrites an HTTP/2 extended `CONNECT` with `:protocol = websocket` into
/// the `GET` the guard decides on, marked [`H2WebSocket`]; any other
/// request is left alone (a plain `CONNECT` included). Another `:protocol`
/// is refused.
pub(crate) fn from_extended_connect(parts: &mut Parts) -> Result<(), UnsupportedProtocol> {
    if parts.method != http::Method::CONNECT || parts.version != http::Version::HTTP_2 {
        return Ok(());
    }
    let Some(protocol) = parts.extensions.get::<hyper::ext::Protocol>() else {
        return Ok(());
    };
    if !protocol.as_str().eq_ignore_ascii_case("websocket") {
        let shown: String = protocol.as_str().chars().take(64).collect();
        return Err(UnsupportedProtocol(shown));
    }
    parts.method = http::Method::GET;
    parts.extensions.insert(H2WebSocket);
    Ok(())
}

/// Why the gateway cannot make a handshake key.
#[derive(Debug, thiserror::Error)]
#[error("no random bytes for a Sec-WebSocket-Key")]
pub(crate) struct KeyUnavailable;

/// Sets the headers of the HTTP/1.1 handshake the upstream receives for an
/// HTTP/2 WebSocket (the `Connection` / `Upgrade` pair is already set): a
/// fresh `Sec-WebSocket-Key`, version 13 unless the client named one.
/// Returns the `Sec-WebSocket-Accept` the upstream must answer with.
pub(crate) fn upstream_handshake(headers: &mut HeaderMap) -> Result<HeaderValue, KeyUnavailable> {
    let mut raw = [0u8; 16];
    portcullis_core::opaque::fill_random(&mut raw).map_err(|_| KeyUnavailable)?;
    let key = base64::engine::general_purpose::STANDARD.encode(raw);
    let accept = accept_for(&key);
    let key = HeaderValue::from_str(&key).map_err(|_| KeyUnavailable)?;
    headers.remove(header::SEC_WEBSOCKET_ACCEPT);
    headers.insert(header::SEC_WEBSOCKET_KEY, key);
    headers
        .entry(header::SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
    HeaderValue::from_str(&accept).map_err(|_| KeyUnavailable)
}

/// The `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
fn accept_for(key: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Whether the upstream's 101 carries the accept value of the key sent.
pub(crate) fn accepted(response: &HeaderMap, expected: &HeaderValue) -> bool {
    let mut values = response.get_all(header::SEC_WEBSOCKET_ACCEPT).iter();
    values
        .next()
        .is_some_and(|v| v.as_bytes().trim_ascii() == expected.as_bytes())
        && values.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_the_rfc_6455_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn connect(protocol: Option<&'static str>) -> Parts {
        let mut req = http::Request::builder()
            .method("CONNECT")
            .version(http::Version::HTTP_2)
            .uri("https://example.com/chat")
            .body(())
            .unwrap();
        if let Some(p) = protocol {
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from_static(p));
        }
        req.into_parts().0
    }

    #[test]
    fn extended_connect_for_websocket_becomes_a_marked_get() {
        let mut p = connect(Some("websocket"));
        from_extended_connect(&mut p).unwrap();
        assert_eq!(p.method, http::Method::GET);
        assert!(p.extensions.get::<H2WebSocket>().is_some());

        let mut plain = connect(None);
        from_extended_connect(&mut plain).unwrap();
        assert_eq!(plain.method, http::Method::CONNECT);
        assert!(plain.extensions.get::<H2WebSocket>().is_none());

        let mut other = connect(Some("connect-udp"));
        assert!(from_extended_connect(&mut other).is_err());
    }

    #[test]
    fn the_handshake_key_is_fresh_and_its_accept_checked() {
        let mut h = HeaderMap::new();
        h.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static("x"));
        let expected = upstream_handshake(&mut h).unwrap();
        let key = h[header::SEC_WEBSOCKET_KEY].to_str().unwrap().to_owned();
        assert_eq!(expected, accept_for(&key).as_str());
        assert_eq!(h[header::SEC_WEBSOCKET_VERSION], "13");
        assert!(!h.contains_key(header::SEC_WEBSOCKET_ACCEPT));
        let mut again = HeaderMap::new();
        upstream_handshake(&mut again).unwrap();
        assert_ne!(
            again[header::SEC_WEBSOCKET_KEY],
            h[header::SEC_WEBSOCKET_KEY]
        );

        let mut answer = HeaderMap::new();
        assert!(!accepted(&answer, &expected));
        answer.insert(header::SEC_WEBSOCKET_ACCEPT, expected.clone());
        assert!(accepted(&answer, &expected));
        answer.append(header::SEC_WEBSOCKET_ACCEPT, expected.clone());
        assert!(!accepted(&answer, &expected));
    }
}
