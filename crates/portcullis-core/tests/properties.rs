//! Property tests: issued tokens always verify (all 12 algorithms), and no
//! single-byte change to a valid token is ever accepted.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use portcullis_core::jwt::issue::RESERVED_CLAIMS;
use portcullis_core::{
    AccessRequest, Algorithm, ErrorCode, IssuerConfig, Key, KeySet, ManualClock, SecretHasher,
    TokenIssuer, Validation, Verifier,
};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value};

const NOW: u64 = 1_700_000_000;
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "api";

/// A signing key set and the matching verification key set.
struct Pair {
    signing: Arc<KeySet>,
    verifying: Arc<KeySet>,
}

fn one(key: Key) -> Arc<KeySet> {
    let mut set = KeySet::new();
    set.insert(key).expect("fresh set");
    Arc::new(set)
}

/// The public half of an asymmetric key (through its PKCS#8 PEM and a JWKS export).
fn public_half(key: &Key) -> Key {
    let mut set = KeySet::new();
    let pem = key.private_pkcs8_pem().expect("asymmetric private key");
    set.insert(Key::from_pem(pem.as_bytes(), key.pinned_algorithm()).expect("PEM loads"))
        .expect("fresh set");
    let jwks = serde_json::to_vec(&set.public_jwks()).expect("json");
    let (public, warnings) = KeySet::from_jwks_json(&jwks).expect("JWKS loads");
    assert!(warnings.is_empty());
    let key = public.iter().next().expect("one key");
    let jwk = serde_json::to_vec(&portcullis_core::jose::jwk::public_jwk(key).expect("asymmetric"))
        .expect("json");
    let key = portcullis_core::jose::jwk::key_from_jwk_json(&jwk).expect("JWK loads");
    assert!(!key.can_sign());
    key
}

/// One key pair per algorithm, generated once (RSA generation is slow: one
/// RSA key serves all six RSA algorithms, pinned to each).
fn pairs() -> &'static BTreeMap<Algorithm, Pair> {
    static PAIRS: OnceLock<BTreeMap<Algorithm, Pair>> = OnceLock::new();
    PAIRS.get_or_init(|| {
        let rsa_pem = Key::generate(Algorithm::RS256)
            .expect("RSA generation")
            .private_pkcs8_pem()
            .expect("PKCS#8");
        let mut secret = [0u8; 64];
        aws_lc_rs::rand::fill(&mut secret).expect("random");
        Algorithm::ALL
            .into_iter()
            .map(|alg| {
                let pair = match alg.name().as_bytes()[0] {
                    b'H' => Pair {
                        signing: one(Key::hmac(&secret, Some(alg)).expect("secret")),
                        verifying: one(Key::hmac(&secret, Some(alg)).expect("secret")),
                    },
                    b'R' | b'P' => {
                        let key = Key::from_pem(rsa_pem.as_bytes(), Some(alg)).expect("RSA");
                        let public = public_half(&key);
                        Pair {
                            signing: one(key),
                            verifying: one(public),
                        }
                    }
                    _ => {
                        let key = Key::generate(alg).expect("generation");
                        let public = public_half(&key);
                        Pair {
                            signing: one(key),
                            verifying: one(public),
                        }
                    }
                };
                (alg, pair)
            })
            .collect()
    })
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::at_unix_seconds(NOW))
}

fn issuer(alg: Algorithm) -> TokenIssuer {
    let mut config = IssuerConfig::new(ISSUER);
    config.audience = vec![AUDIENCE.into()];
    TokenIssuer::new(
        Arc::clone(&pairs()[&alg].signing),
        config,
        SecretHasher::new(&[7; 32]).expect("pepper"),
    )
    .with_clock(clock())
}

fn verifier(alg: Algorithm) -> Verifier {
    let validation = Validation::new()
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE);
    Verifier::new(Arc::clone(&pairs()[&alg].verifying), validation).with_clock(clock())
}

