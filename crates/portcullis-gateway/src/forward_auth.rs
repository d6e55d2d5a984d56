//! Forward-auth endpoints: a proxy in front of the app (nginx
//! `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth`, Envoy
//! `ext_authz` over HTTP) asks whether the original request may pass.
//! The original request is rebuilt from the dialect's headers, believed
//! only from the guard's trusted proxies, and decided by `Guard::check`;
//! the answer honours each proxy's contract and carries the identity in
//! response headers for `copy_headers` / `authResponseHeaders`.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use portcullis::Guard;
use portcullis_core::ratelimit::ClientIpConfig;

use crate::proxy::{IdentityNames, ResponseBody, full, strip_hop_by_hop};

/// The header that names the refusal's stable code when the status cannot
/// (nginx maps 429 / 503 to 403).
pub const CODE_HEADER: &str = "x-portcullis-code";

/// How a proxy describes the original request and what it accepts back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// `X-Original-URI`, `X-Original-Method`; only 2xx / 401 / 403 answers.
    Nginx,
    /// `X-Forwarded-Method/Proto/Host/Uri`.
    Traefik,
    /// Same headers as Traefik.
    Caddy,
    /// The original path is the request path under `/envoy`; exactly 200 allows.
    Envoy,
}

/// The forward-auth endpoints.
#[derive(Clone)]
pub struct ForwardAuth {
    guard: Guard,
    identity: IdentityNames,
    trusted: ClientIpConfig,
    canonical: crate::proxy::canonical::Canonicalizer,
}

impl ForwardAuth {
    /// Endpoints deciding with `guard`, believing only `trusted_proxies`;
    /// the original request must have the canonical form `canonical` checks.
    pub fn new(
        guard: Guard,
        identity: IdentityNames,
        trusted_proxies: ClientIpConfig,
        canonical: crate::proxy::canonical::Canonicalizer,
    ) -> Self {
        Self {
            guard,
            identity,
            trusted: trusted_proxies,
            canonical,
        }
    }

    /// Answers a request whose path under the prefix is `rest`.
    pub async fn handle<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
        rest: &str,
    ) -> Response<ResponseBody> {
        let (dialect, envoy_path) = match rest {
            "/nginx" => (Dialect::Nginx, None),
            "/traefik" => (Dialect::Traefik, None),
            "/caddy" => (Dialect::Caddy, None),
            r if r == "/envoy" || r.starts_with("/envoy/") => {
                let path = &r["/envoy".len()..];
                (
                    Dialect::Envoy,
                    Some(if path.is_empty() { "/" } else { path }.to_owned()),
                )
            }
            _ => {
                return plain(
                    StatusCode::NOT_FOUND,
                    "unknown forward-auth dialect; use /nginx, /traefik, /caddy or /envoy",
                );
            }
        };
        let peer_ip = peer.ip().to_canonical();
        if !self.trusted.is_trusted(peer_ip) {
            tracing::warn!(%peer, "forward-auth call from an untrusted peer refused");
            return answer(
                dialect,
                StatusCode::FORBIDDEN,
                "gateway.untrusted_proxy",
                "forward-auth answers only the proxies listed in guard.client_ip.trusted_proxies",
                HeaderMap::new(),
            );
        }
        let (parts, _body) = req.into_parts();
        let Some(mut original) = original_parts(dialect, &parts, envoy_path.as_deref()) else {
            return answer(
                dialect,
                StatusCode::FORBIDDEN,
                "gateway.bad_forward_auth",
                "the original request is not described: send X-Original-URI and X-Forwarded-Host (nginx) or X-Forwarded-Uri, X-Forwarded-Method and X-Forwarded-Host (Traefik, Caddy)",
                HeaderMap::new(),
            );
        };
        // What the proxy in front will pass on unchanged must have one meaning.
        if let Err(crate::proxy::canonical::Refused(why)) =
            self.canonical.check_original(&mut original)
        {
            metrics::counter!("portcullis_gateway_noncanonical_refused_total", "reason" => why.code())
                .increment(1);
            let mut decision =
                self.guard
                    .malformed(&original, Some(peer.ip()), why.code(), &why.to_string());
            let mut r = crate::proxy::canonical::refusal(why, &decision.request_id);
            if let Ok(v) = HeaderValue::from_str(why.code()) {
                r.headers_mut().insert(CODE_HEADER, v);
            }
            // nginx's auth_request understands only 2xx, 401 and 403.
            if dialect == Dialect::Nginx {
                *r.status_mut() = StatusCode::FORBIDDEN;
            }
            decision.finish(r.status());
            return r;
        }
        let mut decision = self.guard.check(&original, Some(peer.ip())).await;
        let mut headers = HeaderMap::new();
        for (name, value) in &decision.headers {
            headers.append(name.clone(), value.clone());
        }
        if let Ok(v) = HeaderValue::from_str(&decision.request_id) {
            headers.insert(portcullis::http::REQUEST_ID, v);
        }
        let response = match &decision.refusal {
            None => {
                if dialect == Dialect::Envoy {
                    self.identity.blank(&mut headers);
                }
                if let Some(p) = &decision.principal {
                    self.identity.write(p, &mut headers);
                }
                // Every identity header is in the answer, empty when the
                // caller lacks it (anonymous: all): a proxy copying them
                // then overwrites the client's own copies instead of
                // leaving them, and Caddy 2.6's `copy_headers` sends an
                // empty value instead of its unreplaced placeholder text.
                for name in self.identity.all() {
                    if !headers.contains_key(name) {
                        headers.insert(name.clone(), HeaderValue::from_static(""));
                    }
                }
                let mut r = Response::new(full(""));
                *r.headers_mut() = headers;
                r
            }
            Some(refusal) => {
                let mut rendered = crate::proxy::refusal(refusal, &decision.request_id);
                for (name, value) in headers {
                    if let Some(name) = name {
                        rendered.headers_mut().insert(name, value);
                    }
                }
                let code = refusal.code.as_str();
                if let Ok(v) = HeaderValue::from_str(code) {
                    rendered.headers_mut().insert(CODE_HEADER, v);
                }
                if dialect == Dialect::Nginx && !matches!(refusal.status.as_u16(), 401 | 403) {
                    *rendered.status_mut() = StatusCode::FORBIDDEN;
                }
                rendered
            }
        };
        decision.finish(response.status());
        response
    }
}

