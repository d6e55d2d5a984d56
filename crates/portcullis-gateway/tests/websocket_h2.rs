//! WebSockets over HTTP/2 (RFC 8441 extended CONNECT) through the real
//! `portcullis serve` binary: an HTTP/2 client (hyper, h2c prior
//! knowledge) opens a WebSocket with `CONNECT` + `:protocol = websocket`;
//! the gateway decides it like the GET of an HTTP/1.1 handshake, opens an
//! HTTP/1.1 upgrade to a WebSocket upstream (hyper's HTTP/1.1 server,
//! RFC 6455 handshake and frames) and bridges the two. With a valid JWT
//! messages round-trip and the upstream learns who called; without one the
//! answer is 401 and the upstream is never connected to; both are audited
//! as GET. `server.max_websockets` and the WebSocket idle timeout hold for
//! HTTP/2 tunnels too, and the connection's own idle timeout does not cut
//! a tunnel that is in use.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::{
    Gateway, GatewayConfig, Route, TempDir, Upstream, client, portcullis, wait_for_audit,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A bound on any one wait, so a broken relay fails instead of hanging
/// (not a timing assertion).
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- upstream

/// What the WebSocket upstream saw.
#[derive(Default)]
struct Seen {
    /// TCP connections accepted.
    connections: AtomicUsize,
    /// The headers of each WebSocket handshake.
    handshakes: Mutex<Vec<HeaderMap>>,
}

/// A WebSocket upstream: hyper's HTTP/1.1 server answering an RFC 6455
/// handshake with 101 (its `Sec-WebSocket-Accept` computed from the key,
/// the first offered subprotocol chosen), then echoing each text frame.
async fn ws_upstream(seen: Arc<Seen>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            seen.connections.fetch_add(1, Ordering::SeqCst);
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move { Ok::<_, Infallible>(handshake(req, &seen)) }
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

fn handshake(mut req: Request<Incoming>, seen: &Seen) -> Response<Full<Bytes>> {
    seen.handshakes.lock().unwrap().push(req.headers().clone());
    let h = req.headers();
    let has = |name: &str, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    let key = h.get("sec-websocket-key").and_then(|v| v.to_str().ok());
    let (Some(key), true, true, true) = (
        key,
        req.method() == Method::GET && req.version() == http::Version::HTTP_11,
        has("connection", "upgrade") && has("upgrade", "websocket"),
        has("sec-websocket-version", "13"),
    ) else {
        return Response::builder()
            .status(400)
            .body(Full::new(Bytes::from("not a WebSocket handshake")))
            .unwrap();
    };
    let mut sha1 = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha1.finish().as_ref());
    let chosen = h
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|p| p.trim().to_owned());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        while let Ok(payload) = read_frame(&mut io).await {
            let mut out = vec![0x81, u8::try_from(payload.len()).unwrap()];
            out.extend_from_slice(&payload);
            if io.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Response::builder()
        .status(101)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept);
    if let Some(p) = chosen {
        answer = answer.header("sec-websocket-protocol", p);
    }
    answer.body(Full::new(Bytes::new())).unwrap()
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

// ------------------------------------------------------------------ client

/// An HTTP/2 connection to the gateway (h2c, prior knowledge) that has
/// read the gateway's SETTINGS (one request answered), so it knows
/// extended CONNECT is allowed.
async fn h2_connection(
    gateway: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(gateway).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let first = Request::get(format!("http://{gateway}/health-of-nothing"))
        .body(Empty::new())
        .unwrap();
    let _ = tokio::time::timeout(WAIT, sender.send_request(first))
        .await
        .expect("an answer in time");
    sender
}

