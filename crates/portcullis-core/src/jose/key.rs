//! One key: parsed once into aws-lc-rs objects for every algorithm it may
//! verify, with its signing half when loaded from private material.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, ParsedPublicKey, RsaKeyPair,
};
use aws_lc_rs::{digest, hmac};

use super::algorithm::{Algorithm, KeyFamily};
use super::der;
use super::{b64_encode, pem_encode};
use crate::error::{KeyError, TokenError};

/// The smallest HMAC secret accepted, in bytes.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus accepted, in bits (bounds verification cost).
pub const MAX_RSA_BITS: usize = 8192;

/// What one key may verify with a given algorithm.
enum Verifier {
    Hmac(Box<hmac::Key>),
    Public(ParsedPublicKey),
}

/// The private half of a key.
enum Signer {
    Hmac,
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// The public parameters of an asymmetric key, for JWKS export.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum PublicParams {
    /// Symmetric: nothing may be exported.
    Secret,
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        crv: &'static str,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Ed25519 {
        x: Vec<u8>,
    },
}

/// A signing or verification key with its id and the algorithms it is bound to.
pub struct Key {
    kid: Box<str>,
    family: KeyFamily,
    pinned: Option<Algorithm>,
    verifiers: [Option<Verifier>; 12],
    signer: Option<Signer>,
    public: PublicParams,
    private_pkcs8: Option<Vec<u8>>,
    /// The HMAC secret (aws-lc-rs cannot export it from `hmac::Key`).
    secret: Option<Vec<u8>>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("algorithm", &self.pinned)
            .field("private", &self.signer.is_some())
            .finish()
    }
}

fn rsa_verify_params(alg: Algorithm) -> &'static signature::RsaParameters {
    match alg {
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => &signature::RSA_PKCS1_2048_8192_SHA256,
    }
}

fn rsa_sign_params(alg: Algorithm) -> &'static dyn signature::RsaEncoding {
    match alg {
        Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_SHA512,
        _ => &signature::RSA_PKCS1_SHA256,
    }
}

/// Whether `secret` is PEM or OpenSSH public-key text, which is never secret.
fn is_public_key_text(secret: &[u8]) -> bool {
    const PREFIXES: [&[u8]; 7] = [
        b"-----BEGIN ",
        b"ssh-rsa ",
        b"ssh-dss ",
        b"ssh-ed25519 ",
        b"ecdsa-sha2-",
        b"sk-ssh-ed25519",
        b"sk-ecdsa-sha2-",
    ];
    let start = secret
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(secret.len());
    let text = &secret[start..];
    PREFIXES.iter().any(|p| text.starts_with(p))
}

fn hmac_params(alg: Algorithm) -> (hmac::Algorithm, usize) {
    match alg {
        Algorithm::HS384 => (hmac::HMAC_SHA384, 48),
        Algorithm::HS512 => (hmac::HMAC_SHA512, 64),
        _ => (hmac::HMAC_SHA256, 32),
    }
}

fn ec_signing(family: KeyFamily) -> &'static signature::EcdsaSigningAlgorithm {
    if family == KeyFamily::P384 {
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING
    } else {
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING
    }
}

fn ec_coordinate_len(family: KeyFamily) -> usize {
    if family == KeyFamily::P384 { 48 } else { 32 }
}

fn malformed(what: impl Into<String>) -> KeyError {
    KeyError::Malformed(what.into())
}

fn family_algorithms(family: KeyFamily) -> impl Iterator<Item = Algorithm> {
    Algorithm::ALL
        .into_iter()
        .filter(move |a| a.family() == family)
}

fn check_pin(family: KeyFamily, pinned: Option<Algorithm>) -> Result<(), KeyError> {
    match pinned {
        Some(alg) if alg.family() != family => Err(KeyError::Unsupported(format!(
            "algorithm {alg} does not fit a {family:?} key"
        ))),
        _ => Ok(()),
    }
}

fn rsa_bits(n: &[u8]) -> usize {
    let n = der::strip_leading_zeros(n);
    match n.first() {
        None => 0,
        Some(&top) => n.len() * 8 - top.leading_zeros() as usize,
    }
}

