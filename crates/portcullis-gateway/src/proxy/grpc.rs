//! gRPC through the proxy: which requests are gRPC calls, the deadline a
//! call carries (`grpc-timeout`), the end of a relayed call whose deadline
//! passed (`grpc-status` 4), and the gateway's own refusals answered as a
//! gRPC status a gRPC client reads (trailers-only), not problem+json.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};

use crate::proxy::{BoxError, ResponseBody, full};

/// `grpc-status`.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-timeout`.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The stable code of a call whose `grpc-timeout` passed in the gateway.
pub const DEADLINE_EXCEEDED_CODE: &str = "gateway.deadline_exceeded";
/// Counter: gRPC calls the gateway ended at their `grpc-timeout`.
pub const DEADLINE_EXCEEDED_METRIC: &str = "portcullis_gateway_grpc_deadline_exceeded_total";

/// The gRPC status codes the gateway answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// 2
    Unknown = 2,
    /// 3
    InvalidArgument = 3,
    /// 4
    DeadlineExceeded = 4,
    /// 7
    PermissionDenied = 7,
    /// 8
    ResourceExhausted = 8,
    /// 12
    Unimplemented = 12,
    /// 13
    Internal = 13,
    /// 14
    Unavailable = 14,
    /// 16
    Unauthenticated = 16,
}

impl Code {
    /// The code of a refusal with HTTP `status` and stable `code`.
    pub fn of(status: StatusCode, code: &str) -> Self {
        if code == DEADLINE_EXCEEDED_CODE {
            return Self::DeadlineExceeded;
        }
        match status.as_u16() {
            400 => Self::InvalidArgument,
            401 => Self::Unauthenticated,
            403 => Self::PermissionDenied,
            404 | 405 | 501 => Self::Unimplemented,
            408 => Self::DeadlineExceeded,
            413 | 429 | 431 => Self::ResourceExhausted,
            500 => Self::Internal,
            502..=504 => Self::Unavailable,
            _ => Self::Unknown,
        }
    }

    /// The `grpc-status` value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from(u16::from(self as u8))
    }
}

/// Whether a request is a gRPC call: `content-type: application/grpc`,
/// `application/grpc+proto` and the like (not gRPC-Web).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let Some(rest) = value
        .as_bytes()
        .get(..16)
        .filter(|p| p.eq_ignore_ascii_case(b"application/grpc"))
        .and_then(|_| value.as_bytes().get(16..))
    else {
        return false;
    };
    matches!(rest.first(), None | Some(b'+' | b';'))
}

/// A `grpc-timeout` that is not one value of at most 8 digits and a unit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the grpc-timeout header must be one value of 1 to 8 digits and a unit (H, M, S, m, u, n)")]
pub struct BadTimeout;

/// The call's deadline from its `grpc-timeout` (`None`: the call has none).
pub fn timeout(headers: &HeaderMap) -> Result<Option<Duration>, BadTimeout> {
    let mut values = headers.get_all(GRPC_TIMEOUT).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BadTimeout);
    }
    parse_timeout(value.as_bytes()).map(Some)
}

/// `TimeoutValue TimeoutUnit` of the gRPC over HTTP/2 spec.
fn parse_timeout(value: &[u8]) -> Result<Duration, BadTimeout> {
    let (unit, digits) = value.split_last().ok_or(BadTimeout)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(BadTimeout);
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Ok(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(BadTimeout),
    })
}

