//! Opaque prefixed secrets (refresh tokens `pcr_`, API keys `pck_`): 256
//! random bits and a checksum, so a mistyped or truncated one is rejected
//! without a store lookup; stored only as a keyed hash.

use aws_lc_rs::{constant_time, digest, hmac, rand};

use crate::error::KeyError;
use crate::jose::{b64_decode, b64_encode};

/// Random bytes in a secret.
const SECRET_BYTES: usize = 32;
/// Base64url characters of the random part.
const BODY_CHARS: usize = 43;
/// Checksum bytes (6 base64url characters).
const CHECKSUM_BYTES: usize = 4;
const CHECKSUM_CHARS: usize = 6;

fn checksum(prefix: &str, body: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prefix.as_bytes());
    ctx.update(body);
    let d = ctx.finish();
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&d.as_ref()[..CHECKSUM_BYTES]);
    out
}

/// Generates a new secret `prefix` + 43 random base64url characters + checksum.
pub fn generate(prefix: &str) -> Result<String, KeyError> {
    let mut random = [0u8; SECRET_BYTES];
    rand::fill(&mut random).map_err(|_| KeyError::Crypto("random"))?;
    Ok(encode(prefix, &random))
}

/// The secret `prefix` + base64url(`secret`) + checksum, for 256 bits that
/// come from elsewhere (e.g. a keyed derivation).
pub fn encode(prefix: &str, secret: &[u8; SECRET_BYTES]) -> String {
    let body = b64_encode(secret);
    let sum = b64_encode(&checksum(prefix, body.as_bytes()));
    format!("{prefix}{body}{sum}")
}

/// Whether `token` is a well-formed secret with `prefix` and a valid checksum.
pub fn is_well_formed(prefix: &str, token: &str) -> bool {
    let Some(rest) = token.strip_prefix(prefix) else {
        return false;
    };
    if rest.len() != BODY_CHARS + CHECKSUM_CHARS || !rest.is_ascii() {
        return false;
    }
    let (body, sum) = rest.split_at(BODY_CHARS);
    if b64_decode(body.as_bytes()).is_none_or(|b| b.len() != SECRET_BYTES) {
        return false;
    }
    match b64_decode(sum.as_bytes()) {
        Some(given) => {
            constant_time::verify_slices_are_equal(&given, &checksum(prefix, body.as_bytes()))
                .is_ok()
        }
        None => false,
    }
}

/// Fills `buf` from the system CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), KeyError> {
    rand::fill(buf).map_err(|_| KeyError::Crypto("random"))
}

/// Compares two byte strings in constant time (for equal lengths).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// Keyed hashing of secrets (HMAC-SHA256 with a server pepper) for storage.
#[derive(Clone)]
pub struct SecretHasher {
    key: hmac::Key,
}

impl std::fmt::Debug for SecretHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHasher(..)")
    }
}

impl SecretHasher {
    /// A hasher with `pepper` (at least 32 bytes).
    pub fn new(pepper: &[u8]) -> Result<Self, KeyError> {
        if pepper.len() < 32 {
            return Err(KeyError::WeakHmacSecret(pepper.len()));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, pepper),
        })
    }

    /// The keyed hash of `secret`.
    pub fn hash(&self, secret: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.key, secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `secret` hashes to `stored`, compared in constant time.
    pub fn matches(&self, secret: &str, stored: &[u8]) -> bool {
        hmac::verify(&self.key, secret.as_bytes(), stored).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_well_formed_and_distinct() {
        let a = generate("pcr_").expect("random");
        let b = generate("pcr_").expect("random");
        assert_ne!(a, b);
        assert!(a.starts_with("pcr_") && a.len() == 4 + 43 + 6);
        assert!(is_well_formed("pcr_", &a));
        assert!(
            !is_well_formed("pck_", &a),
            "prefix is part of the checksum"
        );
    }

    #[test]
    fn any_typo_or_truncation_is_rejected() {
        let t = generate("pcr_").expect("random");
        for cut in 0..t.len() {
            assert!(!is_well_formed("pcr_", &t[..cut]));
        }
        let bytes = t.as_bytes();
        for i in 4..bytes.len() {
            for c in [b'A', b'z', b'0', b'-', b'_'] {
                if bytes[i] == c {
                    continue;
                }
                let mut m = bytes.to_vec();
                m[i] = c;
                let m = String::from_utf8(m).expect("ascii");
                assert!(!is_well_formed("pcr_", &m), "accepted typo at {i}: {m}");
            }
        }
    }

    #[test]
    fn hashes_are_keyed() {
        let h1 = SecretHasher::new(&[1; 32]).expect("pepper");
        let h2 = SecretHasher::new(&[2; 32]).expect("pepper");
        assert_ne!(h1.hash("x"), h2.hash("x"));
        assert!(h1.matches("x", &h1.hash("x")));
        assert!(!h1.matches("y", &h1.hash("x")));
        assert!(SecretHasher::new(&[1; 16]).is_err());
    }
}
