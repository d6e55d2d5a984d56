//! A real Flask app (`tests/e2e/flask_app.py`, werkzeug's threaded server)
//! behind `portcullis serve`: the identity headers it receives for a JWT
//! and an API key (names from `[identity]`), spoofed identity headers in
//! every spelling never reaching it, anonymous, 401 and 403 answered by the
//! gateway, a streamed multi-MB upload arriving intact, and a WebSocket.

#[path = "e2e/support.rs"]
mod support;

use std::time::Duration;

use support::*;

/// The configured identity header names (not the defaults, to prove the
/// names come from `[identity]`).
const IDENTITY: [&str; 6] = [
    "x-user",
    "x-user-roles",
    "x-user-permissions",
    "x-user-tenant",
    "x-user-session",
    "x-user-auth",
];

fn config(public: u16, ops: u16, flask: u16) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{public}"
ops_listen = "127.0.0.1:{ops}"
max_body_bytes = 16777216

[storage]
url = "sqlite://{{db}}"
pepper_file = "{{pepper}}"

[keys]
dir = "{{keys}}"
issuer = "http://127.0.0.1:{public}"
audience = ["api"]

[audit]
sqlite = "{{audit}}"

[identity]
subject = "x-user"
roles = "x-user-roles"
permissions = "x-user-permissions"
tenant = "x-user-tenant"
session = "x-user-session"
auth_method = "x-user-auth"

[[guard.routes]]
name = "public"
path = "/public"
credentials = ["anonymous"]

[[guard.routes]]
name = "whoami"
path = "/whoami"
credentials = ["jwt", "api_key"]
require = {{ permissions_all = ["docs.read"] }}

[[guard.routes]]
name = "admin"
path = "/admin/**"
require = {{ permissions_all = ["admin.all"] }}

[[guard.routes]]
name = "upload"
methods = ["POST"]
path = "/upload"

[[guard.routes]]
name = "ws"
path = "/ws"

[[upstreams]]
name = "flask"
url = "http://127.0.0.1:{flask}"
routes = ["public", "whoami", "admin", "upload", "ws"]
"#
    )
}

struct Setup {
    _flask: Proc,
    _gateway: Proc,
    public: u16,
    dir: TempDir,
}

