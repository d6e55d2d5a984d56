//! `Guard::explain`: the trace of each credential source (which one is
//! present, which decides, its outcome and revocation), an assumed caller,
//! the offline form, rate counters read and never consumed, and a
//! conclusion equal to what `Guard::check` decides for the same request.

#![cfg(feature = "memory")]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use portcullis::Guard;
use portcullis::guard::{
    Checked, Conclusion, CredentialSource, ExplainOptions, Explanation, GuardConfig, RouteConfig,
};
use portcullis::stores::{Backends, NewApiKey, NewApp, NewSession, NewUser, Stores, StoresConfig};
use portcullis_core::ratelimit::RuleConfig;
use portcullis_core::{
    AccessRequest, Algorithm, AuthMethod, ErrorCode, IssuerConfig, Key, KeySet, Principal,
    SecretHasher, TokenIssuer, Validation, Verifier,
};

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));

struct H {
    guard: Guard,
    stores: Arc<Stores>,
    issuer: TokenIssuer,
    user_id: String,
}

fn config() -> GuardConfig {
    GuardConfig::default()
        .rate_limit(RuleConfig {
            name: "two".into(),
            algorithm: "fixed_window".into(),
            rate: None,
            burst: None,
            limit: Some(2),
            period: 60.0,
            key: vec!["ip".into()],
            on_backend_error: None,
            lease: None,
        })
        .route(RouteConfig::new("any", "/any/**").credentials([
            CredentialSource::Jwt,
            CredentialSource::ApiKey,
            CredentialSource::App,
            CredentialSource::Anonymous,
        ]))
        .route(RouteConfig::new("jwt-only", "/jwt/**").credentials([CredentialSource::Jwt]))
        .route(
            RouteConfig::new("limited", "/limited")
                .credentials([CredentialSource::Anonymous])
                .rate_limits(["two"]),
        )
        .route(RouteConfig::new("signed", "/signed/**").credentials([CredentialSource::Signed]))
        .route(
            RouteConfig::new("writers", "/write/**")
                .credentials([CredentialSource::Jwt])
                .permissions(["docs.write"]),
        )
}

async fn harness() -> H {
    let hasher = SecretHasher::new(&[7; 32]).unwrap();
    let stores = Arc::new(
        Stores::new(
            Backends::all(Arc::new(portcullis::stores::memory::MemoryStores::new())),
            StoresConfig::new(hasher.clone()),
        )
        .unwrap(),
    );
    let mut keys = KeySet::new();
    keys.insert(Key::generate(Algorithm::ES256).unwrap().with_kid("k1"))
        .unwrap();
    let issuer = TokenIssuer::new(
        keys.clone(),
        IssuerConfig::new("https://issuer.test"),
        hasher,
    );
    let verifier = Verifier::new(
        keys,
        Validation::for_local_issuer(&IssuerConfig::new("https://issuer.test")),
    );
    let guard = Guard::builder(config())
        .local_keys(verifier)
        .stores(Arc::clone(&stores))
        .signed_requests(portcullis::authz::SignedRequestAuthenticator::new(
            portcullis::authz::MemoryNonceStore::new(16),
        ))
        .build()
        .unwrap();
    let user = stores
        .create_user(&NewUser {
            username: "alice".into(),
            password: Some("correct horse battery".into()),
            permissions: vec!["docs.read".into()],
            ..NewUser::default()
        })
        .await
        .unwrap();
    H {
        guard,
        stores,
        issuer,
        user_id: user.id,
    }
}

