//! The reverse proxy behind the `GuardLayer`: picks the upstream of the
//! guard's route, rewrites the headers (hop-by-hop out but `te: trailers`,
//! forwarding and identity headers in from the guard's view) and streams
//! both bodies, trailers included, through a pooled keep-alive client:
//! one HTTP/1.1 pool and one HTTP/2 (`h2c`) pool shared by the plain
//! `http://` upstreams, one per `https://` upstream (each has its own TLS
//! config; HTTP/2 by ALPN for `protocol = "h2"`). A gRPC call's
//! `grpc-timeout` shortens the wait for the upstream. It decides nothing:
//! a request that reaches it was allowed.
//!
//! Over 800 lines with its tests (about 140): `Proxy::forward`, one
//! request from upstream choice to relayed answer, reads best whole; the
//! bodies are in `body.rs`, the header rules in `headers.rs`.

mod body;
pub(crate) mod canonical;
pub(crate) mod deadline;
pub(crate) mod grpc;
mod headers;
pub(crate) mod identity;
pub(crate) mod upstream_tls;
pub(crate) mod websocket;

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portcullis::http::{ClientIp, DryRunRefusal, MatchedRoute, PeerAddr, Principal, RequestId};

use crate::config::{Config, IdentityHeaders, UpstreamProtocol};
use crate::proxy::upstream_tls::ConnectDeadline;
pub use body::{
    BodyTooLarge, BoxError, RequestBody, ResponseBody, full, linger, problem, refusal, too_large,
};
pub use headers::{ClientTls, IdentityNames, remove_names, set_forwarding, strip_hop_by_hop};
pub(crate) use headers::{Outgoing, accepts_trailers};

/// An upstream: scheme and authority, a path prefix, and the client that
/// reaches it.
#[derive(Debug)]
struct Upstream {
    name: Arc<str>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    prefix: String,
    protocol: UpstreamProtocol,
    client: UpstreamClient,
    /// `portcullis_gateway_upstream_duration_seconds` for this upstream,
    /// resolved on first use (not looked up by label on every request).
    duration: std::sync::OnceLock<metrics::Histogram>,
}

/// The pooled client of an upstream.
#[derive(Debug, Clone)]
enum UpstreamClient {
    /// `http://`: the pool shared by every plain upstream of one protocol
    /// (HTTP/1.1, or HTTP/2 with prior knowledge for `h2c`).
    Plain(Client<HttpConnector, RequestBody>),
    /// `https://`: this upstream's own pool, over its TLS config (ALPN
    /// `h2` alone for `protocol = "h2"`, no ALPN for HTTP/1.1).
    Tls(Client<ConnectDeadline<HttpsConnector<HttpConnector>>, RequestBody>),
}

impl UpstreamClient {
    fn request(&self, req: Request<RequestBody>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            Self::Plain(c) => c.request(req),
            Self::Tls(c) => c.request(req),
        }
    }
}

impl Upstream {
    /// The URI of a request on this upstream: its prefix, then the
    /// request's path and query. Without a prefix the request's path is
    /// shared, not copied.
    fn target(&self, path_and_query: Option<&http::uri::PathAndQuery>) -> Option<Uri> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(match path_and_query {
            Some(pq) if self.prefix.is_empty() => pq.clone(),
            pq => {
                let rest = pq.map_or("/", http::uri::PathAndQuery::as_str);
                http::uri::PathAndQuery::try_from(format!("{}{rest}", self.prefix)).ok()?
            }
        });
        Uri::from_parts(parts).ok()
    }
}

/// The reverse proxy service; cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

struct ProxyInner {
    by_route: HashMap<Arc<str>, Arc<Upstream>>,
    default: Option<Arc<Upstream>>,
    identity: IdentityNames,
    read_timeout: Duration,
    /// Longest wait for the next bytes of an upstream's response body.
    body_timeout: Duration,
    /// The process's WebSocket tunnels, their cap and idle timeout.
    tunnels: Arc<crate::proxy::deadline::Tunnels>,
    max_websockets: usize,
    websocket_idle_timeout: Duration,
    max_body: u64,
    trusted: portcullis_core::ratelimit::ClientIpConfig,
    outbound: crate::proxy::identity::Outbound,
}

/// Why the proxy could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProxyConfigError(String);

