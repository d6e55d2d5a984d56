//! The single-purpose layers, for teams that want one piece of the guard:
//! [`AuthLayer`] (credentials only), [`RateLimitLayer`] (limits only) and
//! [`AuditLayer`] (one audit event per request that reaches it).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::Either;
use portcullis_core::audit::Decision as AuditDecision;
use portcullis_core::audit::redact::Redactor;
use portcullis_core::ratelimit::ClientIpConfig;
use portcullis_core::{Clock, ErrorCode, SystemClock};

use super::{BoxFuture, GuardBody, Principal, ProblemJson, RenderRefusal, peer_of, refused};
use crate::audit::AuditWriter;
use crate::guard::{Guard, Refusal};
use crate::ratelimit::{HttpHeaders, RateLimiter, Verdict};

/// Authentication only: the guard's credential sources for the request's
/// route, and revocation. Puts the [`Principal`] into the extensions; no
/// ban, limit, authorization or audit.
#[derive(Clone)]
pub struct AuthLayer {
    guard: Guard,
    renderer: Arc<dyn RenderRefusal>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer").finish_non_exhaustive()
    }
}

impl AuthLayer {
    /// Authenticates with `guard`'s routes and verifiers.
    pub fn new(guard: Guard) -> Self {
        Self {
            guard,
            renderer: Arc::new(ProblemJson),
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            guard: self.guard.clone(),
            renderer: Arc::clone(&self.renderer),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    guard: Guard,
    renderer: Arc<dyn RenderRefusal>,
}

impl<S> std::fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for AuthService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<GuardBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let mut inner = clone_ready!(self);
        let guard = self.guard.clone();
        let renderer = Arc::clone(&self.renderer);
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            match guard.authenticate(&parts, None).await {
                Ok(Some(p)) => {
                    parts.extensions.insert(Principal::new(p, Some(guard)));
                }
                Ok(None) => {}
                Err(refusal) => {
                    let id = portcullis_core::audit::EventIds::global().next_id();
                    return Ok(refused(&*renderer, &refusal, &id));
                }
            }
            let response = inner.call(Request::from_parts(parts, body)).await?;
            Ok(response.map(Either::Left))
        })
    }
}

/// Rate limits only: every rule of `limiter`, keyed by the client IP (and
/// by the [`Principal`] an outer [`AuthLayer`] found, for subject, API key,
/// app and tenant keys). Adds the `RateLimit` headers; 429 when limited.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: RateLimiter,
    client_ip: Arc<ClientIpConfig>,
    renderer: Arc<dyn RenderRefusal>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer").finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Limits with `limiter`, finding client IPs with `client_ip`.
    pub fn new(limiter: RateLimiter, client_ip: ClientIpConfig) -> Self {
        Self {
            limiter,
            client_ip: Arc::new(client_ip),
            renderer: Arc::new(ProblemJson),
        }
    }
}

impl<S> tower_layer::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] makes.
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S> std::fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitService").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for RateLimitService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<GuardBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let mut inner = clone_ready!(self);
        let layer = self.layer.clone();
        Box::pin(async move {
            let client_ip = peer_of(&req)
                .map(|peer| crate::ratelimit::client_key(&layer.client_ip, peer, req.headers()));
            let principal = req.extensions().get::<Principal>().cloned();
            let p = principal.as_deref();
            let credential = p.and_then(|p| p.token_id.as_deref());
            let facts = portcullis_core::ratelimit::RequestFacts {
                client_ip,
                subject: p.map(|p| p.subject.as_str()),
                api_key_id: credential.filter(|_| {
                    p.is_some_and(|p| p.auth_method == portcullis_core::AuthMethod::ApiKey)
                }),
                app_id: p
                    .filter(|p| p.auth_method == portcullis_core::AuthMethod::App)
                    .map(|p| p.subject.as_str()),
                tenant: p.and_then(|p| p.tenant.as_deref()),
                route: None,
                headers: Some(&HttpHeaders(req.headers())),
            };
            let outcome = layer.limiter.check(&facts).await;
            let headers: Vec<(HeaderName, HeaderValue)> = layer
                .limiter
                .headers(&outcome)
                .into_iter()
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(&v).ok()?,
                    ))
                })
                .collect();
            let refusal = match outcome.verdict() {
                Verdict::Admitted => None,
                Verdict::Limited => Some(Refusal::new(
                    ErrorCode::RateLimitExceeded,
                    "too many requests; retry after the time in Retry-After",
                )),
                Verdict::Unavailable => Some(Refusal::new(
                    ErrorCode::BackendUnavailable,
                    "the rate-limit backend is unavailable and this limit fails closed; retry shortly",
                )),
            };
            if let Some(mut refusal) = refusal {
                refusal.headers = headers;
                let id = portcullis_core::audit::EventIds::global().next_id();
                return Ok(refused(&*layer.renderer, &refusal, &id));
            }
            let mut response = inner.call(req).await?;
            for (n, v) in headers {
                response.headers_mut().append(n, v);
            }
            Ok(response.map(Either::Left))
        })
    }
}

/// One audit event per request that reaches it, with the status answered
/// and the [`Principal`] an outer [`AuthLayer`] found. Place it inside the
/// layers whose refusals need no audit, or use [`super::GuardLayer`], which
/// audits its refusals too.
#[derive(Clone)]
pub struct AuditLayer {
    writer: Arc<AuditWriter>,
    redactor: Arc<Redactor>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLayer").finish_non_exhaustive()
    }
}

impl AuditLayer {
    /// Records into `writer`, redacting paths with the default redactor.
    pub fn new(writer: Arc<AuditWriter>) -> Self {
        Self {
            writer,
            redactor: Arc::new(Redactor::default()),
            clock: Arc::new(SystemClock),
        }
    }

    /// Redacts paths with `redactor`.
    #[must_use]
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = Arc::new(redactor);
        self
    }
}

impl<S> tower_layer::Layer<S> for AuditLayer {
    type Service = AuditService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuditService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuditLayer`] makes.
#[derive(Clone)]
pub struct AuditService<S> {
    inner: S,
    layer: AuditLayer,
}

impl<S> std::fmt::Debug for AuditService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditService").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for AuditService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let mut inner = clone_ready!(self);
        let layer = self.layer.clone();
        Box::pin(async move {
            let started = Instant::now();
            let ts = i64::try_from(layer.clock.now().as_micros()).unwrap_or(i64::MAX);
            let peer = peer_of(&req);
            let (parts, body) = req.into_parts();
            let mut event = crate::audit::request::request_event(&parts, peer, &layer.redactor, ts);
            if let Some(p) = parts.extensions.get::<Principal>() {
                event.set_principal(p);
            }
            if let Some(id) = parts.extensions.get::<super::RequestId>() {
                event.request_id = Some(id.0.clone());
            }
            let result = inner.call(Request::from_parts(parts, body)).await;
            event.latency_us =
                Some(i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX));
            match &result {
                Ok(response) => {
                    event.status = Some(response.status().as_u16());
                    if response.status().as_u16() == 401 || response.status().as_u16() == 403 {
                        event.decision = AuditDecision::Deny;
                    }
                }
                Err(_) => event.status = None,
            }
            let _ = layer.writer.try_record(event);
            result
        })
    }
}
