//! JOSE: algorithms, keys, JWK/JWKS, and compact JWS signing and verification.

pub mod algorithm;
mod der;
pub mod json;
pub mod jwk;
pub mod jws;
pub mod key;
pub mod keyset;
pub(crate) mod scan;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// Decodes strict base64url without padding (non-canonical trailing bits rejected).
pub fn b64_decode(input: &[u8]) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(input).ok()
}

/// Decodes strict base64url without padding into `out`; `None` if it does not fit.
pub fn b64_decode_into(input: &[u8], out: &mut [u8]) -> Option<usize> {
    if base64::decoded_len_estimate(input.len()) > out.len() {
        return None;
    }
    URL_SAFE_NO_PAD.decode_slice(input, out).ok()
}

/// Encodes base64url without padding.
pub fn b64_encode(input: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(input)
}

/// Encodes DER as a PEM block with 64-column lines.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
