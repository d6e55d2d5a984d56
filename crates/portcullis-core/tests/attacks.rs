//! Known attacks on JWT/JWS verifiers, each a named test asserting the exact
//! rejection (`ErrorCode`) — or, for the benign variants, acceptance.
//!
//! Attacker tokens are built by hand: base64url segments and `Key::sign`.

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::jose::b64_encode;
use portcullis_core::jose::jwk::{key_from_jwk, key_from_jwk_json, public_jwk};
use portcullis_core::{
    Algorithm, AlgorithmSet, ErrorCode, Key, KeyError, KeySet, ManualClock, TokenError, Validation,
    Verifier,
};
use serde_json::{Value, json};

/// The verifier's "now".
const NOW: i64 = 1_700_000_000;
/// The default leeway, in seconds.
const LEEWAY: i64 = 30;

const RSA_PRIVATE_PEM: &[u8] = include_bytes!("data/rsa2048_pkcs8.pem");
const RSA_PUBLIC_PEM: &[u8] = include_bytes!("data/rsa2048_spki.pem");

// ------------------------------------------------------------------ helpers

fn verifier_with(keys: KeySet, validation: Validation) -> Verifier {
    Verifier::new(keys, validation).with_clock(Arc::new(ManualClock::at_unix_seconds(NOW as u64)))
}

fn verifier(keys: KeySet) -> Verifier {
    verifier_with(keys, Validation::new())
}

fn set(keys: impl IntoIterator<Item = Key>) -> KeySet {
    let mut set = KeySet::new();
    for key in keys {
        set.insert(key).expect("distinct kids");
    }
    set
}

/// A fresh ES256 key with kid `es`.
fn es_key() -> Key {
    Key::generate(Algorithm::ES256)
        .expect("generate")
        .with_kid("es")
}

/// The public half of `key`, with the same kid and pinned algorithm.
fn public_copy(key: &Key) -> Key {
    let Some(Value::Object(jwk)) = public_jwk(key) else {
        panic!("asymmetric key has a public JWK");
    };
    key_from_jwk(jwk).expect("public JWK loads")
}

/// Claims that pass the default validation at [`NOW`].
fn good_claims() -> Value {
    json!({ "sub": "alice", "iat": NOW, "exp": NOW + 600 })
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

/// `header.payload.signature` with raw segments, signed by `key` with `alg`.
fn sign_raw(key: &Key, alg: Algorithm, header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", b64_encode(header), b64_encode(payload));
    let sig = key.sign(alg, input.as_bytes()).expect("key signs");
    format!("{input}.{}", b64_encode(&sig))
}

/// A token with header `header` and claims `claims`, signed by `key`.
fn sign_with(key: &Key, header: &Value, claims: &Value) -> String {
    let alg = header["alg"]
        .as_str()
        .and_then(Algorithm::from_name)
        .unwrap_or_else(|| key.signing_algorithm());
    sign_raw(key, alg, &bytes(header), &bytes(claims))
}

/// A well-formed token from `key` (header names its alg and kid).
fn good_token(key: &Key) -> String {
    let header = json!({ "alg": key.signing_algorithm().name(), "kid": key.kid() });
    sign_with(key, &header, &good_claims())
}

/// A token with an arbitrary header and signature bytes (no key involved).
fn unsigned(header: &str, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64_encode(header.as_bytes()),
        b64_encode(&bytes(claims)),
        b64_encode(sig)
    )
}

