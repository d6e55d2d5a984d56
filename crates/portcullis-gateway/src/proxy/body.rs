//! The bodies the proxy passes on and the answers it makes itself: the
//! client's request body bounded by `server.max_body_bytes` (and the rest of
//! a refused upload read and dropped for a while), and problem+json
//! refusals (413, 502, 504).

use super::*;

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body the gateway answers with.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A fixed body (refusals, problems, health).
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A problem+json response that the gateway itself answers (413, 502, 504).
pub fn problem(
    status: StatusCode,
    code: &str,
    detail: &str,
    request_id: Option<&str>,
) -> Response<ResponseBody> {
    let body = portcullis::http::problem_json(status, code, detail, request_id);
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        h.insert(portcullis::http::REQUEST_ID, id);
    }
    response.extensions_mut().insert(portcullis::http::Refused {
        code: code.to_owned(),
        detail: detail.to_owned(),
    });
    response
}

/// The request body handed through the guard to the proxy: the client's
/// stream, bounded by the body limit, or bytes the guard buffered.
pub enum RequestBody {
    /// The client's body, streamed.
    Streaming {
        /// The body, due whole by its deadline.
        inner: crate::proxy::deadline::TimedBody,
        /// Bytes still allowed.
        remaining: u64,
    },
    /// A body already in memory.
    Buffered(Full<Bytes>),
}

/// The request body grew past `server.max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("the request body exceeds {0} bytes")]
pub struct BodyTooLarge(pub u64);

impl RequestBody {
    /// `inner`, failing once more than `limit` bytes have arrived.
    pub fn limited(inner: crate::proxy::deadline::TimedBody, limit: u64) -> Self {
        Self::Streaming {
            inner,
            remaining: limit,
        }
    }
}

/// How long, and how many more bytes, the rest of a refused upload is
/// read and dropped (nginx's lingering close does the same).
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: u64 = 16 * 1024 * 1024;

/// Reads and drops what is left of a body the gateway refused (413), for at
/// most [`LINGER_TIME`] and [`LINGER_BYTES`], in the background. A
/// connection closed with unread bytes is reset, and the reset can destroy
/// the 413 before a client that is still writing has read it; once the
/// client has sent the rest, the connection answers as usual.
pub fn linger(mut body: crate::proxy::deadline::TimedBody) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut left = LINGER_BYTES;
        let _ = tokio::time::timeout(LINGER_TIME, async {
            while let Some(Ok(frame)) = body.frame().await {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if n >= left {
                    break;
                }
                left -= n;
            }
        })
        .await;
    });
}

impl From<Bytes> for RequestBody {
    fn from(bytes: Bytes) -> Self {
        Self::Buffered(Full::new(bytes))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this {
            Self::Streaming { inner, remaining } => {
                let limit_total = *remaining;
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            let len = data.len() as u64;
                            if len > *remaining {
                                let rest = std::mem::replace(this, Self::from(Bytes::new()));
                                if let Self::Streaming { inner, .. } = rest {
                                    linger(inner);
                                }
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge(limit_total)))));
                            }
                            *remaining -= len;
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
            Self::Buffered(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streaming { inner, .. } => inner.is_end_stream(),
            Self::Buffered(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Streaming { inner, .. } => inner.size_hint(),
            Self::Buffered(full) => full.size_hint(),
        }
    }
}

/// The 413 answered before the guard when `Content-Length` is over the limit.
pub fn too_large(limit: u64) -> Response<ResponseBody> {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "gateway.body_too_large",
        &format!("the request body exceeds {limit} bytes"),
        None,
    )
}

/// A refusal the guard made, as the problem+json response.
pub fn refusal(refusal: &portcullis::Refusal, request_id: &str) -> Response<ResponseBody> {
    portcullis::http::refusal_response(&portcullis::http::ProblemJson, refusal, request_id)
        .map(|b| b.map_err(|never| match never {}).boxed_unsync())
}
