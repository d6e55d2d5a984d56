//! Key loading in every supported format (PKCS#8, SPKI, PKCS#1, SEC1, JWK),
//! cross-format identity, OpenSSL interoperability, public JWKS export, and
//! key-set rotation.

use std::sync::Arc;

use portcullis_core::jose::jwk::key_from_jwk_json;
use portcullis_core::jose::{b64_decode, b64_encode};
use portcullis_core::{
    AccessRequest, Algorithm, ErrorCode, IssueError, IssuerConfig, Key, KeyError, KeyFamily,
    KeySet, ManualClock, SecretHasher, TokenError, TokenIssuer, Validation, Verifier,
};
use serde_json::{Value, json};

const NOW: u64 = 1_700_000_000;
const MESSAGE: &[u8] = include_bytes!("data/message.txt");

const RSA_PKCS8: &[u8] = include_bytes!("data/rsa2048_pkcs8.pem");
const RSA_SPKI: &[u8] = include_bytes!("data/rsa2048_spki.pem");
const RSA_PKCS1: &[u8] = include_bytes!("data/rsa2048_pkcs1.pem");
const RSA_PKCS1_PUBLIC: &[u8] = include_bytes!("data/rsa2048_pkcs1_pub.pem");
const P256_PKCS8: &[u8] = include_bytes!("data/p256_pkcs8.pem");
const P256_SEC1: &[u8] = include_bytes!("data/p256_sec1.pem");
const P256_SPKI: &[u8] = include_bytes!("data/p256_spki.pem");
const P384_PKCS8: &[u8] = include_bytes!("data/p384_pkcs8.pem");
const P384_SEC1: &[u8] = include_bytes!("data/p384_sec1.pem");
const P384_SPKI: &[u8] = include_bytes!("data/p384_spki.pem");
const ED25519_PKCS8: &[u8] = include_bytes!("data/ed25519_pkcs8.pem");
const ED25519_SPKI: &[u8] = include_bytes!("data/ed25519_spki.pem");
const PRIVATE_JWKS: &[u8] = include_bytes!("data/private_jwks.json");

/// The members that must never appear in an exported JWK.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "k", "oth"];

fn pem(text: &[u8]) -> Key {
    Key::from_pem(text, None).unwrap_or_else(|e| {
        panic!(
            "{} loads: {e}",
            String::from_utf8_lossy(&text[..text.len().min(40)])
        )
    })
}

/// Signs [`MESSAGE`] with `signer` and verifies it with `verifier`, for `alg`.
#[track_caller]
fn assert_signs_for(signer: &Key, verifier: &Key, alg: Algorithm) {
    let sig = signer.sign(alg, MESSAGE).expect("signs");
    verifier
        .verify(alg, MESSAGE, &sig)
        .unwrap_or_else(|e| panic!("{alg}: {e:?}"));
    let err = verifier
        .verify(alg, b"another message", &sig)
        .expect_err("the signature is bound to the message");
    assert_eq!(err, TokenError::InvalidSignature);
}

fn verifier(keys: impl Into<Arc<KeySet>>) -> Verifier {
    Verifier::new(keys, Validation::new()).with_clock(Arc::new(ManualClock::at_unix_seconds(NOW)))
}

fn issue(keys: impl Into<Arc<KeySet>>, subject: &str) -> Result<String, IssueError> {
    TokenIssuer::new(
        keys,
        IssuerConfig::new("https://issuer.example"),
        SecretHasher::new(&[1; 32]).expect("pepper"),
    )
    .with_clock(Arc::new(ManualClock::at_unix_seconds(NOW)))
    .issue_access(&AccessRequest {
        subject: subject.into(),
        ..AccessRequest::default()
    })
    .map(|issued| issued.token)
}

// ------------------------------------------------------------------ PKCS#8

