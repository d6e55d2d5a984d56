//! Runtime authorization: custom async policies on top of route rules, and
//! signed service requests with replay protection (memory and real Redis).

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis::authz::{
    Authorizer, BoxFuture, FnPolicy, MemoryNonceStore, NonceStore, Policy,
    SignedRequestAuthenticator, SignedRequestError, signature_headers,
};
use portcullis_core::authz::signed_request::{self, SignatureError, SignatureHeaders, SignedParts};
use portcullis_core::authz::{
    AuthzConfig, AuthzConfigError, Effect, Reason, RequestFacts, RouteRule,
};
use portcullis_core::{AuthMethod, Clock, ErrorCode, ManualClock, Principal};

/// An async policy: only principals whose subject a (simulated) directory
/// lookup marks as active.
struct ActiveInDirectory;

impl Policy for ActiveInDirectory {
    fn allows<'a>(
        &'a self,
        principal: Option<&'a Principal>,
        _facts: &'a RequestFacts<'a>,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            principal.is_some_and(|p| !p.subject.starts_with("suspended-"))
        })
    }
}

fn config() -> AuthzConfig {
    AuthzConfig {
        roles: vec![],
        rules: vec![
            RouteRule::allow("reports", "/reports/**")
                .policy("active")
                .policy("weekday-header"),
            RouteRule::allow("open", "/open").anonymous(),
        ],
        default: Effect::Deny,
    }
}

#[tokio::test]
async fn custom_async_policies_run_after_the_rule_and_name_themselves() {
    let authz = Authorizer::builder(config())
        .policy("active", ActiveInDirectory)
        .policy(
            "weekday-header",
            FnPolicy(|_: Option<&Principal>, f: &RequestFacts<'_>| f.method != "DELETE"),
        )
        .build()
        .unwrap();
    let alice = Principal::new("alice", AuthMethod::Jwt);
    let get = RequestFacts::new("GET", "/reports/q3");
    let d = authz.authorize(Some(&alice), &get).await;
    assert!(d.allowed, "{d:?}");
    let suspended = Principal::new("suspended-bob", AuthMethod::Jwt);
    let d = authz.authorize(Some(&suspended), &get).await;
    assert!(!d.allowed);
    assert_eq!(
        (d.rule, d.reason),
        (Some("reports"), Reason::Policy("active"))
    );
    assert_eq!(d.code(), Some(ErrorCode::Denied));
    let d = authz
        .authorize(Some(&alice), &RequestFacts::new("DELETE", "/reports/q3"))
        .await;
    assert_eq!(d.reason, Reason::Policy("weekday-header"));
    // Policies never run for requests the rule already denies.
    let d = authz.authorize(None, &get).await;
    assert_eq!(d.reason, Reason::Unauthenticated);
    assert!(
        authz
            .authorize(None, &RequestFacts::new("GET", "/open"))
            .await
            .allowed
    );
}

#[test]
fn an_unregistered_policy_is_a_configuration_error() {
    let err = Authorizer::builder(config())
        .policy("active", ActiveInDirectory)
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        AuthzConfigError::Rule { ref rule, field: "require.policies", ref message }
            if rule == "reports" && message.contains("weekday-header")
    ));
}

const SECRET: &[u8] = b"s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t!";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn nonce() -> String {
    let mut b = [0u8; 16];
    portcullis_core::opaque::fill_random(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Signed {
    timestamp: String,
    nonce: String,
    signature: String,
}

impl Signed {
    fn new(ts: u64, parts: &SignedParts<'_>) -> Self {
        let nonce = nonce();
        let signature = signed_request::sign(SECRET, "billing", ts as i64, &nonce, parts);
        Self {
            timestamp: ts.to_string(),
            nonce,
            signature,
        }
    }

    fn headers(&self) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("x-portcullis-app", "billing".parse().unwrap());
        h.insert("x-portcullis-timestamp", self.timestamp.parse().unwrap());
        h.insert("x-portcullis-nonce", self.nonce.parse().unwrap());
        h.insert("x-portcullis-signature", self.signature.parse().unwrap());
        h
    }
}

const PARTS: SignedParts<'static> = SignedParts {
    method: "POST",
    path: "/internal/charges",
    query: "currency=eur&amount=12",
    body: br#"{"customer":"c_1"}"#,
};

