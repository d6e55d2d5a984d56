//! The request path of the public listener as one value: which surface
//! answers a request (token service, forward-auth, JWKS, guarded proxy),
//! its per-surface metrics, and the body limit and deadline in front of the
//! guard. A reload replaces the whole value.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis::Guard;
use portcullis::http::{GuardService, PeerAddr};
use tower_service::Service;

use crate::forward_auth::ForwardAuth;
use crate::proxy::canonical::under;
use crate::proxy::deadline::TimedBody;
use crate::proxy::{Proxy, RequestBody, ResponseBody};

/// Everything the request path shares; replaced whole by a reload.
pub(crate) struct App {
    pub(crate) token_service: Option<(String, axum::Router)>,
    pub(crate) forward_auth: Option<(String, ForwardAuth)>,
    pub(crate) guarded: GuardService<Proxy>,
    pub(crate) guard: Guard,
    /// This request path explained (`POST /admin/explain`).
    pub(crate) explainer: crate::explain::Explainer,
    /// The canonical form every request is brought to first.
    pub(crate) canonical: crate::proxy::canonical::Canonicalizer,
    pub(crate) max_body: u64,
    /// Time a request body gets to arrive whole (`server.request_body_timeout`).
    pub(crate) body_timeout: Duration,
    /// The gateway's public JWKS and where it is served.
    pub(crate) jwks: (String, Bytes),
    /// The per-request metric handles.
    pub(crate) request_metrics: RequestMetrics,
}

/// The request counter and duration histogram, by surface and (common)
/// status, each resolved once on first use: a `metrics::counter!` with
/// labels hashes them and allocates a key in the registry on every call.
#[derive(Default)]
pub(crate) struct RequestMetrics {
    pub(crate) requests:
        [[std::sync::OnceLock<metrics::Counter>; COMMON_STATUSES.len()]; Surface::ALL.len()],
    pub(crate) durations: [std::sync::OnceLock<metrics::Histogram>; Surface::ALL.len()],
}

impl RequestMetrics {
    pub(crate) fn count(&self, surface: Surface, status: StatusCode) {
        let common = COMMON_STATUSES
            .iter()
            .position(|&(code, _)| code == status.as_u16());
        let Some(i) = common else {
            metrics::counter!(
                "portcullis_gateway_requests_total",
                "surface" => surface.as_str(),
                "status" => status_label(status)
            )
            .increment(1);
            return;
        };
        self.requests[surface as usize][i]
            .get_or_init(|| {
                metrics::counter!(
                    "portcullis_gateway_requests_total",
                    "surface" => surface.as_str(),
                    "status" => status_label(status)
                )
            })
            .increment(1);
    }

    pub(crate) fn time(&self, surface: Surface, elapsed: Duration) {
        self.durations[surface as usize]
            .get_or_init(|| {
                metrics::histogram!("portcullis_gateway_request_duration_seconds", "surface" => surface.as_str())
            })
            .record(elapsed.as_secs_f64());
    }
}

/// A status as a metric label: the common ones without allocating.
/// The statuses whose label needs no allocation (and whose request
/// counters are held, see `RequestMetrics`).
pub(crate) const COMMON_STATUSES: [(u16, &str); 16] = [
    (200, "200"),
    (201, "201"),
    (204, "204"),
    (301, "301"),
    (302, "302"),
    (304, "304"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (413, "413"),
    (429, "429"),
    (500, "500"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];

pub(crate) fn status_label(status: StatusCode) -> metrics::SharedString {
    match COMMON_STATUSES
        .iter()
        .find(|&&(code, _)| code == status.as_u16())
    {
        Some(&(_, label)) => metrics::SharedString::const_str(label),
        None => metrics::SharedString::from(status.as_str().to_owned()),
    }
}

/// Which part of the public listener answered, for metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Surface {
    TokenService,
    ForwardAuth,
    Jwks,
    Proxy,
}

impl Surface {
    const ALL: [Surface; 4] = [
        Self::TokenService,
        Self::ForwardAuth,
        Self::Jwks,
        Self::Proxy,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::TokenService => "token_service",
            Self::ForwardAuth => "forward_auth",
            Self::Jwks => "jwks",
            Self::Proxy => "proxy",
        }
    }
}

