//! Remote issuers against a real local HTTP server serving a JWKS and an
//! OIDC discovery document: rotation, single-flight refetch on unknown kids,
//! stale serving while the issuer is down, then `auth.jwks_unavailable`.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis::http_client::TlsTrust;
use portcullis::jwks::{
    FetchError, HttpFetcher, IssuerError, KeySource, RemoteIssuer, RemoteIssuerConfig,
    TrustedIssuers,
};
use portcullis_core::{
    AccessRequest, Algorithm, Clock, ErrorCode, IssuerConfig, Key, KeySet, ManualClock,
    SecretHasher, TokenError, TokenIssuer,
};
use tokio::net::TcpListener;

/// A tiny identity provider: `/.well-known/openid-configuration` and `/jwks`.
struct IdP {
    addr: SocketAddr,
    jwks: Arc<Mutex<String>>,
    issuer_claim: Arc<Mutex<String>>,
    up: Arc<AtomicBool>,
    hang: Arc<AtomicBool>,
    jwks_hits: Arc<AtomicUsize>,
    discovery_hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl IdP {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let jwks = Arc::new(Mutex::new(r#"{"keys":[]}"#.to_owned()));
        let issuer_claim = Arc::new(Mutex::new(format!("http://{addr}")));
        let up = Arc::new(AtomicBool::new(true));
        let hang = Arc::new(AtomicBool::new(false));
        let jwks_hits = Arc::new(AtomicUsize::new(0));
        let discovery_hits = Arc::new(AtomicUsize::new(0));
        let (j, i, u, h, jh, dh) = (
            jwks.clone(),
            issuer_claim.clone(),
            up.clone(),
            hang.clone(),
            jwks_hits.clone(),
            discovery_hits.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (j, i, u, h, jh, dh) = (
                    j.clone(),
                    i.clone(),
                    u.clone(),
                    h.clone(),
                    jh.clone(),
                    dh.clone(),
                );
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (j, i, u, h, jh, dh) = (
                            j.clone(),
                            i.clone(),
                            u.clone(),
                            h.clone(),
                            jh.clone(),
                            dh.clone(),
                        );
                        async move {
                            if h.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_secs(30)).await;
                            }
                            let path = req.uri().path().to_owned();
                            let (status, body) = if !u.load(Ordering::SeqCst) {
                                if path == "/jwks" {
                                    jh.fetch_add(1, Ordering::SeqCst);
                                }
                                (503, "down".to_owned())
                            } else if path == "/jwks" {
                                jh.fetch_add(1, Ordering::SeqCst);
                                (200, j.lock().unwrap().clone())
                            } else if path == "/.well-known/openid-configuration" {
                                dh.fetch_add(1, Ordering::SeqCst);
                                let iss = i.lock().unwrap().clone();
                                let host = req
                                    .headers()
                                    .get("host")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned();
                                (
                                    200,
                                    format!(
                                        r#"{{"issuer":"{iss}","jwks_uri":"http://{host}/jwks","id_token_signing_alg_values_supported":["ES256"]}}"#
                                    ),
                                )
                            } else {
                                (404, String::new())
                            };
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            jwks,
            issuer_claim,
            up,
            hang,
            jwks_hits,
            discovery_hits,
            task,
        }
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn publish(&self, keys: &KeySet) {
        *self.jwks.lock().unwrap() = keys.public_jwks().to_string();
    }

    fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }
}

impl Drop for IdP {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn clock_now() -> Arc<ManualClock> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    Arc::new(ManualClock::new(now))
}

fn key(kid: &str) -> Key {
    Key::generate(Algorithm::ES256).unwrap().with_kid(kid)
}

/// The same private key under another kid (Key is not Clone).
fn copy(key: &Key, kid: &str) -> Key {
    let pem = key.private_pkcs8_pem().unwrap();
    Key::from_pem(pem.as_bytes(), Some(Algorithm::ES256))
        .unwrap()
        .with_kid(kid)
}

fn mint(key: &Key, iss: &str, clock: &Arc<ManualClock>) -> String {
    let mut keys = KeySet::new();
    keys.insert(copy(key, key.kid())).unwrap();
    let issuer = TokenIssuer::new(
        keys,
        IssuerConfig::new(iss),
        SecretHasher::new(&[7u8; 32]).unwrap(),
    )
    .with_clock(clock.clone() as Arc<dyn Clock>);
    issuer
        .issue_access(&AccessRequest {
            subject: "alice".into(),
            ttl: Some(Duration::from_secs(24 * 3600)),
            ..AccessRequest::default()
        })
        .unwrap()
        .token
}

fn config(idp: &IdP, source: KeySource) -> RemoteIssuerConfig {
    let mut c = RemoteIssuerConfig::new(idp.issuer(), source);
    c.allow_http = true;
    c.ttl = Duration::from_secs(60);
    c.refetch_interval = Duration::from_secs(10);
    c.max_stale = Duration::from_secs(120);
    c
}

fn remote(c: RemoteIssuerConfig, clock: &Arc<ManualClock>) -> RemoteIssuer {
    RemoteIssuer::with_fetcher(
        c,
        Arc::new(HttpFetcher::new(Duration::from_secs(2), &TlsTrust::default()).unwrap()),
        clock.clone() as Arc<dyn Clock>,
    )
    .unwrap()
}

#[tokio::test]
async fn discovery_finds_keys_and_a_rotated_key_is_picked_up_on_first_use() {
    let idp = IdP::start().await;
    let clock = clock_now();
    let k1 = key("k1");
    let mut published = KeySet::new();
    published.insert(copy(&k1, k1.kid())).unwrap();
    idp.publish(&published);
    let issuer = remote(config(&idp, KeySource::Discovery), &clock);

    let p = issuer
        .verify(mint(&k1, &idp.issuer(), &clock).as_bytes())
        .await
        .unwrap();
    assert_eq!(p.subject, "alice");
    assert_eq!(p.issuer.as_deref(), Some(idp.issuer().as_str()));
    assert_eq!(
        (idp.discovery_hits.load(Ordering::SeqCst), idp.jwks_hits()),
        (1, 1)
    );

    // Cached: no new fetch.
    issuer
        .verify(mint(&k1, &idp.issuer(), &clock).as_bytes())
        .await
        .unwrap();
    assert_eq!(idp.jwks_hits(), 1);

    // The issuer rotates to k2 (no clock movement, no restart).
    let k2 = key("k2");
    published.insert(copy(&k2, k2.kid())).unwrap();
    idp.publish(&published);
    issuer
        .verify(mint(&k2, &idp.issuer(), &clock).as_bytes())
        .await
        .unwrap();
    assert_eq!(idp.jwks_hits(), 2, "one refetch for the new kid");
    assert_eq!(
        idp.discovery_hits.load(Ordering::SeqCst),
        1,
        "jwks_uri cached"
    );

    // The issuer replaces k2's material under the same kid: the signature
    // failure with a known kid triggers one refetch.
    let k2b = key("k2");
    let mut replaced = KeySet::new();
    replaced.insert(copy(&k1, "k1")).unwrap();
    replaced.insert(copy(&k2b, "k2")).unwrap();
    idp.publish(&replaced);
    // Within the interval since the last miss-driven fetch: no refetch yet.
    let err = issuer
        .verify(mint(&k2b, &idp.issuer(), &clock).as_bytes())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidSignature);
    assert_eq!(idp.jwks_hits(), 2);
    clock.advance(Duration::from_secs(11));
    issuer
        .verify(mint(&k2b, &idp.issuer(), &clock).as_bytes())
        .await
        .unwrap();
    assert_eq!(idp.jwks_hits(), 3);
    // Within the interval, a forged signature under a known kid fetches nothing.
    let forged = mint(&copy(&key("x"), "k1"), &idp.issuer(), &clock);
    let err = issuer.verify(forged.as_bytes()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidSignature);
    assert_eq!(idp.jwks_hits(), 3);

