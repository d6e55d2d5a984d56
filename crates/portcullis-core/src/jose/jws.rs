//! Compact JWS (RFC 7515): strict decoding, key selection bound to the key's
//! type, signature verification, and signing.

use std::sync::Arc;

use super::algorithm::{Algorithm, AlgorithmSet};
use super::json::{CowStr, MemberNames};
use super::key::Key;
use super::keyset::KeySet;
use super::scan::{JsonError, Scanner};
use super::{b64_decode_into, b64_encode};
use crate::error::{KeyError, TokenError};

/// The default bound on a whole token, in bytes.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The largest decoded JOSE header accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 2048;
/// The most members a JOSE header may hold, nested ones included: read
/// before the signature is checked, so bounded before any duplicate check.
pub const MAX_HEADER_MEMBERS: usize = 32;
/// The largest decoded signature accepted (RSA-8192), in bytes.
pub const MAX_SIGNATURE_BYTES: usize = 1024;

/// What a JWS must satisfy before its claims are looked at.
#[derive(Debug, Clone)]
pub struct JwsPolicy {
    /// Bound on the whole compact token.
    pub max_token_bytes: usize,
    /// The algorithms accepted at all (each key narrows further).
    pub algorithms: AlgorithmSet,
}

impl Default for JwsPolicy {
    fn default() -> Self {
        Self {
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            algorithms: AlgorithmSet::ALL,
        }
    }
}

/// The `typ` header, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypHeader {
    /// No `typ`.
    Absent,
    /// `JWT`.
    Jwt,
    /// `at+jwt` (RFC 9068 access token).
    AccessToken,
    /// Anything else (e.g. `refresh+jwt`, `JOSE`).
    Other,
}

/// A JWS whose signature verified.
#[derive(Debug)]
pub struct VerifiedJws<'k> {
    /// The algorithm that verified.
    pub alg: Algorithm,
    /// The key that verified.
    pub key: &'k Arc<Key>,
    /// The `typ` header.
    pub typ: TypHeader,
    /// The decoded payload (not yet parsed).
    pub payload: Vec<u8>,
}

struct Header<'a> {
    alg: Result<Algorithm, TokenError>,
    kid: Option<CowStr<'a>>,
    typ: TypHeader,
}

fn classify_alg(name: &str) -> Result<Algorithm, TokenError> {
    if name.eq_ignore_ascii_case("none") {
        return Err(TokenError::UnsupportedAlgorithm("`none` is never accepted"));
    }
    Algorithm::from_name(name).ok_or(TokenError::UnsupportedAlgorithm("unknown algorithm"))
}

fn classify_typ(typ: &str) -> TypHeader {
    // Media-type names are case-insensitive (RFC 7515 §4.1.9).
    let t = match typ.get(..12) {
        Some(p) if p.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    };
    if t.eq_ignore_ascii_case("JWT") {
        TypHeader::Jwt
    } else if t.eq_ignore_ascii_case("at+jwt") {
        TypHeader::AccessToken
    } else {
        TypHeader::Other
    }
}

/// Parses the JOSE header in one strict pass (see [`super::scan`]).
fn parse_header(bytes: &[u8]) -> Result<Header<'_>, JsonError> {
    let mut s = Scanner::new(bytes)?.with_member_limit(MAX_HEADER_MEMBERS);
    // `alg`, `kid` and `typ` are tracked by bit, other names in `names`, so
    // the usual header allocates nothing.
    let mut seen = 0u8;
    let mut names = MemberNames::default();
    let mut alg = None;
    let mut kid = None;
    let mut typ = TypHeader::Absent;
    s.object(0, |s, name, depth| {
        let bit = match name.as_str() {
            "alg" => {
                alg = Some(classify_alg(s.string()?.as_str()));
                1
            }
            "kid" => {
                kid = Some(s.string()?);
                2
            }
            "typ" => {
                typ = classify_typ(s.string()?.as_str());
                4
            }
            // We implement no JWS extension, so any critical one is unknown.
            "crit" => return Err(JsonError("unknown critical header")),
            // jku, x5u, jwk, x5c and the rest are never followed or trusted.
            _ => {
                s.skip(depth)?;
                return names.insert(name);
            }
        };
        if seen & bit != 0 {
            return Err(JsonError("duplicate member name"));
        }
        seen |= bit;
        Ok(())
    })?;
    s.end()?;
    Ok(Header {
        alg: alg.ok_or(JsonError("missing alg"))?,
        kid,
        typ,
    })
}

/// The header, payload and signature segments of a compact JWS.
type Segments<'a> = (&'a [u8], &'a [u8], &'a [u8]);

fn split_compact(token: &[u8]) -> Result<Segments<'_>, TokenError> {
    // memchr: a byte-at-a-time split showed in the verify profile.
    let mut dots = memchr::memchr_iter(b'.', token);
    match (dots.next(), dots.next(), dots.next()) {
        (Some(a), Some(b), None) => Ok((&token[..a], &token[a + 1..b], &token[b + 1..])),
        _ => Err(TokenError::Malformed(
            "a compact JWS has exactly three segments",
        )),
    }
}

