//! Every connection has a deadline and every listener a cap, end to end
//! with the real binary and raw sockets (short timeouts configured, so each
//! case ends in seconds; bounds are generous upper bounds, never exact
//! times): a body that stops arriving is 408 on the token service, a
//! signed route, forward-auth and the proxy; a silent HTTP/2 connection
//! that answers pings is closed; an upstream body that stalls is cut and
//! counted; past `server.max_connections` a connection is closed at once
//! and counted, and served again once others close; a silent WebSocket is
//! closed and `server.max_websockets` refuses the next; and with too few
//! file descriptors the accept loop backs off instead of spinning, and the
//! ops listener answers once they are free again.

mod support;

use std::fs;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::{
    Gateway, GatewayConfig, Route, TempDir, Upstream, client, echo_upstream, free_port, toml_str,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The deadline every short-timeout gateway here is configured with.
const DEADLINE: Duration = Duration::from_secs(1);
/// How long past the deadline a close may come and still pass (the bound
/// is the code's, not the machine's: loaded CI runners are slow).
const SLACK: Duration = Duration::from_secs(5);

/// A config with `server_extra` under `[server]`: memory storage, the
/// token service, forward-auth for 127.0.0.1, a signed route `/orders`, an
/// anonymous route `/echo` (and everything else) to `upstream`.
fn config(
    dir: &TempDir,
    public: SocketAddr,
    ops: SocketAddr,
    upstream: SocketAddr,
    server_extra: &str,
) -> String {
    let secret = dir.join("app.secret");
    fs::write(
        &secret,
        "7f3c9a1e5b2d4c6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5\n",
    )
    .unwrap();
    GatewayConfig::with_ports(dir, public, ops)
        .server("upstream_read_timeout = \"10s\"")
        .server(server_extra)
        .no_storage()
        .issuer_is_public()
        .no_audit()
        .no_log()
        .raw("[guard.client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]")
        .raw(&format!(
            "[signed_requests]\nwindow = \"2m\"\n\n[[signed_requests.apps]]\nid = \"billing\"\n\
             secret_file = {}\npermissions = [\"orders.write\"]",
            toml_str(&secret.display().to_string())
        ))
        .route(Route::new("orders", "/orders").credentials(&["signed"]))
        .route(Route::new("open", "/**").credentials(&["anonymous"]))
        .upstream(Upstream::default("app", &format!("http://{upstream}")))
        .text()
}

/// A gateway on `config` with `server_extra`, ready.
async fn start(dir: &TempDir, upstream: SocketAddr, server_extra: &str) -> Gateway {
    let (public, ops) = (free_port(), free_port());
    let text = config(dir, public, ops, upstream, server_extra);
    let gw = Gateway::start(dir, "gw", &text, public, ops);
    gw.wait_ready(&client()).await;
    gw
}

/// Short deadlines on everything.
const SHORT: &str = r#"
request_body_timeout = "1s"
idle_timeout = "1s"
upstream_body_timeout = "1s"
websocket_idle_timeout = "1s"
"#;

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
    match tokio::time::timeout(Duration::from_secs(2), sender.send_request(req)).await {
        Ok(Ok(r)) => {
            let status = r.status().as_u16();
            let body = r
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
        _ => (0, String::new()),
    }
}

/// The value of the first sample whose line starts with `name` and holds
/// every one of `labels`; 0 when absent.
async fn metric(ops: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let (_, text) = ops_get(ops, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Sends `head` and `prefix` of a body, then nothing; what comes back
/// until the gateway closes, and when it closed (measured from the last
/// byte sent). Fails when the connection is still open after `bound`.
async fn stall(addr: SocketAddr, head: &str, prefix: &[u8], bound: Duration) -> (String, Duration) {
    let mut io = TcpStream::connect(addr).await.unwrap();
    io.write_all(head.as_bytes()).await.unwrap();
    io.write_all(prefix).await.unwrap();
    let stalled = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(bound, io.read_to_end(&mut got)).await;
    let took = stalled.elapsed();
    assert!(
        read.is_ok(),
        "still open {took:?} after the body stalled; got so far: {}",
        String::from_utf8_lossy(&got)
    );
    (String::from_utf8_lossy(&got).into_owned(), took)
}

fn assert_408(answer: &str, took: Duration) {
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("gateway.request_timeout"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        took >= DEADLINE - Duration::from_millis(200),
        "answered before the deadline: {took:?}"
    );
    eprintln!("stall to close: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_body_that_stops_arriving_is_408_and_the_connection_closes() {
    let dir = TempDir::new("dl-login");
    let gw = start(&dir, echo_upstream().await, SHORT).await;
    let head = format!(
        "POST /auth/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        gw.public
    );
    let (answer, took) = stall(gw.public, &head, b"{\"username", DEADLINE + SLACK).await;
    assert_408(&answer, took);
    let counted = metric(
        gw.ops,
        "portcullis_gateway_request_body_timeouts_total",
        &["surface=\"token_service\""],
    )
    .await;
    assert_eq!(counted, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_route_body_that_stops_arriving_is_408() {
    let dir = TempDir::new("dl-signed");
    let gw = start(&dir, echo_upstream().await, SHORT).await;
    // The guard buffers a signed request's body to check its signature.
    let head = format!(
        "POST /orders HTTP/1.1\r\nHost: {}\r\nX-Portcullis-App: billing\r\nX-Portcullis-Timestamp: 1\r\nX-Portcullis-Nonce: n1\r\nX-Portcullis-Signature: v1=00\r\nContent-Length: 100\r\n\r\n",
        gw.public
    );
    let (answer, took) = stall(gw.public, &head, b"0123456789", DEADLINE + SLACK).await;
    assert_408(&answer, took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_auth_call_with_a_body_that_stops_arriving_does_not_hold_the_connection() {
    let dir = TempDir::new("dl-fa");
    let gw = start(&dir, echo_upstream().await, SHORT).await;
    let head = format!(
        "POST /_portcullis/auth/nginx HTTP/1.1\r\nHost: {}\r\nX-Original-URI: /echo\r\nX-Original-Method: GET\r\nContent-Length: 100\r\n\r\n",
        gw.public
    );
    let (answer, took) = stall(gw.public, &head, b"0123456789", DEADLINE + SLACK).await;
    // Forward-auth decides on the headers: the answer is sent, the
    // connection closes rather than wait for the rest of the body.
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    eprintln!("forward-auth stall to close: {took:?}");
}

/// An upstream that reads each request's whole body before answering 200.
async fn reading_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let n = req
                            .into_body()
                            .collect()
                            .await
                            .map_or(0, |b| b.to_bytes().len());
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from(n.to_string())),
                        ))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_body_that_stops_arriving_is_408() {
    let dir = TempDir::new("dl-proxy");
    let gw = start(&dir, reading_upstream().await, SHORT).await;
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: 100\r\n\r\n",
        gw.public
    );
    let (answer, took) = stall(gw.public, &head, b"0123456789", DEADLINE + SLACK).await;
    assert_408(&answer, took);
    let counted = metric(
        gw.ops,
        "portcullis_gateway_request_body_timeouts_total",
        &["surface=\"proxy\""],
    )
    .await;
    assert_eq!(counted, 1.0);
}

/// One HTTP/2 frame: type, flags, stream 0, `payload`.
fn h2_frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_http2_connection_that_answers_pings_is_sent_goaway() {
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const GOAWAY: u8 = 0x7;
    const ACK: u8 = 0x1;
    let dir = TempDir::new("dl-h2");
    let gw = start(&dir, echo_upstream().await, SHORT).await;
    let mut io = TcpStream::connect(gw.public).await.unwrap();
    io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    io.write_all(&h2_frame(SETTINGS, 0, &[])).await.unwrap();
    let opened = Instant::now();
    let (mut rd, mut wr) = io.into_split();
    // The client keeps pinging, and acks the gateway's pings: pings are
    // not requests, the connection is still idle.
    let (acks, mut to_ack) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let pinger = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            let frame = tokio::select! {
                _ = tick.tick() => h2_frame(PING, 0, &[7; 8]),
                Some(payload) = to_ack.recv() => h2_frame(PING, ACK, &payload),
            };
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut pongs = 0;
    let mut goaway = None;
    let mut header = [0u8; 9];
    let bound = DEADLINE + SLACK;
    loop {
        let left = bound.saturating_sub(opened.elapsed());
        match tokio::time::timeout(left, rd.read_exact(&mut header)).await {
            Err(_) => panic!("the silent HTTP/2 connection is still open after {bound:?}"),
            Ok(Err(_)) => break, // closed
            Ok(Ok(_)) => {}
        }
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0; len];
        rd.read_exact(&mut payload).await.unwrap();
        match header[3] {
            PING if header[4] & ACK != 0 => pongs += 1,
            PING => {
                let _ = acks.send(payload);
            }
            GOAWAY => goaway = Some(opened.elapsed()),
            _ => {}
        }
    }
    pinger.abort();
    let took = opened.elapsed();
    let goaway = goaway.expect("a GOAWAY before the close");
    assert!(pongs >= 2, "the gateway answered pings meanwhile ({pongs})");
    assert!(
        goaway >= DEADLINE - Duration::from_millis(200),
        "GOAWAY after {goaway:?}"
    );
    eprintln!("h2 idle: GOAWAY after {goaway:?}, closed after {took:?}, {pongs} pings answered");
    let counted = metric(
        gw.ops,
        "portcullis_gateway_idle_connections_closed_total",
        &[],
    )
    .await;
    assert!(counted >= 1.0, "{counted}");
}

/// An upstream that answers every request with a head announcing 1000
/// bytes, sends 100 of them, and then nothing (the socket stays open).
async fn stalling_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut io, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = io
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n")
                    .await;
                let _ = io.write_all(&[b'a'; 100]).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_body_that_stalls_is_cut_and_counted() {
    let dir = TempDir::new("dl-upbody");
    let gw = start(&dir, stalling_upstream().await, SHORT).await;
    let stream = TcpStream::connect(gw.public).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/download")
        .header("host", gw.public.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0;
    let first = Instant::now();
    let ended = tokio::time::timeout(DEADLINE + SLACK, async {
        loop {
            match body.frame().await {
                Some(Ok(frame)) => received += frame.data_ref().map_or(0, Bytes::len),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(()),
            }
        }
    })
    .await
    .expect("the client's read ends within the bound");
    let took = first.elapsed();
    assert!(
        ended.is_err(),
        "the body ended cleanly after a stall: {received} bytes"
    );
    assert_eq!(received, 100);
    eprintln!("upstream body stall to client error: {took:?}");
    let counted = metric(
        gw.ops,
        "portcullis_gateway_upstream_failures_total",
        &["kind=\"body_timeout\"", "upstream=\"app\""],
    )
    .await;
    assert_eq!(counted, 1.0);
}

/// Whether the gateway closed `io` (EOF or reset) within `within`.
async fn closed(io: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, io.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_connection_is_closed_at_once_and_counted() {
    let dir = TempDir::new("dl-cap");
    let gw = start(&dir, echo_upstream().await, "max_connections = 4").await;
    // Four connections that have not sent anything hold the four slots.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(gw.public).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let mut extra = TcpStream::connect(gw.public).await.unwrap();
        assert!(
            closed(&mut extra, Duration::from_secs(3)).await,
            "a connection past the cap is closed at once"
        );
    }
    let refused = metric(
        gw.ops,
        "portcullis_gateway_connections_refused_total",
        &["listener=\"public\""],
    )
    .await;
    assert_eq!(refused, 3.0);
    let open = metric(
        gw.ops,
        "portcullis_gateway_open_connections",
        &["listener=\"public\""],
    )
    .await;
    assert_eq!(open, 4.0);
    // The held ones are still served.
    let mut first = held.remove(0);
    first
        .write_all(
            format!(
                "GET /echo HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                gw.public
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    first.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Once they close, new connections are served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            client().request(support::get(gw.public, "/echo", &[])),
        )
        .await;
        if let Ok(Ok(r)) = r {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not served after the held connections closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An upstream that accepts every WebSocket handshake (101) and then sends nothing.
async fn silent_websocket_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut io, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = io
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")
                    .await;
                // Holds the tunnel open until the gateway closes it.
                let _ = io.read(&mut buf).await;
            });
        }
    });
    addr
}

/// A WebSocket handshake through the gateway; the connection and the head
/// of the answer.
async fn websocket(gw: &Gateway) -> (TcpStream, String) {
    let mut io = TcpStream::connect(gw.public).await.unwrap();
    io.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            gw.public
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), io.read(&mut byte))
            .await
            .expect("an answer to the handshake")
            .unwrap();
        assert_eq!(n, 1, "closed mid-head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    (io, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_tunnel_is_closed_after_the_idle_timeout() {
    let dir = TempDir::new("dl-ws");
    let gw = start(&dir, silent_websocket_upstream().await, SHORT).await;
    let (mut io, head) = websocket(&gw).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let opened = Instant::now();
    assert!(
        closed(&mut io, DEADLINE + SLACK).await,
        "the silent tunnel is still open after {:?}",
        DEADLINE + SLACK
    );
    let took = opened.elapsed();
    assert!(took >= DEADLINE - Duration::from_millis(200), "{took:?}");
    eprintln!("websocket idle close after {took:?}");
    let counted = metric(
        gw.ops,
        "portcullis_gateway_websocket_idle_closed_total",
        &[],
    )
    .await;
    assert_eq!(counted, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_websockets_a_handshake_is_503_until_a_tunnel_closes() {
    let dir = TempDir::new("dl-wscap");
    let gw = start(
        &dir,
        silent_websocket_upstream().await,
        "max_websockets = 1\nwebsocket_idle_timeout = \"2s\"",
    )
    .await;
    let (first, head) = websocket(&gw).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, head) = websocket(&gw).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let refused = metric(gw.ops, "portcullis_gateway_websockets_refused_total", &[]).await;
    assert_eq!(refused, 1.0);
    // The client closes the first tunnel: its place is free again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, head) = websocket(&gw).await;
        if head.starts_with("HTTP/1.1 101") {
            break;
        }
        assert!(Instant::now() < deadline, "no place freed: {head}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is 3rd.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        panic!("this test needs util-linux `prlimit`");
    }
    let dir = TempDir::new("dl-emfile");
    let upstream = echo_upstream().await;
    let (public, ops) = (free_port(), free_port());
    let path = dir.join("gw.toml");
    fs::write(&path, config(&dir, public, ops, upstream, "")).unwrap();
    let log = dir.join("gw.log");
    // prlimit execs the gateway: the child's pid is the gateway's.
    let child = Command::new("prlimit")
        .args(["--nofile=64:64", "--"])
        .arg(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let gw = Killed(child, log);
    let pid = gw.0.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ops_get(ops, "/health/live").await.0 != 200 {
        assert!(Instant::now() < deadline, "not live:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 80 idle connections: more than the descriptors left.
    let starved_since = Instant::now();
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(public).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(pid);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used =
        Duration::from_secs_f64((cpu_ticks(pid) - before) as f64 / clock_ticks_per_second() as f64);
    let share = used.as_secs_f64() / window.elapsed().as_secs_f64();
    // What the code controls is how often it retries: CPU share is shown
    // for the record only (it depends on the machine's load).
    eprintln!(
        "CPU over 2 s with 80 held connections at 64 fds: {used:?} ({:.1} % of a core)",
        share * 100.0
    );

    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ops_get(ops, "/health/live").await.0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/health/live does not answer:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let errors = metric(
        ops,
        "portcullis_gateway_accept_errors_total",
        &["listener=\"public\""],
    )
    .await;
    assert!(errors > 0.0, "accept errors counted: {errors}");
    // Backing off means at most one failed accept per 10 ms (the shortest
    // pause); a loop that spins fails thousands of times a second.
    let most = (starved_since.elapsed().as_millis() / 10 + 10) as f64;
    eprintln!("accept errors on the public listener: {errors} (at most {most})");
    assert!(
        errors <= most,
        "{errors} failed accepts in {:?}: the accept loop does not back off",
        starved_since.elapsed()
    );
    assert!(
        gw.log().contains("accept failed; backing off"),
        "{}",
        gw.log()
    );
}

/// A child process killed on drop, its log printed when the test failed.
struct Killed(std::process::Child, std::path::PathBuf);

impl Killed {
    fn log(&self) -> String {
        fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log());
        }
    }
}

#[test]
fn config_check_names_a_deadline_or_cap_out_of_range() {
    let dir = TempDir::new("dl-check");
    let (public, ops) = (free_port(), free_port());
    let text = config(
        &dir,
        public,
        ops,
        free_port(),
        "request_body_timeout = \"48h\"\nmax_connections = 0\nmax_websockets = 2000000",
    );
    let path = dir.join("bad.toml");
    fs::write(&path, text).unwrap();
    let out = support::portcullis(&["config", "check", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for key in [
        "server.request_body_timeout",
        "server.max_connections",
        "server.max_websockets",
    ] {
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
    // The defaults are valid: every protection is on without a line.
    let text = config(&dir, public, ops, free_port(), "");
    fs::write(&path, text).unwrap();
    let out = support::portcullis(&["config", "check", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