fn rejection(v: &Verifier, token: &str) -> TokenError {
    match v.verify(token.as_bytes()) {
        Ok(p) => panic!("token was accepted for {:?}: {token}", p.subject),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_code(v: &Verifier, token: &str, code: ErrorCode) {
    let err = rejection(v, token);
    assert_eq!(err.code(), code, "{err:?} for {token}");
}

#[track_caller]
fn assert_accepted(v: &Verifier, token: &str) {
    if let Err(e) = v.verify(token.as_bytes()) {
        panic!("token rejected with {e:?}: {token}");
    }
}

/// The key set most attacks run against: one ES256, one RSA, one HMAC key.
fn mixed() -> (Key, Vec<u8>, KeySet) {
    let es = es_key();
    let secret = vec![0x5a; 32];
    let keys = set([
        public_copy(&es),
        Key::from_pem(RSA_PUBLIC_PEM, None)
            .expect("RSA public PEM")
            .with_kid("rsa"),
        Key::hmac(&secret, None)
            .expect("32-byte secret")
            .with_kid("hs"),
    ]);
    (es, secret, keys)
}

// ------------------------------------------------------------------ alg: none

#[test]
fn alg_none_in_every_casing_is_unsupported_algorithm() {
    let (es, secret, keys) = mixed();
    let v = verifier(keys);
    let hs = Key::hmac(&secret, None).expect("secret");
    for name in ["none", "None", "NONE", "nOnE", "NoNe"] {
        for kid in [None, Some("es"), Some("hs")] {
            let header = match kid {
                Some(kid) => format!(r#"{{"alg":"{name}","kid":"{kid}"}}"#),
                None => format!(r#"{{"alg":"{name}"}}"#),
            };
            let payload = b64_encode(&bytes(&good_claims()));
            let input = format!("{}.{payload}", b64_encode(header.as_bytes()));
            let real_hmac = hs
                .sign(Algorithm::HS256, input.as_bytes())
                .expect("HMAC signs");
            let real_es = es
                .sign(Algorithm::ES256, input.as_bytes())
                .expect("ES256 signs");
            let signatures = [
                String::new(),
                b64_encode(b"x"),
                b64_encode(&real_hmac),
                b64_encode(&real_es),
                "!!not-base64!!".to_owned(),
            ];
            for sig in &signatures {
                let token = format!("{input}.{sig}");
                let err = rejection(&v, &token);
                assert_eq!(
                    err.code(),
                    ErrorCode::UnsupportedAlgorithm,
                    "alg {name}, kid {kid:?}, sig {sig:?}: {err:?}"
                );
            }
        }
    }
}

#[test]
fn alg_none_is_refused_even_with_an_empty_key_set() {
    let v = verifier(KeySet::new());
    let token = format!(
        "{}.{}.",
        b64_encode(br#"{"alg":"none"}"#),
        b64_encode(&bytes(&good_claims()))
    );
    assert_code(&v, &token, ErrorCode::UnsupportedAlgorithm);
}

#[test]
fn unregistered_or_miscased_alg_is_unsupported() {
    let (es, _, keys) = mixed();
    let v = verifier(keys);
    for name in [
        "es256", "Es256", "HS1024", "RS1", "ES512", "Ed25519", "", "HS256 ",
    ] {
        let header = json!({ "alg": name, "kid": "es" });
        let input = format!(
            "{}.{}",
            b64_encode(&bytes(&header)),
            b64_encode(&bytes(&good_claims()))
        );
        let sig = es.sign(Algorithm::ES256, input.as_bytes()).expect("signs");
        assert_code(
            &v,
            &format!("{input}.{}", b64_encode(&sig)),
            ErrorCode::UnsupportedAlgorithm,
        );
    }
}

// ------------------------------------------------------------------ stripped signatures

#[test]
fn empty_signature_with_valid_header_is_malformed() {
    let (es, _, keys) = mixed();
    let v = verifier(keys);
    let header = json!({ "alg": "ES256", "kid": "es" });
    let token = format!(
        "{}.{}.",
        b64_encode(&bytes(&header)),
        b64_encode(&bytes(&good_claims()))
    );
    assert_code(&v, &token, ErrorCode::MalformedToken);

    // A real token with its signature stripped (trailing '.').
    let good = good_token(&es);
    assert_accepted(&v, &good);
    let (stripped, _) = good.rsplit_once('.').expect("three segments");
    assert_code(&v, &format!("{stripped}."), ErrorCode::MalformedToken);
    // ... and with the final '.' removed too: two segments.
    assert_code(&v, stripped, ErrorCode::MalformedToken);
}

#[test]
fn empty_header_or_payload_segments_are_rejected() {
    let (es, _, keys) = mixed();
    let v = verifier(keys);
    let good = good_token(&es);
    let parts: Vec<&str> = good.split('.').collect();
    assert_code(
        &v,
        &format!(".{}.{}", parts[1], parts[2]),
        ErrorCode::MalformedToken,
    );
    // An empty payload segment is a different signing input: the signature fails.
    assert_code(
        &v,
        &format!("{}..{}", parts[0], parts[2]),
        ErrorCode::InvalidSignature,
    );
    for junk in ["", ".", "..", "...", "a.b.c", "\u{0}.\u{0}.\u{0}"] {
        let err = rejection(&v, junk);
        assert_eq!(err.code(), ErrorCode::MalformedToken, "{junk:?}: {err:?}");
    }
}

// ------------------------------------------------------------------ key confusion

/// RFC 8725 §2.1: an attacker HMAC-signs with the RSA public key as the secret.
#[test]
fn hs256_signed_with_the_rsa_public_key_is_unsupported_algorithm() {
    let rsa_public = Key::from_pem(RSA_PUBLIC_PEM, None)
        .expect("RSA public PEM")
        .with_kid("rsa");
    let jwk = public_jwk(&rsa_public).expect("public JWK");
    let n = jwk["n"].as_str().expect("n").to_owned();
    let pem = pem_body(RSA_PUBLIC_PEM);
    let v = verifier(set([rsa_public]));

    let jwk_text = jwk.to_string();
    let secrets: [&[u8]; 4] = [RSA_PUBLIC_PEM, &pem, n.as_bytes(), jwk_text.as_bytes()];
    for secret in secrets {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            // Naming the RSA key's kid: the key refuses a foreign algorithm.
            let header = json!({ "alg": alg.name(), "kid": "rsa" });
            let token = hmac_token(secret, alg, &header, &good_claims());
            assert_code(&v, &token, ErrorCode::UnsupportedAlgorithm);

            // Without a kid there is no HMAC key to select at all.
            let header = json!({ "alg": alg.name() });
            let token = hmac_token(secret, alg, &header, &good_claims());
            assert_code(&v, &token, ErrorCode::UnknownKey);
        }
    }
}

/// An HMAC-signed token made with raw aws-lc-rs: an attacker is not bound by
/// `Key::hmac`, which refuses public-key text as a secret.
fn hmac_token(secret: &[u8], alg: Algorithm, header: &Value, claims: &Value) -> String {
    use aws_lc_rs::hmac;
    let algorithm = match alg {
        Algorithm::HS256 => hmac::HMAC_SHA256,
        Algorithm::HS384 => hmac::HMAC_SHA384,
        _ => hmac::HMAC_SHA512,
    };
    let input = format!(
        "{}.{}",
        b64_encode(&bytes(header)),
        b64_encode(&bytes(claims))
    );
    let tag = hmac::sign(&hmac::Key::new(algorithm, secret), input.as_bytes());
    format!("{input}.{}", b64_encode(tag.as_ref()))
}

/// The DER inside a PEM block.
fn pem_body(pem: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let text = std::str::from_utf8(pem).expect("PEM is ASCII");
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body is base64")
}

#[test]
fn an_ecdsa_alg_against_an_rsa_or_hmac_kid_is_unsupported_algorithm() {
    let (es, _, keys) = mixed();
    let v = verifier(keys);
    for kid in ["rsa", "hs"] {
        let header = json!({ "alg": "ES256", "kid": kid });
        assert_code(
            &v,
            &sign_with(&es, &header, &good_claims()),
            ErrorCode::UnsupportedAlgorithm,
        );
    }
    // ES384 against a P-256 key.
    let header = json!({ "alg": "ES384", "kid": "es" });
    let p384 = Key::generate(Algorithm::ES384).expect("generate");
    assert_code(
        &v,
        &sign_with(&p384, &header, &good_claims()),
        ErrorCode::UnsupportedAlgorithm,
    );
}

// ------------------------------------------------------------------ kid injection

#[test]
fn kid_path_traversal_is_unknown_key() {
    let (es, _, keys) = mixed();
    let v = verifier(keys);
    for kid in [
        "../../etc/passwd",
        "../../../../../../dev/null",
        "/etc/passwd",
        "..\\..\\windows\\win.ini",
        "file:///etc/passwd",
    ] {
        let header = json!({ "alg": "ES256", "kid": kid });
        assert_code(
            &v,
            &sign_with(&es, &header, &good_claims()),
            ErrorCode::UnknownKey,
        );
    }
}

#[test]
fn kid_sql_injection_is_unknown_key() {
    let (es, _, keys) = mixed();
    let v = verifier(keys);
    for kid in [
        "' OR 1=1 --",
        "es' OR '1'='1",
        "es'; DROP TABLE keys; --",
        "\" OR \"\"=\"",
        "es\u{0}",
        "ES",
        " es",
    ] {
        let header = json!({ "alg": "ES256", "kid": kid });
        assert_code(
            &v,
            &sign_with(&es, &header, &good_claims()),
            ErrorCode::UnknownKey,
        );
    }
}

#[test]
fn overlong_kid_is_unknown_key() {
    let long = "k".repeat(300);
    let es = Key::generate(Algorithm::ES256)
        .expect("generate")
        .with_kid(long.clone());
    let v = verifier(set([public_copy(&es)]));
    // Even a key that really has this id is not looked up past the bound.
    assert_code(&v, &good_token(&es), ErrorCode::UnknownKey);
}

// ------------------------------------------------------------------ embedded / remote keys

/// Header members that point at or embed a key of the attacker's choosing.
fn key_bearing_headers(attacker: &Key) -> Vec<(&'static str, Value)> {
    let jwk = public_jwk(attacker).expect("public JWK");
    vec![
        ("jwk", jwk.clone()),
        ("jku", json!("https://attacker.example/jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        (
            "x5c",
            json!([b64_encode(&pem_body(RSA_PUBLIC_PEM)).replace(['-', '_'], "A")]),
        ),
        ("x5t", json!(b64_encode(&[7; 20]))),
        ("x5t#S256", json!(b64_encode(&[7; 32]))),
    ]
}

#[test]
fn embedded_jwk_and_remote_key_urls_are_never_used() {
    let (_es, _, keys) = mixed();
    let v = verifier(keys);
    let attacker = Key::generate(Algorithm::ES256).expect("generate");
    let attacker_kid = attacker.kid().to_owned();
    for (member, value) in key_bearing_headers(&attacker) {
        // The attacker names its own key: it is not in the set.
        let mut header = json!({ "alg": "ES256", "kid": attacker_kid });
        header[member] = value.clone();
        assert_code(
            &v,
            &sign_with(&attacker, &header, &good_claims()),
            ErrorCode::UnknownKey,
        );

        // The attacker names our key: our key checks the signature, and fails it.
        let mut header = json!({ "alg": "ES256", "kid": "es" });
        header[member] = value.clone();
        assert_code(
            &v,
            &sign_with(&attacker, &header, &good_claims()),
            ErrorCode::InvalidSignature,
        );

        // No kid: the only ES256 key in the set is used, not the embedded one.
        let mut header = json!({ "alg": "ES256" });
        header[member] = value;
        assert_code(
            &v,
            &sign_with(&attacker, &header, &good_claims()),
            ErrorCode::InvalidSignature,
        );
    }
}

#[test]
fn embedded_jwk_of_an_hmac_secret_is_never_used() {
    let (_es, _, keys) = mixed();
    let v = verifier(keys);
    let secret = [9u8; 32];
    let attacker = Key::hmac(&secret, None).expect("secret");
    let header = json!({
        "alg": "HS256",
        "kid": "hs",
        "jwk": { "kty": "oct", "k": b64_encode(&secret) },
    });
    assert_code(
        &v,
        &sign_with(&attacker, &header, &good_claims()),
        ErrorCode::InvalidSignature,
    );
}

#[test]
fn real_key_tokens_with_key_bearing_headers_still_verify() {
    let (es, _, keys) = mixed();
    let v = verifier(keys);
    let attacker = Key::generate(Algorithm::ES256).expect("generate");
    let mut header = json!({ "alg": "ES256", "kid": "es" });
    for (member, value) in key_bearing_headers(&attacker) {
        header[member] = value.clone();
        // One member at a time ...
        let mut single = json!({ "alg": "ES256", "kid": "es" });
        single[member] = value;
        assert_accepted(&v, &sign_with(&es, &single, &good_claims()));
    }
    // ... and all of them together.
    assert_accepted(&v, &sign_with(&es, &header, &good_claims()));
}

// ------------------------------------------------------------------ ECDSA signature forms

/// CVE-2022-21449: r = s = 0 "verifies" in broken implementations.
#[test]
fn psychic_signature_is_invalid_signature() {
    let (_es, _, keys) = mixed();
    let p384 = Key::generate(Algorithm::ES384)
        .expect("generate")
        .with_kid("es384");
    let mut keys = keys;
    keys.insert(public_copy(&p384)).expect("new kid");
    let v = verifier(keys);
    let claims = good_claims();
    assert_code(
        &v,
        &unsigned(r#"{"alg":"ES256","kid":"es"}"#, &claims, &[0; 64]),
        ErrorCode::InvalidSignature,
    );
    assert_code(
        &v,
        &unsigned(r#"{"alg":"ES384","kid":"es384"}"#, &claims, &[0; 96]),
        ErrorCode::InvalidSignature,
    );
    // Without a kid as well.
    assert_code(
        &v,
        &unsigned(r#"{"alg":"ES256"}"#, &claims, &[0; 64]),
        ErrorCode::InvalidSignature,
    );
}

#[test]
fn ecdsa_zero_r_or_s_or_group_order_is_invalid_signature() {
    let (es, _, keys) = mixed();
    let v = verifier(keys);
    let header = br#"{"alg":"ES256","kid":"es"}"#;
    let payload = bytes(&good_claims());
    let input = format!("{}.{}", b64_encode(header), b64_encode(&payload));
    let real = es.sign(Algorithm::ES256, input.as_bytes()).expect("signs");
    assert_accepted(&v, &format!("{input}.{}", b64_encode(&real)));

    // P-256 group order n.
    let n: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let mut zero_r = real.clone();
    zero_r[..32].fill(0);
    let mut zero_s = real.clone();
    zero_s[32..].fill(0);
    let mut order = Vec::from(n);
    order.extend_from_slice(&n);
    let ones = vec![0xff; 64];
    for sig in [zero_r, zero_s, order, ones] {
        assert_code(
            &v,
            &format!("{input}.{}", b64_encode(&sig)),
            ErrorCode::InvalidSignature,
        );
    }
}

/// DER encoding of a fixed-size `r || s` ECDSA signature.
fn ecdsa_der(fixed: &[u8]) -> Vec<u8> {
    fn integer(x: &[u8]) -> Vec<u8> {
        let start = x.iter().position(|&b| b != 0).unwrap_or(x.len() - 1);
        let mut v = x[start..].to_vec();
        if v[0] & 0x80 != 0 {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend_from_slice(&v);
        out
    }
    let (r, s) = fixed.split_at(fixed.len() / 2);
    let mut body = integer(r);
    body.extend_from_slice(&integer(s));
    let mut out = vec![0x30, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

#[test]
fn der_encoded_ecdsa_signature_is_invalid_signature() {
    let (es, _, keys) = mixed();
    let v = verifier(keys);
    let header = br#"{"alg":"ES256","kid":"es"}"#;
    let input = format!(
        "{}.{}",
        b64_encode(header),
        b64_encode(&bytes(&good_claims()))
    );
    let fixed = es.sign(Algorithm::ES256, input.as_bytes()).expect("signs");
    assert_accepted(&v, &format!("{input}.{}", b64_encode(&fixed)));
    let der = ecdsa_der(&fixed);
    assert_eq!(der[0], 0x30);
    assert_ne!(der.len(), 64);
    assert_code(
        &v,
        &format!("{input}.{}", b64_encode(&der)),
        ErrorCode::InvalidSignature,
    );
    // A DER signature made by OpenSSL over another message is refused too.
    let openssl_der = include_bytes!("data/p256_es256_der.sig");
    assert_code(
        &v,
        &format!("{input}.{}", b64_encode(openssl_der)),
        ErrorCode::InvalidSignature,
    );
    // Truncated and extended fixed signatures.
    assert_code(
        &v,
        &format!("{input}.{}", b64_encode(&fixed[..63])),
        ErrorCode::InvalidSignature,
    );
    let mut longer = fixed.clone();
    longer.push(0);
    assert_code(
        &v,
        &format!("{input}.{}", b64_encode(&longer)),
        ErrorCode::InvalidSignature,
    );
}

#[test]
fn oversized_signature_is_rejected_before_verification() {
    let (_es, _, keys) = mixed();
    let v = verifier(keys);
    // More than the 1 KiB signature buffer.
    let token = unsigned(r#"{"alg":"RS256","kid":"rsa"}"#, &good_claims(), &[1; 1100]);
    assert_code(&v, &token, ErrorCode::MalformedToken);
}

// ------------------------------------------------------------------ time claims

fn es_verifier() -> (Key, Verifier) {
    let es = es_key();
    let v = verifier(set([public_copy(&es)]));
    (es, v)
}

fn es_token(es: &Key, claims: &Value) -> String {
    sign_with(es, &json!({ "alg": "ES256", "kid": "es" }), claims)
}

#[test]
fn expired_token_is_token_expired() {
    let (es, v) = es_verifier();
    for exp in [
        NOW - LEEWAY,
        NOW - LEEWAY - 1,
        NOW - 86_400,
        0,
        i64::MIN / 2,
    ] {
        let claims = json!({ "sub": "alice", "exp": exp });
        assert_code(&v, &es_token(&es, &claims), ErrorCode::TokenExpired);
    }
    // Within the leeway it is still accepted.
    for exp in [NOW - LEEWAY + 1, NOW, NOW + 1] {
        let claims = json!({ "sub": "alice", "exp": exp });
        assert_accepted(&v, &es_token(&es, &claims));
    }
    // A fractional exp is floored, not rounded up.
    let claims = json!({ "sub": "alice", "exp": (NOW - LEEWAY) as f64 + 0.9 });
    assert_code(&v, &es_token(&es, &claims), ErrorCode::TokenExpired);
}

#[test]
fn nbf_in_the_future_is_not_yet_valid() {
    let (es, v) = es_verifier();
    for nbf in [NOW + LEEWAY + 1, NOW + 3600] {
        let claims = json!({ "sub": "alice", "exp": NOW + 7200, "nbf": nbf });
        assert_code(&v, &es_token(&es, &claims), ErrorCode::TokenNotYetValid);
    }
    for nbf in [NOW + LEEWAY, NOW + 1, NOW, NOW - 100] {
        let claims = json!({ "sub": "alice", "exp": NOW + 7200, "nbf": nbf });
        assert_accepted(&v, &es_token(&es, &claims));
    }
}

#[test]
fn iat_in_the_future_beyond_leeway_is_not_yet_valid() {
    let (es, v) = es_verifier();
    for iat in [NOW + LEEWAY + 1, NOW + 86_400] {
        let claims = json!({ "sub": "alice", "exp": NOW + 90_000, "iat": iat });
        assert_code(&v, &es_token(&es, &claims), ErrorCode::TokenNotYetValid);
    }
}

#[test]
fn iat_in_the_future_within_leeway_is_accepted() {
    let (es, v) = es_verifier();
    for iat in [NOW + LEEWAY, NOW + 1, NOW] {
        let claims = json!({ "sub": "alice", "exp": NOW + 600, "iat": iat });
        assert_accepted(&v, &es_token(&es, &claims));
    }
}

#[test]
fn leeway_zero_is_exact() {
    let es = es_key();
    let v = verifier_with(
        set([public_copy(&es)]),
        Validation::new().with_leeway(Duration::ZERO),
    );
    assert_code(
        &v,
        &es_token(&es, &json!({ "sub": "a", "exp": NOW })),
        ErrorCode::TokenExpired,
    );
    assert_accepted(&v, &es_token(&es, &json!({ "sub": "a", "exp": NOW + 1 })));
    assert_code(
        &v,
        &es_token(&es, &json!({ "sub": "a", "exp": NOW + 9, "nbf": NOW + 1 })),
        ErrorCode::TokenNotYetValid,
    );
}

#[test]
fn non_numeric_time_claims_are_malformed() {
    let (es, v) = es_verifier();
    for exp in [
        json!("2030-01-01"),
        json!(null),
        json!(true),
        json!([NOW]),
        json!(1e300),
    ] {
        let claims = json!({ "sub": "alice", "exp": exp });
        assert_code(&v, &es_token(&es, &claims), ErrorCode::MalformedToken);
    }
}

#[test]
fn missing_exp_is_missing_claim() {
    let (es, v) = es_verifier();
    let err = rejection(&v, &es_token(&es, &json!({ "sub": "alice" })));
    assert_eq!(err.code(), ErrorCode::MissingClaim);
    assert_eq!(err, TokenError::MissingClaim("exp".into()));
}

#[test]
fn missing_required_claim_is_missing_claim() {
    let (es, v) = es_verifier();
    // `sub` is required by default.
    let err = rejection(&v, &es_token(&es, &json!({ "exp": NOW + 60 })));
    assert_eq!(err, TokenError::MissingClaim("sub".into()));

    let v = verifier_with(
        set([public_copy(&es)]),
        Validation::new().with_required_claims(["sub", "tenant", "jti"]),
    );
    let err = rejection(
        &v,
        &es_token(&es, &json!({ "sub": "a", "tenant": "t", "exp": NOW + 60 })),
    );
    assert_eq!(err, TokenError::MissingClaim("jti".into()));
    assert_eq!(err.code(), ErrorCode::MissingClaim);
    assert_accepted(
        &v,
        &es_token(
            &es,
            &json!({ "sub": "a", "tenant": "t", "jti": "j", "exp": NOW + 60 }),
        ),
    );
}

// ------------------------------------------------------------------ iss / aud

#[test]
fn wrong_issuer_is_invalid_issuer() {
    let es = es_key();
    let v = verifier_with(
        set([public_copy(&es)]),
        Validation::new()
            .with_issuer("https://issuer.example")
            .with_issuer("https://other.example"),
    );
    let claims = |iss: &str| json!({ "sub": "a", "exp": NOW + 60, "iss": iss });
    for iss in [
        "https://evil.example",
        "https://issuer.example/",
        "HTTPS://ISSUER.EXAMPLE",
        "",
    ] {
        assert_code(&v, &es_token(&es, &claims(iss)), ErrorCode::InvalidIssuer);
    }
    assert_accepted(&v, &es_token(&es, &claims("https://issuer.example")));
    assert_accepted(&v, &es_token(&es, &claims("https://other.example")));
    // No iss at all while issuers are configured.
    let err = rejection(&v, &es_token(&es, &json!({ "sub": "a", "exp": NOW + 60 })));
    assert_eq!(err, TokenError::MissingClaim("iss".into()));
}

#[test]
fn wrong_audience_is_invalid_audience() {
    let es = es_key();
    let v = verifier_with(
        set([public_copy(&es)]),
        Validation::new().with_audience("api"),
    );
    let claims = |aud: Value| json!({ "sub": "a", "exp": NOW + 60, "aud": aud });
    assert_code(
        &v,
        &es_token(&es, &claims(json!("web"))),
        ErrorCode::InvalidAudience,
    );
    assert_code(
        &v,
        &es_token(&es, &claims(json!("API"))),
        ErrorCode::InvalidAudience,
    );
    assert_code(
        &v,
        &es_token(&es, &claims(json!(["web", "admin"]))),
        ErrorCode::InvalidAudience,
    );
    assert_code(
        &v,
        &es_token(&es, &claims(json!([]))),
        ErrorCode::InvalidAudience,
    );
    assert_code(
        &v,
        &es_token(&es, &claims(json!([["api"]]))),
        ErrorCode::MalformedToken,
    );
    assert_accepted(&v, &es_token(&es, &claims(json!("api"))));
    assert_accepted(&v, &es_token(&es, &claims(json!(["web", "api"]))));
    let err = rejection(&v, &es_token(&es, &json!({ "sub": "a", "exp": NOW + 60 })));
    assert_eq!(err, TokenError::MissingClaim("aud".into()));
}

// ------------------------------------------------------------------ token type

#[test]
fn refresh_token_used_as_access_token_is_wrong_token_type() {
    let (es, v) = es_verifier();
    for ty in ["refresh", "id", "Access", ""] {
        let claims = json!({ "sub": "a", "exp": NOW + 60, "type": ty });
        assert_code(&v, &es_token(&es, &claims), ErrorCode::WrongTokenType);
    }
    let claims = json!({ "sub": "a", "exp": NOW + 60, "type": "access" });
    assert_accepted(&v, &es_token(&es, &claims));
}

#[test]
fn typ_header_refresh_jwt_is_wrong_token_type() {
    let (es, v) = es_verifier();
    for typ in [
        "refresh+jwt",
        "application/refresh+jwt",
        "JOSE",
        "id+jwt",
        "",
    ] {
        let header = json!({ "alg": "ES256", "kid": "es", "typ": typ });
        assert_code(
            &v,
            &sign_with(&es, &header, &good_claims()),
            ErrorCode::WrongTokenType,
        );
    }
}

#[test]
fn typ_header_at_jwt_and_jwt_are_accepted() {
    let (es, v) = es_verifier();
    for typ in ["at+jwt", "application/at+jwt", "AT+JWT", "JWT", "jwt"] {
        let header = json!({ "alg": "ES256", "kid": "es", "typ": typ });
        assert_accepted(&v, &sign_with(&es, &header, &good_claims()));
    }
}

// ------------------------------------------------------------------ structure

#[test]
fn oversized_token_is_malformed() {
    let (es, v) = es_verifier();
    // Find padding that puts a correctly signed token just under and just over 8 KiB.
    let token_with = |pad: usize| {
        let claims = json!({ "sub": "a", "exp": NOW + 60, "pad": "x".repeat(pad) });
        es_token(&es, &claims)
    };
    let base = token_with(0).len();
    let mut pad = ((8 * 1024 - base) * 3 / 4).saturating_sub(8);
    while token_with(pad + 1).len() <= 8 * 1024 {
        pad += 1;
    }
    let at_limit = token_with(pad);
    let over = token_with(pad + 1);
    assert!(at_limit.len() <= 8 * 1024 && over.len() > 8 * 1024);
    assert_accepted(&v, &at_limit);
    let err = rejection(&v, &over);
    assert_eq!(err.code(), ErrorCode::MalformedToken, "{err:?}");

    // A megabyte of junk is refused the same way, without being decoded.
    let junk = "A".repeat(1 << 20);
    assert_code(
        &v,
        &format!("{junk}.{junk}.{junk}"),
        ErrorCode::MalformedToken,
    );
}

#[test]
fn duplicate_header_members_are_malformed() {
    let (es, v) = es_verifier();
    let payload = bytes(&good_claims());
    for header in [
        r#"{"alg":"ES256","kid":"es","alg":"ES256"}"#,
        r#"{"alg":"ES256","kid":"es","kid":"es"}"#,
        r#"{"alg":"ES256","kid":"es","typ":"JWT","typ":"JWT"}"#,
        r#"{"alg":"ES256","kid":"es","x":1,"x":1}"#,
        r#"{"alg":"ES256","kid":"es","\u0061lg":"ES256"}"#,
        r#"{"alg":"ES256","\u006bid":"es","kid":"es"}"#,
        r#"{"alg":"ES256","kid":"es","a":1,"\u0061":2}"#,
        r#"{"alg":"ES256","kid":"es","jwk":{"kty":"EC","kty":"EC"}}"#,
    ] {
        let token = sign_raw(&es, Algorithm::ES256, header.as_bytes(), &payload);
        assert_code(&v, &token, ErrorCode::MalformedToken);
    }
}

#[test]
fn duplicate_claims_are_malformed() {
    let (es, v) = es_verifier();
    let header = br#"{"alg":"ES256","kid":"es"}"#;
    let exp = NOW + 60;
    for claims in [
        format!(r#"{{"sub":"a","sub":"b","exp":{exp}}}"#),
        format!(r#"{{"sub":"a","exp":{exp},"exp":{}}}"#, NOW - 1000),
        format!(r#"{{"sub":"a","\u0073ub":"b","exp":{exp}}}"#),
        format!(r#"{{"sub":"a","exp":{exp},"a":1,"\u0061":2}}"#),
        format!(r#"{{"sub":"a","exp":{exp},"a":"x","a":"x"}}"#),
        format!(r#"{{"sub":"a","exp":{exp},"type":"access","type":"refresh"}}"#),
        format!(r#"{{"sub":"a","exp":{exp},"x":{{"b":1,"b":2}}}}"#),
        format!(r#"{{"sub":"a","exp":{exp},"x":[{{"c":1,"c":1}}]}}"#),
        format!(r#"{{"sub":{{"id":"a","id":"b"}},"exp":{exp}}}"#),
    ] {
        let token = sign_raw(&es, Algorithm::ES256, header, claims.as_bytes());
        let err = rejection(&v, &token);
        assert_eq!(err.code(), ErrorCode::MalformedToken, "{claims}: {err:?}");
    }
    // The same member names at different depths are fine.
    let ok = format!(r#"{{"sub":"a","exp":{exp},"x":{{"sub":"b","exp":1}}}}"#);
    assert_accepted(&v, &sign_raw(&es, Algorithm::ES256, header, ok.as_bytes()));
}

#[test]
fn base64_padding_is_malformed() {
    let (es, v) = es_verifier();
    // Segments whose unpadded length is not a multiple of 4, so '=' would be
    // "legal" padding in lenient decoders.
    let header = br#"{"alg":"ES256","kid":"es"}"#;
    let mut claims = good_claims();
    let mut pad = 0;
    let (h, p) = loop {
        claims["p"] = json!("x".repeat(pad));
        let (h, p) = (b64_encode(header), b64_encode(&bytes(&claims)));
        if h.len() % 4 != 0 && p.len() % 4 != 0 {
            break (h, p);
        }
        pad += 1;
        assert!(pad < 8);
    };
    let sign = |input: &str| {
        let sig = es.sign(Algorithm::ES256, input.as_bytes()).expect("signs");
        format!("{input}.{}", b64_encode(&sig))
    };
    let good = sign(&format!("{h}.{p}"));
    assert_accepted(&v, &good);

    // Padding on the header (signed over, so only the padding is wrong).
    assert_code(&v, &sign(&format!("{h}=.{p}")), ErrorCode::MalformedToken);
    assert_code(&v, &sign(&format!("{h}==.{p}")), ErrorCode::MalformedToken);
    // Padding on the payload.
    assert_code(&v, &sign(&format!("{h}.{p}=")), ErrorCode::MalformedToken);
    assert_code(&v, &sign(&format!("{h}.{p}==")), ErrorCode::MalformedToken);
    // Padding on the signature (64 bytes encode to 86 chars: "==" would pad it).
    assert_code(&v, &format!("{good}=="), ErrorCode::MalformedToken);
    assert_code(&v, &format!("{good}="), ErrorCode::MalformedToken);
    // Standard-alphabet characters are not base64url.
    let (input, sig) = good.rsplit_once('.').expect("three segments");
    let std_sig = sig.replace('-', "+").replace('_', "/");
    if std_sig != sig {
        assert_code(&v, &format!("{input}.{std_sig}"), ErrorCode::MalformedToken);
    }
}

#[test]
fn a_fourth_segment_is_malformed() {
    let (es, v) = es_verifier();
    let good = good_token(&es);
    assert_accepted(&v, &good);
    for extra in [
        ".",
        ".x",
        ".AAAA",
        &format!(".{}", good.split('.').nth(2).expect("sig")),
    ] {
        assert_code(&v, &format!("{good}{extra}"), ErrorCode::MalformedToken);
    }
    // A JWE-shaped five-part token too.
    assert_code(&v, &format!("{good}.a.b"), ErrorCode::MalformedToken);
}

#[test]
fn non_utf8_claims_are_malformed() {
    let (es, v) = es_verifier();
    let header = br#"{"alg":"ES256","kid":"es"}"#;
    let exp = NOW + 60;
    let mut lone_continuation = format!(r#"{{"sub":"a","exp":{exp},"x":""#).into_bytes();
    lone_continuation.extend_from_slice(b"\x80\"}");
    let mut in_sub = b"{\"sub\":\"\xff\xfe\",\"exp\":".to_vec();
    in_sub.extend_from_slice(format!("{exp}}}").as_bytes());
    let mut overlong = format!(r#"{{"sub":"a","exp":{exp},"x":""#).into_bytes();
    overlong.extend_from_slice(b"\xc0\xaf\"}");
    let mut surrogate = format!(r#"{{"sub":"a","exp":{exp},"x":""#).into_bytes();
    surrogate.extend_from_slice(b"\xed\xa0\x80\"}");
    let mut in_name = format!(r#"{{"sub":"a","exp":{exp},""#).into_bytes();
    in_name.extend_from_slice(b"\xff\":1}");
    for claims in [lone_continuation, in_sub, overlong, surrogate, in_name] {
        let token = sign_raw(&es, Algorithm::ES256, header, &claims);
        assert_code(&v, &token, ErrorCode::MalformedToken);
    }
    // Non-UTF-8 in the header as well.
    let token = sign_raw(
        &es,
        Algorithm::ES256,
        b"{\"alg\":\"ES256\",\"kid\":\"es\",\"x\":\"\xff\"}",
        &bytes(&good_claims()),
    );
    assert_code(&v, &token, ErrorCode::MalformedToken);
}

#[test]
fn claims_that_are_not_an_object_are_malformed() {
    let (es, v) = es_verifier();
    let header = br#"{"alg":"ES256","kid":"es"}"#;
    for claims in [
        &b"[]"[..],
        b"\"sub\"",
        b"null",
        b"",
        b"{",
        b"{}{}",
        b"{\"sub\":\"a\"} x",
    ] {
        let token = sign_raw(&es, Algorithm::ES256, header, claims);
        assert_code(&v, &token, ErrorCode::MalformedToken);
    }
}

#[test]
fn header_that_is_not_a_jose_object_is_malformed() {
    let (es, v) = es_verifier();
    let payload = bytes(&good_claims());
    for header in [
        &b"[]"[..],
        b"\"ES256\"",
        b"{}",
        b"{\"kid\":\"es\"}",
        b"{\"alg\":256,\"kid\":\"es\"}",
        b"{\"alg\":\"ES256\",\"kid\":7}",
        b"{\"alg\":\"ES256\",\"kid\":\"es\"}{}",
    ] {
        let token = sign_raw(&es, Algorithm::ES256, header, &payload);
        let err = rejection(&v, &token);
        assert_eq!(err.code(), ErrorCode::MalformedToken, "{header:?}: {err:?}");
    }
    // Insignificant whitespace is valid JSON and changes nothing.
    let spaced = b" { \"alg\" : \"ES256\" , \"kid\" : \"es\" } ";
    assert_accepted(&v, &sign_raw(&es, Algorithm::ES256, spaced, &payload));
}

#[test]
fn nesting_depth_bomb_is_malformed_without_stack_overflow() {
    let es = es_key();
    let header = br#"{"alg":"ES256","kid":"es"}"#;
    let depth = 10_000;
    let bomb = format!(
        r#"{{"sub":"a","exp":{},"x":{}1{}}}"#,
        NOW + 60,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let token = sign_raw(&es, Algorithm::ES256, header, bomb.as_bytes());

    // Under the default size bound it is refused for its size ...
    let v = verifier(set([public_copy(&es)]));
    assert_code(&v, &token, ErrorCode::MalformedToken);

    // ... and with the bound lifted, for its depth (after the signature verified).
    let mut validation = Validation::new();
    validation.jws.max_token_bytes = 1 << 20;
    let v = verifier_with(set([public_copy(&es)]), validation.clone());
    let err = rejection(&v, &token);
    assert_eq!(err.code(), ErrorCode::MalformedToken, "{err:?}");

    // Objects nest the same way.
    let bomb = format!(
        r#"{{"sub":"a","exp":{},"x":{}1{}}}"#,
        NOW + 60,
        r#"{"a":"#.repeat(depth),
        "}".repeat(depth)
    );
    let token = sign_raw(&es, Algorithm::ES256, header, bomb.as_bytes());
    assert_code(&v, &token, ErrorCode::MalformedToken);

    // In recognised claims too (aud, roles, sub objects).
    for claim in ["aud", "roles", "scp", "sub"] {
        let sub = if claim == "sub" { "" } else { r#""sub":"a","# };
        let bomb = format!(
            r#"{{{sub}"exp":{},"{claim}":{}"x"{}}}"#,
            NOW + 60,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let token = sign_raw(&es, Algorithm::ES256, header, bomb.as_bytes());
        assert_code(&v, &token, ErrorCode::MalformedToken);
    }

    // A depth just inside the bound is fine.
    let ok = format!(
        r#"{{"sub":"a","exp":{},"x":{}1{}}}"#,
        NOW + 60,
        "[".repeat(15),
        "]".repeat(15)
    );
    assert_accepted(&v, &sign_raw(&es, Algorithm::ES256, header, ok.as_bytes()));

    // And in the header (decoded header is bounded at 2 KiB).
    let deep_header = format!(
        r#"{{"alg":"ES256","kid":"es","x":{}1{}}}"#,
        "[".repeat(600),
        "]".repeat(600)
    );
    let token = sign_raw(
        &es,
        Algorithm::ES256,
        deep_header.as_bytes(),
        &bytes(&good_claims()),
    );
    assert_code(&v, &token, ErrorCode::MalformedToken);
}

#[test]
fn crit_header_is_rejected() {
    let (es, v) = es_verifier();
    for crit in [json!(["exp"]), json!(["b64"]), json!([]), json!("x")] {
        let header = json!({ "alg": "ES256", "kid": "es", "crit": crit, "exp": 1, "b64": false });
        assert_code(
            &v,
            &sign_with(&es, &header, &good_claims()),
            ErrorCode::MalformedToken,
        );
    }
}

// ------------------------------------------------------------------ weak keys

#[test]
fn rsa_1024_key_is_refused_at_load() {
    assert_eq!(
        Key::from_pem(include_bytes!("data/rsa1024_spki.pem"), None).err(),
        Some(KeyError::WeakRsaKey(1024))
    );
    assert_eq!(
        Key::from_pem(include_bytes!("data/rsa1024_pkcs8.pem"), None).err(),
        Some(KeyError::WeakRsaKey(1024))
    );
    assert_eq!(
        Key::from_pem(include_bytes!("data/rsa1024_pkcs1.pem"), None).err(),
        Some(KeyError::WeakRsaKey(1024))
    );
    // From components and from a JWK.
    let spki_key_der = pem_body(include_bytes!("data/rsa1024_spki.pem"));
    assert_eq!(
        Key::from_spki(&spki_key_der, Some(Algorithm::RS256)).err(),
        Some(KeyError::WeakRsaKey(1024))
    );
    let n = [0xc1u8; 128];
    assert_eq!(
        Key::rsa_public(&n, &[1, 0, 1], None).err(),
        Some(KeyError::WeakRsaKey(1024))
    );
    let mut n2047 = [0xffu8; 256];
    n2047[0] = 0x7f;
    assert_eq!(
        Key::rsa_public(&n2047, &[1, 0, 1], None).err(),
        Some(KeyError::WeakRsaKey(2047))
    );
    let jwk = json!({ "kty": "RSA", "n": b64_encode(&n), "e": "AQAB", "kid": "weak" });
    assert_eq!(
        key_from_jwk_json(&bytes(&jwk)).err(),
        Some(KeyError::WeakRsaKey(1024))
    );
    let (set, warnings) =
        KeySet::from_jwks_json(&bytes(&json!({ "keys": [jwk] }))).expect("JWKS parses");
    assert!(set.is_empty());
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].kid.as_deref(), Some("weak"));
    assert_eq!(warnings[0].error, KeyError::WeakRsaKey(1024));
}

/// Public keys that would make forgery trivial or verification costly are
/// refused at load, not at verification.
#[test]
fn degenerate_public_keys_are_refused() {
    let rsa = Key::from_pem(RSA_PUBLIC_PEM, None).expect("RSA public PEM");
    let jwk = public_jwk(&rsa).expect("public JWK");
    let n =
        portcullis_core::jose::b64_decode(jwk["n"].as_str().expect("n").as_bytes()).expect("b64");
    // e = 1 makes every "signature" equal to its padded message.
    for e in [&[1u8][..], &[0], &[2], &[1, 0, 0], &[0xff; 8]] {
        assert!(
            matches!(Key::rsa_public(&n, e, None), Err(KeyError::Malformed(_))),
            "e = {e:?}"
        );
    }
    let mut even = n.clone();
    *even.last_mut().expect("non-empty") &= 0xfe;
    assert!(matches!(
        Key::rsa_public(&even, &[1, 0, 1], None),
        Err(KeyError::Malformed(_))
    ));
    // Larger than 8192 bits: refused to bound verification cost.
    let mut huge = vec![0x01u8];
    huge.extend(vec![0xff; 1024]);
    assert!(matches!(
        Key::rsa_public(&huge, &[1, 0, 1], None),
        Err(KeyError::Unsupported(_))
    ));
    // A point that is not on the curve, the point at infinity, a compressed point.
    let mut off_curve = vec![4u8];
    off_curve.extend([1u8; 64]);
    for point in [off_curve, vec![0u8], vec![2u8; 33], vec![4u8; 65]] {
        assert!(
            matches!(
                Key::ec_public(portcullis_core::KeyFamily::P256, &point, None),
                Err(KeyError::Malformed(_))
            ),
            "{point:?}"
        );
    }
    assert!(matches!(
        Key::ed25519_public(&[1; 31], None),
        Err(KeyError::Malformed(_))
    ));
}

#[test]
fn short_hmac_secret_is_refused() {
    assert_eq!(
        Key::hmac(&[7; 16], None).err(),
        Some(KeyError::WeakHmacSecret(16))
    );
    assert_eq!(
        Key::hmac(&[7; 31], Some(Algorithm::HS256)).err(),
        Some(KeyError::WeakHmacSecret(31))
    );
    assert_eq!(
        Key::hmac(&[], None).err(),
        Some(KeyError::WeakHmacSecret(0))
    );
    // HS512 needs 64 bytes when pinned.
    assert_eq!(
        Key::hmac(&[7; 32], Some(Algorithm::HS512)).err(),
        Some(KeyError::WeakHmacSecret(32))
    );
    // Unpinned, a 32-byte secret only enables HS256.
    let k = Key::hmac(&[7; 32], None).expect("32 bytes");
    assert!(k.supports(Algorithm::HS256));
    assert!(!k.supports(Algorithm::HS384));
    assert!(!k.supports(Algorithm::HS512));
    // Through a JWK.
    let jwk = json!({ "kty": "oct", "k": b64_encode(&[7; 16]) });
    assert_eq!(
        key_from_jwk_json(&bytes(&jwk)).err(),
        Some(KeyError::WeakHmacSecret(16))
    );
}

#[test]
fn hs512_token_against_a_32_byte_secret_is_unsupported_algorithm() {
    let long = Key::hmac(&[3; 64], None).expect("64 bytes").with_kid("hs");
    let v = verifier(set([Key::hmac(&[3; 32], None).expect("32").with_kid("hs")]));
    let header = json!({ "alg": "HS512", "kid": "hs" });
    assert_code(
        &v,
        &sign_with(&long, &header, &good_claims()),
        ErrorCode::UnsupportedAlgorithm,
    );
}

// ------------------------------------------------------------------ key selection

#[test]
fn no_kid_and_two_keys_of_the_type_is_unknown_key() {
    let a = Key::generate(Algorithm::ES256).expect("generate");
    let b = Key::generate(Algorithm::ES256).expect("generate");
    let v = verifier(set([public_copy(&a), public_copy(&b)]));
    for signer in [&a, &b] {
        let token = sign_with(signer, &json!({ "alg": "ES256" }), &good_claims());
        assert_code(&v, &token, ErrorCode::UnknownKey);
        // With its kid it verifies.
        assert_accepted(&v, &good_token(signer));
    }
}

#[test]
fn no_kid_and_exactly_one_key_of_the_type_verifies() {
    let es = Key::generate(Algorithm::ES256).expect("generate");
    // Other families in the set do not count as candidates.
    let v = verifier(set([
        public_copy(&es),
        Key::generate(Algorithm::ES384).expect("generate"),
        Key::generate(Algorithm::EdDSA).expect("generate"),
        Key::hmac(&[1; 32], None).expect("secret"),
        Key::from_pem(RSA_PUBLIC_PEM, None).expect("RSA"),
    ]));
    let token = sign_with(&es, &json!({ "alg": "ES256" }), &good_claims());
    let p = v
        .verify(token.as_bytes())
        .expect("the one P-256 key verifies");
    assert_eq!(p.subject, "alice");

    // No key of the type at all.
    let v = verifier(set([Key::generate(Algorithm::EdDSA).expect("generate")]));
    assert_code(&v, &token, ErrorCode::UnknownKey);
}

#[test]
fn key_pinned_to_rs256_refuses_ps256() {
    let signer = Key::from_pem(RSA_PRIVATE_PEM, Some(Algorithm::PS256)).expect("RSA private");
    let mut jwk = public_jwk(&signer).expect("public JWK");
    jwk["alg"] = json!("RS256");
    jwk["kid"] = json!("rsa");
    let (keys, warnings) =
        KeySet::from_jwks_json(&bytes(&json!({ "keys": [jwk] }))).expect("JWKS parses");
    assert!(warnings.is_empty());
    let key = keys.get("rsa").expect("loaded");
    assert_eq!(key.pinned_algorithm(), Some(Algorithm::RS256));
    let v = verifier(keys);

    for alg in [
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::RS384,
        Algorithm::RS512,
    ] {
        let header = json!({ "alg": alg.name(), "kid": "rsa" });
        let signer = Key::from_pem(RSA_PRIVATE_PEM, Some(alg)).expect("RSA private");
        assert_code(
            &v,
            &sign_with(&signer, &header, &good_claims()),
            ErrorCode::UnsupportedAlgorithm,
        );
    }
    let rs = Key::from_pem(RSA_PRIVATE_PEM, Some(Algorithm::RS256)).expect("RSA private");
    assert_accepted(
        &v,
        &sign_with(
            &rs,
            &json!({ "alg": "RS256", "kid": "rsa" }),
            &good_claims(),
        ),
    );
}

#[test]
fn unpinned_rsa_key_verifies_every_rsa_algorithm() {
    let v = verifier(set([Key::from_pem(RSA_PUBLIC_PEM, None)
        .expect("RSA public")
        .with_kid("rsa")]));
    for alg in Algorithm::ALL
        .into_iter()
        .filter(|a| a.name().starts_with(['R', 'P']))
    {
        let signer = Key::from_pem(RSA_PRIVATE_PEM, Some(alg)).expect("RSA private");
        let header = json!({ "alg": alg.name(), "kid": "rsa" });
        assert_accepted(&v, &sign_with(&signer, &header, &good_claims()));
    }
}

#[test]
fn jwk_with_use_enc_is_skipped_with_a_warning() {
    let sig_key = Key::generate(Algorithm::ES256).expect("generate");
    let enc_key = Key::generate(Algorithm::ES256).expect("generate");
    let mut enc = public_jwk(&enc_key).expect("jwk");
    enc["use"] = json!("enc");
    enc["kid"] = json!("enc-1");
    let mut wrap_only =
        public_jwk(&Key::generate(Algorithm::EdDSA).expect("generate")).expect("jwk");
    wrap_only.as_object_mut().expect("object").remove("use");
    wrap_only["key_ops"] = json!(["wrapKey"]);
    wrap_only["kid"] = json!("wrap-1");
    let sig = public_jwk(&sig_key).expect("jwk");
    let jwks = json!({ "keys": [enc, sig, wrap_only] });

    let (keys, warnings) = KeySet::from_jwks_json(&bytes(&jwks)).expect("JWKS parses");
    assert_eq!(keys.len(), 1);
    assert!(keys.get(sig_key.kid()).is_some());
    assert!(keys.get("enc-1").is_none());
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(warnings[0].index, 0);
    assert_eq!(warnings[0].kid.as_deref(), Some("enc-1"));
    assert!(matches!(&warnings[0].error, KeyError::Unsupported(m) if m.contains("enc")));
    assert_eq!(warnings[1].index, 2);
    assert_eq!(warnings[1].kid.as_deref(), Some("wrap-1"));
    assert!(matches!(warnings[1].error, KeyError::Unsupported(_)));

    // A token signed by the encryption key (naming it) is not accepted.
    let v = verifier(keys);
    let header = json!({ "alg": "ES256", "kid": "enc-1" });
    assert_code(
        &v,
        &sign_with(&enc_key, &header, &good_claims()),
        ErrorCode::UnknownKey,
    );
    assert_accepted(&v, &good_token(&sig_key));
}

#[test]
fn algorithm_outside_the_allow_list_is_unsupported_algorithm() {
    let es = es_key();
    let ed = Key::generate(Algorithm::EdDSA)
        .expect("generate")
        .with_kid("ed");
    let keys = set([public_copy(&es), public_copy(&ed)]);
    let only_eddsa: AlgorithmSet = [Algorithm::EdDSA].into_iter().collect();
    let v = verifier_with(keys, Validation::new().with_algorithms(only_eddsa));
    assert_code(&v, &good_token(&es), ErrorCode::UnsupportedAlgorithm);
    assert_accepted(&v, &good_token(&ed));

    // The empty set refuses everything, before key lookup.
    let v = verifier_with(
        set([public_copy(&ed)]),
        Validation::new().with_algorithms(AlgorithmSet::EMPTY),
    );
    assert_code(&v, &good_token(&ed), ErrorCode::UnsupportedAlgorithm);
    let unknown_kid = sign_with(
        &ed,
        &json!({ "alg": "EdDSA", "kid": "nope" }),
        &good_claims(),
    );
    assert_code(&v, &unknown_kid, ErrorCode::UnsupportedAlgorithm);
}

// ------------------------------------------------------------------ tampering

#[test]
fn swapping_payloads_between_tokens_is_invalid_signature() {
    let (es, v) = es_verifier();
    let mine = es_token(&es, &json!({ "sub": "mallory", "exp": NOW + 60 }));
    let admin = es_token(&es, &json!({ "sub": "admin", "exp": NOW + 60 }));
    let m: Vec<&str> = mine.split('.').collect();
    let a: Vec<&str> = admin.split('.').collect();
    assert_code(
        &v,
        &format!("{}.{}.{}", m[0], a[1], m[2]),
        ErrorCode::InvalidSignature,
    );
    // Re-encoding the same payload differently (whitespace) breaks the signature.
    let respaced = b64_encode(br#"{ "sub": "mallory" }"#);
    assert_code(
        &v,
        &format!("{}.{respaced}.{}", m[0], m[2]),
        ErrorCode::InvalidSignature,
    );
}

#[test]
fn error_codes_have_stable_strings() {
    for (code, s) in [
        (ErrorCode::MalformedToken, "auth.malformed_token"),
        (
            ErrorCode::UnsupportedAlgorithm,
            "auth.unsupported_algorithm",
        ),
        (ErrorCode::UnknownKey, "auth.unknown_key"),
        (ErrorCode::InvalidSignature, "auth.invalid_signature"),
        (ErrorCode::TokenExpired, "auth.token_expired"),
        (ErrorCode::TokenNotYetValid, "auth.token_not_yet_valid"),
        (ErrorCode::InvalidIssuer, "auth.invalid_issuer"),
        (ErrorCode::InvalidAudience, "auth.invalid_audience"),
        (ErrorCode::MissingClaim, "auth.missing_claim"),
        (ErrorCode::WrongTokenType, "auth.wrong_token_type"),
    ] {
        assert_eq!(code.as_str(), s);
        assert_eq!(code.to_string(), s);
        assert_eq!(code.http_status(), 401);
    }
}

// ------------------------------------------------------------------ issue 12: token hardening

/// A token for another API (or an OIDC ID token, `aud` = a client id) is not
/// ours when we name no audience.
#[test]
fn a_token_with_aud_is_refused_when_no_audience_is_configured() {
    let (es, v) = es_verifier();
    for aud in [json!("other-api"), json!(["a", "b"]), json!([])] {
        let token = es_token(&es, &json!({ "sub": "a", "exp": NOW + 60, "aud": aud }));
        assert_eq!(rejection(&v, &token), TokenError::InvalidAudience);
        assert_eq!(
            rejection(&v, &token).code().as_str(),
            "auth.invalid_audience"
        );
    }
    assert_accepted(&v, &es_token(&es, &json!({ "sub": "a", "exp": NOW + 60 })));
}

/// RFC 9068: with `require_typ`, only `typ: at+jwt` passes; ID tokens
/// (`typ: JWT` or none) are the wrong type.
#[test]
fn require_typ_refuses_tokens_not_typed_at_jwt() {
    let es = es_key();
    let v = verifier_with(
        set([public_copy(&es)]),
        Validation::new().with_require_typ(true),
    );
    for header in [
        json!({ "alg": "ES256", "kid": "es" }),
        json!({ "alg": "ES256", "kid": "es", "typ": "JWT" }),
    ] {
        let token = sign_with(&es, &header, &good_claims());
        assert_eq!(rejection(&v, &token).code(), ErrorCode::WrongTokenType);
    }
    for typ in ["at+jwt", "application/at+jwt"] {
        let header = json!({ "alg": "ES256", "kid": "es", "typ": typ });
        assert_accepted(&v, &sign_with(&es, &header, &good_claims()));
    }
}

#[test]
fn require_type_claim_refuses_tokens_without_it() {
    let es = es_key();
    let v = verifier_with(
        set([public_copy(&es)]),
        Validation::new().with_require_type_claim(true),
    );
    let err = rejection(&v, &es_token(&es, &good_claims()));
    assert_eq!(err.code(), ErrorCode::WrongTokenType);
    let mut claims = good_claims();
    claims["type"] = json!("refresh");
    assert_eq!(
        rejection(&v, &es_token(&es, &claims)).code(),
        ErrorCode::WrongTokenType
    );
    claims["type"] = json!("access");
    assert_accepted(&v, &es_token(&es, &claims));
}

/// The local issuer's rules accept what `TokenIssuer` writes and refuse an
/// ID-token-shaped JWT signed by the same key.
#[test]
fn local_issuer_validation_requires_both_type_markers() {
    use portcullis_core::{AccessRequest, IssuerConfig, SecretHasher, TokenIssuer};
    let es = es_key();
    let mut config = IssuerConfig::new("https://issuer.example");
    config.audience = vec!["api".into()];
    let clock = Arc::new(ManualClock::at_unix_seconds(NOW as u64));
    let issuer = TokenIssuer::new(
        set([
            Key::from_pem(es.private_pkcs8_pem().expect("pem").as_bytes(), None)
                .expect("key")
                .with_kid("es"),
        ]),
        config.clone(),
        SecretHasher::new(&[3; 32]).expect("pepper"),
    )
    .with_clock(clock);
    let v = verifier_with(
        set([public_copy(&es)]),
        Validation::for_local_issuer(&config),
    );
    let issued = issuer
        .issue_access(&AccessRequest {
            subject: "alice".into(),
            ..AccessRequest::default()
        })
        .expect("issue");
    assert_accepted(&v, &issued.token);
    // Nor is a token for nobody issued.
    assert!(matches!(
        issuer.issue_access(&AccessRequest::default()),
        Err(portcullis_core::IssueError::EmptySubject)
    ));

    let id_token = json!({ "sub": "alice", "iss": "https://issuer.example", "aud": "api",
                           "iat": NOW, "exp": NOW + 600 });
    let header = json!({ "alg": "ES256", "kid": "es", "typ": "JWT" });
    assert_code(
        &v,
        &sign_with(&es, &header, &id_token),
        ErrorCode::WrongTokenType,
    );
    let header = json!({ "alg": "ES256", "kid": "es", "typ": "at+jwt" });
    assert_code(
        &v,
        &sign_with(&es, &header, &id_token),
        ErrorCode::WrongTokenType,
    );
}

#[test]
fn an_empty_subject_is_refused() {
    let (es, v) = es_verifier();
    for sub in [
        json!(""),
        json!({ "uuid": "" }),
        json!({ "email": "a@example.com" }),
    ] {
        let err = rejection(&v, &es_token(&es, &json!({ "sub": sub, "exp": NOW + 60 })));
        assert_eq!(err, TokenError::MissingClaim("sub".into()), "{sub}");
    }
}

#[test]
fn an_object_subject_with_both_uuid_and_id_is_refused() {
    let (es, v) = es_verifier();
    for sub in [
        json!({ "uuid": "u-1", "id": "admin" }),
        json!({ "id": "admin", "uuid": "u-1" }),
    ] {
        let err = rejection(&v, &es_token(&es, &json!({ "sub": sub, "exp": NOW + 60 })));
        assert_eq!(err.code(), ErrorCode::MalformedToken, "{sub}");
    }
    let p = v
        .verify(es_token(&es, &json!({ "sub": { "uuid": "u-1" }, "exp": NOW + 60 })).as_bytes())
        .expect("one id");
    assert_eq!(p.subject, "u-1");
}

/// The header is read before the signature: its member count is bounded
/// before the (quadratic) duplicate check runs.
#[test]
fn a_header_with_too_many_members_is_malformed() {
    let (es, v) = es_verifier();
    let mut header = serde_json::Map::new();
    header.insert("alg".into(), json!("ES256"));
    header.insert("kid".into(), json!("es"));
    for i in 0..40 {
        header.insert(format!("x{i}"), json!(0));
    }
    let token = sign_with(&es, &Value::Object(header), &good_claims());
    assert_code(&v, &token, ErrorCode::MalformedToken);
    // Nested members count too.
    let nested: serde_json::Map<String, Value> =
        (0..40).map(|i| (format!("y{i}"), json!(0))).collect();
    let header = json!({ "alg": "ES256", "kid": "es", "ext": nested });
    assert_code(
        &v,
        &sign_with(&es, &header, &good_claims()),
        ErrorCode::MalformedToken,
    );
    // A usual header with a few extra members is fine.
    let header = json!({ "alg": "ES256", "kid": "es", "typ": "at+jwt", "cty": "x", "x5t": "y" });
    assert_accepted(&v, &sign_with(&es, &header, &good_claims()));
}

/// PyJWT CVE-2022-29217: public-key text is not a secret.
#[test]
fn public_key_text_is_refused_as_an_hmac_secret() {
    let ssh = format!("ssh-ed25519 {} user@host", "A".repeat(68));
    let secrets: [&[u8]; 4] = [
        RSA_PUBLIC_PEM,
        RSA_PRIVATE_PEM,
        ssh.as_bytes(),
        b"  \necdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY",
    ];
    for secret in secrets {
        assert!(
            matches!(Key::hmac(secret, None), Err(KeyError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(secret)
        );
    }
    assert!(Key::hmac(&[0x5a; 32], None).is_ok());
}

/// A secret or private entry listed before the real public key of the same
/// kid must not push that key out of a remote key set.
#[test]
fn a_secret_entry_listed_first_does_not_displace_the_public_key() {
    let es = es_key();
    let Some(public) = public_jwk(&es) else {
        panic!("public JWK");
    };
    let oct = json!({ "kty": "oct", "kid": "es", "k": b64_encode(&[7u8; 32]) });
    // Another key's private JWK, under the same kid.
    let doc: Value =
        serde_json::from_slice(include_bytes!("data/private_jwks.json")).expect("json");
    let mut private = doc["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == "p256")
        .cloned()
        .expect("p256");
    private["kid"] = json!("es");
    for first in [oct, private] {
        let doc = json!({ "keys": [first, public.clone()] }).to_string();
        let (keys, warnings) = KeySet::from_public_jwks_json(doc.as_bytes()).expect("jwks");
        assert_eq!(keys.len(), 1);
        assert_eq!(warnings.len(), 1);
        let key = keys.get("es").expect("the public key");
        assert!(!key.can_sign() && !key.is_symmetric());
        assert_accepted(&verifier(keys), &good_token(&es));
    }
}

#[test]
fn a_lifetime_longer_than_the_maximum_is_refused() {
    let es = es_key();
    let v = verifier_with(
        set([public_copy(&es)]),
        Validation::new().with_max_lifetime(Duration::from_secs(3600)),
    );
    let long = json!({ "sub": "a", "iat": NOW, "exp": NOW + 3601 });
    assert_eq!(
        rejection(&v, &es_token(&es, &long)),
        TokenError::LifetimeTooLong
    );
    let no_iat = json!({ "sub": "a", "exp": NOW + 60 });
    assert_eq!(
        rejection(&v, &es_token(&es, &no_iat)),
        TokenError::MissingClaim("iat".into())
    );
    assert_accepted(
        &v,
        &es_token(&es, &json!({ "sub": "a", "iat": NOW, "exp": NOW + 3600 })),
    );
}