/// `grpc-message` percent-encoding: every byte outside printable ASCII,
/// and `%` itself, as `%XX` (the message is UTF-8).
pub fn percent_encode(message: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The `grpc-message` of a refusal: its stable code, then its detail.
fn message(code: &str, detail: &str) -> HeaderValue {
    let text = if detail.is_empty() {
        code.to_owned()
    } else {
        format!("{code}: {detail}")
    };
    // Printable ASCII only after encoding: always a valid header value.
    HeaderValue::from_str(&percent_encode(&text)).unwrap_or(HeaderValue::from_static(""))
}

/// A response the gateway or the guard answered itself (it carries
/// [`portcullis::http::Refused`]) re-answered as a gRPC client expects:
/// HTTP 200, `content-type: application/grpc`, `grpc-status` and
/// `grpc-message`, headers only (trailers-only). The refusal's other
/// headers (request id, `WWW-Authenticate`, `Retry-After`) stay. A
/// response relayed from the upstream is returned as it is.
pub fn answer_own_refusal(response: Response<ResponseBody>) -> Response<ResponseBody> {
    let Some(refused) = response.extensions().get::<portcullis::http::Refused>() else {
        return response;
    };
    let code = Code::of(response.status(), &refused.code);
    let grpc_message = message(&refused.code, &refused.detail);
    let (mut head, _problem) = response.into_parts();
    head.status = StatusCode::OK;
    head.headers.remove(header::CONTENT_LENGTH);
    head.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    head.headers.insert(GRPC_STATUS, code.header_value());
    head.headers.insert(GRPC_MESSAGE, grpc_message);
    Response::from_parts(head, full(Bytes::new()))
}

/// A relayed gRPC response body that ends, when the call's deadline
/// passes first, with trailers `grpc-status: 4` (the upstream's stream is
/// dropped, which cancels it).
pub struct DeadlineBody {
    inner: Option<ResponseBody>,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    /// `inner`, due complete at `deadline` (`timeout` after the call started).
    pub fn wrap(inner: ResponseBody, deadline: Instant, timeout: Duration) -> ResponseBody {
        Self {
            inner: Some(inner),
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            timeout,
        }
        .boxed_unsync()
    }

    fn expired(&self) -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, Code::DeadlineExceeded.header_value());
        trailers.insert(
            GRPC_MESSAGE,
            message(
                DEADLINE_EXCEEDED_CODE,
                &format!(
                    "the call's grpc-timeout of {} ms passed",
                    self.timeout.as_millis()
                ),
            ),
        );
        trailers
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            if frame.is_none() {
                this.inner = None;
            }
            return Poll::Ready(frame);
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.inner = None;
            metrics::counter!(DEADLINE_EXCEEDED_METRIC).increment(1);
            tracing::debug!(timeout = ?this.timeout, "gRPC call past its grpc-timeout; ended with status 4");
            return Poll::Ready(Some(Ok(Frame::trailers(this.expired()))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_content_type(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc(&with_content_type(yes)), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpcx",
            "application/json",
            "",
        ] {
            assert!(!is_grpc(&with_content_type(no)), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeouts_parse_per_the_spec_and_nothing_else_does() {
        let t = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(GRPC_TIMEOUT, HeaderValue::from_static(v));
            timeout(&h)
        };
        assert_eq!(t("1H"), Ok(Some(Duration::from_secs(3600))));
        assert_eq!(t("2M"), Ok(Some(Duration::from_secs(120))));
        assert_eq!(t("3S"), Ok(Some(Duration::from_secs(3))));
        assert_eq!(t("250m"), Ok(Some(Duration::from_millis(250))));
        assert_eq!(t("99999999u"), Ok(Some(Duration::from_micros(99_999_999))));
        assert_eq!(t("7n"), Ok(Some(Duration::from_nanos(7))));
        for bad in [
            "",
            "m",
            "123456789m",
            "1s",
            "1.5S",
            "-1S",
            " 1S",
            "1S ",
            "10",
        ] {
            assert_eq!(t(bad), Err(BadTimeout), "{bad:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), Ok(None));
        let mut two = HeaderMap::new();
        two.append(GRPC_TIMEOUT, HeaderValue::from_static("1S"));
        two.append(GRPC_TIMEOUT, HeaderValue::from_static("2S"));
        assert_eq!(timeout(&two), Err(BadTimeout));
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(
            percent_encode("auth.missing_credentials: no token"),
            "auth.missing_credentials: no token"
        );
        assert_eq!(percent_encode("100% \u{e9}\n"), "100%25 %C3%A9%0A");
    }

    #[test]
    fn refusals_map_to_the_grpc_codes_clients_act_on() {
        let c = |s: u16, code: &str| Code::of(StatusCode::from_u16(s).unwrap(), code) as u8;
        assert_eq!(c(401, "auth.missing_credentials"), 16);
        assert_eq!(c(403, "authz.denied"), 7);
        assert_eq!(c(403, "anomaly.banned"), 7);
        assert_eq!(c(429, "rate_limit.exceeded"), 8);
        assert_eq!(c(413, "gateway.body_too_large"), 8);
        assert_eq!(c(400, "request.bad_host"), 3);
        assert_eq!(c(502, "gateway.upstream_unavailable"), 14);
        assert_eq!(c(503, "backend.unavailable"), 14);
        assert_eq!(c(504, "gateway.upstream_timeout"), 14);
        assert_eq!(c(504, DEADLINE_EXCEEDED_CODE), 4);
        assert_eq!(c(408, "gateway.request_timeout"), 4);
        assert_eq!(c(500, "gateway.internal_token_failed"), 13);
    }

    #[test]
    fn an_own_refusal_becomes_a_trailers_only_grpc_status() {
        let mut problem = crate::proxy::problem(
            StatusCode::UNAUTHORIZED,
            "auth.missing_credentials",
            "no credential: 100% missing",
            Some("rid-1"),
        );
        problem.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"api\""),
        );
        let r = answer_own_refusal(problem);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(r.headers()[GRPC_STATUS], "16");
        assert_eq!(
            r.headers()[GRPC_MESSAGE],
            "auth.missing_credentials: no credential: 100%25 missing"
        );
        assert_eq!(r.headers()["x-request-id"], "rid-1");
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
        assert!(r.body().is_end_stream(), "trailers-only: no body");

        // The upstream's own answer is relayed untouched.
        let mut relayed = Response::new(full("upstream"));
        *relayed.status_mut() = StatusCode::UNAUTHORIZED;
        let r = answer_own_refusal(relayed);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(!r.headers().contains_key(GRPC_STATUS));
    }
}
