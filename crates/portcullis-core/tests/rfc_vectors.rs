//! Published test vectors: RFC 7515 Appendix A.1–A.3 (HS256, RS256, ES256),
//! RFC 8037 Appendix A (Ed25519) and RFC 7638 §3.1 (JWK thumbprint), byte-exact.

use std::sync::Arc;

use portcullis_core::jose::jwk::key_from_jwk_json;
use portcullis_core::jose::jws::{self, JwsPolicy, TypHeader};
use portcullis_core::jose::{b64_decode, b64_encode};
use portcullis_core::{
    Algorithm, ErrorCode, Key, KeyFamily, KeySet, ManualClock, Principal, TokenError, Validation,
    Verifier,
};
use serde_json::{Value, json};

/// `exp` of the RFC 7515 example payload.
const RFC_EXP: u64 = 1_300_819_380;
/// Just before `exp`.
const BEFORE_EXP: u64 = 1_300_819_370;
/// The default leeway of [`Validation`].
const LEEWAY: u64 = 30;

/// The JOSE header of RFC 7515 A.1, with its CR LF.
const A1_HEADER: &[u8] = b"{\"typ\":\"JWT\",\r\n \"alg\":\"HS256\"}";
/// The JWS payload shared by A.1–A.3, with its CR LFs.
const RFC7515_PAYLOAD: &[u8] =
    b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
const RFC7515_PAYLOAD_B64: &str = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";

const A1_JWK: &str = r#"{"kty":"oct",
 "k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"
}"#;
const A1_TOKEN: &str = concat!(
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9",
    ".",
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
    ".",
    "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
);

const A2_JWK: &str = r#"{"kty":"RSA",
 "n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ",
 "e":"AQAB",
 "d":"Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTeXZx9SE-7YwVol2NXOoAJe46sui395IW_GO-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3Mkqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBjudU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p1DhOVRuOopznQ",
 "p":"4BzEEOtIpmVdVEZNCqS7baC4crd0pqnRH_5IB3jw3bcxGn6QLvnEtfdUdiYrqBdss1l58BQ3KhooKeQTa9AB0Hw_Py5PJdTJNPY8cQn7ouZ2KKDcmnPGBY5t7yLc1QlQ5xHdwW1VhvKn-nXqhJTBgIPgtldC-KDV5z-y2XDwGUc",
 "q":"uQPEfgmVtjL0Uyyx88GZFF1fOunH3-7cepKmtH4pxhtCoHqpWmT8YAmZxaewHgHAjLYsp1ZSe7zFYHj7C6ul7TjeLQeZD_YwD66t62wDmpe_HlB-TnBA-njbglfIsRLtXlnDzQkv5dTltRJ11BKBBypeeF6689rjcJIDEz9RWdc",
 "dp":"BwKfV3Akq5_MFZDFZCnW-wzl-CCo83WoZvnLQwCTeDv8uzluRSnm71I3QCLdhrqE2e9YkxvuxdBfpT_PI7Yz-FOKnu1R6HsJeDCjn12Sk3vmAktV2zb34MCdy7cpdTh_YVr7tss2u6vneTwrA86rZtu5Mbr1C1XsmvkxHQAdYo0",
 "dq":"h_96-mK1R_7glhsum81dZxjTnYynPbZpHziZjeeHcXYsXaaMwkOlODsWa7I9xXDoRwbKgB719rrmI2oKr6N3Do9U0ajaHF-NKJnwgjMd2w9cjz3_-kyNlxAr2v4IKhGNpmM5iIgOS1VZnOZ68m6_pbLBSp3nssTdlqvd0tIiTHU",
 "qi":"IYd7DHOhrWvxkwPQsRM2tOgrjbcrfvtQJipd-DlcxyVuuM9sQLdgjVk2oy26F0EmpScGLq2MowX7fhd_QJQ3ydy5cY7YIBi87w93IKLEdfnbJtoOPLUW0ITrJReOgo1cq9SbsxYawBgfp_gh6A5603k2-ZQwVK0JKSHuLFkuQ3U"
}"#;
const A2_TOKEN: &str = concat!(
    "eyJhbGciOiJSUzI1NiJ9",
    ".",
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
    ".",
    "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7",
    "AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4",
    "BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K",
    "0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqv",
    "hJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrB",
    "p0igcN_IoypGlUPQGe77Rw"
);

