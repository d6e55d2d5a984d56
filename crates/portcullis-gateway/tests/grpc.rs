//! gRPC through the real `portcullis serve` binary, end to end: a gRPC
//! upstream (hyper's HTTP/2 server speaking gRPC framing: 5-byte prefix,
//! message, `grpc-status` trailers) behind `protocol = "h2c"`, and a gRPC
//! client (hyper's HTTP/2 client, prior knowledge) in front. Trailers reach
//! the client; a bidirectional stream interleaves (reply 1 arrives before
//! message 2 is sent); `te: trailers` reaches the upstream; `grpc-timeout`
//! ends a call with DEADLINE_EXCEEDED, before the answer or mid-stream; the
//! gateway's own refusals are gRPC statuses (HTTP 200, trailers-only):
//! no token 16, wrong role 7, rate-limited 8, upstream down 14, and are
//! audited like any request. An HTTP/1.1 client still works in front of
//! the h2c upstream (`te` filtered to `trailers`), a WebSocket handshake to
//! it is refused, and `config check` refuses a protocol that does not fit
//! the URL.

mod support;

use std::convert::Infallible;
use std::fs;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    Gateway, GatewayConfig, RateLimit, Route, TempDir, Upstream, client, free_port, portcullis,
    send, wait_for_audit,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a test waits for any one frame before failing (not a timing
/// assertion: a bound so a broken relay fails instead of hanging).
const FRAME_WAIT: Duration = Duration::from_secs(15);

/// A body fed frame by frame through a channel; ends when the sender drops.
struct Chan(mpsc::Receiver<Frame<Bytes>>);

impl Body for Chan {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn chan() -> (mpsc::Sender<Frame<Bytes>>, Chan) {
    let (tx, rx) = mpsc::channel(16);
    (tx, Chan(rx))
}

/// One gRPC message: uncompressed flag, big-endian length, the bytes.
fn grpc_frame(message: &str) -> Frame<Bytes> {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(message.len() as u32).to_be_bytes());
    b.extend_from_slice(message.as_bytes());
    Frame::data(b.freeze())
}

/// Complete messages off the front of `buf`.
fn take_message(buf: &mut BytesMut) -> Option<String> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    let frame = buf.split_to(5 + len);
    Some(String::from_utf8(frame[5..].to_vec()).unwrap())
}