/// Decodes a compact JWS, selects the key and verifies the signature.
/// The payload is returned undecoded as JSON; claims are the JWT layer's.
pub fn verify_compact<'k>(
    token: &[u8],
    keys: &'k KeySet,
    policy: &JwsPolicy,
) -> Result<VerifiedJws<'k>, TokenError> {
    if token.len() > policy.max_token_bytes {
        return Err(TokenError::Malformed("token is too large"));
    }
    let (header_b64, payload_b64, sig_b64) = split_compact(token)?;
    if header_b64.is_empty() {
        return Err(TokenError::Malformed("empty header"));
    }

    let (mut header_stack, mut header_heap) = ([0u8; 256], Vec::new());
    let header_bytes = decode_bounded(
        header_b64,
        &mut header_stack,
        &mut header_heap,
        MAX_HEADER_BYTES,
    )
    .ok_or(TokenError::Malformed(
        "header is not base64url without padding",
    ))?;
    let header = parse_header(header_bytes)
        .map_err(|_| TokenError::Malformed("header is not a valid JOSE header object"))?;
    let alg = header.alg?;
    if !policy.algorithms.contains(alg) {
        return Err(TokenError::UnsupportedAlgorithm("algorithm is not allowed"));
    }
    // Checked after `alg`, so an unsigned `alg: none` token (`h.p.`) is
    // reported as the algorithm attack it is.
    if sig_b64.is_empty() {
        return Err(TokenError::Malformed("empty signature"));
    }
    let key = keys.select(header.kid.as_ref().map(CowStr::as_str), alg)?;

    let (mut sig_stack, mut sig_heap) = ([0u8; 512], Vec::new());
    let sig = decode_bounded(sig_b64, &mut sig_stack, &mut sig_heap, MAX_SIGNATURE_BYTES).ok_or(
        TokenError::Malformed("signature is not base64url without padding"),
    )?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    key.verify(alg, signing_input, sig)?;

    let payload = super::b64_decode(payload_b64).ok_or(TokenError::Malformed(
        "payload is not base64url without padding",
    ))?;
    Ok(VerifiedJws {
        alg,
        key,
        typ: header.typ,
        payload,
    })
}

/// Decodes base64url into `stack` when it fits (no allocation, a small
/// memset), else into `heap`; `None` if malformed or over `max` bytes.
fn decode_bounded<'b>(
    input: &[u8],
    stack: &'b mut [u8],
    heap: &'b mut Vec<u8>,
    max: usize,
) -> Option<&'b [u8]> {
    let estimate = base64::decoded_len_estimate(input.len());
    if estimate > max {
        return None;
    }
    let buf: &'b mut [u8] = if estimate <= stack.len() {
        stack
    } else {
        heap.resize(estimate, 0);
        heap
    };
    let len = b64_decode_into(input, buf)?;
    Some(&buf[..len])
}

/// Signs `payload` as a compact JWS with `key`, naming its `kid` and `typ`.
pub fn sign_compact(key: &Key, typ: Option<&str>, payload: &[u8]) -> Result<String, KeyError> {
    let alg = key.signing_algorithm();
    let header = match typ {
        Some(typ) => serde_json::json!({ "alg": alg.name(), "kid": key.kid(), "typ": typ }),
        None => serde_json::json!({ "alg": alg.name(), "kid": key.kid() }),
    };
    let header = serde_json::to_vec(&header).map_err(|_| KeyError::Crypto("header encoding"))?;
    let mut out = String::with_capacity((header.len() + payload.len()) * 4 / 3 + 400);
    out.push_str(&b64_encode(&header));
    out.push('.');
    out.push_str(&b64_encode(payload));
    let sig = key.sign(alg, out.as_bytes())?;
    out.push('.');
    out.push_str(&b64_encode(&sig));
    Ok(out)
}

/// Decodes a compact JWS without verifying anything, for inspection only.
pub fn decode_unverified(token: &[u8]) -> Result<(serde_json::Value, Vec<u8>), TokenError> {
    let (h, p, _) = split_compact(token)?;
    let header = super::b64_decode(h).ok_or(TokenError::Malformed("header is not base64url"))?;
    let header = super::json::parse_object(&header)
        .map_err(|_| TokenError::Malformed("header is not a JSON object"))?;
    let payload = super::b64_decode(p).ok_or(TokenError::Malformed("payload is not base64url"))?;
    Ok((serde_json::Value::Object(header), payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typ_media_types_compare_case_insensitively() {
        for t in ["JWT", "jwt", "application/jwt", "APPLICATION/JWT"] {
            assert_eq!(classify_typ(t), TypHeader::Jwt, "{t}");
        }
        for t in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+Jwt",
        ] {
            assert_eq!(classify_typ(t), TypHeader::AccessToken, "{t}");
        }
        for t in ["refresh+jwt", "JOSE", "application/", "applicatio"] {
            assert_eq!(classify_typ(t), TypHeader::Other, "{t}");
        }
    }
}