impl Proxy {
    /// The proxy of a validated configuration; `outbound` sets what each
    /// upstream learns of the caller (internal token, credential hidden);
    /// `tunnels` counts the process's WebSocket tunnels across reloads.
    pub fn new(
        config: &Config,
        outbound: crate::proxy::identity::Outbound,
        tunnels: Arc<crate::proxy::deadline::Tunnels>,
    ) -> Result<Self, ProxyConfigError> {
        let tcp = |enforce_http: bool| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(config.server.upstream_connect_timeout));
            connector.set_nodelay(true);
            // `https://` URIs reach the TLS layer through it.
            connector.enforce_http(enforce_http);
            connector
        };
        let pooled = || {
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(256);
            builder
        };
        // HTTP/2 connections carry every request to their upstream at once;
        // a ping every 30 s finds one that died silently while idle.
        let http2 = || {
            let mut builder = pooled();
            builder
                .http2_only(true)
                .timer(TokioTimer::new())
                .http2_keep_alive_interval(Duration::from_secs(30))
                .http2_keep_alive_timeout(Duration::from_secs(10))
                .http2_keep_alive_while_idle(true);
            builder
        };
        let plain = pooled().build(tcp(true));
        let h2c = http2().build(tcp(true));
        let mut by_route = HashMap::new();
        let mut default = None;
        for up in &config.upstreams {
            let uri: Uri = up
                .url
                .parse()
                .map_err(|_| ProxyConfigError(format!("upstream `{}`: bad url", up.name)))?;
            let authority = uri
                .authority()
                .cloned()
                .ok_or_else(|| ProxyConfigError(format!("upstream `{}`: no host", up.name)))?;
            let tls = crate::proxy::upstream_tls::UpstreamTls::load(up)
                .map_err(|e| ProxyConfigError(e.to_string()))?;
            let (scheme, client) = match tls {
                None if up.protocol == UpstreamProtocol::H2c => {
                    (http::uri::Scheme::HTTP, UpstreamClient::Plain(h2c.clone()))
                }
                None => (
                    http::uri::Scheme::HTTP,
                    UpstreamClient::Plain(plain.clone()),
                ),
                Some(tls) => {
                    if tls.insecure {
                        tracing::warn!(
                            upstream = %up.name,
                            "insecure_skip_verify is set: the upstream's certificate is NOT verified, anyone on the network path can impersonate it"
                        );
                    }
                    let builder = HttpsConnectorBuilder::new()
                        .with_tls_config(tls.config)
                        .https_only();
                    let builder = match tls.server_name {
                        Some(name) => {
                            builder.with_server_name_resolver(FixedServerNameResolver::new(name))
                        }
                        None => builder,
                    };
                    // hyper-rustls sets the ALPN list itself: `h2` alone, or
                    // none for HTTP/1.1 (a TLS server's default).
                    let limit = config.server.upstream_connect_timeout;
                    let client = if up.protocol == UpstreamProtocol::H2 {
                        let connector = builder.enable_http2().wrap_connector(tcp(false));
                        http2().build(ConnectDeadline::new(connector, limit))
                    } else {
                        let connector = builder.enable_http1().wrap_connector(tcp(false));
                        pooled().build(ConnectDeadline::new(connector, limit))
                    };
                    (http::uri::Scheme::HTTPS, UpstreamClient::Tls(client))
                }
            };
            let upstream = Arc::new(Upstream {
                name: Arc::from(up.name.as_str()),
                scheme,
                authority,
                prefix: uri.path().trim_end_matches('/').to_owned(),
                protocol: up.protocol,
                client,
                duration: std::sync::OnceLock::new(),
            });
            for r in &up.routes {
                by_route.insert(Arc::from(r.as_str()), Arc::clone(&upstream));
            }
            if up.default {
                default = Some(upstream);
            }
        }
        let identity =
            IdentityNames::new(&config.identity).map_err(|e| ProxyConfigError(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(ProxyInner {
                by_route,
                default,
                identity,
                read_timeout: config.server.upstream_read_timeout,
                body_timeout: config.server.upstream_body_timeout,
                tunnels,
                max_websockets: config.server.max_websockets,
                websocket_idle_timeout: config.server.websocket_idle_timeout,
                max_body: config.server.max_body_bytes,
                trusted: config.guard.client_ip.clone(),
                outbound,
            }),
        })
    }

    /// The upstream of `route` and the URI a request for `path_and_query`
    /// is sent to there (explain); `None`: no upstream serves it.
    pub(crate) fn target(
        &self,
        route: Option<&str>,
        path_and_query: Option<&http::uri::PathAndQuery>,
    ) -> Option<(&str, Option<Uri>)> {
        self.upstream_of(route)
            .map(|u| (&*u.name, u.target(path_and_query)))
    }

    fn upstream_of(&self, route: Option<&str>) -> Option<&Arc<Upstream>> {
        let inner = &*self.inner;
        route
            .and_then(|r| inner.by_route.get(r))
            .or(inner.default.as_ref())
    }

    /// Rewrites `headers` as the upstream of `out` receives them:
    /// hop-by-hop and Connection-named headers out, identity headers
    /// stripped and set from the principal, the request id and dry-run
    /// headers, the upstream's outbound identity (credentials hidden, an
    /// internal token), forwarding headers from the guard's view, no `Host`.
    pub(crate) fn rewrite_headers(
        &self,
        headers: &mut HeaderMap,
        out: &Outgoing<'_>,
    ) -> Result<(), crate::proxy::identity::SignError> {
        let inner = &*self.inner;
        let trailers = accepts_trailers(headers);
        strip_hop_by_hop(headers);
        // `te` is hop-by-hop, but `trailers` in it says the client reads
        // trailers (gRPC needs it end to end); any other value stays out.
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if let Some(protocol) = out.websocket {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        inner.identity.strip(headers);
        if let Some(p) = out.principal {
            inner.identity.write(p, headers);
        }
        // The gateway's own headers are set after the hop-by-hop strip, so
        // a client's `Connection: x-request-id` cannot remove them.
        if let Some(v) = out.request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            headers.insert(portcullis::http::REQUEST_ID, v);
        }
        headers.remove(crate::proxy::canonical::DRY_RUN_HEADER);
        if let Some(code) = out.dry_run
            && let Ok(v) = HeaderValue::from_str(&format!("would-deny {}", code.as_str()))
        {
            headers.insert(crate::proxy::canonical::DRY_RUN_HEADER, v);
        }
        inner
            .outbound
            .apply(out.upstream, out.principal, out.request_id, headers)?;
        let from_trusted_proxy = out.peer.is_some_and(|ip| inner.trusted.is_trusted(ip));
        set_forwarding(
            headers,
            out.peer.or(out.client_ip),
            out.original_host.as_ref(),
            from_trusted_proxy,
            out.tls,
        );
        headers.remove(header::HOST);
        Ok(())
    }

    /// The identity header names.
    pub fn identity(&self) -> &IdentityNames {
        &self.inner.identity
    }

    /// Forwards one allowed request.
    pub async fn forward(&self, req: Request<RequestBody>) -> Response<ResponseBody> {
        let inner = &*self.inner;
        let (mut parts, body) = req.into_parts();
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
        let rid = request_id.as_deref();
        let route = parts
            .extensions
            .get::<MatchedRoute>()
            .map(|r| Arc::clone(&r.0));
        let upstream = match self.upstream_of(route.as_deref()) {
            Some(u) => Arc::clone(u),
            None => {
                return problem(
                    StatusCode::BAD_GATEWAY,
                    "gateway.no_upstream",
                    "no upstream serves this route",
                    rid,
                );
            }
        };

        // The URI on the upstream: its prefix, then the request's path and query.
        let Some(uri) = upstream.target(parts.uri.path_and_query()) else {
            return problem(
                StatusCode::BAD_REQUEST,
                "gateway.bad_request",
                "the request target cannot be forwarded",
                rid,
            );
        };

        // A gRPC call's deadline bounds the wait for the upstream.
        let grpc_deadline = if crate::proxy::grpc::is_grpc(&parts.headers) {
            match crate::proxy::grpc::timeout(&parts.headers) {
                Ok(deadline) => deadline,
                Err(e) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "gateway.bad_grpc_timeout",
                        &e.to_string(),
                        rid,
                    );
                }
            }
        } else {
            None
        };

        // A WebSocket handshake keeps its `Connection: upgrade` / `Upgrade`
        // pair; an HTTP/2 WebSocket (extended CONNECT, now a marked GET)
        // becomes such a handshake to the upstream.
        let h2_websocket = parts
            .extensions
            .remove::<crate::proxy::websocket::H2WebSocket>()
            .is_some();
        let websocket = if h2_websocket {
            Some(HeaderValue::from_static("websocket"))
        } else {
            websocket_upgrade(&parts)
        };
        if websocket.is_some() && upstream.protocol.is_http2() {
            return problem(
                StatusCode::NOT_IMPLEMENTED,
                "gateway.websocket_unsupported",
                "this route's upstream speaks HTTP/2; a WebSocket needs an upstream with protocol = \"http1\"",
                rid,
            );
        }
        // A tunnel's place is taken before the upstream is asked.
        let tunnel = match &websocket {
            Some(_) => match inner.tunnels.try_open(inner.max_websockets) {
                Some(slot) => Some(slot),
                None => {
                    return problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "gateway.too_many_websockets",
                        "the gateway has as many WebSocket tunnels open as it allows",
                        rid,
                    );
                }
            },
            None => None,
        };
        let client_upgrade = websocket
            .is_some()
            .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
            .flatten();
        // An HTTP/2 tunnel is a stream of a connection that stays open for
        // it: the connection is not idle while the tunnel is.
        let busy = h2_websocket
            .then(|| {
                parts
                    .extensions
                    .get::<crate::proxy::deadline::ConnActivity>()
                    .map(|a| a.0.start())
            })
            .flatten();

        // Headers: hop-by-hop and Connection-named out; identity stripped,
        // then set from the principal; forwarding headers from the guard's view.
        let mut headers = std::mem::take(&mut parts.headers);
        let outgoing = Outgoing::of(&parts, &headers, &upstream.name, websocket.as_ref(), rid);
        let rewritten = self.rewrite_headers(&mut headers, &outgoing);
        drop(outgoing);
        // The client of an HTTP/2 WebSocket never sent a key: the gateway
        // makes one and checks the upstream's answer to it.
        let expected_accept = match h2_websocket
            .then(|| crate::proxy::websocket::upstream_handshake(&mut headers))
            .transpose()
        {
            Ok(accept) => accept,
            Err(e) => {
                tracing::error!(error = %e, "WebSocket handshake key not made");
                return problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "gateway.websocket_key_failed",
                    "the gateway could not make a WebSocket handshake key",
                    rid,
                );
            }
        };
        parts.headers = headers;
        if let Err(e) = rewritten {
            tracing::error!(upstream = %upstream.name, error = %e, "internal token not signed");
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "gateway.internal_token_failed",
                "the gateway could not sign the upstream's identity token",
                rid,
            );
        }
        parts.uri = uri;
        parts.version = if upstream.protocol.is_http2() {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };

        let started = Instant::now();
        // An extended CONNECT has no body (hyper refuses one): the upstream's
        // GET is sent without one.
        let body = if h2_websocket {
            RequestBody::from(Bytes::new())
        } else {
            body
        };
        let sent = upstream.client.request(Request::from_parts(parts, body));
        // The gateway waits no longer than the call's own deadline.
        let wait = grpc_deadline.map_or(inner.read_timeout, |d| d.min(inner.read_timeout));
        let result = tokio::time::timeout(wait, sent).await;
        let response = match result {
            Err(_) if grpc_deadline.is_some_and(|d| d <= inner.read_timeout) => {
                metrics::counter!(crate::proxy::grpc::DEADLINE_EXCEEDED_METRIC).increment(1);
                tracing::debug!(upstream = %upstream.name, timeout = ?wait, "gRPC call past its grpc-timeout before the upstream answered");
                return problem(
                    StatusCode::GATEWAY_TIMEOUT,
                    crate::proxy::grpc::DEADLINE_EXCEEDED_CODE,
                    &format!(
                        "the call's grpc-timeout of {} ms passed before the upstream answered",
                        wait.as_millis()
                    ),
                    rid,
                );
            }
            Err(_) => {
                upstream_failure(&upstream, "timeout");
                tracing::warn!(upstream = %upstream.name, "upstream timed out");
                return problem(
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway.upstream_timeout",
                    "the upstream did not answer in time",
                    rid,
                );
            }
            Ok(Err(e)) => {
                if let Some(late) = find_cause::<crate::proxy::deadline::BodyTimedOut>(&e) {
                    return crate::proxy::deadline::timed_out_problem(late.0, rid);
                }
                if find_cause::<BodyTooLarge>(&e).is_some() {
                    return problem(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "gateway.body_too_large",
                        &format!("the request body exceeds {} bytes", inner.max_body),
                        rid,
                    );
                }
                if let Some((reason, tls)) = crate::proxy::upstream_tls::failure(&e) {
                    upstream_failure(&upstream, "tls");
                    metrics::counter!(
                        "portcullis_gateway_upstream_tls_failures_total",
                        "upstream" => metrics::SharedString::from(Arc::clone(&upstream.name)),
                        "reason" => reason
                    )
                    .increment(1);
                    tracing::warn!(
                        upstream = %upstream.name,
                        reason,
                        error = %tls,
                        "upstream TLS failed: no verified connection to the upstream"
                    );
                    return problem(
                        StatusCode::BAD_GATEWAY,
                        "gateway.upstream_unavailable",
                        "the gateway could not establish a verified TLS connection to the upstream",
                        rid,
                    );
                }
                upstream_failure(&upstream, "unavailable");
                match find_cause::<crate::proxy::upstream_tls::ConnectTimedOut>(&e) {
                    Some(late) => {
                        tracing::warn!(upstream = %upstream.name, error = %late, "upstream request failed");
                    }
                    None => {
                        tracing::warn!(upstream = %upstream.name, error = %e, "upstream request failed");
                    }
                }
                return problem(
                    StatusCode::BAD_GATEWAY,
                    "gateway.upstream_unavailable",
                    "the upstream could not be reached or failed to answer",
                    rid,
                );
            }
            Ok(Ok(r)) => r,
        };
        let elapsed = started.elapsed();
        upstream
            .duration
            .get_or_init(|| {
                metrics::histogram!(
                    "portcullis_gateway_upstream_duration_seconds",
                    "upstream" => metrics::SharedString::from(Arc::clone(&upstream.name))
                )
            })
            .record(elapsed.as_secs_f64());
        tracing::debug!(upstream = %upstream.name, elapsed_us = elapsed.as_micros() as u64, "upstream answered");
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return match (websocket, client_upgrade, tunnel) {
                (Some(protocol), Some(client), Some(slot)) => {
                    let answer = match expected_accept {
                        None => Answer::Upgrade(protocol),
                        Some(expected) => {
                            if !crate::proxy::websocket::accepted(response.headers(), &expected) {
                                upstream_failure(&upstream, "unavailable");
                                tracing::warn!(upstream = %upstream.name, "upstream's Sec-WebSocket-Accept does not match the key sent");
                                return problem(
                                    StatusCode::BAD_GATEWAY,
                                    "gateway.upstream_unavailable",
                                    "the upstream's WebSocket handshake answer is not valid",
                                    rid,
                                );
                            }
                            Answer::Stream
                        }
                    };
                    let idle = inner.websocket_idle_timeout;
                    let held = Held {
                        _slot: slot,
                        _busy: busy,
                    };
                    switch_protocols(response, answer, client, &upstream, rid, (held, idle))
                }
                // A 101 nobody asked for cannot be relayed.
                _ => {
                    upstream_failure(&upstream, "unavailable");
                    problem(
                        StatusCode::BAD_GATEWAY,
                        "gateway.upstream_unavailable",
                        "the upstream switched protocols unasked",
                        rid,
                    )
                }
            };
        }
        // An HTTP/2 client reads a 2xx to its CONNECT as an open tunnel; an
        // upstream that did not switch cannot be relayed as one.
        if h2_websocket && response.status().is_success() {
            upstream_failure(&upstream, "unavailable");
            return problem(
                StatusCode::BAD_GATEWAY,
                "gateway.upstream_unavailable",
                "the upstream answered the WebSocket handshake without switching protocols",
                rid,
            );
        }
        let (mut head, body) = response.into_parts();
        strip_hop_by_hop(&mut head.headers);
        // Each wait for the upstream's next bytes has its deadline.
        let mut body = crate::proxy::deadline::UpstreamBody::wrap(
            body,
            inner.body_timeout,
            Arc::clone(&upstream.name),
        );
        // A streaming call still running at its deadline ends with status 4.
        if let Some(timeout) = grpc_deadline {
            let deadline = tokio::time::Instant::from_std(started) + timeout;
            body = crate::proxy::grpc::DeadlineBody::wrap(body, deadline, timeout);
        }
        Response::from_parts(head, body)
    }
}