fn custom_claims() -> impl Strategy<Value = Map<String, Value>> {
    let name = "[a-z][a-z0-9_:]{0,11}"
        .prop_filter("reserved claim", |n| !RESERVED_CLAIMS.contains(&n.as_str()));
    let value = "(?s).{0,24}".prop_map(Value::String);
    prop::collection::btree_map(name, value, 0..6).prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(Config { cases: 256, ..Config::default() })]

    /// Whatever the subject, claims and algorithm, an issued token verifies with
    /// the matching key set and gives back the same subject and claims.
    #[test]
    fn issued_tokens_verify(
        alg in prop::sample::select(Algorithm::ALL.to_vec()),
        subject in "(?s).{1,48}",
        claims in custom_claims(),
    ) {
        let issued = issuer(alg)
            .issue_access(&AccessRequest {
                subject: subject.clone(),
                claims: claims.clone(),
                ..AccessRequest::default()
            })
            .expect("issues");
        let verified = verifier(alg)
            .verify_detailed(issued.token.as_bytes())
            .unwrap_or_else(|e| panic!("{alg} token rejected: {e:?}"));
        let p = verified.principal;
        prop_assert_eq!(&p.subject, &subject);
        prop_assert_eq!(p.issuer.as_deref(), Some(ISSUER));
        prop_assert_eq!(p.token_id.as_deref(), Some(issued.jti.as_str()));
        prop_assert_eq!(p.expires_at, Some(issued.expires_at));
        prop_assert_eq!(issued.expires_at, NOW as i64 + 15 * 60);
        prop_assert_eq!(verified.key.signing_algorithm(), alg);
        for (name, value) in &claims {
            prop_assert_eq!(p.claims.get(name), Some(value.clone()), "claim {}", name);
        }
        prop_assert_eq!(p.claims.get("type"), Some(Value::from("access")));

        // Another algorithm's keys never accept it.
        let other = Algorithm::ALL[(Algorithm::ALL.iter().position(|a| *a == alg).expect("listed") + 1) % 12];
        let err = verifier(other).verify(issued.token.as_bytes()).expect_err("foreign key set");
        prop_assert!(
            matches!(err.code(), ErrorCode::UnknownKey | ErrorCode::UnsupportedAlgorithm | ErrorCode::InvalidSignature),
            "{:?}", err
        );
    }
}

/// The algorithms whose tokens are mutated.
const MUTATED: [Algorithm; 4] = [
    Algorithm::ES256,
    Algorithm::EdDSA,
    Algorithm::HS256,
    Algorithm::RS256,
];

/// One valid token per mutated algorithm.
fn valid_tokens() -> &'static BTreeMap<Algorithm, Vec<u8>> {
    static TOKENS: OnceLock<BTreeMap<Algorithm, Vec<u8>>> = OnceLock::new();
    TOKENS.get_or_init(|| {
        MUTATED
            .into_iter()
            .map(|alg| {
                let mut claims = Map::new();
                claims.insert("roles".into(), Value::from(vec!["admin", "user"]));
                let token = issuer(alg)
                    .issue_access(&AccessRequest {
                        subject: "alice".into(),
                        session_id: Some("s1".into()),
                        claims,
                        ..AccessRequest::default()
                    })
                    .expect("issues")
                    .token;
                verifier(alg)
                    .verify(token.as_bytes())
                    .expect("the unmodified token verifies");
                (alg, token.into_bytes())
            })
            .collect()
    })
}

/// A mutated token must fail before any claim is looked at: only structural,
/// algorithm, key or signature errors can be reported.
fn assert_rejected(alg: Algorithm, token: &[u8], what: &str) -> Result<(), TestCaseError> {
    match verifier(alg).verify(token) {
        Ok(p) => Err(TestCaseError::fail(format!(
            "{alg}: {what} accepted (subject {:?}): {}",
            p.subject,
            String::from_utf8_lossy(token)
        ))),
        Err(e) => {
            prop_assert!(
                matches!(
                    e.code(),
                    ErrorCode::MalformedToken
                        | ErrorCode::UnsupportedAlgorithm
                        | ErrorCode::UnknownKey
                        | ErrorCode::InvalidSignature
                ),
                "{}: {} gave {:?}",
                alg,
                what,
                e
            );
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(Config { cases: 1024, ..Config::default() })]

    /// Any single byte replaced by any other value is rejected.
    #[test]
    fn any_single_byte_change_is_rejected(
        alg in prop::sample::select(MUTATED.to_vec()),
        position in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut token = valid_tokens()[&alg].clone();
        let i = position.index(token.len());
        prop_assume!(token[i] != value);
        let was = token[i];
        token[i] = value;
        assert_rejected(alg, &token, &format!("byte {i} {was:#04x} -> {value:#04x}"))?;
    }
}

/// Deterministic sweep: every position, a fixed set of replacement bytes.
#[test]
fn every_position_with_chosen_bytes_is_rejected() {
    for alg in MUTATED {
        let original = &valid_tokens()[&alg];
        for i in 0..original.len() {
            let was = original[i];
            for value in [
                was ^ 0x01,
                was ^ 0x20,
                b'.',
                b'A',
                b'=',
                b'+',
                0x00,
                0x80,
                0xff,
            ] {
                if value == was {
                    continue;
                }
                let mut token = original.clone();
                token[i] = value;
                assert_rejected(alg, &token, &format!("byte {i} {was:#04x} -> {value:#04x}"))
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        // Truncation at any length, and one extra byte, are rejected as well.
        for len in 0..original.len() {
            assert_rejected(alg, &original[..len], &format!("truncated to {len}"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for extra in [b'A', b'.', b'='] {
            let mut token = original.clone();
            token.push(extra);
            assert_rejected(alg, &token, "extended").unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
