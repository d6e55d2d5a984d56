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
use portcullis::authz::BoxFuture;
use portcullis::http_client::TlsTrust;
use portcullis::jwks::{
    FetchError, Fetcher, HttpFetcher, IssuerError, KeySource, Monotonic, RemoteIssuer,
    RemoteIssuerConfig, TrustedIssuers,
};
use portcullis::stores::memory::MemoryStores;
use portcullis::stores::{Backends, Stores, StoresConfig, hook::StoresRevocation};
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

/// The audience remote tokens are minted for and remote issuers accept.
const AUD: &str = "https://api.example";

fn mint(key: &Key, iss: &str, clock: &Arc<ManualClock>) -> String {
    let mut keys = KeySet::new();
    keys.insert(copy(key, key.kid())).unwrap();
    let mut config = IssuerConfig::new(iss);
    config.audience = vec![AUD.into()];
    let issuer = TokenIssuer::new(keys, config, SecretHasher::new(&[7u8; 32]).unwrap())
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
    let mut c = RemoteIssuerConfig::new(idp.issuer(), source).with_audience(AUD);
    c.allow_http = true;
    c.ttl = Duration::from_secs(60);
    c.refetch_interval = Duration::from_secs(10);
    c.max_stale = Duration::from_secs(120);
    c
}

/// An issuer whose wall clock and monotonic source are both `clock`.
fn remote(c: RemoteIssuerConfig, clock: &Arc<ManualClock>) -> RemoteIssuer {
    RemoteIssuer::with_clocks(
        c,
        Arc::new(HttpFetcher::new(Duration::from_secs(2), &TlsTrust::default()).unwrap()),
        clock.clone() as Arc<dyn Clock>,
        clock.clone() as Arc<dyn Monotonic>,
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
    )
    .with_audience(AUD);
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
    let tls = RemoteIssuer::new(
        RemoteIssuerConfig::new(
            "https://127.0.0.1:9",
            KeySource::Jwks("https://127.0.0.1:9/jwks".into()),
        )
        .with_audience(AUD),
    )
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

    let mut trusted =
        RemoteIssuerConfig::new(issuer.clone(), KeySource::Discovery).with_audience(AUD);
    trusted.tls = support::test_ca_trust();
    let remote = RemoteIssuer::new(trusted).unwrap();
    let principal = remote.verify(token.as_bytes()).await.unwrap();
    assert_eq!(principal.subject, "alice");

    // The same server without its CA trusted: the handshake fails and the
    // keys are unavailable.
    let untrusted =
        RemoteIssuer::new(RemoteIssuerConfig::new(issuer, KeySource::Discovery).with_audience(AUD))
            .unwrap();
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

// ------------------------------------------------------------------ issue 12: token hardening

/// Documents served from memory by URL, with an optional delay per fetch.
#[derive(Default)]
struct MapFetcher {
    docs: Mutex<std::collections::HashMap<String, String>>,
    delay: Mutex<Duration>,
    hits: AtomicUsize,
}

impl MapFetcher {
    fn serve(&self, url: &str, body: String) {
        self.docs.lock().unwrap().insert(url.to_owned(), body);
    }
}

impl Fetcher for MapFetcher {
    fn get<'a>(
        &'a self,
        url: &'a str,
        _max_bytes: usize,
    ) -> BoxFuture<'a, Result<Bytes, FetchError>> {
        Box::pin(async move {
            self.hits.fetch_add(1, Ordering::SeqCst);
            let delay = *self.delay.lock().unwrap();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match self.docs.lock().unwrap().get(url) {
                Some(body) => Ok(Bytes::from(body.clone())),
                None => Err(FetchError::Status {
                    url: url.to_owned(),
                    status: 404,
                }),
            }
        })
    }
}

const MAP_ISSUER: &str = "https://id.example.com";
const MAP_JWKS: &str = "https://id.example.com/jwks";

fn map_remote(
    c: RemoteIssuerConfig,
    fetcher: &Arc<MapFetcher>,
    clock: &Arc<ManualClock>,
) -> Result<RemoteIssuer, IssuerError> {
    RemoteIssuer::with_clocks(
        c,
        fetcher.clone(),
        clock.clone() as Arc<dyn Clock>,
        clock.clone() as Arc<dyn Monotonic>,
    )
}

fn map_config() -> RemoteIssuerConfig {
    let mut c =
        RemoteIssuerConfig::new(MAP_ISSUER, KeySource::Jwks(MAP_JWKS.into())).with_audience(AUD);
    c.ttl = Duration::from_secs(60);
    c.refetch_interval = Duration::from_secs(10);
    c.max_stale = Duration::from_secs(120);
    c
}