/// The `Upgrade` value of an HTTP/1.1 WebSocket handshake: `Connection`
/// names `upgrade` and `Upgrade` is `websocket`. Other protocols (`h2c`
/// ...) are not passed through: their `Upgrade` is stripped as hop-by-hop.
fn websocket_upgrade(parts: &http::request::Parts) -> Option<HeaderValue> {
    if parts.version != http::Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = parts.headers.get(header::UPGRADE)?;
    let websocket = upgrade
        .to_str()
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    (connection_upgrade && websocket).then(|| upgrade.clone())
}

/// How the client is told that its WebSocket is open.
enum Answer {
    /// HTTP/1.1: the upstream's 101, with this `Upgrade`.
    Upgrade(HeaderValue),
    /// HTTP/2 extended CONNECT: 200 on the stream, no `Sec-WebSocket-Accept`.
    Stream,
}

/// What an open tunnel holds until it closes: its place under
/// `server.max_websockets` and, over HTTP/2, its connection's activity.
struct Held {
    _slot: crate::proxy::deadline::TunnelSlot,
    _busy: Option<crate::proxy::deadline::InFlight>,
}

/// The upstream answered 101 to a WebSocket handshake: answer the client
/// (the 101 relayed, or 200 on an HTTP/2 stream), and once both sides have
/// switched, copy bytes both ways until either side closes.
fn switch_protocols(
    mut response: Response<Incoming>,
    answer: Answer,
    client: hyper::upgrade::OnUpgrade,
    upstream: &Upstream,
    request_id: Option<&str>,
    (held, idle): (Held, Duration),
) -> Response<ResponseBody> {
    let upstream_side = hyper::upgrade::on(&mut response);
    let (mut head, _) = response.into_parts();
    strip_hop_by_hop(&mut head.headers);
    match answer {
        Answer::Upgrade(protocol) => {
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            head.headers.insert(header::UPGRADE, protocol);
        }
        Answer::Stream => {
            head.status = StatusCode::OK;
            head.version = http::Version::HTTP_2;
            head.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
            head.headers.remove(header::CONTENT_LENGTH);
        }
    }
    let name = Arc::clone(&upstream.name);
    let request_id = request_id.map(str::to_owned);
    tokio::spawn(async move {
        let _held = held;
        let (client, upstream_side) = match tokio::join!(client, upstream_side) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(upstream = %name, client_ok = c.is_ok(), upstream_ok = u.is_ok(), "WebSocket upgrade did not complete");
                return;
            }
        };
        let client = hyper_util::rt::TokioIo::new(client);
        let upstream_side = hyper_util::rt::TokioIo::new(upstream_side);
        metrics::gauge!("portcullis_gateway_upgraded_connections").increment(1.0);
        let copied = crate::proxy::deadline::relay(client, upstream_side, idle).await;
        metrics::gauge!("portcullis_gateway_upgraded_connections").decrement(1.0);
        match copied {
            crate::proxy::deadline::TunnelEnd::Idle => tracing::info!(
                upstream = %name,
                request_id = request_id.as_deref().unwrap_or(""),
                ?idle,
                "WebSocket closed: no bytes either way"
            ),
            crate::proxy::deadline::TunnelEnd::Closed(up, down) => tracing::debug!(
                upstream = %name,
                request_id = request_id.as_deref().unwrap_or(""),
                bytes_to_upstream = up,
                bytes_to_client = down,
                "WebSocket closed"
            ),
            crate::proxy::deadline::TunnelEnd::Failed(e) => tracing::debug!(
                upstream = %name,
                request_id = request_id.as_deref().unwrap_or(""),
                error = %e,
                "WebSocket ended with an error"
            ),
        }
    });
    Response::from_parts(head, full(Bytes::new()))
}