/// Opens a WebSocket on `path` by extended CONNECT: the response, with
/// the tunnel's IO once the answer is 200.
async fn connect_ws(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    gateway: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (
    http::response::Parts,
    Bytes,
    Option<TokioIo<hyper::upgrade::Upgraded>>,
) {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{gateway}{path}"))
        .header("sec-websocket-version", "13");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(Empty::new()).unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("an answer in time")
        .expect("an HTTP/2 response");
    if response.status() == StatusCode::OK {
        let upgraded = tokio::time::timeout(WAIT, hyper::upgrade::on(&mut response))
            .await
            .expect("the tunnel in time")
            .expect("the stream becomes the tunnel");
        let (head, _) = response.into_parts();
        return (head, Bytes::new(), Some(TokioIo::new(upgraded)));
    }
    let (head, body) = response.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("a body in time")
        .expect("the body")
        .to_bytes();
    (head, body, None)
}

/// Sends `text` and reads the echo.
async fn round_trip(io: &mut TokioIo<hyper::upgrade::Upgraded>, text: &str) -> Vec<u8> {
    io.write_all(&masked_text(text)).await.unwrap();
    tokio::time::timeout(WAIT, read_frame(io))
        .await
        .expect("the echo in time")
        .expect("an echoed frame")
}

// ------------------------------------------------------------------- setup

struct Setup {
    dir: TempDir,
    gateway: Gateway,
    seen: Arc<Seen>,
}

async fn setup(name: &str, server_extra: &str) -> Setup {
    let dir = TempDir::new(name);
    let seen = Arc::new(Seen::default());
    let upstream = ws_upstream(Arc::clone(&seen)).await;
    let config = GatewayConfig::new(&dir)
        .server("upstream_connect_timeout = \"2s\"\nupstream_read_timeout = \"10s\"")
        .server(server_extra)
        .no_storage()
        .issuer_is_public()
        .keys("audience = [\"api\"]")
        .no_log()
        .route(
            Route::new("chat", "/ws/chat")
                .methods(&["GET"])
                .roles_any(&["chatter"]),
        )
        .route(
            Route::new("open", "/ws/open")
                .methods(&["GET"])
                .credentials(&["anonymous"]),
        )
        .upstream(Upstream::new(
            "ws",
            &format!("http://{upstream}"),
            &["chat", "open"],
        ));
    let gateway = config.start(&dir, "gw");
    gateway.wait_ready(&client()).await;
    Setup { dir, gateway, seen }
}

fn token(s: &Setup, roles: &str) -> String {
    let key = s.dir.join("keys").join("k1.pem");
    let out = portcullis(&[
        "token",
        "issue",
        "--key",
        key.to_str().unwrap(),
        "--sub",
        "alice",
        "--iss",
        &format!("http://{}", s.gateway.public),
        "--aud",
        "api",
        "--claim",
        &format!("roles={roles}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("Bearer {}", String::from_utf8(out.stdout).unwrap().trim())
}

fn code_of(body: &Bytes) -> String {
    serde_json::from_slice::<Value>(body).unwrap_or(Value::Null)["code"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

// ------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_websocket_is_guarded_bridged_to_an_http1_upstream_and_audited() {
    let s = setup("ws-h2", "").await;
    let public = s.gateway.public;
    let mut h2 = h2_connection(public).await;

    // No token: an ordinary HTTP/2 401, and the upstream is never dialled.
    let (head, body, io) = connect_ws(&mut h2, public, "/ws/chat", &[]).await;
    assert_eq!(head.status, StatusCode::UNAUTHORIZED, "{body:?}");
    assert!(io.is_none());
    assert_eq!(code_of(&body), "auth.missing_credentials");
    assert!(head.headers.contains_key("www-authenticate"));
    // A token without the role: 403, still no upstream connection.
    let reader = token(&s, r#"["reader"]"#);
    let (head, body, _) =
        connect_ws(&mut h2, public, "/ws/chat", &[("authorization", &reader)]).await;
    assert_eq!(head.status, StatusCode::FORBIDDEN, "{body:?}");
    assert_eq!(code_of(&body), "authz.denied");
    assert_eq!(s.seen.connections.load(Ordering::SeqCst), 0);

    // With a valid token: 200, and messages round-trip over the same
    // HTTP/2 connection.
    let chatter = token(&s, r#"["chatter"]"#);
    let (head, body, io) = connect_ws(
        &mut h2,
        public,
        "/ws/chat",
        &[
            ("authorization", &chatter),
            ("sec-websocket-protocol", "chat.v2, chat.v1"),
        ],
    )
    .await;
    assert_eq!(head.status, StatusCode::OK, "{body:?}");
    assert_eq!(head.headers["sec-websocket-protocol"], "chat.v2");
    assert!(!head.headers.contains_key("sec-websocket-accept"));
    let mut io = io.expect("a tunnel");
    for text in ["hello over h2", "a second message"] {
        assert_eq!(round_trip(&mut io, text).await, text.as_bytes());
    }

    // The upstream got an HTTP/1.1 handshake: a fresh key, the client's
    // subprotocols, the caller's identity, no credential.
    let handshakes = s.seen.handshakes.lock().unwrap().clone();
    assert_eq!(handshakes.len(), 1);
    let up = &handshakes[0];
    let key = up["sec-websocket-key"].to_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(key)
            .map(|k| k.len()),
        Ok(16)
    );
    assert_eq!(up["sec-websocket-protocol"], "chat.v2, chat.v1");
    assert_eq!(up["x-portcullis-subject"], "alice");
    assert!(!up.contains_key("authorization"));

    // A second WebSocket beside the first, on the same connection.
    let (head, _, io2) = connect_ws(&mut h2, public, "/ws/open", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    let mut io2 = io2.expect("a second tunnel");
    assert_eq!(
        round_trip(&mut io2, "second tunnel").await,
        b"second tunnel"
    );
    assert_eq!(
        round_trip(&mut io, "first still open").await,
        b"first still open"
    );
    drop((io, io2));

    // The audit log has each, as the GET the guard decided on.
    let audit = s.dir.join("audit.db");
    let wanted = [
        ("/ws/chat", "GET", 401, "auth.missing_credentials"),
        ("/ws/chat", "GET", 403, "authz.denied"),
        ("/ws/chat", "GET", 200, ""),
    ];
    wait_for_audit(&audit, "/ws/chat", &wanted, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_websockets_keep_the_websocket_limits_and_outlive_the_connection_idle_timeout() {
    let s = setup(
        "ws-h2-limits",
        "idle_timeout = \"1s\"\nwebsocket_idle_timeout = \"3s\"\nmax_websockets = 1",
    )
    .await;
    let public = s.gateway.public;
    let mut h2 = h2_connection(public).await;

    let (head, _, io) = connect_ws(&mut h2, public, "/ws/open", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    let mut io = io.expect("a tunnel");

    // At the cap, the next handshake is refused with 503.
    let (head, body, none) = connect_ws(&mut h2, public, "/ws/open", &[]).await;
    assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
    assert!(none.is_none());
    assert_eq!(code_of(&body), "gateway.too_many_websockets");

    // Past the connection's idle timeout (1 s) but within the tunnel's
    // (3 s), the tunnel still carries messages.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(round_trip(&mut io, "still here").await, b"still here");
    }

    // Left silent, the tunnel is closed by the gateway.
    let mut buf = [0u8; 16];
    let end = tokio::time::timeout(WAIT, io.read(&mut buf))
        .await
        .expect("the silent tunnel is closed");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");

    // Its place is free again.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut h2 = h2_connection(public).await;
        let (head, _, io) = connect_ws(&mut h2, public, "/ws/open", &[]).await;
        if head.status == StatusCode::OK {
            let mut io = io.expect("a tunnel");
            assert_eq!(round_trip(&mut io, "again").await, b"again");
            break;
        }
        assert!(Instant::now() < deadline, "no place freed: {head:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
