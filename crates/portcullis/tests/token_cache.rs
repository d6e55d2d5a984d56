//! The verified-token cache skips signatures on a hit but never expiry,
//! revocation or key removal.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use portcullis::{AuthError, CachedVerifier, RevocationHook, TokenCacheConfig};
use portcullis_core::{
    AccessRequest, Algorithm, ErrorCode, IssuerConfig, Key, KeySet, ManualClock, Principal,
    SecretHasher, TokenIssuer, Validation, Verifier,
};

/// Drives a future that never waits on I/O.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("future unexpectedly pending"),
    }
}

struct Fixture {
    keys: KeySet,
    clock: Arc<ManualClock>,
    issuer: TokenIssuer,
}

fn fixture() -> Fixture {
    let mut keys = KeySet::new();
    keys.insert(Key::generate(Algorithm::ES256).expect("key").with_kid("k1"))
        .expect("insert");
    let clock = Arc::new(ManualClock::at_unix_seconds(1_800_000_000));
    let issuer = TokenIssuer::new(
        keys.clone(),
        IssuerConfig::new("iss"),
        SecretHasher::new(&[1; 32]).expect("pepper"),
    )
    .with_clock(clock.clone());
    Fixture {
        keys,
        clock,
        issuer,
    }
}

fn token(f: &Fixture, sub: &str) -> String {
    let req = AccessRequest {
        subject: sub.into(),
        session_id: Some(format!("sid-{sub}")),
        ..AccessRequest::default()
    };
    f.issuer.issue_access(&req).expect("issue").token
}

fn verifier(f: &Fixture) -> Verifier {
    Verifier::new(f.keys.clone(), Validation::new().with_issuer("iss")).with_clock(f.clock.clone())
}

#[derive(Default)]
struct CountingHook {
    calls: AtomicUsize,
    revoked_sid: std::sync::Mutex<Option<String>>,
}

impl RevocationHook for CountingHook {
    async fn check(&self, p: &Principal) -> Result<(), ErrorCode> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let revoked = self.revoked_sid.lock().map(|g| g.clone()).unwrap_or(None);
        if revoked.is_some() && p.session_id == revoked {
            return Err(ErrorCode::SessionRevoked);
        }
        Ok(())
    }
}

#[test]
fn a_repeated_token_is_served_from_the_cache() {
    let f = fixture();
    let t = token(&f, "alice");
    let cache = CachedVerifier::new(verifier(&f), TokenCacheConfig::default());
    let first = ready(cache.verify(t.as_bytes())).expect("valid");
    let second = ready(cache.verify(t.as_bytes())).expect("valid");
    assert!(
        Arc::ptr_eq(&first, &second),
        "second call must be a cache hit"
    );
    assert_eq!(second.subject, "alice");
}

#[test]
fn expiry_is_checked_on_every_hit() {
    let f = fixture();
    let t = token(&f, "bob");
    let cache = CachedVerifier::new(verifier(&f), TokenCacheConfig::default());
    ready(cache.verify(t.as_bytes())).expect("valid");
    // 15 min lifetime + 30 s leeway.
    f.clock.advance(Duration::from_secs(15 * 60 + 29));
    ready(cache.verify(t.as_bytes())).expect("still within leeway");
    f.clock.advance(Duration::from_secs(2));
    let err = ready(cache.verify(t.as_bytes())).expect_err("expired");
    assert_eq!(err.code(), ErrorCode::TokenExpired);
}

#[test]
fn revocation_hooks_run_on_hits_too() {
    let f = fixture();
    let t = token(&f, "carol");
    let hook = Arc::new(CountingHook::default());
    let cache = CachedVerifier::with_hook(verifier(&f), TokenCacheConfig::default(), hook.clone());
    ready(cache.verify(t.as_bytes())).expect("valid");
    ready(cache.verify(t.as_bytes())).expect("valid");
    assert_eq!(hook.calls.load(Ordering::SeqCst), 2);
    *hook.revoked_sid.lock().expect("lock") = Some("sid-carol".into());
    let err = ready(cache.verify(t.as_bytes())).expect_err("revoked");
    assert_eq!(err, AuthError::Revoked(ErrorCode::SessionRevoked));
    assert_eq!(err.code().as_str(), "auth.session_revoked");
}

