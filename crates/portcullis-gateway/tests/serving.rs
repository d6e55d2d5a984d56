//! How `portcullis serve` serves, end to end with the real binary: TLS
//! termination (HTTP/1.1 and HTTP/2 by ALPN, verified against a
//! self-signed certificate made here with the `openssl` CLI), certificate
//! reload on SIGHUP (a bad file keeps the old certificate), the handshake
//! timeout and bound, h2c prior knowledge, WebSocket passthrough (and a
//! refused one never reaching the upstream), a streamed upload of several
//! MB and one over `server.max_body_bytes`, and both bodies streamed rather
//! than buffered.

mod support;

use std::convert::Infallible;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use support::{Gateway, GatewayConfig, Route, TempDir, Upstream, free_port, keys_and_pepper};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

/// Writes a config (with `server_extra` lines after `[server]`'s) and
/// starts the gateway on it, with a signing key made by `portcullis keys
/// generate`, memory storage, and these routes to `upstream`: `/ws/open`,
/// `/upload`, `/stream`, `/echo` anonymous; `/ws/closed` needs a token.
async fn start(dir: &TempDir, upstream: SocketAddr, server_extra: &str) -> Gateway {
    let anonymous = ["anonymous"];
    let config = GatewayConfig::new(dir)
        .server(
            "max_body_bytes = 8388608\nupstream_read_timeout = \"10s\"\n\
             shutdown_timeout = \"5s\"",
        )
        .server(server_extra)
        .no_storage()
        .issuer_is_public()
        .no_audit()
        .no_log()
        .route(Route::new("ws_open", "/ws/open").credentials(&anonymous))
        .route(Route::new("ws_closed", "/ws/closed"))
        .route(
            Route::new("upload", "/upload")
                .methods(&["POST"])
                .credentials(&anonymous),
        )
        .route(Route::new("stream", "/stream").credentials(&anonymous))
        .route(Route::new("echo", "/echo").credentials(&anonymous))
        .upstream(Upstream::new(
            "app",
            &format!("http://{upstream}"),
            &["ws_open", "ws_closed", "upload", "stream", "echo"],
        ));
    let gw = config.start(dir, "gateway");
    gw.wait_ready(&support::client()).await;
    gw
}

/// A GET on the ops listener: status and body (0 when it does not answer).
async fn ops_get(ops: SocketAddr, path: &str) -> (u16, String) {
    let Ok(Ok(stream)) =
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(ops)).await
    else {
        return (0, String::new());
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return (0, String::new());
    };
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", ops.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    match sender.send_request(req).await {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
        Err(_) => (0, String::new()),
    }
}