impl App {
    /// 400 for a request with no single meaning, audited by the guard.
    pub(crate) fn refuse_malformed(
        &self,
        parts: &http::request::Parts,
        peer: SocketAddr,
        why: portcullis_core::canonical::NonCanonical,
    ) -> Response<ResponseBody> {
        metrics::counter!("portcullis_gateway_noncanonical_refused_total", "reason" => why.code())
            .increment(1);
        let mut decision =
            self.guard
                .malformed(parts, Some(peer.ip()), why.code(), &why.to_string());
        let response = crate::proxy::canonical::refusal(why, &decision.request_id);
        decision.finish(response.status());
        response
    }

    /// One request on the public listener, counted and timed by surface and status.
    pub(crate) async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let started = std::time::Instant::now();
        // The body is due whole within the deadline, on every surface;
        // whatever answer a late body caused becomes a 408.
        let version = req.version();
        let grpc = crate::proxy::grpc::is_grpc(req.headers());
        let (req, expired) = TimedBody::wrap(req, self.body_timeout);
        let (surface, mut response) = self.dispatch(req, peer).await;
        if expired.fired() {
            response = crate::proxy::deadline::request_timeout(
                response,
                version,
                self.body_timeout,
                surface.as_str(),
            );
        }
        self.request_metrics.count(surface, response.status());
        self.request_metrics.time(surface, started.elapsed());
        // A gRPC client reads a status, not problem+json: the gateway's own
        // refusals on the proxy are answered as one (counted above, and
        // audited by the guard, with their HTTP status).
        if grpc && matches!(surface, Surface::Proxy) {
            response = crate::proxy::grpc::answer_own_refusal(response);
        }
        response
    }

    pub(crate) async fn dispatch(
        &self,
        mut req: Request<TimedBody>,
        peer: SocketAddr,
    ) -> (Surface, Response<ResponseBody>) {
        req.extensions_mut().insert(PeerAddr(peer));
        // One request, one meaning: every surface sees the canonical form.
        let (mut parts, body) = req.into_parts();
        let tls = parts.extensions.get::<crate::proxy::ClientTls>().is_some();
        // An HTTP/2 WebSocket (extended CONNECT) is decided as the GET of
        // an HTTP/1.1 handshake.
        if let Err(e) = crate::proxy::websocket::from_extended_connect(&mut parts) {
            return (
                Surface::Proxy,
                crate::proxy::problem(
                    StatusCode::NOT_IMPLEMENTED,
                    "gateway.protocol_unsupported",
                    &e.to_string(),
                    None,
                ),
            );
        }
        if let Err(crate::proxy::canonical::Refused(why)) =
            self.canonical.apply(&mut parts, peer.ip(), tls)
        {
            return (Surface::Proxy, self.refuse_malformed(&parts, peer, why));
        }
        let mut req = Request::from_parts(parts, body);
        let path = req.uri().path();
        if path == self.jwks.0 {
            return (
                Surface::Jwks,
                crate::proxy::identity::jwks_response(&req, &self.jwks.1),
            );
        }
        if let Some((prefix, router)) = &self.token_service
            && under(path, prefix)
        {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let mut router = router.clone();
            let response = match router.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            return (
                Surface::TokenService,
                response.map(|b| {
                    b.map_err(|e| Box::new(e) as crate::proxy::BoxError)
                        .boxed_unsync()
                }),
            );
        }
        if let Some((prefix, fa)) = &self.forward_auth
            && under(path, prefix)
        {
            let rest = path[prefix.len()..].to_owned();
            return (Surface::ForwardAuth, fa.handle(req, peer, &rest).await);
        }
        // The body limit: a declared length over it is refused before any work.
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            // A client that asked `Expect: 100-continue` has sent no body
            // yet and waits for this answer: reading would invite the body.
            if !req.headers().contains_key(http::header::EXPECT) {
                crate::proxy::linger(req.into_body());
            }
            return (Surface::Proxy, crate::proxy::too_large(self.max_body));
        }
        let req = req.map(|body| RequestBody::limited(body, self.max_body));
        let mut guarded = self.guarded.clone();
        let response = match guarded.call(req).await {
            Ok(response) => response.map(|b| b.map_err(Into::into).boxed_unsync()),
            Err(never) => match never {},
        };
        (Surface::Proxy, response)
    }
}
