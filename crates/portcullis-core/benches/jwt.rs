//! Token verification against the raw aws-lc-rs signature check over the
//! same bytes, and access-token issuance. Report ratios from one run.

use std::hint::black_box;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::hmac;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, ParsedPublicKey, RsaKeyPair,
};
use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_core::jose::b64_decode;
use portcullis_core::{
    AccessRequest, Algorithm, IssuerConfig, Key, KeySet, ManualClock, SecretHasher, TokenIssuer,
    Validation, Verifier,
};
use serde_json::json;

enum Raw {
    Public(ParsedPublicKey),
    Hmac(Box<hmac::Key>),
}

impl Raw {
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            Raw::Public(k) => k.verify_sig(msg, sig).is_ok(),
            Raw::Hmac(k) => hmac::verify(k, msg, sig).is_ok(),
        }
    }
}

fn key_pair(alg: Algorithm) -> (Key, Raw) {
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => {
            let kp = RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa");
            let pkcs8 = kp.as_der().expect("der");
            let key = Key::from_pkcs8(pkcs8.as_ref(), Some(alg)).expect("key");
            let params = if alg == Algorithm::RS256 {
                &signature::RSA_PKCS1_2048_8192_SHA256
            } else {
                &signature::RSA_PSS_2048_8192_SHA256
            };
            let raw = ParsedPublicKey::new(params, kp.public_key().as_ref()).expect("raw");
            (key, Raw::Public(raw))
        }
        Algorithm::ES256 => {
            let kp =
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec");
            let pkcs8 = kp.to_pkcs8v1().expect("der");
            let key = Key::from_pkcs8(pkcs8.as_ref(), Some(alg)).expect("key");
            let raw = ParsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_FIXED,
                kp.public_key().as_ref(),
            )
            .expect("raw");
            (key, Raw::Public(raw))
        }
        Algorithm::EdDSA => {
            let kp = Ed25519KeyPair::generate().expect("ed");
            let pkcs8 = kp.to_pkcs8().expect("der");
            let key = Key::from_pkcs8(pkcs8.as_ref(), Some(alg)).expect("key");
            let raw =
                ParsedPublicKey::new(&signature::ED25519, kp.public_key().as_ref()).expect("raw");
            (key, Raw::Public(raw))
        }
        _ => {
            let secret = [7u8; 32];
            let key = Key::hmac(&secret, Some(Algorithm::HS256)).expect("key");
            (
                key,
                Raw::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA256, &secret))),
            )
        }
    }
}

const NOW: u64 = 1_800_000_000;

/// The ~10-claim access token every benchmark uses.
fn request() -> AccessRequest {
    let mut req = AccessRequest {
        subject: "user-1234567890".into(),
        session_id: Some("sess-abcdef".into()),
        ..AccessRequest::default()
    };
    req.claims
        .insert("roles".into(), json!(["admin", "billing"]));
    req.claims.insert("tenant".into(), json!("acme"));
    req
}

/// An issuer and verifier pair sharing one key, with a ~10-claim token.
fn setup(alg: Algorithm) -> (TokenIssuer, Verifier, String, Raw) {
    let (key, raw) = key_pair(alg);
    let mut keys = KeySet::new();
    keys.insert(key).expect("insert");
    let keys = Arc::new(keys);
    let clock = Arc::new(ManualClock::at_unix_seconds(NOW));
    let mut config = IssuerConfig::new("https://issuer.example");
    config.audience = vec!["api".into()];
    let issuer = TokenIssuer::new(
        Arc::clone(&keys),
        config,
        SecretHasher::new(&[9; 32]).expect("pepper"),
    )
    .with_clock(clock.clone());
    let token = issuer.issue_access(&request()).expect("issue").token;
    let verifier = Verifier::new(
        keys,
        Validation::new()
            .with_issuer("https://issuer.example")
            .with_audience("api"),
    )
    .with_clock(clock);
    (issuer, verifier, token, raw)
}

fn bench_verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    for alg in [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
        Algorithm::HS256,
    ] {
        let (_issuer, verifier, token, raw) = setup(alg);
        let dot = token.rfind('.').expect("three segments");
        let signing_input = token.as_bytes()[..dot].to_vec();
        let sig = b64_decode(&token.as_bytes()[dot + 1..]).expect("sig");
        assert!(raw.verify(&signing_input, &sig), "raw check must pass");
        assert!(
            verifier.verify(token.as_bytes()).is_ok(),
            "token must verify"
        );
        group.bench_function(format!("{alg}/portcullis"), |b| {
            b.iter(|| verifier.verify(black_box(token.as_bytes())))
        });
        group.bench_function(format!("{alg}/raw-aws-lc-rs"), |b| {
            b.iter(|| raw.verify(black_box(&signing_input), black_box(&sig)))
        });
    }
    group.finish();
}

fn bench_issue(c: &mut Criterion) {
    let (issuer, _verifier, _token, _raw) = setup(Algorithm::ES256);
    let req = request();
    c.bench_function("issue/ES256 access token", |b| {
        b.iter(|| issuer.issue_access(black_box(&req)))
    });
}

criterion_group!(benches, bench_verify, bench_issue);
criterion_main!(benches);