impl Key {
    fn assemble(
        family: KeyFamily,
        pinned: Option<Algorithm>,
        public: PublicParams,
        verifiers: [Option<Verifier>; 12],
        signer: Option<Signer>,
        private_pkcs8: Option<Vec<u8>>,
    ) -> Result<Self, KeyError> {
        let mut key = Self {
            kid: Box::from(""),
            family,
            pinned,
            verifiers,
            signer,
            public,
            private_pkcs8,
            secret: None,
        };
        key.kid = key.thumbprint().into();
        Ok(key)
    }

    /// An HMAC key. HS384 and HS512 are enabled only for secrets at least as long
    /// as their hash (RFC 7518 §3.2); fewer than 32 bytes is an error.
    /// Public-key text (PEM, OpenSSH) is refused as a secret: it is public,
    /// so anyone could sign with it (the PyJWT CVE-2022-29217 confusion).
    pub fn hmac(secret: &[u8], pinned: Option<Algorithm>) -> Result<Self, KeyError> {
        check_pin(KeyFamily::Hmac, pinned)?;
        if is_public_key_text(secret) {
            return Err(KeyError::Malformed(
                "an HMAC secret must not be PEM or OpenSSH key text".into(),
            ));
        }
        let mut verifiers: [Option<Verifier>; 12] = Default::default();
        let mut any = false;
        for alg in family_algorithms(KeyFamily::Hmac) {
            let (hmac_alg, min) = hmac_params(alg);
            if pinned.is_some_and(|p| p != alg) {
                continue;
            }
            if secret.len() < min {
                if pinned == Some(alg) {
                    return Err(KeyError::WeakHmacSecret(secret.len()));
                }
                continue;
            }
            verifiers[alg.index()] =
                Some(Verifier::Hmac(Box::new(hmac::Key::new(hmac_alg, secret))));
            any = true;
        }
        if !any {
            return Err(KeyError::WeakHmacSecret(secret.len()));
        }
        // The kid of a secret is derived with a domain-separated hash, never the
        // bare RFC 7638 thumbprint over `k`.
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"portcullis hmac kid\0");
        ctx.update(secret);
        let kid = b64_encode(&ctx.finish().as_ref()[..16]);
        Ok(Self {
            kid: kid.into(),
            family: KeyFamily::Hmac,
            pinned,
            verifiers,
            signer: Some(Signer::Hmac),
            public: PublicParams::Secret,
            private_pkcs8: None,
            secret: Some(secret.to_vec()),
        })
    }

    /// An RSA public key from its modulus and exponent (big-endian).
    pub fn rsa_public(n: &[u8], e: &[u8], pinned: Option<Algorithm>) -> Result<Self, KeyError> {
        let verifiers = rsa_verifiers(n, e, pinned)?;
        Self::assemble(
            KeyFamily::Rsa,
            pinned,
            PublicParams::Rsa {
                n: der::strip_leading_zeros(n).to_vec(),
                e: der::strip_leading_zeros(e).to_vec(),
            },
            verifiers,
            None,
            None,
        )
    }

    fn rsa_private(pair: RsaKeyPair, pinned: Option<Algorithm>) -> Result<Self, KeyError> {
        let (n, e) = der::rsa_public_key(pair.public_key().as_ref())
            .ok_or_else(|| malformed("RSA public key"))?;
        let (n, e) = (n.to_vec(), e.to_vec());
        let verifiers = rsa_verifiers(&n, &e, pinned)?;
        let pkcs8 = pair
            .as_der()
            .map_err(|_| KeyError::Crypto("RSA PKCS#8 export"))?
            .as_ref()
            .to_vec();
        Self::assemble(
            KeyFamily::Rsa,
            pinned,
            PublicParams::Rsa { n, e },
            verifiers,
            Some(Signer::Rsa(pair)),
            Some(pkcs8),
        )
    }

    /// An EC public key from its uncompressed point (`04 || x || y`).
    pub fn ec_public(
        family: KeyFamily,
        point: &[u8],
        pinned: Option<Algorithm>,
    ) -> Result<Self, KeyError> {
        check_pin(family, pinned)?;
        let len = ec_coordinate_len(family);
        if !matches!(family, KeyFamily::P256 | KeyFamily::P384) {
            return Err(KeyError::Unsupported(format!(
                "{family:?} is not an EC curve"
            )));
        }
        if point.len() != 1 + 2 * len || point[0] != 4 {
            return Err(malformed("EC public key is not an uncompressed point"));
        }
        let verify_alg: &'static dyn signature::VerificationAlgorithm = if family == KeyFamily::P384
        {
            &signature::ECDSA_P384_SHA384_FIXED
        } else {
            &signature::ECDSA_P256_SHA256_FIXED
        };
        let parsed = ParsedPublicKey::new(verify_alg, point)
            .map_err(|e| malformed(format!("EC public key rejected: {e}")))?;
        let mut verifiers: [Option<Verifier>; 12] = Default::default();
        verifiers[family.default_algorithm().index()] = Some(Verifier::Public(parsed));
        Self::assemble(
            family,
            pinned,
            PublicParams::Ec {
                crv: if family == KeyFamily::P384 {
                    "P-384"
                } else {
                    "P-256"
                },
                x: point[1..=len].to_vec(),
                y: point[1 + len..].to_vec(),
            },
            verifiers,
            None,
            None,
        )
    }

    fn ec_private(
        family: KeyFamily,
        pair: EcdsaKeyPair,
        pinned: Option<Algorithm>,
    ) -> Result<Self, KeyError> {
        let point = pair.public_key().as_ref().to_vec();
        let pkcs8 = pair
            .to_pkcs8v1()
            .map_err(|_| KeyError::Crypto("EC PKCS#8 export"))?
            .as_ref()
            .to_vec();
        let mut key = Self::ec_public(family, &point, pinned)?;
        key.signer = Some(Signer::Ec(pair));
        key.private_pkcs8 = Some(pkcs8);
        Ok(key)
    }

    /// An Ed25519 public key from its 32 bytes.
    pub fn ed25519_public(x: &[u8], pinned: Option<Algorithm>) -> Result<Self, KeyError> {
        check_pin(KeyFamily::Ed25519, pinned)?;
        if x.len() != 32 {
            return Err(malformed("Ed25519 public key must be 32 bytes"));
        }
        let parsed = ParsedPublicKey::new(&signature::ED25519, x)
            .map_err(|e| malformed(format!("Ed25519 public key rejected: {e}")))?;
        let mut verifiers: [Option<Verifier>; 12] = Default::default();
        verifiers[Algorithm::EdDSA.index()] = Some(Verifier::Public(parsed));
        Self::assemble(
            KeyFamily::Ed25519,
            pinned,
            PublicParams::Ed25519 { x: x.to_vec() },
            verifiers,
            None,
            None,
        )
    }

    fn ed25519_private(pair: Ed25519KeyPair, pinned: Option<Algorithm>) -> Result<Self, KeyError> {
        let pkcs8 = pair
            .to_pkcs8()
            .map_err(|_| KeyError::Crypto("Ed25519 PKCS#8 export"))?
            .as_ref()
            .to_vec();
        let mut key = Self::ed25519_public(pair.public_key().as_ref(), pinned)?;
        key.signer = Some(Signer::Ed25519(pair));
        key.private_pkcs8 = Some(pkcs8);
        Ok(key)
    }

    /// A private EC key from its scalar and public point (JWK `d`, `x`, `y`).
    pub(crate) fn ec_from_components(
        family: KeyFamily,
        d: &[u8],
        point: &[u8],
        pinned: Option<Algorithm>,
    ) -> Result<Self, KeyError> {
        let pair = EcdsaKeyPair::from_private_key_and_public_key(ec_signing(family), d, point)
            .map_err(|e| malformed(format!("EC private key rejected: {e}")))?;
        Self::ec_private(family, pair, pinned)
    }

    /// A private Ed25519 key from its seed and public key (JWK `d`, `x`).
    pub(crate) fn ed25519_from_components(
        seed: &[u8],
        x: &[u8],
        pinned: Option<Algorithm>,
    ) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_seed_and_public_key(seed, x)
            .map_err(|e| malformed(format!("Ed25519 private key rejected: {e}")))?;
        Self::ed25519_private(pair, pinned)
    }

    /// A private RSA key from its PKCS#1 `RSAPrivateKey` DER.
    pub(crate) fn rsa_from_pkcs1(
        der_bytes: &[u8],
        pinned: Option<Algorithm>,
    ) -> Result<Self, KeyError> {
        if let Some(n) = der::rsa_private_key_modulus(der_bytes) {
            check_rsa_size(n)?;
        }
        let pair = RsaKeyPair::from_der(der_bytes)
            .map_err(|e| malformed(format!("RSA private key rejected: {e}")))?;
        Self::rsa_private(pair, pinned)
    }

    /// Generates a new private key for `alg` (RSA keys are 2048 bits).
    pub fn generate(alg: Algorithm) -> Result<Self, KeyError> {
        let pinned = Some(alg);
        match alg.family() {
            KeyFamily::Hmac => {
                let mut secret = vec![0u8; hmac_params(alg).1];
                aws_lc_rs::rand::fill(&mut secret).map_err(|_| KeyError::Crypto("random"))?;
                Self::hmac(&secret, pinned)
            }
            KeyFamily::Rsa => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048)
                    .map_err(|_| KeyError::Crypto("RSA generation"))?;
                Self::rsa_private(pair, pinned)
            }
            family @ (KeyFamily::P256 | KeyFamily::P384) => {
                let pair = EcdsaKeyPair::generate(ec_signing(family))
                    .map_err(|_| KeyError::Crypto("EC generation"))?;
                Self::ec_private(family, pair, pinned)
            }
            KeyFamily::Ed25519 => {
                let pair = Ed25519KeyPair::generate()
                    .map_err(|_| KeyError::Crypto("Ed25519 generation"))?;
                Self::ed25519_private(pair, pinned)
            }
        }
    }

    /// Loads a key from PEM: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`,
    /// `RSA PUBLIC KEY`), SEC1 (`EC PRIVATE KEY`) or SPKI (`PUBLIC KEY`).
    pub fn from_pem(text: &[u8], pinned: Option<Algorithm>) -> Result<Self, KeyError> {
        let block = pem::parse(text).map_err(|e| malformed(format!("PEM: {e}")))?;
        let body = block.contents();
        match block.tag() {
            "PRIVATE KEY" => Self::from_pkcs8(body, pinned),
            "RSA PRIVATE KEY" => Self::rsa_from_pkcs1(body, pinned),
            "EC PRIVATE KEY" => {
                let family = match der::sec1_curve(body) {
                    Some(c) if c == der::oid::P256 => KeyFamily::P256,
                    Some(c) if c == der::oid::P384 => KeyFamily::P384,
                    _ => {
                        return Err(KeyError::Unsupported(
                            "EC curve (P-256 and P-384 are supported)".into(),
                        ));
                    }
                };
                let pair = EcdsaKeyPair::from_private_key_der(ec_signing(family), body)
                    .map_err(|e| malformed(format!("EC private key rejected: {e}")))?;
                Self::ec_private(family, pair, pinned)
            }
            "PUBLIC KEY" => Self::from_spki(body, pinned),
            "RSA PUBLIC KEY" => {
                let (n, e) =
                    der::rsa_public_key(body).ok_or_else(|| malformed("RSA public key"))?;
                Self::rsa_public(n, e, pinned)
            }
            other => Err(KeyError::Unsupported(format!("PEM block `{other}`"))),
        }
    }

    /// Loads a private key from PKCS#8 DER.
    pub fn from_pkcs8(body: &[u8], pinned: Option<Algorithm>) -> Result<Self, KeyError> {
        let (alg_oid, param) = der::pkcs8_algorithm(body).ok_or_else(|| malformed("PKCS#8"))?;
        if alg_oid == der::oid::RSA_ENCRYPTION {
            let pair = RsaKeyPair::from_pkcs8(body).map_err(|e| rsa_rejection(body, e))?;
            Self::rsa_private(pair, pinned)
        } else if alg_oid == der::oid::EC_PUBLIC_KEY {
            let family = ec_family(param)?;
            let pair = EcdsaKeyPair::from_pkcs8(ec_signing(family), body)
                .map_err(|e| malformed(format!("EC private key rejected: {e}")))?;
            Self::ec_private(family, pair, pinned)
        } else if alg_oid == der::oid::ED25519 {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(body)
                .map_err(|e| malformed(format!("Ed25519 private key rejected: {e}")))?;
            Self::ed25519_private(pair, pinned)
        } else {
            Err(KeyError::Unsupported("PKCS#8 key algorithm".into()))
        }
    }

    /// Loads a public key from SubjectPublicKeyInfo DER.
    pub fn from_spki(body: &[u8], pinned: Option<Algorithm>) -> Result<Self, KeyError> {
        let spki = der::parse_spki(body).ok_or_else(|| malformed("SubjectPublicKeyInfo"))?;
        if spki.algorithm == der::oid::RSA_ENCRYPTION {
            let (n, e) =
                der::rsa_public_key(spki.key).ok_or_else(|| malformed("RSA public key"))?;
            Self::rsa_public(n, e, pinned)
        } else if spki.algorithm == der::oid::EC_PUBLIC_KEY {
            Self::ec_public(ec_family(spki.parameter)?, spki.key, pinned)
        } else if spki.algorithm == der::oid::ED25519 {
            Self::ed25519_public(spki.key, pinned)
        } else {
            Err(KeyError::Unsupported("public key algorithm".into()))
        }
    }

    /// Replaces the key id.
    #[must_use]
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = kid.into().into_boxed_str();
        self
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key family.
    pub fn family(&self) -> KeyFamily {
        self.family
    }

    /// The algorithm this key is pinned to, if any.
    pub fn pinned_algorithm(&self) -> Option<Algorithm> {
        self.pinned
    }

    /// The algorithm used when signing with this key.
    pub fn signing_algorithm(&self) -> Algorithm {
        self.pinned
            .unwrap_or_else(|| self.family.default_algorithm())
    }

    /// Whether this key may verify `alg`.
    pub fn supports(&self, alg: Algorithm) -> bool {
        self.verifiers[alg.index()].is_some()
    }

    /// Whether the private half is loaded.
    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    /// Whether this is a symmetric key (never exported).
    pub fn is_symmetric(&self) -> bool {
        self.family == KeyFamily::Hmac
    }

    /// Verifies a raw JWS signature over `message` with `alg`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> Result<(), TokenError> {
        let Some(verifier) = &self.verifiers[alg.index()] else {
            return Err(TokenError::UnsupportedAlgorithm(
                "algorithm does not match the key",
            ));
        };
        match verifier {
            Verifier::Hmac(key) => {
                hmac::verify(key, message, sig).map_err(|_| TokenError::InvalidSignature)
            }
            Verifier::Public(parsed) => {
                if let KeyFamily::P256 | KeyFamily::P384 = self.family {
                    check_fixed_ecdsa(sig, ec_coordinate_len(self.family))?;
                }
                parsed
                    .verify_sig(message, sig)
                    .map_err(|_| TokenError::InvalidSignature)
            }
        }
    }

    /// Signs `message` with `alg` and returns the raw JWS signature.
    pub fn sign(&self, alg: Algorithm, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let not_signing = || KeyError::NotASigningKey(self.kid.to_string());
        let signer = self.signer.as_ref().ok_or_else(not_signing)?;
        if !self.supports(alg) {
            return Err(KeyError::Unsupported(format!(
                "key `{}` does not sign {alg}",
                self.kid
            )));
        }
        match (signer, &self.verifiers[alg.index()]) {
            (Signer::Hmac, Some(Verifier::Hmac(key))) => {
                Ok(hmac::sign(key, message).as_ref().to_vec())
            }
            (Signer::Rsa(pair), _) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(
                    rsa_sign_params(alg),
                    &SystemRandom::new(),
                    message,
                    &mut sig,
                )
                .map_err(|_| KeyError::Crypto("RSA signing"))?;
                Ok(sig)
            }
            (Signer::Ec(pair), _) => pair
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Crypto("ECDSA signing")),
            (Signer::Ed25519(pair), _) => pair
                .try_sign(message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Crypto("Ed25519 signing")),
            _ => Err(not_signing()),
        }
    }

    /// The private key as PKCS#8 PEM, when this is an asymmetric private key.
    pub fn private_pkcs8_pem(&self) -> Option<String> {
        self.private_pkcs8
            .as_deref()
            .map(|der| pem_encode("PRIVATE KEY", der))
    }

    /// The private key as PKCS#8 DER, when this is an asymmetric private key.
    pub(crate) fn private_pkcs8_der(&self) -> Option<&[u8]> {
        self.private_pkcs8.as_deref()
    }

    /// The HMAC secret, when this is a symmetric key.
    pub(crate) fn secret(&self) -> Option<&[u8]> {
        self.secret.as_deref()
    }

    pub(crate) fn public_params(&self) -> &PublicParams {
        &self.public
    }

    /// The RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key; for
    /// an HMAC key, which has no public part, the key id.
    pub fn thumbprint(&self) -> String {
        let canonical = match &self.public {
            PublicParams::Secret => return self.kid.to_string(),
            PublicParams::Rsa { n, e } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                b64_encode(e),
                b64_encode(n)
            ),
            PublicParams::Ec { crv, x, y } => format!(
                r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#,
                b64_encode(x),
                b64_encode(y)
            ),
            PublicParams::Ed25519 { x } => {
                format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64_encode(x))
            }
        };
        b64_encode(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    }
}