#[test]
fn generated_keys_round_trip_through_pkcs8_pem() {
    for alg in [
        Algorithm::RS256,
        Algorithm::PS384,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let key = Key::generate(alg).expect("generates");
        let text = key
            .private_pkcs8_pem()
            .expect("asymmetric keys export PKCS#8");
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        assert!(text.ends_with("-----END PRIVATE KEY-----\n"));
        assert!(text.lines().all(|l| l.len() <= 64), "64-column lines");

        let reloaded = Key::from_pem(text.as_bytes(), Some(alg)).expect("reloads");
        assert_eq!(reloaded.family(), key.family());
        assert_eq!(reloaded.thumbprint(), key.thumbprint());
        assert_eq!(reloaded.kid(), key.kid(), "kid is the thumbprint");
        assert_eq!(reloaded.pinned_algorithm(), Some(alg));
        assert!(reloaded.can_sign());
        assert_eq!(
            reloaded.private_pkcs8_pem().as_deref(),
            Some(text.as_str()),
            "{alg}: export is stable"
        );
        assert_signs_for(&key, &reloaded, alg);
        assert_signs_for(&reloaded, &key, alg);

        // Unpinned, the same PEM loads with the family's default algorithm.
        let unpinned = Key::from_pem(text.as_bytes(), None).expect("reloads");
        assert_eq!(
            unpinned.signing_algorithm(),
            key.family().default_algorithm()
        );
    }
}

#[test]
fn hmac_keys_have_no_pkcs8_export() {
    let key = Key::generate(Algorithm::HS256).expect("generates");
    assert!(key.private_pkcs8_pem().is_none());
    assert!(key.is_symmetric());
    // The kid of a secret is not its bare RFC 7638 thumbprint over `k`.
    assert_eq!(key.kid().len(), 22);
}

#[test]
fn openssl_pkcs8_private_keys_load() {
    for (text, family) in [
        (RSA_PKCS8, KeyFamily::Rsa),
        (P256_PKCS8, KeyFamily::P256),
        (P384_PKCS8, KeyFamily::P384),
        (ED25519_PKCS8, KeyFamily::Ed25519),
    ] {
        let key = pem(text);
        assert_eq!(key.family(), family);
        assert!(key.can_sign());
        assert_eq!(key.signing_algorithm(), family.default_algorithm());
        assert_signs_for(&key, &key, family.default_algorithm());
    }
}

// ------------------------------------------------------------------ SPKI, PKCS#1, SEC1

#[test]
fn spki_public_keys_match_their_private_keys() {
    for (private, public, family) in [
        (RSA_PKCS8, RSA_SPKI, KeyFamily::Rsa),
        (P256_PKCS8, P256_SPKI, KeyFamily::P256),
        (P384_PKCS8, P384_SPKI, KeyFamily::P384),
        (ED25519_PKCS8, ED25519_SPKI, KeyFamily::Ed25519),
    ] {
        let private = pem(private);
        let public = pem(public);
        assert_eq!(public.family(), family);
        assert_eq!(public.thumbprint(), private.thumbprint());
        assert!(!public.can_sign());
        assert!(public.private_pkcs8_pem().is_none());
        let alg = family.default_algorithm();
        assert!(matches!(
            public.sign(alg, MESSAGE),
            Err(KeyError::NotASigningKey(_))
        ));
        assert_signs_for(&private, &public, alg);
    }
}