const A3_JWK: &str = r#"{"kty":"EC",
 "crv":"P-256",
 "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
 "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
 "d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"
}"#;
const A3_TOKEN: &str = concat!(
    "eyJhbGciOiJFUzI1NiJ9",
    ".",
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
    ".",
    "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSA",
    "pmWQxfKTUJqPP3-Kg6NU1Q"
);

/// RFC 8037 A.1 private key.
const ED25519_JWK: &str = r#"{"kty":"OKP","crv":"Ed25519",
 "d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
 "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
/// RFC 8037 A.2 public key.
const ED25519_PUBLIC_JWK: &str = r#"{"kty":"OKP","crv":"Ed25519",
 "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
/// RFC 8037 A.3 thumbprint of the A.2 key.
const ED25519_THUMBPRINT: &str = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";
/// RFC 8037 A.4 signed JWS (Ed25519, deterministic).
const ED25519_TOKEN: &str = concat!(
    "eyJhbGciOiJFZERTQSJ9",
    ".",
    "RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc",
    ".",
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
);

/// RFC 7638 §3.1 example key and its thumbprint.
const RFC7638_JWK: &str = r#"{"kty":"RSA",
 "n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
 "e":"AQAB",
 "alg":"RS256",
 "kid":"2011-04-29"}"#;
const RFC7638_THUMBPRINT: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

fn load_jwk(json: &str) -> Key {
    key_from_jwk_json(json.as_bytes()).expect("the RFC JWK loads")
}

fn set_of(key: Key) -> KeySet {
    let mut set = KeySet::new();
    set.insert(key).expect("a fresh set takes the key");
    set
}

/// A verifier that requires no claims besides `exp`, standing at `now`.
fn verifier_at(keys: KeySet, now: u64) -> Verifier {
    let validation = Validation::new().with_required_claims(Vec::<String>::new());
    Verifier::new(keys, validation).with_clock(Arc::new(ManualClock::at_unix_seconds(now)))
}

fn assert_rfc7515_principal(p: &Principal) {
    assert_eq!(p.issuer.as_deref(), Some("joe"));
    assert_eq!(p.expires_at, Some(RFC_EXP as i64));
    assert_eq!(p.subject, "", "the RFC payload has no `sub`");
    assert_eq!(
        p.claims.get("http://example.com/is_root"),
        Some(Value::Bool(true))
    );
    assert_eq!(p.claims.get("iss"), Some(json!("joe")));
    // The raw claims are exactly the signed payload bytes.
    assert_eq!(p.claims.as_json().as_bytes(), RFC7515_PAYLOAD);
}

/// Verifies `token` with `keys` before `exp`, at `exp` (inside the leeway) and
/// after `exp` + leeway.
fn check_rfc7515_token(token: &str, keys: KeySet) {
    let before = verifier_at(keys.clone(), BEFORE_EXP);
    let p = before.verify(token.as_bytes()).expect("RFC token verifies");
    assert_rfc7515_principal(&p);

    // At exp and up to exp + leeway - 1 it is still accepted.
    let within = verifier_at(keys.clone(), RFC_EXP + LEEWAY - 1);
    assert!(within.verify(token.as_bytes()).is_ok());

    // From exp + leeway on it is expired.
    for now in [RFC_EXP + LEEWAY, RFC_EXP + LEEWAY + 1, RFC_EXP + 86_400] {
        let after = verifier_at(keys.clone(), now);
        let err = after.verify(token.as_bytes()).expect_err("expired");
        assert_eq!(err, TokenError::Expired);
        assert_eq!(err.code(), ErrorCode::TokenExpired);
        assert_eq!(err.code().as_str(), "auth.token_expired");
    }
}