#[test]
fn removing_a_key_invalidates_its_cached_tokens() {
    let f = fixture();
    let t = token(&f, "dave");
    let cache = CachedVerifier::new(verifier(&f), TokenCacheConfig::default());
    ready(cache.verify(t.as_bytes())).expect("valid");

    // Adding a key keeps existing entries valid.
    let mut rotated = f.keys.clone();
    rotated
        .insert(Key::generate(Algorithm::ES256).expect("key").with_kid("k2"))
        .expect("insert");
    rotated.set_active("k2").expect("active");
    cache.replace_keys(rotated.clone());
    ready(cache.verify(t.as_bytes())).expect("old key still verifies");

    rotated.remove("k1").expect("present");
    cache.replace_keys(rotated);
    let err = ready(cache.verify(t.as_bytes())).expect_err("key removed");
    assert_eq!(err.code(), ErrorCode::UnknownKey);
}

#[test]
fn a_tampered_token_is_never_served_from_the_cache() {
    let f = fixture();
    let t = token(&f, "erin");
    let cache = CachedVerifier::new(verifier(&f), TokenCacheConfig::default());
    ready(cache.verify(t.as_bytes())).expect("valid");
    let mut bad = t.into_bytes();
    let last = bad.len() - 2;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    assert!(ready(cache.verify(&bad)).is_err());
}

#[test]
fn the_cache_is_bounded() {
    let f = fixture();
    let cache = CachedVerifier::new(
        verifier(&f),
        TokenCacheConfig {
            max_entries: 16,
            ..TokenCacheConfig::default()
        },
    );
    for i in 0..200 {
        let t = token(&f, &format!("user{i}"));
        ready(cache.verify(t.as_bytes())).expect("valid");
    }
    // moka evicts asynchronously; after maintenance the bound holds.
    for _ in 0..10 {
        let t = token(&f, "probe");
        ready(cache.verify(t.as_bytes())).expect("valid");
    }
    assert!(cache.len() <= 32, "cache holds {} entries", cache.len());
}

/// Item 5 (issue 12): the bound is in bytes, whatever the entry count allows.
#[test]
fn the_cache_is_bounded_in_bytes() {
    let f = fixture();
    let max_bytes = 64 * 1024;
    let cache = CachedVerifier::new(
        verifier(&f),
        TokenCacheConfig {
            max_bytes,
            max_entries: 100_000,
            ..TokenCacheConfig::default()
        },
    );
    for i in 0..100 {
        let mut req = AccessRequest {
            subject: format!("user{i}"),
            ..AccessRequest::default()
        };
        req.claims
            .insert("blob".into(), serde_json::json!("x".repeat(3000)));
        let t = f.issuer.issue_access(&req).expect("issue").token;
        ready(cache.verify(t.as_bytes())).expect("valid");
    }
    let held = cache.weighted_bytes();
    assert!(held <= max_bytes, "cache holds {held} bytes");
    assert!(cache.len() < 20, "cache holds {} entries", cache.len());
}

/// Item 3 (issue 12): the stores' denylist refuses a token through the
/// cached verifier, on a miss and on a hit.
#[tokio::test]
async fn a_denied_jti_is_refused_through_the_cached_verifier() {
    use portcullis::stores::memory::MemoryStores;
    use portcullis::stores::{Backends, Stores, StoresConfig, hook::StoresRevocation};
    let f = fixture();
    let mut config = StoresConfig::new(SecretHasher::new(&[5u8; 32]).expect("pepper"));
    config.revocation_cache_ttl = Duration::ZERO;
    let stores = Arc::new(
        Stores::new(Backends::all(Arc::new(MemoryStores::new())), config).expect("stores"),
    );
    let cache = CachedVerifier::with_hook(
        verifier(&f),
        TokenCacheConfig::default(),
        StoresRevocation::new(stores.clone()),
    );
    let issue = |sub: &str| {
        f.issuer
            .issue_access(&AccessRequest {
                subject: sub.into(),
                ..AccessRequest::default()
            })
            .expect("issue")
    };
    let (denied, kept) = (issue("mallory"), issue("alice"));
    cache.verify(denied.token.as_bytes()).await.expect("valid");
    stores
        .revoke_jti(&denied.jti, 4_000_000_000)
        .await
        .expect("revoke");
    let err = cache.verify(denied.token.as_bytes()).await.unwrap_err();
    assert_eq!(err, AuthError::Revoked(ErrorCode::TokenRevoked));
    assert_eq!(err.code().as_str(), "auth.token_revoked");
    cache.verify(kept.token.as_bytes()).await.expect("valid");

    // The same through the boxed form a non-generic holder keeps.
    let boxed: Arc<dyn portcullis::DynRevocationHook> =
        Arc::new(StoresRevocation::new(stores.clone()));
    let cache = CachedVerifier::with_hook(verifier(&f), TokenCacheConfig::default(), boxed);
    let err = cache.verify(denied.token.as_bytes()).await.unwrap_err();
    assert_eq!(err, AuthError::Revoked(ErrorCode::TokenRevoked));
    cache.verify(kept.token.as_bytes()).await.expect("valid");
}
