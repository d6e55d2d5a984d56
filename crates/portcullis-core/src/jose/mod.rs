//! JOSE: algorithms, keys, JWK/JWKS, and compact JWS signing and verification.

pub mod algorithm;
mod der;
pub mod json;
pub mod jwk;
pub mod jws;
pub mod key;
pub mod keyset;
pub mod rotation;
pub(crate) mod scan;
pub mod seal;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// Decodes strict base64url without padding (non-canonical trailing bits rejected).
pub fn b64_decode(input: &[u8]) -> Option<Vec<u8>> {
    base64_simd::URL_SAFE_NO_PAD.decode_to_vec(input).ok()
}

/// Decodes strict base64url without padding into `out`; `None` if it does not fit.
pub fn b64_decode_into(input: &[u8], out: &mut [u8]) -> Option<usize> {
    // SIMD decoding: the base64 crate's scalar engine was 10% of an HS256
    // verify. Held to the base64 crate's strict decoder by a property test.
    let simd = base64_simd::URL_SAFE_NO_PAD;
    let n = simd.decoded_length(input).ok()?;
    let out = out.get_mut(..n)?;
    simd.decode(input, base64_simd::Out::from_slice(out))
        .ok()
        .map(|d| d.len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(input: &[u8]) -> Option<Vec<u8>> {
        URL_SAFE_NO_PAD.decode(input).ok()
    }

    fn into_buffer(input: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0u8; input.len()];
        let n = b64_decode_into(input, &mut out)?;
        out.truncate(n);
        Some(out)
    }

    #[test]
    fn edge_cases_match_the_base64_crate() {
        for input in [
            &b""[..],
            b"A",
            b"AA",
            b"AB",
            b"AAA",
            b"AAB",
            b"AAAA",
            b"AA==",
            b"AA=",
            b"+/8",
            b"-_8",
            b"-_9",
            b"QUJD\n",
            b"QUJD\xff",
            b"QU JD",
            b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo_-0123456789abcdefghijklmn",
            b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo_-0123456789abcdefghijklm=",
        ] {
            assert_eq!(b64_decode(input), reference(input), "{input:?}");
            assert_eq!(into_buffer(input), reference(input), "{input:?}");
        }
    }

    #[test]
    fn a_buffer_too_small_is_refused() {
        let mut out = [0u8; 2];
        assert_eq!(b64_decode_into(b"QUJD", &mut out), None);
        let mut out = [0u8; 3];
        assert_eq!(b64_decode_into(b"QUJD", &mut out), Some(3));
        assert_eq!(&out, b"ABC");
    }

    proptest! {
        #[test]
        fn round_trips_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let text = b64_encode(&data);
            prop_assert_eq!(b64_decode(text.as_bytes()), Some(data.clone()));
            prop_assert_eq!(into_buffer(text.as_bytes()), Some(data));
        }

        #[test]
        fn agrees_with_the_base64_crate_on_near_base64(
            text in "[A-Za-z0-9_=+/. -]{0,100}"
        ) {
            prop_assert_eq!(b64_decode(text.as_bytes()), reference(text.as_bytes()));
            prop_assert_eq!(into_buffer(text.as_bytes()), reference(text.as_bytes()));
        }

        #[test]
        fn agrees_with_the_base64_crate_on_one_changed_byte(
            data in proptest::collection::vec(any::<u8>(), 1..200),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut text = b64_encode(&data).into_bytes();
            let i = at.index(text.len());
            text[i] = byte;
            prop_assert_eq!(b64_decode(&text), reference(&text));
            prop_assert_eq!(into_buffer(&text), reference(&text));
        }
    }
}