fn trailers(status: &str, extra: &[(&'static str, String)]) -> Frame<Bytes> {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", status.parse().unwrap());
    for (k, v) in extra {
        t.insert(*k, v.parse().unwrap());
    }
    Frame::trailers(t)
}

/// The gRPC upstream. `/test.*/Slow` answers after 30 s; `/test.*/Stall`
/// sends one message and holds the stream open for 30 s; any other
/// `/test.*` method echoes each message as it arrives (`echo:<msg>`) and
/// ends with `grpc-status: 0` and `x-count` trailers. Other paths answer a
/// plain text line with what the upstream saw. Every answer carries the
/// HTTP version, `te` and `grpc-timeout` the upstream received.
async fn grpc_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(upstream_call(req).await)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn upstream_call(req: Request<Incoming>) -> Response<Chan> {
    let seen = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned()
    };
    let version = format!("{:?}", req.version());
    let (te, timeout) = (seen("te"), seen("grpc-timeout"));
    let path = req.uri().path().to_owned();
    let (tx, body) = chan();
    let mut response = Response::builder()
        .header("x-upstream-version", &version)
        .header("x-upstream-te", &te)
        .header("x-upstream-grpc-timeout", &timeout);
    if !path.starts_with("/test.") {
        let text = format!("h2c-upstream version={version} te={te} path={path}\n");
        tx.send(Frame::data(Bytes::from(text))).await.unwrap();
        return response.body(body).unwrap();
    }
    response = response.header("content-type", "application/grpc");
    if path.ends_with("/Slow") {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let mut incoming = req.into_body();
    tokio::spawn(async move {
        if path.ends_with("/Stall") {
            let _ = tx.send(grpc_frame("first")).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        let mut buf = BytesMut::new();
        let mut count = 0;
        while let Some(Ok(frame)) = incoming.frame().await {
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
            while let Some(message) = take_message(&mut buf) {
                count += 1;
                if tx
                    .send(grpc_frame(&format!("echo:{message}")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let _ = tx
            .send(trailers("0", &[("x-count", count.to_string())]))
            .await;
    });
    response.body(body).unwrap()
}

/// An HTTP/2 (prior knowledge) connection to the gateway, as a gRPC client makes.
async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Chan> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// What a gRPC client reads of one call.
struct Call {
    head: http::response::Parts,
    body: Incoming,
    buf: BytesMut,
    trailers: Option<HeaderMap>,
    data_frames: usize,
}

impl Call {
    /// Starts `method` with `headers`; messages go through the returned sender.
    async fn start(
        gateway: SocketAddr,
        method: &str,
        headers: &[(&str, &str)],
    ) -> (mpsc::Sender<Frame<Bytes>>, Self) {
        let mut sender = h2_client(gateway).await;
        let (tx, body) = chan();
        let mut req = Request::post(format!("http://{gateway}{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response =
            tokio::time::timeout(FRAME_WAIT, sender.send_request(req.body(body).unwrap()))
                .await
                .expect("response head in time")
                .expect("an HTTP/2 response");
        let (head, body) = response.into_parts();
        (
            tx,
            Self {
                head,
                body,
                buf: BytesMut::new(),
                trailers: None,
                data_frames: 0,
            },
        )
    }

    /// A unary call: one message, then the end of the request stream.
    async fn unary(gateway: SocketAddr, method: &str, headers: &[(&str, &str)]) -> Self {
        let (tx, call) = Self::start(gateway, method, headers).await;
        // The refusal may have come before the message is read: ignore a closed stream.
        let _ = tx.send(grpc_frame("hello")).await;
        drop(tx);
        call
    }

    /// The next message; `None` once the response stream ended.
    async fn message(&mut self) -> Option<String> {
        loop {
            if let Some(m) = take_message(&mut self.buf) {
                return Some(m);
            }
            let frame = tokio::time::timeout(FRAME_WAIT, self.body.frame())
                .await
                .expect("a frame in time")?
                .expect("the response stream ends cleanly");
            match frame.into_data() {
                Ok(data) => {
                    self.data_frames += 1;
                    self.buf.extend_from_slice(&data);
                }
                Err(frame) => self.trailers = frame.into_trailers().ok(),
            }
        }
    }

    /// The gRPC status and message, read as a client does: from the
    /// trailers, or from the headers of a trailers-only response.
    async fn status(&mut self) -> (String, String) {
        while self.message().await.is_some() {}
        let from = self.trailers.as_ref().unwrap_or(&self.head.headers);
        let get = |name: &str| {
            from.get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        (get("grpc-status"), get("grpc-message"))
    }

    fn header(&self, name: &str) -> &str {
        self.head
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts a refusal as a gRPC client needs it: HTTP 200, gRPC
    /// content type, status `code`, a message starting with the stable
    /// `stable`, headers only.
    async fn assert_refused(mut self, code: &str, stable: &str) {
        assert_eq!(self.head.status, StatusCode::OK, "{:?}", self.head);
        assert_eq!(self.header("content-type"), "application/grpc");
        assert!(
            self.body.is_end_stream(),
            "trailers-only: the headers end the stream"
        );
        let (status, message) = self.status().await;
        assert_eq!(status, code, "{message}");
        assert!(
            message.starts_with(stable),
            "grpc-message {message:?} should start with {stable}"
        );
        assert_eq!(self.data_frames, 0, "no body");
        assert!(self.trailers.is_none(), "no trailers after the headers");
        assert!(!self.header("x-request-id").is_empty());
    }
}

struct Setup {
    dir: TempDir,
    _gateway: Gateway,
    public: SocketAddr,
}

async fn setup(name: &str) -> Setup {
    let dir = TempDir::new(name);
    let upstream = grpc_upstream().await;
    let dead = free_port();
    let config = GatewayConfig::new(&dir)
        .server("upstream_connect_timeout = \"1s\"\nupstream_read_timeout = \"10s\"")
        .no_storage()
        .issuer_is_public()
        .keys("audience = [\"api\"]")
        .no_log()
        .rate_limit(RateLimit::fixed_window("one", 1, 60, &["ip"]))
        .route(
            Route::new("echo", "/test.Echo/*")
                .methods(&["POST"])
                .credentials(&["anonymous"]),
        )
        .route(
            Route::new("secure", "/test.Secure/*")
                .methods(&["POST"])
                .roles_any(&["writer"]),
        )
        .route(
            Route::new("limited", "/test.Limited/*")
                .credentials(&["anonymous"])
                .rate_limits(&["one"]),
        )
        .route(Route::new("down", "/test.Down/*").credentials(&["anonymous"]))
        .route(Route::new("plain", "/plain/**").credentials(&["anonymous"]))
        .upstream(
            Upstream::new(
                "grpc",
                &format!("http://{upstream}"),
                &["echo", "secure", "limited", "plain"],
            )
            .line("protocol = \"h2c\""),
        )
        .upstream(
            Upstream::new("down", &format!("http://{dead}"), &["down"]).line("protocol = \"h2c\""),
        );
    let public = config.public;
    let gateway = config.start(&dir, "gw");
    gateway.wait_ready(&client()).await;
    Setup {
        dir,
        _gateway: gateway,
        public,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_relay_trailers_and_interleave_streams_through_an_h2c_upstream() {
    let s = setup("grpc-streams").await;

    // Unary: the reply and the upstream's trailers reach the client.
    let mut call = Call::unary(s.public, "/test.Echo/Unary", &[]).await;
    assert_eq!(call.head.status, StatusCode::OK);
    assert_eq!(call.header("content-type"), "application/grpc");
    assert_eq!(call.header("x-upstream-version"), "HTTP/2.0");
    assert_eq!(call.header("x-upstream-te"), "trailers");
    assert_eq!(call.message().await.as_deref(), Some("echo:hello"));
    assert_eq!(call.status().await, ("0".into(), String::new()));
    let t = call.trailers.as_ref().expect("trailers");
    assert_eq!(t["x-count"], "1");

    // Bidirectional: each reply arrives before the next message is sent.
    let (tx, mut call) = Call::start(s.public, "/test.Echo/Chat", &[]).await;
    for i in 1..=3 {
        tx.send(grpc_frame(&format!("m{i}"))).await.unwrap();
        assert_eq!(call.message().await, Some(format!("echo:m{i}")));
    }
    drop(tx);
    assert_eq!(call.status().await.0, "0");
    assert_eq!(call.trailers.as_ref().unwrap()["x-count"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_ends_a_call_with_deadline_exceeded() {
    let s = setup("grpc-deadline").await;

    // The upstream answers after 30 s; the call allows 300 ms; the
    // gateway's own upstream_read_timeout (10 s, which would be status 14)
    // does not decide.
    let call = Call::unary(s.public, "/test.Echo/Slow", &[("grpc-timeout", "300m")]).await;
    call.assert_refused("4", "gateway.deadline_exceeded").await;

    // Mid-stream: the first message is relayed, then the deadline ends
    // the call with status 4 in the trailers.
    let (_tx, mut call) =
        Call::start(s.public, "/test.Echo/Stall", &[("grpc-timeout", "1S")]).await;
    assert_eq!(call.head.status, StatusCode::OK);
    assert_eq!(call.header("x-upstream-grpc-timeout"), "1S");
    assert_eq!(call.message().await.as_deref(), Some("first"));
    let (status, message) = call.status().await;
    assert_eq!(status, "4", "{message}");
    assert!(
        message.starts_with("gateway.deadline_exceeded"),
        "{message}"
    );
    assert!(call.trailers.is_some(), "the status comes in trailers");

    // A deadline with no single meaning is refused: INVALID_ARGUMENT.
    let call = Call::unary(s.public, "/test.Echo/Unary", &[("grpc-timeout", "soon")]).await;
    call.assert_refused("3", "gateway.bad_grpc_timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_refusals_are_grpc_statuses_and_are_audited() {
    let s = setup("grpc-refusals").await;
    let key = s.dir.join("keys").join("k1.pem");
    let token = |roles: &str| {
        let out = portcullis(&[
            "token",
            "issue",
            "--key",
            key.to_str().unwrap(),
            "--sub",
            "alice",
            "--iss",
            &format!("http://{}", s.public),
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
    };

    // No token: UNAUTHENTICATED.
    Call::unary(s.public, "/test.Secure/Write", &[])
        .await
        .assert_refused("16", "auth.missing_credentials")
        .await;
    // A token without the role: PERMISSION_DENIED; with it: through.
    let reader = token(r#"["reader"]"#);
    Call::unary(
        s.public,
        "/test.Secure/Write",
        &[("authorization", &reader)],
    )
    .await
    .assert_refused("7", "authz.denied")
    .await;
    let writer = token(r#"["writer"]"#);
    let mut call = Call::unary(
        s.public,
        "/test.Secure/Write",
        &[("authorization", &writer)],
    )
    .await;
    assert_eq!(call.message().await.as_deref(), Some("echo:hello"));
    assert_eq!(call.status().await.0, "0");

    // Rate-limited (one call a minute per IP): RESOURCE_EXHAUSTED.
    let mut call = Call::unary(s.public, "/test.Limited/Get", &[]).await;
    assert_eq!(call.status().await.0, "0");
    Call::unary(s.public, "/test.Limited/Get", &[])
        .await
        .assert_refused("8", "rate_limit.exceeded")
        .await;

    // Nothing listens at the upstream: UNAVAILABLE.
    Call::unary(s.public, "/test.Down/Get", &[])
        .await
        .assert_refused("14", "gateway.upstream_unavailable")
        .await;

    // A plain HTTP client refused on the same route still gets problem+json.
    let r = send(
        &client(),
        support::post(s.public, "/test.Secure/Write", &[], ""),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));

    // The audit log holds each gRPC call with the HTTP status it stands for.
    let audit = s.dir.join("audit.db");
    let wanted = [
        ("/test.Secure/Write", "", 401, "auth.missing_credentials"),
        ("/test.Secure/Write", "", 403, "authz.denied"),
        ("/test.Secure/Write", "", 200, ""),
        ("/test.Limited/Get", "", 429, "rate_limit.exceeded"),
        ("/test.Down/Get", "", 502, ""),
    ];
    wait_for_audit(&audit, "/test.", &wanted, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_works_in_front_of_an_h2c_upstream() {
    let s = setup("grpc-http1").await;
    let http = client();
    let r = send(&http, support::get(s.public, "/plain/a?b=1", &[])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        "h2c-upstream version=HTTP/2.0 te=none path=/plain/a\n"
    );
    // `te` is hop-by-hop: `trailers` alone goes on, other codings do not.
    let r = send(
        &http,
        support::get(s.public, "/plain/te", &[("te", "trailers, deflate;q=0.5")]),
    )
    .await;
    assert_eq!(r.header("x-upstream-te"), Some("trailers"), "{}", r.body);
    let r = send(
        &http,
        support::get(s.public, "/plain/te", &[("te", "gzip")]),
    )
    .await;
    assert_eq!(r.header("x-upstream-te"), Some("none"), "{}", r.body);

    // A WebSocket cannot go to an HTTP/2 upstream: refused, not garbled.
    let r = send(
        &http,
        support::get(
            s.public,
            "/plain/ws",
            &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{}", r.body);
    assert_eq!(r.code().as_deref(), Some("gateway.websocket_unsupported"));
}

#[test]
fn config_check_refuses_a_protocol_that_does_not_fit_the_url() {
    let dir = TempDir::new("grpc-config");
    let (keys, _) = support::keys_and_pepper(&dir);
    let check = |url: &str, protocol: &str| {
        let text = format!(
            "[keys]\ndir = \"{}\"\nissuer = \"https://i.test\"\n\n[[upstreams]]\nname = \"app\"\nurl = \"{url}\"\nprotocol = \"{protocol}\"\ndefault = true\n",
            keys.display()
        );
        let path = dir.join("check.toml");
        fs::write(&path, text).unwrap();
        let out = portcullis(&["config", "check", path.to_str().unwrap()]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(check("https://a.test", "h2").0, Some(0));
    assert_eq!(check("http://a.test", "h2c").0, Some(0));
    let (code, stderr) = check("http://a.test", "h2");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("check.toml:8"), "{stderr}");
    assert!(stderr.contains("upstreams[0].protocol"), "{stderr}");
    assert!(stderr.contains("needs an https:// URL"), "{stderr}");
    let (code, stderr) = check("https://a.test", "h2c");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("check.toml:8"), "{stderr}");
    assert!(stderr.contains("needs an http:// URL"), "{stderr}");
}