/// The value of one Prometheus sample (`name{labels}`), 0 when absent.
async fn metric(ops: SocketAddr, sample: &str) -> f64 {
    let (_, text) = ops_get(ops, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Polls `metric` until it reaches `at_least` (10 s at most).
async fn wait_metric(ops: SocketAddr, sample: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(ops, sample).await;
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} stayed at {v}, expected at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- upstream

/// What the test upstream saw, and the test's hooks into it.
#[derive(Default)]
struct Seen {
    /// WebSocket handshakes that reached it.
    websockets: AtomicUsize,
    /// Releases the second chunk of `/stream`.
    release: Mutex<Option<mpsc::Receiver<()>>>,
    /// Tells the test that the first chunk of an upload arrived.
    first_chunk: Mutex<Option<mpsc::Sender<()>>>,
}

/// A small upstream: `/echo` answers with the version and headers it got
/// as JSON; `/upload` with the length and FNV-1a hash of the body, read as
/// it streams in; `/stream` sends one chunk, then a second once the test
/// releases it; `/ws/*` answers a WebSocket handshake with 101 and echoes
/// every masked text frame back unmasked.
async fn upstream(seen: Arc<Seen>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move { Ok::<_, Infallible>(upstream_handle(req, seen).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn upstream_handle(mut req: Request<Incoming>, seen: Arc<Seen>) -> Response<UpBody> {
    let path = req.uri().path().to_owned();
    if path.starts_with("/ws/") {
        seen.websockets.fetch_add(1, Ordering::SeqCst);
        let key = req
            .headers()
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let headers_ok = req
            .headers()
            .get("upgrade")
            .is_some_and(|v| v == "websocket")
            && req.headers().get("connection").is_some_and(|v| {
                v.to_str()
                    .unwrap_or("")
                    .to_ascii_lowercase()
                    .contains("upgrade")
            });
        if !headers_ok {
            return Response::builder()
                .status(400)
                .body(Full::new(Bytes::from("not a websocket handshake")).boxed())
                .unwrap();
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            // Echo frames until the client closes.
            while let Ok(payload) = read_frame(&mut io).await {
                let mut out = vec![0x81, u8::try_from(payload.len()).unwrap()];
                out.extend_from_slice(&payload);
                if io.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", format!("accept-for-{key}"))
            .header("keep-alive", "timeout=5")
            .body(Empty::new().boxed())
            .unwrap();
    }
    match path.as_str() {
        "/upload" => {
            let mut body = req.into_body();
            let mut len = 0usize;
            let mut hash = Fnv::new();
            let mut told = false;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Response::builder()
                        .status(400)
                        .body(Full::new(Bytes::from("body cut")).boxed())
                        .unwrap();
                };
                if let Some(data) = frame.data_ref() {
                    len += data.len();
                    hash.update(data);
                    if !told && len > 0 {
                        told = true;
                        if let Some(tx) = seen.first_chunk.lock().await.take() {
                            let _ = tx.send(()).await;
                        }
                    }
                }
            }
            let json = serde_json::json!({"len": len, "fnv": hash.0.to_string()});
            Response::new(Full::new(Bytes::from(json.to_string())).boxed())
        }
        "/stream" => {
            let (tx, rx) = mpsc::channel::<Bytes>(2);
            let release = seen.release.lock().await.take();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first chunk;")).await;
                if let Some(mut release) = release {
                    let _ = release.recv().await;
                }
                let _ = tx.send(Bytes::from_static(b"second chunk")).await;
            });
            Response::new(ChannelBody(rx).boxed())
        }
        _ => {
            let headers: serde_json::Map<String, Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        Value::from(v.to_str().unwrap_or("?")),
                    )
                })
                .collect();
            let version = format!("{:?}", req.version());
            let json = serde_json::json!({"version": version, "headers": headers});
            Response::new(Full::new(Bytes::from(json.to_string())).boxed())
        }
    }
}