/// Item 1: without an audience, any token of the issuer would pass (one for
/// another API, an OIDC ID token): such an issuer does not build.
#[tokio::test]
async fn a_remote_issuer_without_an_audience_fails_to_build() {
    let fetcher = Arc::new(MapFetcher::default());
    let bare = RemoteIssuerConfig::new(MAP_ISSUER, KeySource::Jwks(MAP_JWKS.into()));
    let err = map_remote(bare.clone(), &fetcher, &clock_now()).unwrap_err();
    assert!(
        matches!(
            err,
            IssuerError::Setting {
                field: "validation.audiences",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("validation.audiences"), "{err}");
    assert!(RemoteIssuer::new(bare).is_err());

    // With one, a token for another audience (or none) is refused.
    let k = key("k1");
    let mut set = KeySet::new();
    set.insert(copy(&k, "k1")).unwrap();
    fetcher.serve(MAP_JWKS, set.public_jwks().to_string());
    let clock = clock_now();
    let issuer = map_remote(map_config(), &fetcher, &clock).unwrap();
    issuer
        .verify(mint(&k, MAP_ISSUER, &clock).as_bytes())
        .await
        .unwrap();
    let other = {
        let mut keys = KeySet::new();
        keys.insert(copy(&k, "k1")).unwrap();
        let mut c = IssuerConfig::new(MAP_ISSUER);
        c.audience = vec!["https://other-api.example".into()];
        TokenIssuer::new(keys, c, SecretHasher::new(&[7u8; 32]).unwrap())
            .with_clock(clock.clone() as Arc<dyn Clock>)
            .issue_access(&AccessRequest {
                subject: "alice".into(),
                ..AccessRequest::default()
            })
            .unwrap()
            .token
    };
    assert_eq!(
        issuer.verify(other.as_bytes()).await.unwrap_err().code(),
        ErrorCode::InvalidAudience
    );
}

/// Item 2: `require_typ` is opt-in for remote issuers and then refuses a
/// token not typed `at+jwt` (an ID token).
#[tokio::test]
async fn require_typ_refuses_remote_id_tokens() {
    let k = key("k1");
    let mut set = KeySet::new();
    set.insert(copy(&k, "k1")).unwrap();
    let fetcher = Arc::new(MapFetcher::default());
    fetcher.serve(MAP_JWKS, set.public_jwks().to_string());
    let clock = clock_now();
    let mut c = map_config();
    c.validation.require_typ = true;
    let issuer = map_remote(c, &fetcher, &clock).unwrap();
    issuer
        .verify(mint(&k, MAP_ISSUER, &clock).as_bytes())
        .await
        .unwrap();
    let now = clock.unix_seconds();
    let claims = serde_json::json!({ "sub": "alice", "iss": MAP_ISSUER, "aud": AUD,
                                     "iat": now, "exp": now + 600 });
    let header = serde_json::json!({ "alg": "ES256", "kid": "k1", "typ": "JWT" });
    let b64 = |v: &serde_json::Value| portcullis_core::jose::b64_encode(v.to_string().as_bytes());
    let input = format!("{}.{}", b64(&header), b64(&claims));
    let sig = k.sign(Algorithm::ES256, input.as_bytes()).unwrap();
    let id_token = format!("{input}.{}", portcullis_core::jose::b64_encode(&sig));
    assert_eq!(
        issuer.verify(id_token.as_bytes()).await.unwrap_err().code(),
        ErrorCode::WrongTokenType
    );
}

async fn memory_stores() -> Arc<Stores> {
    let mut config = StoresConfig::new(SecretHasher::new(&[5u8; 32]).unwrap());
    config.revocation_cache_ttl = Duration::ZERO;
    Arc::new(Stores::new(Backends::all(Arc::new(MemoryStores::new())), config).unwrap())
}

fn jti_of(token: &str) -> String {
    let (_, payload) = portcullis_core::jose::jws::decode_unverified(token.as_bytes()).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

/// Item 3: a jti denied in the stores is refused through a remote issuer
/// and through `TrustedIssuers`, like a local token.
#[tokio::test]
async fn a_denied_jti_is_refused_through_remote_issuers() {
    let k = key("k1");
    let mut set = KeySet::new();
    set.insert(copy(&k, "k1")).unwrap();
    let fetcher = Arc::new(MapFetcher::default());
    fetcher.serve(MAP_JWKS, set.public_jwks().to_string());
    let clock = clock_now();
    let stores = memory_stores().await;
    let token = mint(&k, MAP_ISSUER, &clock);
    let other = mint(&k, MAP_ISSUER, &clock);

    let issuer = map_remote(map_config(), &fetcher, &clock)
        .unwrap()
        .with_revocation(StoresRevocation::jti_only(stores.clone()));
    let trusted = TrustedIssuers::new()
        .with(map_remote(map_config(), &fetcher, &clock).unwrap())
        .with_revocation(StoresRevocation::jti_only(stores.clone()));
    issuer.verify(token.as_bytes()).await.unwrap();
    trusted.verify(token.as_bytes()).await.unwrap();

    stores
        .revoke_jti(&jti_of(&token), clock.unix_seconds() + 3600)
        .await
        .unwrap();
    for err in [
        issuer.verify(token.as_bytes()).await.unwrap_err(),
        trusted.verify(token.as_bytes()).await.unwrap_err(),
    ] {
        assert_eq!(err, IssuerError::Revoked(ErrorCode::TokenRevoked));
        assert_eq!(err.code().as_str(), "auth.token_revoked");
    }
    issuer.verify(other.as_bytes()).await.unwrap();
    trusted.verify(other.as_bytes()).await.unwrap();
}

/// Item 4: the default stale allowance is minutes, not an hour.
#[test]
fn remote_issuer_defaults_bound_a_withdrawn_key_to_minutes() {
    let c = RemoteIssuerConfig::new(MAP_ISSUER, KeySource::Jwks(MAP_JWKS.into()));
    assert_eq!(c.max_stale, Duration::from_secs(300));
    assert!(c.ttl + c.max_stale <= Duration::from_secs(15 * 60));
}

/// Item 4: key-set age is measured on the monotonic source: a wall clock
/// set back (NTP, VM resume) does not keep a withdrawn key alive.
#[tokio::test]
async fn key_set_age_follows_the_monotonic_clock_not_the_wall_clock() {
    let k = key("k1");
    let mut set = KeySet::new();
    set.insert(copy(&k, "k1")).unwrap();
    let fetcher = Arc::new(MapFetcher::default());
    fetcher.serve(MAP_JWKS, set.public_jwks().to_string());
    let wall = clock_now();
    let ticker = Arc::new(ManualClock::new(Duration::from_secs(1_000)));
    let issuer = RemoteIssuer::with_clocks(
        map_config(),
        fetcher.clone(),
        wall.clone() as Arc<dyn Clock>,
        ticker.clone() as Arc<dyn Monotonic>,
    )
    .unwrap();
    let token = mint(&k, MAP_ISSUER, &wall);
    issuer.verify(token.as_bytes()).await.unwrap();
    assert_eq!(fetcher.hits.load(Ordering::SeqCst), 1);

    // The issuer withdraws every key and goes away.
    fetcher.docs.lock().unwrap().clear();
    // The wall clock jumps back an hour; monotonic time moves past
    // ttl + max_stale (180 s): the set is gone.
    wall.set(wall.now() - Duration::from_secs(3600));
    ticker.advance(Duration::from_secs(181));
    let err = issuer.verify(token.as_bytes()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::JwksUnavailable);

    // And a wall clock jumping forward does not expire a fresh set early.
    let fetcher = Arc::new(MapFetcher::default());
    fetcher.serve(MAP_JWKS, set.public_jwks().to_string());
    let issuer = RemoteIssuer::with_clocks(
        map_config(),
        fetcher.clone(),
        wall.clone() as Arc<dyn Clock>,
        ticker.clone() as Arc<dyn Monotonic>,
    )
    .unwrap();
    let wall_now = clock_now();
    wall.set(wall_now.now());
    let token = mint(&k, MAP_ISSUER, &wall);
    issuer.verify(token.as_bytes()).await.unwrap();
    wall.advance(Duration::from_secs(7200));
    let token = mint(&k, MAP_ISSUER, &wall);
    issuer.verify(token.as_bytes()).await.unwrap();
    assert_eq!(fetcher.hits.load(Ordering::SeqCst), 1, "still fresh");
}

/// Item 5: a discovered jwks_uri on another host (here a link-local
/// address) is refused unless that host is allowed.
#[tokio::test]
async fn a_discovered_jwks_uri_on_another_host_is_refused_unless_allowed() {
    let k = key("k1");
    let mut set = KeySet::new();
    set.insert(copy(&k, "k1")).unwrap();
    let clock = clock_now();
    for jwks_uri in [
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.1/jwks",
        "https://keys.elsewhere.example/jwks",
    ] {
        let fetcher = Arc::new(MapFetcher::default());
        fetcher.serve(
            &format!("{MAP_ISSUER}/.well-known/openid-configuration"),
            format!(r#"{{"issuer":"{MAP_ISSUER}","jwks_uri":"{jwks_uri}"}}"#),
        );
        fetcher.serve(jwks_uri, set.public_jwks().to_string());
        let mut c = map_config();
        c.source = KeySource::Discovery;
        let issuer = map_remote(c.clone(), &fetcher, &clock).unwrap();
        let err = issuer
            .verify(mint(&k, MAP_ISSUER, &clock).as_bytes())
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::JwksUnavailable, "{jwks_uri}");
        assert!(err.to_string().contains("jwks_hosts"), "{err}");
        assert_eq!(fetcher.hits.load(Ordering::SeqCst), 1, "only discovery");

        c.jwks_hosts = vec![jwks_uri.split('/').nth(2).unwrap().to_uppercase()];
        let issuer = map_remote(c, &fetcher, &clock).unwrap();
        issuer
            .verify(mint(&k, MAP_ISSUER, &clock).as_bytes())
            .await
            .unwrap();
    }
    // The issuer's own host needs no listing.
    let fetcher = Arc::new(MapFetcher::default());
    fetcher.serve(
        &format!("{MAP_ISSUER}/.well-known/openid-configuration"),
        format!(r#"{{"issuer":"{MAP_ISSUER}","jwks_uri":"{MAP_JWKS}"}}"#),
    );
    fetcher.serve(MAP_JWKS, set.public_jwks().to_string());
    let mut c = map_config();
    c.source = KeySource::Discovery;
    map_remote(c, &fetcher, &clock)
        .unwrap()
        .verify(mint(&k, MAP_ISSUER, &clock).as_bytes())
        .await
        .unwrap();
}

/// A token signed by `key` whose header names `kid`.
fn with_kid(key: &Key, kid: &str, clock: &Arc<ManualClock>) -> String {
    let now = clock.unix_seconds();
    let claims = serde_json::json!({ "sub": "alice", "iss": MAP_ISSUER, "aud": AUD,
                                     "iat": now, "exp": now + 600 });
    let header = serde_json::json!({ "alg": "ES256", "kid": kid, "typ": "at+jwt" });
    let b64 = |v: &serde_json::Value| portcullis_core::jose::b64_encode(v.to_string().as_bytes());
    let input = format!("{}.{}", b64(&header), b64(&claims));
    let sig = key.sign(Algorithm::ES256, input.as_bytes()).unwrap();
    format!("{input}.{}", portcullis_core::jose::b64_encode(&sig))
}

/// Item 5: kids that cannot be a real key id never force a refetch, so
/// they cannot spend the window a real rotation needs.
#[tokio::test]
async fn junk_kids_never_force_a_refetch() {
    let k = key("k1");
    let mut set = KeySet::new();
    set.insert(copy(&k, "k1")).unwrap();
    let fetcher = Arc::new(MapFetcher::default());
    fetcher.serve(MAP_JWKS, set.public_jwks().to_string());
    let clock = clock_now();
    let mut c = map_config();
    c.ttl = Duration::from_secs(3600); // no scheduled refresh during the test
    let issuer = map_remote(c, &fetcher, &clock).unwrap();
    issuer
        .verify(mint(&k, MAP_ISSUER, &clock).as_bytes())
        .await
        .unwrap();
    let long = "a".repeat(129);
    for junk in [
        "../../etc/passwd",
        "k 1",
        "' OR 1=1 --",
        "ключ",
        "",
        long.as_str(),
    ] {
        clock.advance(Duration::from_secs(11));
        let err = issuer
            .verify(with_kid(&k, junk, &clock).as_bytes())
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnknownKey, "{junk:?}");
        assert_eq!(fetcher.hits.load(Ordering::SeqCst), 1, "{junk:?} fetched");
    }
    // A plausible new kid still does, once per interval.
    let k2 = key("2024-05-rotation_key.B64+/=");
    set.insert(copy(&k2, k2.kid())).unwrap();
    fetcher.serve(MAP_JWKS, set.public_jwks().to_string());
    issuer
        .verify(mint(&k2, MAP_ISSUER, &clock).as_bytes())
        .await
        .unwrap();
    assert_eq!(fetcher.hits.load(Ordering::SeqCst), 2);
}

/// Item 5: a miss inside the refetch interval is refused at once; it does
/// not queue behind a slow fetch only to be throttled afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_key_miss_does_not_wait_for_a_fetch_in_flight() {
    let k = key("k1");
    let mut set = KeySet::new();
    set.insert(copy(&k, "k1")).unwrap();
    let fetcher = Arc::new(MapFetcher::default());
    fetcher.serve(MAP_JWKS, set.public_jwks().to_string());
    let clock = clock_now();
    let issuer = map_remote(map_config(), &fetcher, &clock).unwrap();
    issuer
        .verify(mint(&k, MAP_ISSUER, &clock).as_bytes())
        .await
        .unwrap();

    // The issuer turns slow; a new kid forces one (slow) refetch.
    *fetcher.delay.lock().unwrap() = Duration::from_millis(1500);
    let first = {
        let (issuer, token) = (issuer.clone(), with_kid(&k, "new-a", &clock));
        tokio::spawn(async move { issuer.verify(token.as_bytes()).await })
    };
    while fetcher.hits.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    let err = issuer
        .verify(with_kid(&k, "new-b", &clock).as_bytes())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownKey);
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "waited {:?} behind the in-flight fetch",
        started.elapsed()
    );
    assert_eq!(
        first.await.unwrap().unwrap_err().code(),
        ErrorCode::UnknownKey
    );
    assert_eq!(fetcher.hits.load(Ordering::SeqCst), 2);
}