fn upstream_failure(upstream: &Upstream, kind: &'static str) {
    metrics::counter!(
        "portcullis_gateway_upstream_failures_total",
        "upstream" => metrics::SharedString::from(Arc::clone(&upstream.name)),
        "kind" => kind
    )
    .increment(1);
}

/// Walks an error's sources for a `T`.
fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        current = err.source();
    }
    None
}

impl tower_service::Service<Request<RequestBody>> for Proxy {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::HOP_BY_HOP_NAMES;

    fn upstream(url: &str) -> Upstream {
        let uri: Uri = url.parse().unwrap_or_default();
        Upstream {
            name: Arc::from("app"),
            scheme: uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP),
            client: UpstreamClient::Plain(
                Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            ),
            authority: uri
                .authority()
                .cloned()
                .unwrap_or_else(|| http::uri::Authority::from_static("127.0.0.1:1")),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            duration: std::sync::OnceLock::new(),
            protocol: UpstreamProtocol::Http1,
        }
    }

    fn pq(s: &str) -> Option<http::uri::PathAndQuery> {
        http::uri::PathAndQuery::try_from(s).ok()
    }

    #[test]
    fn the_upstream_uri_keeps_path_and_query_after_the_prefix() {
        let bare = upstream("http://127.0.0.1:8080");
        let target = |u: &Upstream, p: Option<http::uri::PathAndQuery>| {
            u.target(p.as_ref()).map(|uri| uri.to_string())
        };
        assert_eq!(
            target(&bare, pq("/a/b?x=1&y=%20")).as_deref(),
            Some("http://127.0.0.1:8080/a/b?x=1&y=%20")
        );
        assert_eq!(
            target(&bare, None).as_deref(),
            Some("http://127.0.0.1:8080/")
        );
        let prefixed = upstream("http://10.0.0.2:9000/api/v1/");
        assert_eq!(
            target(&prefixed, pq("/users?id=7")).as_deref(),
            Some("http://10.0.0.2:9000/api/v1/users?id=7")
        );
        assert_eq!(
            target(&prefixed, None).as_deref(),
            Some("http://10.0.0.2:9000/api/v1/")
        );
        let tls = upstream("https://api.internal:8443/v2");
        assert_eq!(
            target(&tls, pq("/users?id=7")).as_deref(),
            Some("https://api.internal:8443/v2/users?id=7")
        );
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("proxy-connection", HeaderValue::from_static("close"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn remove_names_removes_every_value_of_each_name_in_small_and_large_maps() {
        for filler in [0, 40] {
            let mut headers = HeaderMap::new();
            for i in 0..filler {
                headers.insert(
                    HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("1"),
                );
            }
            headers.append(header::TRAILER, HeaderValue::from_static("a"));
            headers.append(header::TRAILER, HeaderValue::from_static("b"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
            headers.insert("x-kept", HeaderValue::from_static("1"));
            remove_names(&mut headers, &HOP_BY_HOP_NAMES);
            assert!(!headers.contains_key(header::TRAILER), "{filler} fillers");
            assert!(!headers.contains_key(header::UPGRADE), "{filler} fillers");
            assert!(headers.contains_key("x-kept"));
            assert_eq!(headers.keys_len(), filler + 1);
        }
    }

    #[test]
    fn te_trailers_is_told_from_other_codings() {
        let te = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::TE, HeaderValue::from_static(v));
            }
            accepts_trailers(&headers)
        };
        assert!(te(&["trailers"]));
        assert!(te(&["deflate;q=0.5, Trailers"]));
        assert!(te(&["gzip", "trailers;q=1"]));
        assert!(!te(&["gzip"]));
        assert!(!te(&["trailersx", "x-trailers"]));
        assert!(!te(&[]));
    }

    #[test]
    fn a_trusted_proxy_chain_is_extended_and_anyone_elses_replaced() {
        let peer = "10.0.0.9".parse().ok();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
        );
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        headers.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        let mut trusted = headers.clone();
        set_forwarding(&mut trusted, peer, None, true, false);
        assert_eq!(trusted["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(trusted["x-forwarded-proto"], "https");
        assert!(!trusted.contains_key(header::FORWARDED));

        let host = HeaderValue::from_static("api.example");
        set_forwarding(&mut headers, peer, Some(&host), false, false);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.9");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "api.example");
        assert!(!headers.contains_key(header::FORWARDED));
    }
}