async fn setup(name: &str) -> Option<Setup> {
    let python = python()?;
    let dir = TempDir::new(name);
    let (flask, flask_port) = start_flask(&python, &dir);
    let (public, ops) = (free_port(), free_port());
    let gateway = start_gateway(&dir, &config(public, ops, flask_port), public, ops).await;
    Some(Setup {
        _flask: flask,
        _gateway: gateway,
        public,
        dir,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flask_receives_the_identity_and_never_a_spoofed_one() {
    let Some(s) = setup("flask-identity").await else {
        return;
    };
    let port = s.public;
    let token = login(port).await;
    let claims = claims(&token);
    let sub = claims["sub"].as_str().unwrap().to_owned();
    let sid = claims["sid"].as_str().unwrap().to_owned();
    let spoof = spoofed(&IDENTITY);

    // JWT: all six identity headers, from the token, none spoofed.
    let r = raw(
        port,
        &format!("GET /whoami?x=1 HTTP/1.1\nHost: app.test\nAuthorization: Bearer {token}{spoof}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/whoami?x=1");
    let seen = r.seen();
    assert_not_spoofed(&seen, &IDENTITY);
    assert_eq!(seen["x-user"], sub.as_str());
    assert_eq!(seen["x-user-roles"], "editor");
    assert_eq!(seen["x-user-permissions"], "docs.read");
    assert_eq!(seen["x-user-tenant"], "acme");
    assert_eq!(seen["x-user-session"], sid.as_str());
    assert_eq!(seen["x-user-auth"], "jwt");
    assert!(
        !seen.contains_key("x-portcullis-subject"),
        "the default names are not used when [identity] renames them"
    );

    // API key (Authorization: Bearer pck_… and X-Api-Key): subject and
    // permissions of the key, no session, auth method api_key.
    let key = create_api_key(port, &token).await;
    for credential in [
        format!("Authorization: Bearer {key}"),
        format!("X-Api-Key: {key}"),
    ] {
        let r = raw(
            port,
            &format!("GET /whoami HTTP/1.1\nHost: app.test\n{credential}{spoof}"),
        )
        .await;
        assert_eq!(r.status, 200, "{credential}: {}", r.text());
        let seen = r.seen();
        assert_not_spoofed(&seen, &IDENTITY);
        assert_eq!(seen["x-user"], sub.as_str());
        assert_eq!(seen["x-user-permissions"], "docs.read");
        assert_eq!(seen["x-user-auth"], "api_key");
        assert!(!seen.contains_key("x-user-session"), "{seen:?}");
    }

    // Anonymous public route: the app sees no identity header at all,
    // whatever the client sent.
    let r = raw(
        port,
        &format!("GET /public HTTP/1.1\nHost: app.test{spoof}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    for name in IDENTITY {
        assert!(!seen.contains_key(name), "{name} reached the app: {seen:?}");
    }
    assert_not_spoofed(&seen, &IDENTITY);

    // Spoofed headers are no credential: 401 with a challenge, from the
    // gateway (problem+json), not the app.
    let r = raw(
        port,
        &format!("GET /whoami HTTP/1.1\nHost: app.test{spoof}"),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["code"], "auth.missing_credentials");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer") && v.contains("realm=")),
        "{:?}",
        r.headers
    );

    // A bad token: 401 too.
    let r = raw(
        port,
        "GET /whoami HTTP/1.1\nHost: app.test\nAuthorization: Bearer eyJhbGciOiJFUzI1NiJ9.e30.AAAA",
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("www-authenticate").is_some());

    // Missing permission: 403 from the gateway.
    let r = raw(
        port,
        &format!("GET /admin/users HTTP/1.1\nHost: app.test\nAuthorization: Bearer {token}"),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["code"], "authz.denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upload_of_several_megabytes_arrives_intact() {
    use http_body_util::BodyExt;
    let Some(s) = setup("flask-upload").await else {
        return;
    };
    let token = login(s.public).await;

    // 6 MiB of varied bytes, sent chunked in 64 KiB pieces.
    let data: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data).as_ref());
    let chunks: Vec<bytes::Bytes> = data
        .chunks(64 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let body = Chunked(chunks.into_iter());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::post(format!("http://127.0.0.1:{}/upload", s.public))
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .unwrap();
    assert!(req.headers().get("content-length").is_none());
    let response = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .expect("upload answered within 60 s")
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["bytes"], data.len());
    assert_eq!(v["sha256"], want.as_str());
    assert_eq!(
        v["chunked"], true,
        "the gateway buffered the body instead of streaming it"
    );

    // Without a token the upload never reaches the app.
    let r = raw_from(
        None,
        s.public,
        "POST /upload HTTP/1.1\nHost: app.test",
        &data[..1024],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    drop(s.dir);
}

/// A body sent chunked (no length known in advance), piece by piece.
struct Chunked(std::vec::IntoIter<bytes::Bytes>);

impl http_body::Body for Chunked {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.next().map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A WebSocket through the gateway: the handshake is authenticated, the
/// app sees the identity, messages echo both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_passes_through_with_the_identity() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(s) = setup("flask-ws").await else {
        return;
    };
    let token = login(s.public).await;
    let sub = claims(&token)["sub"].as_str().unwrap().to_owned();

    // Without a token: 401, no upgrade.
    let r = raw(
        s.public,
        "GET /ws HTTP/1.1\nHost: app.test\nUpgrade: websocket\nConnection: Upgrade\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13",
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());

    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", s.public))
        .await
        .unwrap();
    let handshake = format!(
        "GET /ws HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\nX-User: spoofed-admin\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("handshake answered")
            .unwrap();
        assert!(
            n == 1,
            "closed during the handshake: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );

    for message in ["hello", "second message"] {
        // A masked text frame (client to server).
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | message.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(message.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        stream.write_all(&frame).await.unwrap();
        let mut hdr = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut hdr))
            .await
            .expect("echo within 10 s")
            .unwrap();
        assert_eq!(hdr[0], 0x81, "a text frame");
        let len = usize::from(hdr[1] & 0x7f);
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.unwrap();
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            format!("{sub}:{message}"),
            "the app saw the gateway's subject, not the spoofed one"
        );
    }
}
