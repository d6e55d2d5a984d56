//! Signed service requests: an HMAC-SHA256, with a per-app secret, over the
//! method, path, sorted query, timestamp, nonce and a SHA-256 of the body.
//!
//! Canonical string (lines joined by `\n`):
//! ```text
//! PORTCULLIS-HMAC-SHA256
//! <app id>
//! <METHOD>
//! <path>
//! <query pairs, raw (not decoded), empty ones dropped, sorted bytewise, joined by &>
//! <timestamp: Unix seconds>
//! <nonce>
//! <lower-case hex SHA-256 of the body>
//! ```
//! The signature is the lower-case hex HMAC. The timestamp must be within the
//! window (default 5 minutes) of now; the runtime remembers each nonce for
//! the window, so a replay is refused.

use std::time::Duration;

use aws_lc_rs::{digest, hmac};

use crate::error::ErrorCode;

/// Header naming the calling app.
pub const HEADER_APP: &str = "x-portcullis-app";
/// Header with the Unix-seconds timestamp.
pub const HEADER_TIMESTAMP: &str = "x-portcullis-timestamp";
/// Header with the single-use nonce.
pub const HEADER_NONCE: &str = "x-portcullis-nonce";
/// Header with the hex HMAC-SHA256 signature.
pub const HEADER_SIGNATURE: &str = "x-portcullis-signature";
/// The default acceptance window around now.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// The shortest per-app secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
const SCHEME: &str = "PORTCULLIS-HMAC-SHA256";
const MAX_NONCE: usize = 128;
const MIN_NONCE: usize = 16;
const MAX_APP_ID: usize = 128;

/// Why a signed request was refused; all map to `auth.invalid_signature_request`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A signature header is missing.
    #[error("signed request lacks the `{0}` header")]
    Missing(&'static str),
    /// A header is malformed.
    #[error("signed request: {0}")]
    Malformed(&'static str),
    /// The app is unknown or disabled.
    #[error("signed request from an unknown app")]
    UnknownApp,
    /// The timestamp is outside the window; check the caller's clock.
    #[error("signed request timestamp is outside the accepted window; sync the caller's clock")]
    OutsideWindow,
    /// The HMAC does not verify.
    #[error("signed request signature does not verify")]
    BadSignature,
    /// The nonce was already used within the window.
    #[error("signed request was replayed (nonce already used)")]
    Replayed,
}

impl SignatureError {
    /// The stable code: always `auth.invalid_signature_request`.
    pub const fn code(&self) -> ErrorCode {
        ErrorCode::InvalidSignatureRequest
    }
}

/// The request parts that are signed.
#[derive(Debug, Clone, Copy)]
pub struct SignedParts<'a> {
    /// HTTP method (upper case).
    pub method: &'a str,
    /// Path, as sent.
    pub path: &'a str,
    /// Raw query string without `?` (empty when none).
    pub query: &'a str,
    /// The body.
    pub body: &'a [u8],
}

/// The signature headers of a request, as received.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignatureHeaders<'a> {
    /// [`HEADER_APP`].
    pub app_id: Option<&'a str>,
    /// [`HEADER_TIMESTAMP`].
    pub timestamp: Option<&'a str>,
    /// [`HEADER_NONCE`].
    pub nonce: Option<&'a str>,
    /// [`HEADER_SIGNATURE`].
    pub signature: Option<&'a str>,
}

/// Signature headers that are present and well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedSignature<'a> {
    /// The calling app.
    pub app_id: &'a str,
    /// Unix seconds.
    pub timestamp: i64,
    /// The nonce.
    pub nonce: &'a str,
    /// The decoded HMAC.
    pub mac: [u8; 32],
}

fn token_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let val = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (val(s[2 * i])? << 4) | val(s[2 * i + 1])?;
    }
    Some(out)
}

impl<'a> SignatureHeaders<'a> {
    /// Checks presence and shape (not the signature).
    pub fn parse(&self) -> Result<ParsedSignature<'a>, SignatureError> {
        let app_id = self.app_id.ok_or(SignatureError::Missing(HEADER_APP))?;
        let ts = self
            .timestamp
            .ok_or(SignatureError::Missing(HEADER_TIMESTAMP))?;
        let nonce = self.nonce.ok_or(SignatureError::Missing(HEADER_NONCE))?;
        let sig = self
            .signature
            .ok_or(SignatureError::Missing(HEADER_SIGNATURE))?;
        if app_id.is_empty() || app_id.len() > MAX_APP_ID || !token_chars(app_id) {
            return Err(SignatureError::Malformed(
                "app id must be 1-128 of [A-Za-z0-9._-]",
            ));
        }
        if !(MIN_NONCE..=MAX_NONCE).contains(&nonce.len()) || !token_chars(nonce) {
            return Err(SignatureError::Malformed(
                "nonce must be 16-128 of [A-Za-z0-9._-]",
            ));
        }
        if ts.is_empty() || ts.len() > 12 || !ts.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SignatureError::Malformed("timestamp must be Unix seconds"));
        }
        let timestamp = ts
            .parse::<i64>()
            .map_err(|_| SignatureError::Malformed("timestamp must be Unix seconds"))?;
        let mac = unhex32(sig).ok_or(SignatureError::Malformed(
            "signature must be 64 hex digits (HMAC-SHA256)",
        ))?;
        Ok(ParsedSignature {
            app_id,
            timestamp,
            nonce,
            mac,
        })
    }
}