    // A token from another issuer is refused even with a known key.
    let err = issuer
        .verify(mint(&k1, "https://evil.example", &clock).as_bytes())
        .await
        .unwrap_err();
    assert_eq!(err, IssuerError::Token(TokenError::InvalidIssuer));
}

#[tokio::test]
async fn discovery_with_another_issuer_name_is_refused() {
    let idp = IdP::start().await;
    *idp.issuer_claim.lock().unwrap() = "https://someone-else.example".into();
    let clock = clock_now();
    let k1 = key("k1");
    let mut published = KeySet::new();
    published.insert(copy(&k1, k1.kid())).unwrap();
    idp.publish(&published);
    let issuer = remote(config(&idp, KeySource::Discovery), &clock);
    let err = issuer
        .verify(mint(&k1, &idp.issuer(), &clock).as_bytes())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::JwksUnavailable);
    assert!(err.to_string().contains("someone-else"), "{err}");
    assert_eq!(idp.jwks_hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_unknown_kids_cause_at_most_one_fetch_per_interval() {
    let idp = IdP::start().await;
    let clock = clock_now();
    let k1 = key("k1");
    let mut published = KeySet::new();
    published.insert(copy(&k1, k1.kid())).unwrap();
    idp.publish(&published);
    let issuer = remote(
        config(&idp, KeySource::Jwks(format!("{}/jwks", idp.issuer()))),
        &clock,
    );
    issuer
        .verify(mint(&k1, &idp.issuer(), &clock).as_bytes())
        .await
        .unwrap();
    assert_eq!(idp.jwks_hits(), 1);

    let signer = key("unused");
    let tokens: Vec<String> = (0..1000)
        .map(|i| {
            mint(
                &copy(&signer, &format!("rand-{i}-{}", rand_suffix())),
                &idp.issuer(),
                &clock,
            )
        })
        .collect();
    for round in 1..=2 {
        let before = idp.jwks_hits();
        let tasks: Vec<_> = tokens
            .iter()
            .cloned()
            .map(|t| {
                let issuer = issuer.clone();
                tokio::spawn(async move { issuer.verify(t.as_bytes()).await })
            })
            .collect();
        for t in tasks {
            let err = t.await.unwrap().unwrap_err();
            assert_eq!(err.code(), ErrorCode::UnknownKey);
        }
        let fetched = idp.jwks_hits() - before;
        assert_eq!(
            fetched, 1,
            "round {round}: one shared refetch for 1000 misses"
        );
        // Still within the interval: more misses fetch nothing.
        issuer.verify(tokens[0].as_bytes()).await.unwrap_err();
        assert_eq!(idp.jwks_hits() - before, 1);
        clock.advance(Duration::from_secs(11));
    }
    // Known keys keep working throughout.
    issuer
        .verify(mint(&k1, &idp.issuer(), &clock).as_bytes())
        .await
        .unwrap();
}

fn rand_suffix() -> u64 {
    let mut b = [0u8; 8];
    portcullis_core::opaque::fill_random(&mut b).unwrap();
    u64::from_le_bytes(b)
}

#[tokio::test]
async fn with_the_issuer_down_cached_keys_serve_then_jwks_unavailable() {
    let idp = IdP::start().await;
    let clock = clock_now();
    let k1 = key("k1");
    let mut published = KeySet::new();
    published.insert(copy(&k1, k1.kid())).unwrap();
    idp.publish(&published);
    let issuer = remote(
        config(&idp, KeySource::Jwks(format!("{}/jwks", idp.issuer()))),
        &clock,
    );
    let token = mint(&k1, &idp.issuer(), &clock);
    issuer.verify(token.as_bytes()).await.unwrap();

    idp.up.store(false, Ordering::SeqCst);
    // Past the TTL, within max_stale: the last good set keeps serving.
    clock.advance(Duration::from_secs(61));
    issuer.verify(token.as_bytes()).await.unwrap();
    clock.advance(Duration::from_secs(100));
    issuer.verify(token.as_bytes()).await.unwrap();
    // Past TTL + max_stale (180 s): unavailable, with the cause.
    clock.advance(Duration::from_secs(30));
    let err = issuer.verify(token.as_bytes()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::JwksUnavailable);
    assert_eq!(err.code().as_str(), "auth.jwks_unavailable");
    assert!(err.to_string().contains("503"), "{err}");

    // The issuer returns: after the retry interval, keys are fetched again.
    idp.up.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(11));
    issuer.verify(token.as_bytes()).await.unwrap();
}