fn parts(method: &str, path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api.test");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

impl H {
    async fn token(&self) -> (String, String) {
        let session = self
            .stores
            .create_session(&NewSession {
                user_id: self.user_id.clone(),
                ttl: Duration::from_secs(3600),
                ..NewSession::default()
            })
            .await
            .unwrap();
        let issued = self
            .issuer
            .issue_access(&AccessRequest {
                subject: self.user_id.clone(),
                session_id: Some(session.id),
                ..AccessRequest::default()
            })
            .unwrap();
        (issued.token, issued.jti)
    }

    /// Explains `p` live, and checks that the guard decides the same.
    async fn explain(&self, p: &http::request::Parts, options: ExplainOptions) -> Explanation {
        let assumed = options.assume.is_some();
        let e = self.guard.explain(p, Some(PEER), options).await;
        if !assumed {
            let d = self.guard.check(p, Some(PEER)).await;
            match &e.conclusion {
                Conclusion::Allowed { .. } => assert!(d.refusal.is_none(), "{d:?} vs {e:?}"),
                Conclusion::Refused { code, .. } => {
                    assert_eq!(d.refusal.as_ref().map(|r| r.code), Some(*code), "{e:?}")
                }
                other => panic!("undetermined live: {other:?}"),
            }
        }
        e
    }
}

fn present(e: &Explanation) -> Vec<(CredentialSource, bool)> {
    e.credentials
        .sources
        .iter()
        .map(|s| (s.source, s.present))
        .collect()
}

#[tokio::test]
async fn each_credential_source_is_traced_in_order_with_its_outcome() {
    let h = harness().await;
    let (token, _) = h.token().await;
    let bearer = format!("Bearer {token}");

    // A bearer JWT: only the jwt source finds something; verified.
    let e = h
        .explain(
            &parts("GET", "/any/x", &[("authorization", &bearer)]),
            ExplainOptions::default(),
        )
        .await;
    assert_eq!(
        present(&e),
        [
            (CredentialSource::Jwt, true),
            (CredentialSource::ApiKey, false),
            (CredentialSource::App, false),
            (CredentialSource::Anonymous, false),
        ]
    );
    assert_eq!(e.credentials.presented, Some("a bearer JWT"));
    assert_eq!(e.credentials.refused, None);
    assert_eq!(e.credentials.revocation, Some(Checked::Passed));
    assert_eq!(e.principal.as_ref().unwrap().subject, h.user_id);

    // An API key as a bearer token is the api_key source's, not the jwt's.
    let key = h
        .stores
        .create_api_key(&NewApiKey {
            name: "ci".into(),
            owner: h.user_id.clone(),
            permissions: vec!["docs.write".into()],
            ..NewApiKey::default()
        })
        .await
        .unwrap();
    let key_bearer = format!("Bearer {}", key.key);
    let e = h
        .explain(
            &parts("GET", "/any/x", &[("authorization", &key_bearer)]),
            ExplainOptions::default(),
        )
        .await;
    assert_eq!(
        present(&e)[..2],
        [
            (CredentialSource::Jwt, false),
            (CredentialSource::ApiKey, true)
        ]
    );
    assert_eq!(e.credentials.presented, Some("an API key"));
    let p = e.principal.as_ref().unwrap();
    assert_eq!(p.auth_method, AuthMethod::ApiKey);
    assert_eq!(e.effective_permissions, ["docs.write"]);

    // App id and secret.
    let app = h
        .stores
        .create_app(&NewApp {
            name: "billing".into(),
            ..NewApp::default()
        })
        .await
        .unwrap();
    let id = app.record.app_id.clone();
    let e = h
        .explain(
            &parts(
                "GET",
                "/any/x",
                &[("x-app-id", &id), ("x-app-secret", &app.secret)],
            ),
            ExplainOptions::default(),
        )
        .await;
    assert_eq!(present(&e)[2], (CredentialSource::App, true));
    assert_eq!(e.credentials.presented, Some("app credentials"));
    assert_eq!(e.principal.as_ref().unwrap().subject, id);

    // Nothing presented: anonymous, allowed.
    let e = h
        .explain(&parts("GET", "/any/x", &[]), ExplainOptions::default())
        .await;
    assert_eq!(e.credentials.presented, None);
    assert_eq!(e.credentials.revocation, Some(Checked::NotApplicable));
    assert!(matches!(
        e.conclusion,
        Conclusion::Allowed {
            reason: "anonymous_allowed"
        }
    ));

    // A kind the route does not accept is named, and refused.
    let e = h
        .explain(
            &parts("GET", "/jwt/x", &[("x-api-key", &key.key)]),
            ExplainOptions::default(),
        )
        .await;
    assert_eq!(present(&e), [(CredentialSource::Jwt, false)]);
    assert_eq!(e.credentials.presented, Some("an API key"));
    assert_eq!(e.credentials.refused, Some(ErrorCode::MissingCredentials));

    // Offline, a key is not looked up: undetermined, not "invalid".
    let e = h
        .guard
        .explain(
            &parts("GET", "/any/x", &[("x-api-key", &key.key)]),
            Some(PEER),
            ExplainOptions {
                offline: true,
                ..ExplainOptions::default()
            },
        )
        .await;
    assert!(
        matches!(e.conclusion, Conclusion::Undetermined { .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_signed_request_is_not_verified_so_its_nonce_is_not_spent() {
    let h = harness().await;
    let p = parts(
        "POST",
        "/signed/x",
        &[
            ("x-portcullis-app", "billing"),
            ("x-portcullis-signature", "v1=abc"),
        ],
    );
    let e = h
        .guard
        .explain(&p, Some(PEER), ExplainOptions::default())
        .await;
    assert_eq!(e.credentials.presented, Some("a signed request"));
    assert!(
        matches!(&e.conclusion, Conclusion::Undetermined { why } if why.contains("nonce")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_revoked_token_is_traced_as_failed_revocation() {
    let h = harness().await;
    let (token, jti) = h.token().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    h.stores.revoke_jti(&jti, now + 600).await.unwrap();
    let bearer = format!("Bearer {token}");
    let e = h
        .explain(
            &parts("GET", "/jwt/x", &[("authorization", &bearer)]),
            ExplainOptions::default(),
        )
        .await;
    assert_eq!(e.credentials.refused, Some(ErrorCode::TokenRevoked));
    assert_eq!(e.credentials.revocation, Some(Checked::Failed));
}

#[tokio::test]
async fn an_assumed_caller_meets_the_requirement_or_names_the_missing_grant() {
    let h = harness().await;
    let assume = |perms: &[&str]| {
        let mut p = Principal::new("ed", AuthMethod::Jwt);
        p.permissions = perms.iter().map(|s| (*s).to_owned()).collect();
        ExplainOptions {
            assume: Some(p),
            offline: true,
        }
    };
    let e = h
        .explain(&parts("POST", "/write/1", &[]), assume(&["docs.read"]))
        .await;
    assert!(e.credentials.assumed);
    let a = e.authorization.as_ref().unwrap();
    assert_eq!(a.reason, "missing_permission");
    assert!(a.detail.contains("docs.write"), "{}", a.detail);
    assert!(matches!(
        e.conclusion,
        Conclusion::Refused {
            code: ErrorCode::Denied,
            status: 403,
            ..
        }
    ));
    let e = h
        .explain(&parts("POST", "/write/1", &[]), assume(&["docs.*"]))
        .await;
    assert!(matches!(
        e.conclusion,
        Conclusion::Allowed { reason: "allowed" }
    ));
}

#[tokio::test]
async fn explaining_reads_the_rate_counters_and_never_consumes_them() {
    let h = harness().await;
    let p = parts("GET", "/limited", &[]);
    for _ in 0..5 {
        let e = h
            .guard
            .explain(&p, Some(PEER), ExplainOptions::default())
            .await;
        assert_eq!(e.rate_limits.len(), 1);
        let r = &e.rate_limits[0];
        assert_eq!(r.rule, "two");
        assert_eq!(r.key.as_deref(), Some("ip=198.51.100.1"));
        assert_eq!((r.limit, r.remaining, r.limited), (Some(2), Some(1), false));
    }
    // The two real requests the limit admits are still there.
    assert!(h.guard.check(&p, Some(PEER)).await.refusal.is_none());
    assert!(h.guard.check(&p, Some(PEER)).await.refusal.is_none());
    let e = h
        .guard
        .explain(&p, Some(PEER), ExplainOptions::default())
        .await;
    assert!(e.rate_limits[0].limited);
    assert!(matches!(
        e.conclusion,
        Conclusion::Refused {
            code: ErrorCode::RateLimitExceeded,
            ..
        }
    ));
}