/// The lower-case hex SHA-256 of `body`.
pub fn body_sha256_hex(body: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, body).as_ref())
}

/// The canonical query: raw pairs, empty ones dropped, sorted bytewise.
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    pairs.join("&")
}

/// The string that is signed.
pub fn canonical_string(
    app_id: &str,
    timestamp: i64,
    nonce: &str,
    parts: &SignedParts<'_>,
) -> String {
    format!(
        "{SCHEME}\n{app_id}\n{}\n{}\n{}\n{timestamp}\n{nonce}\n{}",
        parts.method.to_ascii_uppercase(),
        parts.path,
        canonical_query(parts.query),
        body_sha256_hex(parts.body)
    )
}

/// Signs a request: the hex signature for the [`HEADER_SIGNATURE`] header.
pub fn sign(
    secret: &[u8],
    app_id: &str,
    timestamp: i64,
    nonce: &str,
    parts: &SignedParts<'_>,
) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(
        &key,
        canonical_string(app_id, timestamp, nonce, parts).as_bytes(),
    );
    hex(tag.as_ref())
}

/// Checks the window and the HMAC (in constant time). The nonce must then
/// be remembered for the window by the caller (the runtime's nonce store).
pub fn verify(
    secret: &[u8],
    sig: &ParsedSignature<'_>,
    parts: &SignedParts<'_>,
    now_unix: i64,
    window: Duration,
) -> Result<(), SignatureError> {
    let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    if (now_unix.saturating_sub(sig.timestamp)).abs() > window {
        return Err(SignatureError::OutsideWindow);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let message = canonical_string(sig.app_id, sig.timestamp, sig.nonce, parts);
    hmac::verify(&key, message.as_bytes(), &sig.mac).map_err(|_| SignatureError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn parts<'a>(query: &'a str, body: &'a [u8]) -> SignedParts<'a> {
        SignedParts {
            method: "POST",
            path: "/v1/orders",
            query,
            body,
        }
    }

    #[test]
    fn round_trip_and_tamper() {
        let nonce = "n0nce-0123456789abcdef";
        let sig = sign(SECRET, "billing", 1_000, nonce, &parts("b=2&a=1", b"{}"));
        let headers = SignatureHeaders {
            app_id: Some("billing"),
            timestamp: Some("1000"),
            nonce: Some(nonce),
            signature: Some(&sig),
        };
        let parsed = headers.parse().unwrap();
        // Query order does not matter; the body does.
        verify(
            SECRET,
            &parsed,
            &parts("a=1&b=2", b"{}"),
            1_100,
            DEFAULT_WINDOW,
        )
        .unwrap();
        assert_eq!(
            verify(
                SECRET,
                &parsed,
                &parts("a=1&b=2", b"{ }"),
                1_100,
                DEFAULT_WINDOW
            ),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            verify(
                SECRET,
                &parsed,
                &parts("a=1&b=2", b"{}"),
                1_301,
                DEFAULT_WINDOW
            ),
            Err(SignatureError::OutsideWindow)
        );
        assert_eq!(
            verify(
                SECRET,
                &parsed,
                &parts("a=1&b=2", b"{}"),
                699,
                DEFAULT_WINDOW
            ),
            Err(SignatureError::OutsideWindow)
        );
        let other = b"another-secret-another-secret-xx";
        assert_eq!(
            verify(
                other,
                &parsed,
                &parts("a=1&b=2", b"{}"),
                1_000,
                DEFAULT_WINDOW
            ),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn malformed_headers() {
        let h = SignatureHeaders {
            app_id: Some("a"),
            timestamp: Some("12"),
            nonce: Some("short"),
            signature: Some("00"),
        };
        assert!(matches!(h.parse(), Err(SignatureError::Malformed(_))));
        assert_eq!(
            SignatureHeaders::default().parse(),
            Err(SignatureError::Missing(HEADER_APP))
        );
    }
}
