//! The floor under the gateway's proxy path: a bare hyper 1 / hyper-util
//! reverse proxy on the same stack and settings as `portcullis serve`
//! (single-threaded tokio, HTTP/1.1 server, pooled legacy client with
//! `TCP_NODELAY`), with none of the gateway's work: no guard, no header
//! rewriting, no metrics, no request id, no body limit.
//!
//! `bench/gateway.sh` runs it as the `hyper-floor` config, so the note can
//! say which part of a proxied request's CPU is hyper's and which is ours.
//!
//! ```sh
//! cargo run --release -p portcullis-gateway --example hyper_floor -- 127.0.0.1:18110 127.0.0.1:18080
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR";
    let listen: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let upstream: http::uri::Authority = args.next().ok_or(usage)?.parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream))
}

async fn serve(
    listen: SocketAddr,
    upstream: http::uri::Authority,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let upstream = upstream.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let client = client.clone();
            let upstream = upstream.clone();
            async move { Ok::<_, Infallible>(forward(&client, upstream, req).await) }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc),
        );
    }
}

async fn forward(
    client: &Client<HttpConnector, Incoming>,
    upstream: http::uri::Authority,
    req: Request<Incoming>,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(upstream);
    uri.path_and_query = parts.uri.path_and_query().cloned();
    match Uri::from_parts(uri) {
        Ok(uri) => parts.uri = uri,
        Err(_) => return status(http::StatusCode::BAD_REQUEST),
    }
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(BodyExt::boxed_unsync),
        Err(_) => status(http::StatusCode::BAD_GATEWAY),
    }
}

fn status(code: http::StatusCode) -> Response<Body> {
    let mut response = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = code;
    response
}