fn check_rsa_size(n: &[u8]) -> Result<(), KeyError> {
    let bits = rsa_bits(n);
    if bits < MIN_RSA_BITS {
        return Err(KeyError::WeakRsaKey(bits));
    }
    if bits > MAX_RSA_BITS {
        return Err(KeyError::Unsupported(format!(
            "RSA key of {bits} bits (at most {MAX_RSA_BITS})"
        )));
    }
    Ok(())
}

fn rsa_rejection(pkcs8: &[u8], e: aws_lc_rs::error::KeyRejected) -> KeyError {
    // Name a short modulus precisely; aws-lc-rs reports it only generically.
    let modulus = der::Reader::new(pkcs8)
        .expect(der::TAG_SEQUENCE)
        .and_then(|seq| {
            let mut r = der::Reader::new(seq);
            r.expect(der::TAG_INTEGER)?;
            r.expect(der::TAG_SEQUENCE)?;
            der::rsa_private_key_modulus(r.expect(der::TAG_OCTET_STRING)?)
        });
    match modulus.map(check_rsa_size) {
        Some(Err(weak)) => weak,
        _ => malformed(format!("RSA private key rejected: {e}")),
    }
}

fn rsa_verifiers(
    n: &[u8],
    e: &[u8],
    pinned: Option<Algorithm>,
) -> Result<[Option<Verifier>; 12], KeyError> {
    check_pin(KeyFamily::Rsa, pinned)?;
    check_rsa_size(n)?;
    let pkcs1 = der::sequence_of_unsigned(&[n, e]);
    let mut verifiers: [Option<Verifier>; 12] = Default::default();
    for alg in family_algorithms(KeyFamily::Rsa) {
        if pinned.is_some_and(|p| p != alg) {
            continue;
        }
        let parsed = ParsedPublicKey::new(rsa_verify_params(alg), &pkcs1)
            .map_err(|e| malformed(format!("RSA public key rejected: {e}")))?;
        verifiers[alg.index()] = Some(Verifier::Public(parsed));
    }
    Ok(verifiers)
}

fn ec_family(param: Option<&[u8]>) -> Result<KeyFamily, KeyError> {
    match param {
        Some(p) if p == der::oid::P256 => Ok(KeyFamily::P256),
        Some(p) if p == der::oid::P384 => Ok(KeyFamily::P384),
        _ => Err(KeyError::Unsupported(
            "EC curve (P-256 and P-384 are supported)".into(),
        )),
    }
}

/// JWS ECDSA signatures are the fixed-size `r || s` form (RFC 7518 §3.4); a
/// DER signature, a wrong length or a zero `r` or `s` is rejected up front.
fn check_fixed_ecdsa(sig: &[u8], coordinate_len: usize) -> Result<(), TokenError> {
    if sig.len() != 2 * coordinate_len {
        return Err(TokenError::InvalidSignature);
    }
    let (r, s) = sig.split_at(coordinate_len);
    if r.iter().all(|&b| b == 0) || s.iter().all(|&b| b == 0) {
        return Err(TokenError::InvalidSignature);
    }
    Ok(())
}