#[test]
fn pkcs1_rsa_private_and_public_keys_load() {
    let pkcs8 = pem(RSA_PKCS8);
    let pkcs1 = pem(RSA_PKCS1);
    let pkcs1_public = pem(RSA_PKCS1_PUBLIC);
    assert!(
        std::str::from_utf8(RSA_PKCS1)
            .expect("ascii")
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    assert!(
        std::str::from_utf8(RSA_PKCS1_PUBLIC)
            .expect("ascii")
            .starts_with("-----BEGIN RSA PUBLIC KEY-----")
    );
    assert_eq!(pkcs1.thumbprint(), pkcs8.thumbprint());
    assert_eq!(pkcs1_public.thumbprint(), pkcs8.thumbprint());
    assert!(pkcs1.can_sign());
    assert!(!pkcs1_public.can_sign());
    for alg in [Algorithm::RS256, Algorithm::PS256, Algorithm::RS512] {
        assert_signs_for(&pkcs1, &pkcs1_public, alg);
    }
    // A PKCS#1 private key exports as PKCS#8 that reloads as the same key.
    let exported = pkcs1.private_pkcs8_pem().expect("exports");
    assert_eq!(pem(exported.as_bytes()).thumbprint(), pkcs8.thumbprint());
}

#[test]
fn sec1_ec_private_keys_load() {
    for (sec1, pkcs8, family) in [
        (P256_SEC1, P256_PKCS8, KeyFamily::P256),
        (P384_SEC1, P384_PKCS8, KeyFamily::P384),
    ] {
        assert!(
            std::str::from_utf8(sec1)
                .expect("ascii")
                .starts_with("-----BEGIN EC PRIVATE KEY-----")
        );
        let key = pem(sec1);
        assert_eq!(key.family(), family);
        assert!(key.can_sign());
        assert_eq!(key.thumbprint(), pem(pkcs8).thumbprint());
        assert_signs_for(&key, &pem(pkcs8), family.default_algorithm());
    }
}

#[test]
fn pinning_a_pem_key_to_a_foreign_algorithm_is_refused() {
    for (text, alg) in [
        (RSA_SPKI, Algorithm::ES256),
        (P256_SPKI, Algorithm::ES384),
        (P384_PKCS8, Algorithm::ES256),
        (ED25519_SPKI, Algorithm::RS256),
        (RSA_PKCS8, Algorithm::HS256),
    ] {
        assert!(
            matches!(
                Key::from_pem(text, Some(alg)),
                Err(KeyError::Unsupported(_))
            ),
            "{alg}"
        );
    }
    let pinned = Key::from_pem(RSA_SPKI, Some(Algorithm::PS512)).expect("pinned");
    assert!(pinned.supports(Algorithm::PS512));
    assert!(
        Algorithm::ALL
            .into_iter()
            .filter(|a| *a != Algorithm::PS512)
            .all(|a| !pinned.supports(a))
    );
}

#[test]
fn unsupported_and_malformed_pem_is_refused() {
    let k1_private = include_bytes!("data/secp256k1_sec1.pem");
    let k1_public = include_bytes!("data/secp256k1_spki.pem");
    assert!(matches!(
        Key::from_pem(k1_private, None),
        Err(KeyError::Unsupported(_))
    ));
    assert!(matches!(
        Key::from_pem(k1_public, None),
        Err(KeyError::Unsupported(_))
    ));
    let certificate = String::from_utf8_lossy(RSA_SPKI).replace("PUBLIC KEY", "CERTIFICATE");
    assert!(matches!(
        Key::from_pem(certificate.as_bytes(), None),
        Err(KeyError::Unsupported(m)) if m.contains("CERTIFICATE")
    ));
    let encrypted =
        String::from_utf8_lossy(RSA_PKCS8).replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY");
    assert!(matches!(
        Key::from_pem(encrypted.as_bytes(), None),
        Err(KeyError::Unsupported(_))
    ));
    // A public body under a private label, and garbage.
    let mislabelled = String::from_utf8_lossy(RSA_SPKI).replace("PUBLIC KEY", "PRIVATE KEY");
    for text in [
        mislabelled.as_bytes(),
        b"not a pem",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        b"",
    ] {
        assert!(
            matches!(Key::from_pem(text, None), Err(KeyError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(text)
        );
    }
    // A truncated DER body.
    let body = pem_der(P256_SPKI);
    for cut in [0, 1, 10, body.len() - 1] {
        assert!(Key::from_spki(&body[..cut], None).is_err(), "cut {cut}");
    }
    let mut trailing = body.clone();
    trailing.push(0);
    assert!(Key::from_spki(&trailing, None).is_err(), "trailing data");
}

/// The DER inside a PEM block.
fn pem_der(text: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = std::str::from_utf8(text)
        .expect("ascii")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("base64")
}

#[test]
fn spki_der_loads_the_same_key_as_pem() {
    for text in [RSA_SPKI, P256_SPKI, P384_SPKI, ED25519_SPKI] {
        let der = pem_der(text);
        let from_der = Key::from_spki(&der, None).expect("DER loads");
        assert_eq!(from_der.thumbprint(), pem(text).thumbprint());
    }
    for text in [RSA_PKCS8, P256_PKCS8, P384_PKCS8, ED25519_PKCS8] {
        let from_der = Key::from_pkcs8(&pem_der(text), None).expect("DER loads");
        assert_eq!(from_der.thumbprint(), pem(text).thumbprint());
    }
}

// ------------------------------------------------------------------ OpenSSL interop

#[test]
fn openssl_signatures_verify() {
    let rsa = pem(RSA_SPKI);
    rsa.verify(
        Algorithm::RS256,
        MESSAGE,
        include_bytes!("data/rsa2048_rs256.sig"),
    )
    .expect("OpenSSL RS256 signature verifies");
    rsa.verify(
        Algorithm::PS256,
        MESSAGE,
        include_bytes!("data/rsa2048_ps256.sig"),
    )
    .expect("OpenSSL PS256 (salt 32) signature verifies");
    assert!(
        rsa.verify(
            Algorithm::PS256,
            MESSAGE,
            include_bytes!("data/rsa2048_rs256.sig")
        )
        .is_err()
    );

    let ed = pem(ED25519_SPKI);
    ed.verify(
        Algorithm::EdDSA,
        MESSAGE,
        include_bytes!("data/ed25519.sig"),
    )
    .expect("OpenSSL Ed25519 signature verifies");

    // OpenSSL writes ECDSA as DER: refused as is, accepted once converted to r||s.
    let p256 = pem(P256_SPKI);
    let der = include_bytes!("data/p256_es256_der.sig");
    assert_eq!(
        p256.verify(Algorithm::ES256, MESSAGE, der),
        Err(TokenError::InvalidSignature)
    );
    p256.verify(Algorithm::ES256, MESSAGE, &der_to_fixed(der, 32))
        .expect("converted OpenSSL ECDSA signature verifies");

    // Our RS256 is deterministic: it reproduces OpenSSL's signature exactly.
    let ours = pem(RSA_PKCS8)
        .sign(Algorithm::RS256, MESSAGE)
        .expect("signs");
    assert_eq!(ours.as_slice(), include_bytes!("data/rsa2048_rs256.sig"));
    let ours = pem(ED25519_PKCS8)
        .sign(Algorithm::EdDSA, MESSAGE)
        .expect("signs");
    assert_eq!(ours.as_slice(), include_bytes!("data/ed25519.sig"));
}

/// Converts a DER `SEQUENCE { r INTEGER, s INTEGER }` to fixed-size `r || s`.
fn der_to_fixed(der: &[u8], len: usize) -> Vec<u8> {
    assert_eq!(der[0], 0x30);
    assert_eq!(usize::from(der[1]), der.len() - 2, "short-form length");
    let mut rest = &der[2..];
    let mut out = Vec::with_capacity(2 * len);
    for _ in 0..2 {
        assert_eq!(rest[0], 0x02);
        let n = usize::from(rest[1]);
        let int = &rest[2..2 + n];
        let int = &int[int.iter().position(|&b| b != 0).unwrap_or(n)..];
        out.extend(std::iter::repeat_n(0, len - int.len()));
        out.extend_from_slice(int);
        rest = &rest[2 + n..];
    }
    assert!(rest.is_empty());
    out
}

// ------------------------------------------------------------------ JWK

#[test]
fn private_jwks_load_as_the_same_keys_as_pem() {
    let (set, warnings) = KeySet::from_jwks_json(PRIVATE_JWKS).expect("JWKS parses");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(set.len(), 5);
    for (kid, text) in [
        ("rsa-2048", RSA_PKCS8),
        ("p256", P256_PKCS8),
        ("p384", P384_PKCS8),
        ("ed25519", ED25519_PKCS8),
    ] {
        let from_jwk = set.get(kid).expect("loaded");
        assert!(from_jwk.can_sign(), "{kid}");
        let from_pem = pem(text);
        assert_eq!(from_jwk.thumbprint(), from_pem.thumbprint(), "{kid}");
        let alg = from_jwk.signing_algorithm();
        assert_signs_for(from_jwk, &from_pem, alg);
        assert_signs_for(&from_pem, from_jwk, alg);
    }
    let hmac = set.get("hmac").expect("loaded");
    assert_eq!(hmac.pinned_algorithm(), Some(Algorithm::HS512));
    // The first signing key is active.
    assert_eq!(set.active().expect("active").kid(), "rsa-2048");
}

#[test]
fn jwk_private_keys_sign_and_their_public_jwks_verify() {
    let (private, _) = KeySet::from_jwks_json(PRIVATE_JWKS).expect("JWKS parses");
    let jwks = private.public_jwks();
    let (public, warnings) =
        KeySet::from_jwks_json(&serde_json::to_vec(&jwks).expect("json")).expect("parses");
    assert!(warnings.is_empty());
    assert_eq!(public.len(), 4, "the oct key is not exported");
    assert!(public.iter().all(|k| !k.can_sign()));

    for kid in ["rsa-2048", "p256", "p384", "ed25519"] {
        let mut signing = KeySet::new();
        let jwk = private_jwk(kid);
        signing
            .insert(key_from_jwk_json(&serde_json::to_vec(&jwk).expect("json")).expect("loads"))
            .expect("fresh set");
        let token = issue(signing, &format!("user-{kid}")).expect("issues");
        let verified = verifier(public.clone())
            .verify_detailed(token.as_bytes())
            .unwrap_or_else(|e| panic!("{kid}: {e:?}"));
        assert_eq!(verified.principal.subject, format!("user-{kid}"));
        assert_eq!(verified.key.kid(), kid);
        assert!(!verified.key.can_sign());
    }
}

fn private_jwk(kid: &str) -> Value {
    let doc: Value = serde_json::from_slice(PRIVATE_JWKS).expect("json");
    doc["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid)
        .cloned()
        .expect("kid present")
}

#[test]
fn public_jwks_never_contains_private_members() {
    let (mut set, _) = KeySet::from_jwks_json(PRIVATE_JWKS).expect("JWKS parses");
    set.insert(Key::generate(Algorithm::HS256).expect("generates"))
        .expect("new kid");
    set.insert(pem(RSA_PKCS1).with_kid("pkcs1"))
        .expect("new kid");
    let jwks = set.public_jwks();
    let keys = jwks["keys"].as_array().expect("keys array");
    assert_eq!(
        keys.len(),
        5,
        "four JWK keys and the PKCS#1 key; no oct keys"
    );
    for jwk in keys {
        let object = jwk.as_object().expect("object");
        for member in PRIVATE_MEMBERS {
            assert!(!object.contains_key(member), "{member} exported: {jwk}");
        }
        assert_ne!(jwk["kty"], "oct");
        assert_eq!(jwk["use"], "sig");
        assert!(jwk["kid"].is_string());
        let alg = jwk["alg"].as_str().expect("alg");
        assert!(Algorithm::from_name(alg).is_some(), "{alg}");
        let allowed: &[&str] = match jwk["kty"].as_str().expect("kty") {
            "RSA" => &["kty", "n", "e", "kid", "use", "alg"],
            "EC" => &["kty", "crv", "x", "y", "kid", "use", "alg"],
            "OKP" => &["kty", "crv", "x", "kid", "use", "alg"],
            other => panic!("unexpected kty {other}"),
        };
        for member in object.keys() {
            assert!(allowed.contains(&member.as_str()), "{member} in {jwk}");
        }
    }
    // No private value appears anywhere in the text.
    let text = jwks.to_string();
    let doc: Value = serde_json::from_slice(PRIVATE_JWKS).expect("json");
    for key in doc["keys"].as_array().expect("keys") {
        for member in PRIVATE_MEMBERS {
            if let Some(secret) = key[member].as_str() {
                assert!(!text.contains(secret), "{member} of {} leaked", key["kid"]);
            }
        }
    }
    // Exported public keys have the thumbprint of the private keys they come from.
    for jwk in keys {
        let public = key_from_jwk_json(jwk.to_string().as_bytes()).expect("loads");
        let private = set.get(jwk["kid"].as_str().expect("kid")).expect("present");
        assert_eq!(public.thumbprint(), private.thumbprint());
    }
}

#[test]
fn jwk_coordinates_and_members_are_strict() {
    let p256 = private_jwk("p256");
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut short = p256.clone();
    short["x"] = json!(b64_encode(&[1; 31]));
    cases.push((short, "short x"));
    let mut padded = p256.clone();
    padded["x"] = json!(format!("{}=", p256["x"].as_str().expect("x")));
    cases.push((padded, "padded base64"));
    let mut standard = p256.clone();
    standard["y"] = json!(p256["y"].as_str().expect("y").replace(['-', '_'], "+"));
    if standard["y"] != p256["y"] {
        cases.push((standard, "standard alphabet"));
    }
    let mut wrong_d = p256.clone();
    wrong_d["d"] = private_jwk("p384")["d"].clone();
    cases.push((wrong_d, "d of another curve"));
    let mut other_d = p256.clone();
    let mut d = b64_decode(p256["d"].as_str().expect("d").as_bytes()).expect("b64");
    d[31] ^= 1;
    other_d["d"] = json!(b64_encode(&d));
    cases.push((other_d, "d that does not match x, y"));
    let mut no_y = p256.clone();
    no_y.as_object_mut().expect("object").remove("y");
    cases.push((no_y, "missing y"));
    let mut curve = p256.clone();
    curve["crv"] = json!("P-521");
    cases.push((curve, "unsupported curve"));
    let mut rsa_missing_qi = private_jwk("rsa-2048");
    rsa_missing_qi.as_object_mut().expect("object").remove("qi");
    cases.push((rsa_missing_qi, "RSA without qi"));
    let mut dup = p256.to_string();
    dup.insert_str(1, r#""kty":"EC","#);
    for (jwk, what) in cases {
        assert!(
            key_from_jwk_json(jwk.to_string().as_bytes()).is_err(),
            "{what} accepted"
        );
    }
    assert!(matches!(
        key_from_jwk_json(dup.as_bytes()),
        Err(KeyError::Malformed(_))
    ));
}

// ------------------------------------------------------------------ rotation

#[test]
fn key_set_rotation() {
    let old = Key::generate(Algorithm::ES256)
        .expect("generates")
        .with_kid("2024");
    let new = Key::generate(Algorithm::EdDSA)
        .expect("generates")
        .with_kid("2025");
    let old_public = key_from_jwk_json(
        portcullis_core::jose::jwk::public_jwk(&old)
            .expect("public")
            .to_string()
            .as_bytes(),
    )
    .expect("loads");

    // Before rotation: the old key is active.
    let mut keys = KeySet::new();
    keys.insert(old_public).expect("public key first");
    assert!(keys.active().is_none(), "a public key never becomes active");
    assert!(matches!(
        keys.set_active("2024"),
        Err(KeyError::NotASigningKey(_))
    ));
    let mut keys = KeySet::new();
    keys.insert(old).expect("fresh");
    assert_eq!(keys.active().expect("active").kid(), "2024");
    let old_token = issue(keys.clone(), "alice").expect("issues");

    // Add the new key: it does not take over until made active.
    keys.insert(new).expect("new kid");
    assert_eq!(keys.active().expect("active").kid(), "2024");
    assert!(matches!(
        keys.set_active("2026"),
        Err(KeyError::NoSuchKey(_))
    ));
    keys.set_active("2025").expect("signing key");
    assert_eq!(keys.active().expect("active").kid(), "2025");
    let new_token = issue(keys.clone(), "bob").expect("issues");
    assert_ne!(old_token, new_token);

    // Both verify during the overlap, each with its own key.
    let both = verifier(keys.clone());
    let v = both
        .verify_detailed(old_token.as_bytes())
        .expect("old token");
    assert_eq!(
        (v.principal.subject.as_str(), v.key.kid()),
        ("alice", "2024")
    );
    let v = both
        .verify_detailed(new_token.as_bytes())
        .expect("new token");
    assert_eq!((v.principal.subject.as_str(), v.key.kid()), ("bob", "2025"));

    // Remove the old key: its tokens stop verifying, new ones keep working.
    let removed = keys.remove("2024").expect("present");
    assert_eq!(removed.kid(), "2024");
    assert!(keys.remove("2024").is_none());
    assert_eq!(keys.len(), 1);
    assert_eq!(keys.active().expect("still active").kid(), "2025");
    let after = verifier(keys.clone());
    let err = after
        .verify(old_token.as_bytes())
        .expect_err("old key removed");
    assert_eq!(err.code(), ErrorCode::UnknownKey);
    assert_eq!(
        after
            .verify(new_token.as_bytes())
            .expect("new token")
            .subject,
        "bob"
    );

    // The verifier built before the removal holds its own snapshot.
    assert!(both.verify(old_token.as_bytes()).is_ok());

    // Removing the active key leaves nothing to sign with.
    keys.remove("2025").expect("present");
    assert!(keys.active().is_none());
    assert!(matches!(
        issue(keys, "carol"),
        Err(IssueError::Key(KeyError::NoSuchKey(_)))
    ));
}

#[test]
fn removing_a_key_keeps_the_other_kids_addressable() {
    let mut keys = KeySet::new();
    let mut tokens = Vec::new();
    for i in 0..5 {
        let key = Key::generate(Algorithm::ES256)
            .expect("generates")
            .with_kid(format!("k{i}"));
        let mut single = KeySet::new();
        single
            .insert(
                Key::from_pem(key.private_pkcs8_pem().expect("pem").as_bytes(), None)
                    .expect("reloads")
                    .with_kid(format!("k{i}")),
            )
            .expect("fresh");
        tokens.push(issue(single, &format!("user{i}")).expect("issues"));
        keys.insert(key).expect("new kid");
    }
    keys.set_active("k3").expect("signing key");
    keys.remove("k1").expect("present");
    keys.remove("k0").expect("present");
    assert_eq!(keys.active().expect("active").kid(), "k3");
    let v = verifier(keys.clone());
    for (i, token) in tokens.iter().enumerate() {
        let result = v.verify(token.as_bytes());
        if i < 2 {
            assert_eq!(result.expect_err("removed").code(), ErrorCode::UnknownKey);
        } else {
            assert_eq!(result.expect("kept").subject, format!("user{i}"));
            assert_eq!(
                keys.get(&format!("k{i}")).expect("kept").kid(),
                format!("k{i}")
            );
        }
    }
    assert_eq!(
        keys.iter().map(|k| k.kid().to_owned()).collect::<Vec<_>>(),
        ["k2", "k3", "k4"]
    );
}

#[test]
fn duplicate_kids_are_refused() {
    let mut keys = KeySet::new();
    keys.insert(pem(P256_PKCS8)).expect("fresh");
    assert!(
        matches!(keys.insert(pem(P256_SPKI)), Err(KeyError::DuplicateKid(_))),
        "same key, same thumbprint kid"
    );
    keys.insert(pem(P384_PKCS8).with_kid("x")).expect("new kid");
    assert!(matches!(
        keys.insert(pem(ED25519_PKCS8).with_kid("x")),
        Err(KeyError::DuplicateKid(k)) if k == "x"
    ));
    // In a JWKS the duplicate is skipped with a warning, the first one kept.
    let jwk = private_jwk("p256");
    let mut other = private_jwk("p384");
    other["kid"] = json!("p256");
    let (set, warnings) =
        KeySet::from_jwks_json(json!({ "keys": [jwk, other] }).to_string().as_bytes())
            .expect("parses");
    assert_eq!(set.len(), 1);
    assert_eq!(set.get("p256").expect("kept").family(), KeyFamily::P256);
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].index, 1);
    assert_eq!(warnings[0].error, KeyError::DuplicateKid("p256".into()));
}