/// A body fed from a channel, one frame a message.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// FNV-1a, 64 bits: enough to see that every byte arrived in order.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// `n` bytes of a fixed pseudo-random sequence.
fn payload(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// One WebSocket frame's payload (client frames masked, server's not).
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(io: &mut R) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await?;
    let masked = head[1] & 0x80 != 0;
    let len = usize::from(head[1] & 0x7f);
    assert!(len < 126, "test frames are short");
    let mut mask = [0u8; 4];
    if masked {
        io.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok(payload)
}

/// A masked text frame, as a client sends it.
fn masked_text(text: &str) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![0x81, 0x80 | u8::try_from(text.len()).unwrap()];
    out.extend_from_slice(&mask);
    out.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

// --------------------------------------------------------------------- TLS

/// A self-signed certificate for `localhost` / 127.0.0.1 and its key, by
/// the `openssl` CLI (scripts/e2e-env.sh installs it).
fn self_signed(dir: &TempDir, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(&format!("{name}.crt"));
    let key = dir.join(&format!("{name}.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .expect("the openssl CLI (scripts/e2e-env.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn cert_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to the gateway that trusts only `trusted`, offering
/// `alpn`; returns the stream and the certificate the server presented.
async fn tls_connect(
    addr: SocketAddr,
    trusted: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> std::io::Result<(ClientTls, CertificateDer<'static>)> {
    let mut roots = rustls::RootCertStore::empty();
    for c in trusted {
        roots.add(c.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok((tls, presented))
}

/// The upstream's `/echo` JSON through an HTTP/1.1 or HTTP/2 connection on `io`.
async fn echo_over<I>(io: I, h2: bool, authority: &str) -> (http::Version, Value)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let response = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{authority}/echo"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/echo")
            .header("host", authority)
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(req).await.unwrap()
    };
    let version = response.version();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (version, serde_json::from_slice(&body).unwrap())
}

fn sighup(gw: &Gateway) {
    let status = Command::new("kill")
        .args(["-HUP", &gw.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Reads until the peer closes; `None` if it has not within `secs`.
async fn closed_within(io: &mut TcpStream, secs: u64) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    match tokio::time::timeout(Duration::from_secs(secs), io.read_to_end(&mut got)).await {
        Ok(_) => Some(got),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http1_and_h2_by_alpn_and_reloads_the_certificate_on_sighup() {
    let dir = TempDir::new("tls");
    let up = upstream(Arc::new(Seen::default())).await;
    let (first_cert, first_key) = self_signed(&dir, "first");
    let (second_cert, second_key) = self_signed(&dir, "second");
    let cert_file = dir.join("server.crt");
    let key_file = dir.join("server.key");
    fs::copy(&first_cert, &cert_file).unwrap();
    fs::copy(&first_key, &key_file).unwrap();
    let gw = start(
        &dir,
        up,
        &format!(
            "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nhandshake_timeout = \"2s\"\nmax_handshakes = 2\n",
            cert_file.display(),
            key_file.display()
        ),
    )
    .await;
    let first = cert_der(&first_cert);
    let second = cert_der(&second_cert);
    let authority = format!("localhost:{}", gw.public.port());

    // HTTP/1.1 over TLS: the client verified the chain against `first`.
    let (tls, presented) = tls_connect(gw.public, std::slice::from_ref(&first), &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(presented, first);
    let (version, echo) = echo_over(tls, false, &authority).await;
    assert_eq!(version, http::Version::HTTP_11);
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echo["headers"]["x-forwarded-host"], authority.as_str());
    assert_eq!(
        echo["version"], "HTTP/1.1",
        "the upstream side stays HTTP/1.1"
    );

    // HTTP/2 chosen by ALPN; the host comes from :authority.
    let (tls, _) = tls_connect(
        gw.public,
        std::slice::from_ref(&first),
        &[b"h2", b"http/1.1"],
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (version, echo) = echo_over(tls, true, &authority).await;
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echo["headers"]["x-forwarded-host"], authority.as_str());
    assert_eq!(echo["version"], "HTTP/1.1");

    // A client that trusts another certificate refuses the handshake.
    assert!(
        tls_connect(gw.public, std::slice::from_ref(&second), &[])
            .await
            .is_err()
    );
    // Plain HTTP on the TLS port is not answered.
    let mut plain = TcpStream::connect(gw.public).await.unwrap();
    plain
        .write_all(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = closed_within(&mut plain, 10).await.unwrap_or_default();
    assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1 200"));

    // SIGHUP with new files: new handshakes get the new certificate.
    fs::copy(&second_cert, &cert_file).unwrap();
    fs::copy(&second_key, &key_file).unwrap();
    sighup(&gw);
    wait_metric(gw.ops, "portcullis_tls_reloads_total{result=\"ok\"}", 1.0).await;
    let (tls, presented) = tls_connect(gw.public, &[first.clone(), second.clone()], &[])
        .await
        .unwrap();
    assert_eq!(presented, second, "the reloaded certificate is served");
    let (_, echo) = echo_over(tls, false, &authority).await;
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");

    // A broken certificate file: the reload fails, is counted, and the
    // previous certificate stays in service.
    fs::write(
        &cert_file,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    sighup(&gw);
    wait_metric(
        gw.ops,
        "portcullis_tls_reloads_total{result=\"error\"}",
        1.0,
    )
    .await;
    let (_, presented) = tls_connect(gw.public, &[first.clone(), second.clone()], &[])
        .await
        .unwrap();
    assert_eq!(presented, second);
    // A certificate that does not match the key: refused the same way.
    fs::copy(&first_cert, &cert_file).unwrap();
    sighup(&gw);
    wait_metric(
        gw.ops,
        "portcullis_tls_reloads_total{result=\"error\"}",
        2.0,
    )
    .await;
    let (tls, presented) = tls_connect(gw.public, &[first.clone(), second.clone()], &[])
        .await
        .unwrap();
    assert_eq!(presented, second);
    let (_, echo) = echo_over(tls, false, &authority).await;
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    let log = fs::read_to_string(&gw.log).unwrap();
    assert!(
        log.contains("TLS certificate reload failed"),
        "the failure is logged: {log}"
    );
    assert_eq!(
        metric(gw.ops, "portcullis_tls_reloads_total{result=\"ok\"}").await,
        1.0
    );

    // Handshakes are bounded: while two silent clients hold both slots a
    // third connection is closed at once ...
    let busy = "portcullis_tls_handshake_failures_total{reason=\"busy\"}";
    let busy_before = metric(gw.ops, busy).await;
    let mut silent1 = TcpStream::connect(gw.public).await.unwrap();
    let mut silent2 = TcpStream::connect(gw.public).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(gw.public).await.unwrap();
    let got = closed_within(&mut third, 10)
        .await
        .expect("the third connection is closed");
    assert!(got.is_empty());
    wait_metric(gw.ops, busy, busy_before + 1.0).await;
    // ... and the silent ones are closed at the handshake timeout.
    for silent in [&mut silent1, &mut silent2] {
        let got = closed_within(silent, 20)
            .await
            .expect("a silent client is closed at the handshake timeout");
        assert!(got.is_empty());
    }
    wait_metric(
        gw.ops,
        "portcullis_tls_handshake_failures_total{reason=\"timeout\"}",
        2.0,
    )
    .await;
    // The slots are free again.
    let (tls, _) = tls_connect(gw.public, std::slice::from_ref(&second), &[])
        .await
        .unwrap();
    let (version, _) = echo_over(tls, false, &authority).await;
    assert_eq!(version, http::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_at_start_stops_the_gateway_with_the_reason() {
    let dir = TempDir::new("badcert");
    fs::write(dir.join("server.crt"), "no certificate here").unwrap();
    let (_, key) = self_signed(&dir, "k");
    let (keys, _) = keys_and_pepper(&dir);
    let config = format!(
        "[server]\nlisten = \"{}\"\nops_listen = \"{}\"\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[keys]\ndir = \"{}\"\nissuer = \"http://x.test\"\n",
        free_port(),
        free_port(),
        dir.join("server.crt").display(),
        key.display(),
        keys.display()
    );
    fs::write(dir.join("p.toml"), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(dir.join("p.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.tls"), "{stderr}");
    assert!(stderr.contains("server.crt"), "{stderr}");
}

// ------------------------------------------------- plaintext: h2c, WS, bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_speaks_h2c_passes_websockets_and_streams_bodies() {
    let dir = TempDir::new("plain");
    let seen = Arc::new(Seen::default());
    let up = upstream(Arc::clone(&seen)).await;
    let gw = start(&dir, up, "").await;
    let authority = gw.public.to_string();

    // h2c with prior knowledge, and HTTP/1.1, on the same port.
    let tcp = TcpStream::connect(gw.public).await.unwrap();
    let (version, echo) = echo_over(tcp, true, &authority).await;
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
    assert_eq!(echo["headers"]["x-forwarded-host"], authority.as_str());
    assert_eq!(echo["version"], "HTTP/1.1");
    let tcp = TcpStream::connect(gw.public).await.unwrap();
    let (version, _) = echo_over(tcp, false, &authority).await;
    assert_eq!(version, http::Version::HTTP_11);

    // WebSocket: handshake by hand, masked text frames, the echoes back.
    let mut ws = TcpStream::connect(gw.public).await.unwrap();
    ws.write_all(
        format!(
            "GET /ws/open HTTP/1.1\r\nHost: {authority}\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nKeep-Alive: timeout=5\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut ws).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(
        lower.contains("sec-websocket-accept: accept-for-dghlihnhbxbszsbub25jzq=="),
        "{head}"
    );
    assert!(
        !lower.contains("keep-alive:"),
        "other hop-by-hop headers are still stripped: {head}"
    );
    assert_eq!(seen.websockets.load(Ordering::SeqCst), 1);
    for text in ["hello through the gateway", "and a second frame"] {
        ws.write_all(&masked_text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut ws))
            .await
            .expect("the echo comes back")
            .unwrap();
        assert_eq!(echoed, text.as_bytes());
    }
    drop(ws);

    // A WebSocket the guard refuses: 401, and the upstream never sees it.
    let mut ws = TcpStream::connect(gw.public).await.unwrap();
    ws.write_all(
        format!(
            "GET /ws/closed HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut ws).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert_eq!(seen.websockets.load(Ordering::SeqCst), 1);

    // A chunked upload of 6 MiB (limit 8 MiB) arrives whole and in order.
    let data = payload(6 * 1024 * 1024);
    let mut expected = Fnv::new();
    expected.update(&data);
    let (status, body) = upload(gw.public, &data, 64 * 1024, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["len"], data.len());
    assert_eq!(got["fnv"], expected.0.to_string());

    // 9 MiB chunked, past the limit mid-stream: 413 problem+json.
    let big = payload(9 * 1024 * 1024);
    let (status, body) = upload(gw.public, &big, 64 * 1024, None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "gateway.body_too_large");

    // Past the limit, the 413 comes before the whole body is read: by its
    // declared length, or mid-stream. A client that sends its whole body
    // before it reads the answer (as most do) still reads the 413: the
    // gateway reads and drops the rest of an upload it refused rather than
    // close with bytes unread, which resets the connection and destroys
    // the 413 unread.
    for declared in [true, false] {
        let head = refused_upload(gw.public, &big, declared).await;
        assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    }
    // A client that asks `Expect: 100-continue` first is told 413 at once,
    // never invited to send the body the gateway would only drop.
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    let ask = format!(
        "POST /upload HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        gw.public,
        big.len()
    );
    tcp.write_all(ask.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // The request body streams: the upstream gets the first chunk while
    // the client still holds back the rest (a buffering gateway would
    // wait for the whole body and this would time out).
    let (first_tx, mut first_rx) = mpsc::channel(1);
    *seen.first_chunk.lock().await = Some(first_tx);
    let (status, body) = upload(gw.public, &data, 256 * 1024, Some(&mut first_rx)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The response body streams: the first chunk reaches the client before
    // the upstream has written the second.
    let (release_tx, release_rx) = mpsc::channel(1);
    *seen.release.lock().await = Some(release_rx);
    let tcp = TcpStream::connect(gw.public).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            Request::get("/stream")
                .header("host", &authority)
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk arrives before the upstream finished")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first chunk;");
    release_tx.send(()).await.unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second chunk");
}

/// A response head, read byte by byte up to the blank line.
async fn read_head(io: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut byte))
            .await
            .expect("a response head")
            .unwrap();
        assert!(n == 1, "closed after {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// POSTs `data` to `/upload` over a raw connection, whole, before reading
/// the answer: with its `Content-Length` when `declared`, else as one
/// chunk. The response head, or why the connection failed.
async fn refused_upload(addr: SocketAddr, data: &[u8], declared: bool) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let framing = if declared {
        format!("content-length: {}", data.len())
    } else {
        "transfer-encoding: chunked".to_owned()
    };
    let head = format!("POST /upload HTTP/1.1\r\nhost: {addr}\r\n{framing}\r\n\r\n");
    let sent = async {
        tcp.write_all(head.as_bytes()).await?;
        if declared {
            tcp.write_all(data).await?;
        } else {
            tcp.write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await?;
            tcp.write_all(data).await?;
            tcp.write_all(b"\r\n0\r\n\r\n").await?;
        }
        tcp.flush().await
    };
    if let Err(e) = tokio::time::timeout(Duration::from_secs(20), sent)
        .await
        .expect("the upload is sent or refused within 20 s")
    {
        return format!("the upload failed: {e}");
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return format!("reading the answer failed: {e}"),
            Err(_) => return "no answer within 10 s".to_owned(),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// POSTs `data` to `/upload` chunked, `chunk` bytes a frame. With `gate`,
/// only the first chunk is sent until the upstream says it has it.
async fn upload(
    addr: SocketAddr,
    data: &[u8],
    chunk: usize,
    gate: Option<&mut mpsc::Receiver<()>>,
) -> (StatusCode, String) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/upload")
        .header("host", addr.to_string())
        .body(ChannelBody(rx))
        .unwrap();
    let response = tokio::spawn(sender.send_request(req));
    let mut chunks = data
        .chunks(chunk)
        .map(Bytes::copy_from_slice)
        .collect::<Vec<_>>()
        .into_iter();
    if let Some(gate) = gate {
        tx.send(chunks.next().unwrap()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), gate.recv())
            .await
            .expect("the upstream got the first chunk while the rest was held back");
    }
    // The gateway may stop reading (413): then the sends stop too.
    let feeder = tokio::spawn(async move {
        for c in chunks {
            if tx.send(c).await.is_err() {
                break;
            }
        }
    });
    let response = response.await.unwrap().unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    feeder.abort();
    (status, String::from_utf8_lossy(&body).into_owned())
}