/// Item 5: a secret or private entry listed before the issuer's real public
/// key of the same kid does not push that key out.
#[tokio::test]
async fn a_secret_jwks_entry_listed_first_does_not_displace_the_public_key() {
    let k = key("k1");
    let mut set = KeySet::new();
    set.insert(copy(&k, "k1")).unwrap();
    let public = set.public_jwks()["keys"][0].clone();
    let oct = serde_json::json!({ "kty": "oct", "kid": "k1",
                                  "k": portcullis_core::jose::b64_encode(&[9u8; 32]) });
    let fetcher = Arc::new(MapFetcher::default());
    fetcher.serve(
        MAP_JWKS,
        serde_json::json!({ "keys": [oct, public] }).to_string(),
    );
    let clock = clock_now();
    let issuer = map_remote(map_config(), &fetcher, &clock).unwrap();
    issuer
        .verify(mint(&k, MAP_ISSUER, &clock).as_bytes())
        .await
        .unwrap();
}

/// A guard with its own keys and a trusted issuer accepts the tokens of
/// both. A remote token's kid is unknown to the local set, which must not
/// end the check; a token naming the local issuer with a kid nobody knows
/// stays `auth.unknown_key`.
#[tokio::test]
async fn a_guard_with_local_keys_also_accepts_a_trusted_issuers_tokens() {
    use portcullis::Guard;
    use portcullis::guard::{GuardConfig, RouteConfig};
    use portcullis_core::{Validation, Verifier};

    let remote_key = key("remote1");
    let mut published = KeySet::new();
    published.insert(copy(&remote_key, "remote1")).unwrap();
    let fetcher = Arc::new(MapFetcher::default());
    fetcher.serve(MAP_JWKS, published.public_jwks().to_string());
    let clock = clock_now();
    let local_key = key("local1");
    let mut local = KeySet::new();
    local.insert(copy(&local_key, "local1")).unwrap();
    let mut ic = IssuerConfig::new("https://local.example");
    ic.audience = vec![AUD.into()];
    let guard = Guard::builder(GuardConfig::default().route(RouteConfig::new("docs", "/docs")))
        .local_keys(Verifier::new(local, Validation::for_local_issuer(&ic)))
        .trusted_issuers(
            TrustedIssuers::new().with(map_remote(map_config(), &fetcher, &clock).unwrap()),
        )
        .stores(memory_stores().await)
        .build()
        .unwrap();
    let check = |token: String| {
        let guard = guard.clone();
        async move {
            let (parts, ()) = http::Request::get("/docs")
                .header("authorization", format!("Bearer {token}"))
                .body(())
                .unwrap()
                .into_parts();
            let decision = guard
                .check(&parts, Some("127.0.0.1".parse().unwrap()))
                .await;
            decision.refusal.map(|r| r.code)
        }
    };

    assert_eq!(check(mint(&remote_key, MAP_ISSUER, &clock)).await, None);
    assert_eq!(
        check(mint(&local_key, "https://local.example", &clock)).await,
        None
    );
    assert_eq!(
        check(mint(&key("stray"), "https://local.example", &clock)).await,
        Some(ErrorCode::UnknownKey)
    );
    assert_eq!(
        check(mint(&key("stray"), MAP_ISSUER, &clock)).await,
        Some(ErrorCode::UnknownKey)
    );
    assert_eq!(
        check(mint(&remote_key, "https://stranger.example", &clock)).await,
        Some(ErrorCode::UnknownKey)
    );
}
