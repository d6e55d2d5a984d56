//! The demo's upstream: answers every request with the method, path and
//! the identity headers it received, as JSON, so a caller sees what the
//! gateway told the app about them.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running echo app; stopped when dropped.
pub struct Echo {
    /// Where it listens (loopback, a port the system chose).
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the echo app on 127.0.0.1 at a free port; `identity` are the
/// header names it reports (the gateway's `[identity]` names).
pub async fn start(identity: Vec<String>) -> std::io::Result<Echo> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let identity: std::sync::Arc<[String]> = identity.into();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let identity = std::sync::Arc::clone(&identity);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let answer = answer(&req, &identity);
                    async move { Ok::<_, Infallible>(answer) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(Echo { addr, task })
}

/// `{"app": "echo", "method", "path", "identity": {name: value}}`; the
/// request body is not read.
fn answer(req: &Request<Incoming>, identity: &[String]) -> Response<Full<Bytes>> {
    let mut seen = Map::new();
    for name in identity {
        if let Some(value) = req.headers().get(name.as_str()) {
            seen.insert(
                name.clone(),
                Value::from(String::from_utf8_lossy(value.as_bytes()).into_owned()),
            );
        }
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let body = json!({
        "app": "echo",
        "method": req.method().as_str(),
        "path": path,
        "identity": seen,
    });
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