/// The payload the RFC signs is what the compact form's middle segment holds.
#[test]
fn rfc7515_segments_are_the_published_bytes() {
    assert_eq!(b64_encode(RFC7515_PAYLOAD), RFC7515_PAYLOAD_B64);
    assert_eq!(
        b64_encode(A1_HEADER),
        "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
    );
    assert_eq!(b64_encode(br#"{"alg":"RS256"}"#), "eyJhbGciOiJSUzI1NiJ9");
    assert_eq!(b64_encode(br#"{"alg":"ES256"}"#), "eyJhbGciOiJFUzI1NiJ9");
    for token in [A1_TOKEN, A2_TOKEN, A3_TOKEN] {
        assert_eq!(token.split('.').nth(1), Some(RFC7515_PAYLOAD_B64));
    }
}

#[test]
fn rfc7515_a1_hs256_verifies_and_expires() {
    let key = load_jwk(A1_JWK);
    assert_eq!(key.family(), KeyFamily::Hmac);
    assert!(key.supports(Algorithm::HS256));
    check_rfc7515_token(A1_TOKEN, set_of(key));
}

#[test]
fn rfc7515_a1_hs256_signature_is_reproduced_exactly() {
    // HMAC is deterministic: our signer must produce the published bytes.
    let key = load_jwk(A1_JWK);
    let signing_input = A1_TOKEN.rsplit_once('.').expect("three segments").0;
    let sig = key
        .sign(Algorithm::HS256, signing_input.as_bytes())
        .expect("HMAC key signs");
    assert_eq!(
        b64_encode(&sig),
        "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    );
    let expected = b64_decode(b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk").expect("b64");
    assert_eq!(
        expected,
        [
            116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212,
            37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121
        ],
        "the octets listed in RFC 7515 A.1.1"
    );
}

#[test]
fn rfc7515_a1_wrong_secret_is_invalid_signature() {
    let other = Key::hmac(&[0x42; 64], None).expect("64-byte secret");
    let err = verifier_at(set_of(other), BEFORE_EXP)
        .verify(A1_TOKEN.as_bytes())
        .expect_err("another secret");
    assert_eq!(err.code(), ErrorCode::InvalidSignature);
}

#[test]
fn rfc7515_a2_rs256_verifies_and_expires() {
    let key = load_jwk(A2_JWK);
    assert_eq!(key.family(), KeyFamily::Rsa);
    assert!(key.can_sign(), "the A.2 JWK carries the private key");
    check_rfc7515_token(A2_TOKEN, set_of(key));

    // The public half alone verifies too.
    let public = public_only(A2_JWK);
    check_rfc7515_token(A2_TOKEN, set_of(public));
}

#[test]
fn rfc7515_a2_rs256_signature_is_reproduced_exactly() {
    // RSASSA-PKCS1-v1_5 is deterministic.
    let key = load_jwk(A2_JWK);
    let (signing_input, sig) = A2_TOKEN.rsplit_once('.').expect("three segments");
    let ours = key
        .sign(Algorithm::RS256, signing_input.as_bytes())
        .expect("RSA key signs");
    assert_eq!(b64_encode(&ours), sig);
}

#[test]
fn rfc7515_a3_es256_verifies_and_expires() {
    let key = load_jwk(A3_JWK);
    assert_eq!(key.family(), KeyFamily::P256);
    check_rfc7515_token(A3_TOKEN, set_of(key));
    check_rfc7515_token(A3_TOKEN, set_of(public_only(A3_JWK)));
}

/// The key loaded from each RFC private JWK signs tokens that verify (with
/// the private key set and with the public key alone).
#[test]
fn rfc_private_jwks_sign_tokens_that_verify() {
    for (jwk, alg) in [
        (A1_JWK, Algorithm::HS256),
        (A2_JWK, Algorithm::RS256),
        (A3_JWK, Algorithm::ES256),
        (ED25519_JWK, Algorithm::EdDSA),
    ] {
        let key = load_jwk(jwk);
        assert_eq!(key.signing_algorithm(), alg);
        let payload = json!({ "sub": "alice", "iss": "joe", "exp": RFC_EXP });
        let payload = serde_json::to_vec(&payload).expect("json");
        let token = jws::sign_compact(&key, Some("JWT"), &payload).expect("signs");

        let verifier_keys = if key.is_symmetric() {
            set_of(load_jwk(jwk))
        } else {
            set_of(public_only(jwk))
        };
        let p = verifier_at(verifier_keys, BEFORE_EXP)
            .verify(token.as_bytes())
            .unwrap_or_else(|e| panic!("{alg} token verifies: {e}"));
        assert_eq!(p.subject, "alice");
        assert_eq!(p.issuer.as_deref(), Some("joe"));

        // A token signed by the RFC key is not accepted by a fresh key of the same kind.
        let stranger = Key::generate(alg).expect("generate").with_kid(key.kid());
        let err = verifier_at(set_of(stranger), BEFORE_EXP)
            .verify(token.as_bytes())
            .expect_err("a different key");
        assert_eq!(err.code(), ErrorCode::InvalidSignature, "{alg}");
    }
}

/// RFC 8037 A.4: the payload is not JSON, so it is verified at the JWS layer.
#[test]
fn rfc8037_a4_ed25519_verifies_at_the_jws_layer() {
    let keys = set_of(load_jwk(ED25519_PUBLIC_JWK));
    let v = jws::verify_compact(ED25519_TOKEN.as_bytes(), &keys, &JwsPolicy::default())
        .expect("RFC 8037 JWS verifies");
    assert_eq!(v.alg, Algorithm::EdDSA);
    assert_eq!(v.typ, TypHeader::Absent);
    assert_eq!(v.payload, b"Example of Ed25519 signing");
    assert_eq!(v.key.kid(), ED25519_THUMBPRINT);

    // Through the JWT layer the same token is malformed: its payload is not claims.
    let err = verifier_at(keys, BEFORE_EXP)
        .verify(ED25519_TOKEN.as_bytes())
        .expect_err("not a JWT");
    assert_eq!(err.code(), ErrorCode::MalformedToken);
}

#[test]
fn rfc8037_a4_ed25519_signature_is_reproduced_exactly() {
    // Ed25519 is deterministic: the private JWK reproduces A.4 byte for byte.
    let key = load_jwk(ED25519_JWK);
    let (signing_input, sig) = ED25519_TOKEN.rsplit_once('.').expect("three segments");
    assert_eq!(
        signing_input,
        format!(
            "{}.{}",
            b64_encode(br#"{"alg":"EdDSA"}"#),
            b64_encode(b"Example of Ed25519 signing")
        )
    );
    let ours = key
        .sign(Algorithm::EdDSA, signing_input.as_bytes())
        .expect("Ed25519 key signs");
    assert_eq!(b64_encode(&ours), sig);
}

#[test]
fn rfc8037_a4_tampered_payload_is_rejected() {
    let keys = set_of(load_jwk(ED25519_PUBLIC_JWK));
    let tampered = ED25519_TOKEN.replace(
        "RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc",
        &b64_encode(b"Example of Ed25519 signinG"),
    );
    let err = jws::verify_compact(tampered.as_bytes(), &keys, &JwsPolicy::default())
        .expect_err("payload changed");
    assert_eq!(err, TokenError::InvalidSignature);
}

#[test]
fn rfc8037_a3_thumbprint() {
    assert_eq!(
        load_jwk(ED25519_PUBLIC_JWK).thumbprint(),
        ED25519_THUMBPRINT
    );
    assert_eq!(load_jwk(ED25519_JWK).thumbprint(), ED25519_THUMBPRINT);
}

#[test]
fn rfc7638_thumbprint_example() {
    let key = load_jwk(RFC7638_JWK);
    assert_eq!(key.thumbprint(), RFC7638_THUMBPRINT);
    // The JWK's own kid is kept; the thumbprint does not depend on it.
    assert_eq!(key.kid(), "2011-04-29");
    assert_eq!(key.pinned_algorithm(), Some(Algorithm::RS256));

    // Without a kid, the thumbprint becomes the kid.
    let mut object: serde_json::Map<String, Value> =
        serde_json::from_str(RFC7638_JWK).expect("json");
    object.remove("kid");
    let bare = key_from_jwk_json(&serde_json::to_vec(&object).expect("json")).expect("loads");
    assert_eq!(bare.kid(), RFC7638_THUMBPRINT);

    // The same key from its components gives the same thumbprint, leading zero or not.
    let n = b64_decode(object["n"].as_str().expect("n").as_bytes()).expect("b64");
    let mut padded = vec![0u8];
    padded.extend_from_slice(&n);
    for modulus in [&n, &padded] {
        let k = Key::rsa_public(modulus, &[1, 0, 1], None).expect("2048-bit key");
        assert_eq!(k.thumbprint(), RFC7638_THUMBPRINT);
    }
}

/// Drops the private members of an RFC JWK.
fn public_only(jwk: &str) -> Key {
    let mut object: serde_json::Map<String, Value> = serde_json::from_str(jwk).expect("json");
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        object.remove(private);
    }
    let key = key_from_jwk_json(&serde_json::to_vec(&object).expect("json")).expect("loads");
    assert!(!key.can_sign());
    key
}