async fn replay_suite<N: NonceStore>(
    replicas: [&SignedRequestAuthenticator<N>; 2],
    clock: &ManualClock,
) {
    let ts = clock.unix_seconds() as u64;
    let req = Signed::new(ts, &PARTS);
    let map = req.headers();
    let p = replicas[0]
        .authenticate(&signature_headers(&map), &PARTS)
        .await
        .unwrap();
    assert_eq!(
        (p.subject.as_str(), p.auth_method),
        ("billing", AuthMethod::SignedRequest)
    );
    // The same request again, on either replica, is a replay.
    for r in replicas {
        let err = r
            .authenticate(&signature_headers(&map), &PARTS)
            .await
            .unwrap_err();
        assert_eq!(err, SignedRequestError::Signature(SignatureError::Replayed));
        assert_eq!(err.code(), ErrorCode::InvalidSignatureRequest);
        assert_eq!(err.code().as_str(), "auth.invalid_signature_request");
    }
    // Outside the 5-minute window: refused even with a fresh nonce.
    let old = Signed::new(ts - 301, &PARTS);
    let err = replicas[1]
        .authenticate(&signature_headers(&old.headers()), &PARTS)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SignedRequestError::Signature(SignatureError::OutsideWindow)
    );
    let future = Signed::new(ts + 301, &PARTS);
    let err = replicas[1]
        .authenticate(&signature_headers(&future.headers()), &PARTS)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SignedRequestError::Signature(SignatureError::OutsideWindow)
    );
    // Within the window, with a fresh nonce: accepted.
    let edge = Signed::new(ts - 299, &PARTS);
    replicas[1]
        .authenticate(&signature_headers(&edge.headers()), &PARTS)
        .await
        .unwrap();
    // A tampered body does not verify, and does not spend the nonce.
    let fresh = Signed::new(ts, &PARTS);
    let tampered = SignedParts {
        body: br#"{"customer":"c_2"}"#,
        ..PARTS
    };
    let err = replicas[0]
        .authenticate(&signature_headers(&fresh.headers()), &tampered)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SignedRequestError::Signature(SignatureError::BadSignature)
    );
    replicas[0]
        .authenticate(&signature_headers(&fresh.headers()), &PARTS)
        .await
        .unwrap();
    // An unknown app and a missing header are refused with the same code.
    let mut stranger = fresh.headers();
    stranger.insert("x-portcullis-app", "mallory".parse().unwrap());
    let err = replicas[0]
        .authenticate(&signature_headers(&stranger), &PARTS)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidSignatureRequest);
    let err = replicas[0]
        .authenticate(&SignatureHeaders::default(), &PARTS)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SignedRequestError::Signature(SignatureError::Missing("x-portcullis-app"))
    );
}

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::at_unix_seconds(now_secs()))
}

#[tokio::test]
async fn signed_requests_replay_and_window_in_memory() {
    let clock = manual_clock();
    let auth = SignedRequestAuthenticator::new(MemoryNonceStore::default())
        .with_app("billing", SECRET)
        .unwrap()
        .with_clock(clock.clone() as Arc<dyn Clock>);
    replay_suite([&auth, &auth], &clock).await;
    assert!(
        SignedRequestAuthenticator::new(MemoryNonceStore::default())
            .with_app("weak", b"short")
            .is_err()
    );
    // An app can carry grants that route rules then check.
    let mut app = Principal::new("billing", AuthMethod::Jwt);
    app.permissions = vec!["internal.charges.*".into()];
    let auth = SignedRequestAuthenticator::new(MemoryNonceStore::default())
        .with_app_principal(SECRET, app)
        .unwrap()
        .with_clock(clock.clone() as Arc<dyn Clock>);
    let req = Signed::new(clock.unix_seconds() as u64, &PARTS);
    let p = auth
        .authenticate(&signature_headers(&req.headers()), &PARTS)
        .await
        .unwrap();
    assert_eq!(p.auth_method, AuthMethod::SignedRequest);
    let authz = Authorizer::builder(AuthzConfig {
        roles: vec![],
        rules: vec![
            RouteRule::allow("charges", "/internal/charges")
                .auth_methods([AuthMethod::SignedRequest])
                .permissions_all(["internal.charges.create"]),
        ],
        default: Effect::Deny,
    })
    .build()
    .unwrap();
    let facts = RequestFacts::new(PARTS.method, PARTS.path);
    assert!(authz.authorize(Some(&p), &facts).await.allowed);
}

#[tokio::test]
async fn a_full_memory_nonce_store_fails_closed() {
    let store = MemoryNonceStore::new(2);
    let ttl = Duration::from_secs(60);
    assert!(store.remember("a", "n1", ttl).await.unwrap());
    assert!(store.remember("a", "n2", ttl).await.unwrap());
    assert!(store.remember("a", "n3", ttl).await.is_err());
    assert!(!store.remember("a", "n1", ttl).await.unwrap());
}

#[cfg(feature = "redis")]
mod on_redis {
    use super::*;
    use portcullis::authz::RedisNonceStore;
    use portcullis::redis_conn::RedisConnection;

    async fn suite(conn: RedisConnection, prefix: &str) {
        let clock = manual_clock();
        let replica = || {
            SignedRequestAuthenticator::new(RedisNonceStore::new(conn.clone(), prefix))
                .with_app("billing", SECRET)
                .unwrap()
                .with_clock(clock.clone() as Arc<dyn Clock>)
        };
        let (a, b) = (replica(), replica());
        replay_suite([&a, &b], &clock).await;
        // The nonce key expires with the window (twice the window, both sides of now).
        let store = RedisNonceStore::new(conn.clone(), prefix);
        assert!(
            store
                .remember("app", "nonce-ttl-check-0001", Duration::from_millis(200))
                .await
                .unwrap()
        );
        assert!(
            !store
                .remember("app", "nonce-ttl-check-0001", Duration::from_millis(200))
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            store
                .remember("app", "nonce-ttl-check-0001", Duration::from_millis(200))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn signed_request_nonces_are_shared_on_redis() {
        let Some(url) = support::redis_url() else {
            return;
        };
        let prefix = support::unique_prefix("authz");
        let conn = RedisConnection::single(&url).await.expect("connect");
        suite(conn, prefix.trim_end_matches(':')).await;
        support::redis_cleanup(&url, &prefix).await;
    }

    #[tokio::test]
    async fn signed_request_nonces_are_shared_on_redis_cluster() {
        let Some(urls) = support::redis_cluster_urls() else {
            return;
        };
        let prefix = support::unique_prefix("authz_cluster");
        let conn = RedisConnection::cluster(&urls).await.expect("connect");
        suite(conn, prefix.trim_end_matches(':')).await;
        support::redis_cluster_cleanup(&urls, &prefix).await;
    }
}