#[tokio::test]
async fn oversized_and_slow_documents_are_refused() {
    let idp = IdP::start().await;
    let clock = clock_now();
    let k1 = key("k1");
    *idp.jwks.lock().unwrap() = format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(300 * 1024));
    let issuer = remote(
        config(&idp, KeySource::Jwks(format!("{}/jwks", idp.issuer()))),
        &clock,
    );
    let err = issuer
        .verify(mint(&k1, &idp.issuer(), &clock).as_bytes())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::JwksUnavailable);
    assert!(err.to_string().contains("more than 262144 bytes"), "{err}");

    idp.hang.store(true, Ordering::SeqCst);
    let slow = RemoteIssuer::with_fetcher(
        config(&idp, KeySource::Jwks(format!("{}/jwks", idp.issuer()))),
        Arc::new(HttpFetcher::new(Duration::from_millis(300), &TlsTrust::default()).unwrap()),
        clock.clone() as Arc<dyn Clock>,
    )
    .unwrap();
    let err = slow
        .verify(mint(&k1, &idp.issuer(), &clock).as_bytes())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::JwksUnavailable);
    assert!(err.to_string().contains("did not answer in time"), "{err}");
}

#[tokio::test]
async fn only_https_unless_http_is_allowed_for_loopback() {
    let plain = RemoteIssuerConfig::new(
        "http://id.example.com",
        KeySource::Jwks("http://id.example.com/jwks".into()),
    );
    assert!(matches!(
        RemoteIssuer::new(plain.clone()),
        Err(IssuerError::Config(FetchError::Url { .. }))
    ));
    let mut allowed = plain;
    allowed.allow_http = true;
    assert!(
        RemoteIssuer::new(allowed).is_err(),
        "allow_http covers loopback hosts only"
    );
    // https with nothing listening: unavailable, never a downgrade to http.
    let tls = RemoteIssuer::new(RemoteIssuerConfig::new(
        "https://127.0.0.1:9",
        KeySource::Jwks("https://127.0.0.1:9/jwks".into()),
    ))
    .unwrap();
    let err = tls.verify(b"a.eyJpc3MiOiJ4In0.c").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::JwksUnavailable);
}

