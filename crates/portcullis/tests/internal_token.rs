//! The gateway's internal identity token through `InternalTokenLayer` over
//! real HTTP: the gateway's JWKS is served by a local endpoint, the
//! service behind the gateway is an axum app called with a hyper client.
//! Only a valid, typed, audience-bound token signed by the gateway's key
//! gets in; plain identity headers never do.

#![cfg(feature = "axum")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::http::{InternalTokenLayer, Principal};
use portcullis::jwks::{KeySource, RemoteIssuer, RemoteIssuerConfig, TrustedIssuers};
use portcullis_core::jose::jws::sign_compact;
use portcullis_core::{
    AccessRequest, Algorithm, IssuerConfig, Key, KeySet, ManualClock, SecretHasher, TokenIssuer,
    Validation, Verifier,
};
use serde_json::{Value, json};

const GATEWAY: &str = "https://gateway.test";
const AUDIENCE: &str = "orders";

/// The gateway's signing side: its key set and a token issuer on it.
struct Gateway {
    keys: KeySet,
    issuer: TokenIssuer,
}

fn gateway(kid: &str) -> Gateway {
    let mut keys = KeySet::new();
    keys.insert(Key::generate(Algorithm::ES256).unwrap().with_kid(kid))
        .unwrap();
    let mut config = IssuerConfig::new(GATEWAY);
    config.audience = vec![AUDIENCE.into()];
    config.access_ttl = Duration::from_secs(60);
    let issuer = TokenIssuer::new(keys.clone(), config, SecretHasher::new(&[9; 32]).unwrap());
    Gateway { keys, issuer }
}

impl Gateway {
    fn token(&self, subject: &str) -> String {
        self.issue(&self.issuer, subject, None)
    }

    fn issue(&self, issuer: &TokenIssuer, subject: &str, audience: Option<&str>) -> String {
        let claims = json!({ "permissions": ["orders.read"], "roles": ["clerk"] });
        issuer
            .issue_access(&AccessRequest {
                subject: subject.into(),
                audience: audience.map(|a| vec![a.to_owned()]),
                claims: claims.as_object().cloned().unwrap_or_default(),
                ..AccessRequest::default()
            })
            .unwrap()
            .token
    }

    /// The same issuer running an hour behind: its tokens expired long ago.
    fn expired_token(&self, subject: &str) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let past = Arc::new(ManualClock::new(now - Duration::from_secs(3600)));
        let mut config = IssuerConfig::new(GATEWAY);
        config.audience = vec![AUDIENCE.into()];
        config.access_ttl = Duration::from_secs(60);
        let issuer = TokenIssuer::new(
            self.keys.clone(),
            config,
            SecretHasher::new(&[9; 32]).unwrap(),
        )
        .with_clock(past);
        self.issue(&issuer, subject, None)
    }
}

