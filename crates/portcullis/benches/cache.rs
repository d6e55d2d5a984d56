//! Verified-token cache: a hit against a full ES256 verification.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::{CachedVerifier, TokenCacheConfig};
use portcullis_core::{
    AccessRequest, Algorithm, IssuerConfig, Key, KeySet, ManualClock, SecretHasher, TokenIssuer,
    Validation, Verifier,
};

/// Drives a future that never waits (`NoRevocation` is always ready).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("future unexpectedly pending"),
    }
}

fn bench_cache(c: &mut Criterion) {
    let mut keys = KeySet::new();
    keys.insert(Key::generate(Algorithm::ES256).expect("key"))
        .expect("insert");
    let keys = Arc::new(keys);
    let clock = Arc::new(ManualClock::at_unix_seconds(1_800_000_000));
    let issuer = TokenIssuer::new(
        Arc::clone(&keys),
        IssuerConfig::new("https://issuer.example"),
        SecretHasher::new(&[9; 32]).expect("pepper"),
    )
    .with_clock(clock.clone());
    let mut req = AccessRequest {
        subject: "user-1234567890".into(),
        session_id: Some("sess-abcdef".into()),
        ..AccessRequest::default()
    };
    req.claims
        .insert("roles".into(), serde_json::json!(["admin", "billing"]));
    req.claims
        .insert("tenant".into(), serde_json::json!("acme"));
    let token = issuer.issue_access(&req).expect("issue").token;
    let verifier = Verifier::new(
        keys,
        Validation::new().with_issuer("https://issuer.example"),
    )
    .with_clock(clock);
    let cached = CachedVerifier::new(verifier, TokenCacheConfig::default());
    assert!(ready(cached.verify(token.as_bytes())).is_ok());
    c.bench_function("cache/hit ES256", |b| {
        b.iter(|| ready(cached.verify(black_box(token.as_bytes()))))
    });
    let plain = cached.verifier();
    c.bench_function("cache/miss-equivalent full ES256 verify", |b| {
        b.iter(|| plain.verify(black_box(token.as_bytes())))
    });
}

criterion_group!(benches, bench_cache);
criterion_main!(benches);
