//! Sealing of private signing keys for storage: AES-256-GCM under a key
//! derived from the server pepper, bound to the key's id and algorithm.
//!
//! A sealed key is `version (1) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`; the
//! plaintext is a one-byte kind (`1` PKCS#8 DER, `2` HMAC secret) followed
//! by the key material. The associated data is `kid ‖ 0 ‖ alg`, so a sealed
//! key copied onto another record's id or algorithm does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use super::algorithm::Algorithm;
use super::key::Key;
use crate::error::KeyError;
use crate::opaque::SecretHasher;

/// Format version of a sealed key.
const VERSION: u8 = 1;
/// Plaintext kind: a PKCS#8 DER private key.
const KIND_PKCS8: u8 = 1;
/// Plaintext kind: an HMAC secret.
const KIND_SECRET: u8 = 2;
/// The label the sealing key is derived with from the pepper.
const LABEL: &str = "portcullis signing-key seal v1";
/// The largest sealed key accepted (an RSA 8192 PKCS#8 is about 4.8 KiB).
pub const MAX_SEALED_LEN: usize = 16 * 1024;

/// Seals and opens private signing keys.
pub struct KeySealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for KeySealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySealer(..)")
    }
}

fn aad(kid: &str, alg: Algorithm) -> Vec<u8> {
    let mut aad = Vec::with_capacity(kid.len() + 8);
    aad.extend_from_slice(kid.as_bytes());
    aad.push(0);
    aad.extend_from_slice(alg.name().as_bytes());
    aad
}

impl KeySealer {
    /// A sealer keyed by `HMAC-SHA256(pepper, label)`: every replica with
    /// the same pepper opens what another sealed.
    pub fn from_pepper(hasher: &SecretHasher) -> Result<Self, KeyError> {
        let derived = hasher.hash(LABEL);
        let key = UnboundKey::new(&AES_256_GCM, &derived)
            .map_err(|_| KeyError::Crypto("AES-256-GCM key"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
        })
    }

    /// Seals `key`'s private part, for signing with `alg`.
    pub fn seal(&self, key: &Key, alg: Algorithm) -> Result<Vec<u8>, KeyError> {
        let mut plain = Vec::new();
        if let Some(der) = key.private_pkcs8_der() {
            plain.push(KIND_PKCS8);
            plain.extend_from_slice(der);
        } else if let Some(secret) = key.secret() {
            plain.push(KIND_SECRET);
            plain.extend_from_slice(secret);
        } else {
            return Err(KeyError::NotASigningKey(key.kid().to_owned()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| KeyError::Crypto("random"))?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(key.kid(), alg)),
                &mut plain,
            )
            .map_err(|_| KeyError::Crypto("AES-256-GCM seal"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&plain);
        Ok(out)
    }

    /// Opens a key sealed for `kid` and `alg`; the key gets that kid and is
    /// pinned to `alg`. A wrong pepper, kid or algorithm, or tampered bytes,
    /// are [`KeyError::Malformed`].
    pub fn open(&self, kid: &str, alg: Algorithm, sealed: &[u8]) -> Result<Key, KeyError> {
        let refused = || {
            KeyError::Malformed(format!(
                "sealed key `{kid}` does not open (another pepper, or altered)"
            ))
        };
        if sealed.len() > MAX_SEALED_LEN || sealed.len() < 1 + NONCE_LEN + 16 + 1 {
            return Err(refused());
        }
        if sealed[0] != VERSION {
            return Err(KeyError::Unsupported(format!(
                "sealed key `{kid}` has format version {}",
                sealed[0]
            )));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..=NONCE_LEN]);
        let mut body = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(kid, alg)),
                &mut body,
            )
            .map_err(|_| refused())?;
        let (&kind, material) = plain.split_first().ok_or_else(refused)?;
        let key = match kind {
            KIND_PKCS8 => Key::from_pkcs8(material, Some(alg))?,
            KIND_SECRET => Key::hmac(material, Some(alg))?,
            _ => return Err(refused()),
        };
        // Scrub the plaintext copy.
        body.iter_mut().for_each(|b| *b = 0);
        Ok(key.with_kid(kid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(pepper: u8) -> KeySealer {
        KeySealer::from_pepper(&SecretHasher::new(&[pepper; 32]).expect("pepper")).expect("sealer")
    }

    #[test]
    fn sealed_keys_open_to_the_same_key_only_with_the_same_pepper_kid_and_alg() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::HS256] {
            let key = Key::generate(alg).expect("generate").with_kid("k1");
            let sealed = sealer(1).seal(&key, alg).expect("seal");
            let opened = sealer(1).open("k1", alg, &sealed).expect("open");
            let sig = opened.sign(alg, b"message").expect("sign");
            key.verify(alg, b"message", &sig).expect("same key");
            assert_eq!(opened.kid(), "k1");

            assert!(sealer(2).open("k1", alg, &sealed).is_err(), "other pepper");
            assert!(sealer(1).open("k2", alg, &sealed).is_err(), "other kid");
            let mut altered = sealed.clone();
            let last = altered.len() - 1;
            altered[last] ^= 1;
            assert!(sealer(1).open("k1", alg, &altered).is_err(), "altered");
            assert!(
                sealer(1).open("k1", alg, &sealed[..10]).is_err(),
                "truncated"
            );
        }
        let key = Key::generate(Algorithm::ES256)
            .expect("generate")
            .with_kid("k1");
        let sealed = sealer(1).seal(&key, Algorithm::ES256).expect("seal");
        assert!(
            sealer(1).open("k1", Algorithm::ES384, &sealed).is_err(),
            "other alg"
        );
    }

    #[test]
    fn public_keys_cannot_be_sealed() {
        let key = Key::generate(Algorithm::ES256).expect("generate");
        let public = crate::jose::jwk::public_jwk(&key).expect("jwk");
        let public =
            crate::jose::jwk::key_from_jwk_json(public.to_string().as_bytes()).expect("parse");
        assert!(sealer(1).seal(&public, Algorithm::ES256).is_err());
    }
}