/// Serves `jwks` at `/jwks` on a loopback port, as the gateway publishes it.
async fn serve_jwks(jwks: Value) -> SocketAddr {
    let body = jwks.to_string();
    let app = Router::new().route(
        "/jwks",
        get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    serve(app).await
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The service behind the gateway: it answers with who called.
async fn service(layer: InternalTokenLayer) -> SocketAddr {
    async fn whoami(p: Principal) -> String {
        format!("{} {}", p.subject, p.has_permission("orders.read"))
    }
    serve(Router::new().route("/whoami", get(whoami)).layer(layer)).await
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Reply {
    fn code(&self) -> String {
        let json: Value = serde_json::from_str(&self.body).unwrap_or(Value::Null);
        json["code"].as_str().unwrap_or_default().to_owned()
    }
}

async fn call(addr: SocketAddr, headers: &[(&str, &str)]) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::get(format!("http://{addr}/whoami"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let res = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The gateway with its JWKS served, and a service trusting it.
async fn setup() -> (Gateway, SocketAddr) {
    let gw = gateway("gw1");
    let jwks = serve_jwks(gw.keys.public_jwks()).await;
    let mut config =
        RemoteIssuerConfig::new(GATEWAY, KeySource::Jwks(format!("http://{jwks}/jwks")))
            .with_audience(AUDIENCE);
    config.allow_http = true; // loopback, tests only
    let issuers = TrustedIssuers::new().with(RemoteIssuer::new(config).unwrap());
    let addr = service(InternalTokenLayer::remote(issuers)).await;
    (gw, addr)
}

const IDENTITY: &str = "x-portcullis-identity";

#[tokio::test]
async fn a_valid_internal_token_reaches_the_handler_with_its_subject() {
    let (gw, addr) = setup().await;
    let r = call(addr, &[(IDENTITY, &gw.token("alice"))]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body, "alice true",
        "the principal carries the token's permissions"
    );
}

#[tokio::test]
async fn a_missing_token_is_a_401_problem_with_a_challenge() {
    let (_, addr) = setup().await;
    let r = call(addr, &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "auth.missing_credentials");
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    assert!(r.headers.contains_key("www-authenticate"));
    assert!(
        r.body.contains(IDENTITY),
        "the detail names the header: {}",
        r.body
    );
}

#[tokio::test]
async fn plain_identity_headers_alone_are_never_trusted() {
    let (_, addr) = setup().await;
    let r = call(
        addr,
        &[
            ("x-user", "admin"),
            ("x-user-id", "admin"),
            ("x-user-roles", "admin"),
            ("x-user-permissions", "*"),
            ("x-forwarded-user", "admin"),
        ],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.code(), "auth.missing_credentials");
}

#[tokio::test]
async fn expired_wrong_audience_and_wrongly_signed_tokens_are_refused() {
    let (gw, addr) = setup().await;
    // Same kid, another key: as if someone but the gateway signed it.
    let forger = gateway("gw1");
    let cases = [
        ("expired", gw.expired_token("alice"), "auth.token_expired"),
        (
            "another service's",
            gw.issue(&gw.issuer, "alice", Some("billing")),
            "auth.invalid_audience",
        ),
        ("forged", forger.token("alice"), "auth.invalid_signature"),
        ("garbage", "not.a.jwt".to_owned(), "auth.malformed_token"),
    ];
    for (what, token, code) in cases {
        let r = call(addr, &[(IDENTITY, &token)]).await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_eq!(r.code(), code, "{what}");
        let challenge = r.headers.get("www-authenticate").unwrap().to_str().unwrap();
        assert!(challenge.contains("invalid_token"), "{what}: {challenge}");
    }
}

#[tokio::test]
async fn a_gateway_jwt_that_is_not_an_access_token_is_refused() {
    let (gw, addr) = setup().await;
    // Signed by the gateway's own key, right issuer and audience, but
    // `typ: JWT` (an ID token, say): not an internal identity token.
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let claims = json!({ "iss": GATEWAY, "aud": AUDIENCE, "sub": "alice", "exp": exp });
    let key = gw.keys.active().unwrap();
    let token = sign_compact(key, Some("JWT"), claims.to_string().as_bytes()).unwrap();
    let r = call(addr, &[(IDENTITY, &token)]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.code(), "auth.wrong_token_type");
}

#[tokio::test]
async fn two_identity_headers_are_refused() {
    let (gw, addr) = setup().await;
    let token = gw.token("alice");
    let r = call(addr, &[(IDENTITY, &token), (IDENTITY, &token)]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.code(), "auth.malformed_token");
}

#[tokio::test]
async fn a_local_verifier_needs_an_audience_and_then_verifies_the_same_way() {
    let gw = gateway("gw1");
    let without_audience = Verifier::new(gw.keys.clone(), Validation::new().with_issuer(GATEWAY));
    assert!(InternalTokenLayer::local(without_audience).is_err());

    let verifier = Verifier::new(
        gw.keys.clone(),
        Validation::new()
            .with_issuer(GATEWAY)
            .with_audience(AUDIENCE),
    );
    let addr = service(InternalTokenLayer::local(verifier).unwrap()).await;
    let r = call(addr, &[(IDENTITY, &gw.token("bob"))]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "bob true"));
    let r = call(addr, &[("x-user", "bob")]).await;
    assert_eq!(r.status, 401);
    // `typ: at+jwt` is required even though this validation does not ask for it.
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let claims = json!({ "iss": GATEWAY, "aud": AUDIENCE, "sub": "bob", "exp": exp });
    let untyped = sign_compact(
        gw.keys.active().unwrap(),
        None,
        claims.to_string().as_bytes(),
    );
    let r = call(addr, &[(IDENTITY, &untyped.unwrap())]).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "auth.wrong_token_type")
    );
}