/// The original request, as the dialect describes it.
fn original_parts(
    dialect: Dialect,
    auth: &http::request::Parts,
    envoy_path: Option<&str>,
) -> Option<http::request::Parts> {
    let h = &auth.headers;
    let text = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let (method, uri) = match dialect {
        Dialect::Nginx => {
            let method = text("x-original-method").unwrap_or("GET");
            (method, text("x-original-uri")?.to_owned())
        }
        Dialect::Traefik | Dialect::Caddy => (
            text("x-forwarded-method")?,
            text("x-forwarded-uri")?.to_owned(),
        ),
        Dialect::Envoy => {
            let query = auth
                .uri
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            (auth.method.as_str(), format!("{}{query}", envoy_path?))
        }
    };
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let uri: Uri = uri.parse().ok()?;
    if uri.scheme().is_some() || !uri.path().starts_with('/') {
        return None;
    }
    let mut req = Request::builder().method(method).uri(uri).body(()).ok()?;
    let mut headers = h.clone();
    strip_hop_by_hop(&mut headers);
    for name in [
        "x-original-uri",
        "x-original-method",
        "x-forwarded-method",
        "x-forwarded-uri",
        "content-length",
    ] {
        headers.remove(name);
    }
    // The original host: what the proxy saw (`X-Forwarded-Host`, required
    // from nginx, Traefik and Caddy: the subrequest's own `Host` names the
    // gateway, and host-scoped routes would never apply); Envoy's check
    // request keeps the original `:authority`.
    if dialect != Dialect::Envoy {
        let mut forwarded = h.get_all("x-forwarded-host").iter();
        let host = forwarded.next()?;
        if forwarded.next().is_some() {
            return None;
        }
        headers.insert(header::HOST, host.clone());
    }
    headers.remove("x-forwarded-host");
    *req.headers_mut() = headers;
    Some(req.into_parts().0)
}

fn answer(
    dialect: Dialect,
    status: StatusCode,
    code: &str,
    detail: &str,
    headers: HeaderMap,
) -> Response<ResponseBody> {
    let mut r = crate::proxy::problem(status, code, detail, None);
    r.headers_mut().extend(headers);
    if let Ok(v) = HeaderValue::from_str(code) {
        r.headers_mut().insert(CODE_HEADER, v);
    }
    if dialect == Dialect::Nginx && !matches!(status.as_u16(), 401 | 403) {
        *r.status_mut() = StatusCode::FORBIDDEN;
    }
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r
}