/// An identity provider over TLS (the test certificate for 127.0.0.1):
/// discovery at `/.well-known/openid-configuration`, keys at `/jwks`.
async fn start_tls_idp(jwks: String) -> (String, tokio::task::JoinHandle<()>) {
    let acceptor = support::test_tls_acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("https://{}", listener.local_addr().unwrap());
    let discovery = format!(r#"{{"issuer":"{issuer}","jwks_uri":"{issuer}/jwks"}}"#);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, jwks, discovery) = (acceptor.clone(), jwks.clone(), discovery.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = match req.uri().path() {
                        "/jwks" => jwks.clone(),
                        _ => discovery.clone(),
                    };
                    async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (issuer, task)
}

#[tokio::test]
async fn keys_are_discovered_and_fetched_over_https_from_a_trusted_ca() {
    let k = key("tls1");
    let mut set = KeySet::new();
    set.insert(copy(&k, k.kid())).unwrap();
    let (issuer, server) = start_tls_idp(set.public_jwks().to_string()).await;
    let clock = clock_now();
    let token = mint(&k, &issuer, &clock);

    let mut trusted = RemoteIssuerConfig::new(issuer.clone(), KeySource::Discovery);
    trusted.tls = support::test_ca_trust();
    let remote = RemoteIssuer::new(trusted).unwrap();
    let principal = remote.verify(token.as_bytes()).await.unwrap();
    assert_eq!(principal.subject, "alice");

    // The same server without its CA trusted: the handshake fails and the
    // keys are unavailable.
    let untrusted =
        RemoteIssuer::new(RemoteIssuerConfig::new(issuer, KeySource::Discovery)).unwrap();
    let err = untrusted.verify(token.as_bytes()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::JwksUnavailable);
    server.abort();
}

#[tokio::test]
async fn trusted_issuers_route_tokens_by_iss() {
    let (a, b) = (IdP::start().await, IdP::start().await);
    let clock = clock_now();
    let (ka, kb) = (key("a1"), key("b1"));
    for (idp, k) in [(&a, &ka), (&b, &kb)] {
        let mut set = KeySet::new();
        set.insert(copy(k, k.kid())).unwrap();
        idp.publish(&set);
    }
    let trusted = TrustedIssuers::new()
        .with(remote(config(&a, KeySource::Discovery), &clock))
        .with(remote(
            config(&b, KeySource::Jwks(format!("{}/jwks", b.issuer()))),
            &clock,
        ));
    assert_eq!(
        trusted
            .verify(mint(&ka, &a.issuer(), &clock).as_bytes())
            .await
            .unwrap()
            .issuer,
        Some(a.issuer())
    );
    assert_eq!(
        trusted
            .verify(mint(&kb, &b.issuer(), &clock).as_bytes())
            .await
            .unwrap()
            .issuer,
        Some(b.issuer())
    );
    // B's key cannot speak for A.
    let forged = mint(&kb, &a.issuer(), &clock);
    assert_eq!(
        trusted.verify(forged.as_bytes()).await.unwrap_err().code(),
        ErrorCode::UnknownKey
    );
    let stranger = mint(&ka, "https://stranger.example", &clock);
    assert_eq!(
        trusted.verify(stranger.as_bytes()).await.unwrap_err(),
        IssuerError::Token(TokenError::InvalidIssuer)
    );
    assert_eq!(
        trusted.verify(b"not-a-jwt").await.unwrap_err().code(),
        ErrorCode::MalformedToken
    );
}
