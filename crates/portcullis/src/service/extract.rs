//! What the token service's handlers take from a request: a bounded,
//! strict JSON body, the authenticated caller (bearer access token through
//! the cached verifier and the stores' revocation hook), and the client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use portcullis_core::{ErrorCode, Principal};
use serde::de::DeserializeOwned;

use super::Inner;
use super::problem::{BODY_TOO_LARGE, Problem, UNSUPPORTED_MEDIA_TYPE};

/// A JSON body of at most the configured size (16 KiB by default) whose
/// type rejects unknown fields (`#[serde(deny_unknown_fields)]`).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// Like [`JsonBody`], but an empty body is `None`.
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub Option<T>);

/// Reads at most `limit` bytes of body, refusing a declared or actual
/// length above it with 413.
async fn read_bounded(req: Request, limit: usize) -> Result<(Parts, Bytes), Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            BODY_TOO_LARGE,
            format!("request body exceeds {limit} bytes"),
        )
    };
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(Problem::bad_body("the request body could not be read")),
    }
}

fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> Result<T, Problem> {
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            UNSUPPORTED_MEDIA_TYPE,
            "send the body as Content-Type: application/json",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let detail = match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => format!(
                "body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
            // Names the field: unknown, missing or of the wrong type.
            Category::Data => {
                let mut msg = e.to_string();
                msg.truncate(
                    (0..=msg.len().min(200))
                        .rev()
                        .find(|&i| msg.is_char_boundary(i))
                        .unwrap_or(0),
                );
                msg
            }
        };
        Problem::bad_body(detail)
    })
}

/// A router state that bounds the JSON bodies [`JsonBody`] reads.
pub trait BodyLimit {
    /// The largest body accepted, in bytes (a larger one is 413).
    fn max_body_bytes(&self) -> usize;
}

impl BodyLimit for Arc<Inner> {
    fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
}

impl<T: DeserializeOwned + Send, S: BodyLimit + Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, bytes) = read_bounded(req, state.max_body_bytes()).await?;
        parse_json(&parts.headers, &bytes).map(Self)
    }
}

impl<T: DeserializeOwned + Send, S: BodyLimit + Send + Sync> FromRequest<S>
    for OptionalJsonBody<T>
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, bytes) = read_bounded(req, state.max_body_bytes()).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        parse_json(&parts.headers, &bytes).map(|v| Self(Some(v)))
    }
}

/// Who is calling, proven by a bearer access token of this issuer whose
/// session and `jti` are not revoked.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Principal>);

impl Caller {
    /// The user id (`sub`).
    pub fn user_id(&self) -> &str {
        &self.0.subject
    }
}

/// The bearer token of an `Authorization` header, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<Arc<Inner>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Inner>,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = bearer(&parts.headers) else {
            return Err(Problem::code(
                ErrorCode::MissingCredentials,
                "send the access token as `Authorization: Bearer <token>`",
            ));
        };
        match state.verifier.verify(token.as_bytes()).await {
            Ok(principal) => Ok(Self(principal)),
            Err(e) => {
                let code = e.code();
                if code == ErrorCode::BackendUnavailable {
                    return Err(Problem::unavailable(&e));
                }
                Err(Problem::code(code, e.to_string()))
            }
        }
    }
}

/// The client: its address (the peer, or what trusted proxies say), the
/// grouped address rate limits count by, and its user agent.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// The client's address, when the server was started with connect info.
    pub ip: Option<IpAddr>,
    /// `ip` grouped as the rate limiter counts it (IPv6 by prefix).
    pub key: Option<IpAddr>,
    /// The `User-Agent`.
    pub user_agent: Option<String>,
}

impl Client {
    /// The address as text, for records and detectors.
    pub fn ip_text(&self) -> Option<String> {
        self.ip.map(|ip| ip.to_string())
    }
}

/// Every line of `name` joined by commas; `None` when absent or not text.
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let v = v.to_str().ok()?;
        match &mut out {
            None => out = Some(v.to_owned()),
            Some(s) => {
                s.push(',');
                s.push_str(v);
            }
        }
    }
    out
}

impl FromRequestParts<Arc<Inner>> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Inner>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        let ip = peer.map(|peer| {
            let forwarded = joined(&parts.headers, "forwarded");
            let xff = joined(&parts.headers, "x-forwarded-for");
            state
                .client_ip
                .client_ip(peer, forwarded.as_deref(), xff.as_deref())
        });
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        Ok(Self {
            key: ip.map(|ip| state.client_ip.group(ip)),
            ip,
            user_agent,
        })
    }
}
