//! The library's HTTP surface around the [`Guard`]: tower layers that
//! protect any service, the problem+json renderer, and (feature `axum`)
//! extractors that hand handlers a typed [`Principal`].
//!
//! - [`GuardLayer`]: the whole decision (bans, credentials, revocation,
//!   rate limits, authorization, anomaly signals, one audit event).
//! - [`AuthLayer`], [`RateLimitLayer`], [`AuditLayer`]: one piece each.
//! - [`InternalTokenLayer`]: behind the gateway, the caller from its signed identity token.

/// The inner service that was polled ready, leaving a clone in its place
/// (the tower idiom for services called from a boxed future).
macro_rules! clone_ready {
    ($self:ident) => {{
        let clone = $self.inner.clone();
        std::mem::replace(&mut $self.inner, clone)
    }};
}

#[cfg(feature = "axum")]
mod extract;
mod internal;
mod layers;
mod problem;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};

#[cfg(feature = "axum")]
pub use self::extract::{Forbidden, Unauthenticated};
pub use self::internal::{INTERNAL_TOKEN_HEADER, InternalTokenLayer, InternalTokenService};
pub use self::layers::{
    AuditLayer, AuditService, AuthLayer, AuthService, RateLimitLayer, RateLimitService,
};
pub use self::problem::{
    ProblemJson, Refused, RenderRefusal, problem_body, problem_json, refusal_response,
};
use crate::guard::{Guard, Refusal};

/// The request id header, set on every response the layers answer or pass.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The socket peer of a request, for servers that do not use axum's
/// `ConnectInfo`: insert it into the request extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The request id the guard assigned, in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The client address the guard resolved (trusted-proxy aware), in the
/// request extensions of an allowed request that had a peer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The name of the route that decided an allowed request, in its
/// extensions (absent when the configured default decided).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRoute(pub Arc<str>);

/// The refusal a `dry_run` route did not enforce, in the extensions of the
/// request it let through: its stable code. An upstream behind the gateway
/// reads it as `X-Portcullis-Dry-Run: would-deny <code>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DryRunRefusal(pub portcullis_core::ErrorCode);

/// The authenticated caller, in the request extensions of an allowed
/// request; also the axum extractor (401 when absent).
#[derive(Clone)]
pub struct Principal {
    principal: Arc<portcullis_core::Principal>,
    /// The guard whose role table resolves permissions (a cheap `Arc` clone).
    guard: Option<Guard>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.principal.fmt(f)
    }
}

impl std::ops::Deref for Principal {
    type Target = portcullis_core::Principal;
    fn deref(&self) -> &Self::Target {
        &self.principal
    }
}

impl Principal {
    pub(crate) fn new(principal: Arc<portcullis_core::Principal>, guard: Option<Guard>) -> Self {
        Self { principal, guard }
    }

    /// The verified principal.
    pub fn inner(&self) -> &Arc<portcullis_core::Principal> {
        &self.principal
    }

    /// Whether the caller holds `permission` (wildcards and, under a
    /// guard, permissions of its roles count).
    pub fn has_permission(&self, permission: &str) -> bool {
        match &self.guard {
            Some(g) => g
                .access_policy()
                .has_permission(&self.principal, permission),
            None => self
                .principal
                .permissions
                .iter()
                .any(|g| portcullis_core::authz::permission::grant_str_matches(g, permission)),
        }
    }

    /// Whether the caller holds `role` (directly or through an including role).
    pub fn has_role(&self, role: &str) -> bool {
        match &self.guard {
            Some(g) => g.access_policy().has_role(&self.principal, role),
            None => self.principal.has_role(role),
        }
    }

    /// `Ok` when the caller holds `permission`, else a 403 that names it.
    #[cfg(feature = "axum")]
    pub fn require(&self, permission: &str) -> Result<(), Forbidden> {
        if self.has_permission(permission) {
            Ok(())
        } else {
            Err(Forbidden::missing_permission(permission))
        }
    }
}

/// The peer address of a request: [`PeerAddr`], else axum's `ConnectInfo`.
pub(crate) fn peer_of<B>(req: &Request<B>) -> Option<IpAddr> {
    if let Some(p) = req.extensions().get::<PeerAddr>() {
        return Some(p.0.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(c) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(c.0.ip());
    }
    None
}

/// The response body of the layers: the inner service's, or a refusal's.
pub type GuardBody<B> = Either<B, Full<Bytes>>;

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the [`Guard`] in front of a service.
#[derive(Clone)]
pub struct GuardLayer {
    guard: Guard,
    renderer: Arc<dyn RenderRefusal>,
}

impl std::fmt::Debug for GuardLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardLayer")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl GuardLayer {
    /// Refusals rendered as problem+json.
    pub fn new(guard: Guard) -> Self {
        Self {
            guard,
            renderer: Arc::new(ProblemJson),
        }
    }

    /// Refusals rendered by `renderer`.
    #[must_use]
    pub fn renderer(mut self, renderer: impl RenderRefusal) -> Self {
        self.renderer = Arc::new(renderer);
        self
    }
}

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = GuardService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GuardService {
            inner,
            guard: self.guard.clone(),
            renderer: Arc::clone(&self.renderer),
        }
    }
}

/// The service [`GuardLayer`] makes.
#[derive(Clone)]
pub struct GuardService<S> {
    inner: S,
    guard: Guard,
    renderer: Arc<dyn RenderRefusal>,
}

impl<S> std::fmt::Debug for GuardService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardService").finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pub(crate) fn refused<B>(
    renderer: &dyn RenderRefusal,
    refusal: &Refusal,
    request_id: &str,
) -> Response<GuardBody<B>> {
    refusal_response(renderer, refusal, request_id).map(Either::Right)
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for GuardService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
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
            let peer = peer_of(&req);
            let (mut parts, body) = req.into_parts();
            let (mut decision, body) = if guard.needs_body(&parts) {
                let limit = guard.max_signed_body();
                match Limited::new(body, limit).collect().await {
                    Ok(collected) => {
                        let bytes = collected.to_bytes();
                        let d = guard.check_with_body(&parts, peer, Some(&bytes)).await;
                        (d, ReqBody::from(bytes))
                    }
                    Err(_) => {
                        // Decided in place of the check: the audit event
                        // records the 413 the client gets.
                        let d = guard.body_too_large(&parts, peer);
                        let refusal = d.refusal.clone().unwrap_or_else(|| {
                            Refusal::new(
                                portcullis_core::ErrorCode::BodyTooLarge,
                                "the request body is too large",
                            )
                        });
                        return Ok(refused(&*renderer, &refusal, &d.request_id));
                    }
                }
            } else {
                (guard.check(&parts, peer).await, body)
            };
            if let Some(refusal) = &decision.refusal {
                return Ok(refused(&*renderer, refusal, &decision.request_id));
            }
            if let Some(p) = &decision.principal {
                parts
                    .extensions
                    .insert(Principal::new(Arc::clone(p), Some(guard.clone())));
            }
            parts
                .extensions
                .insert(RequestId(decision.request_id.to_string()));
            if let Some(ip) = decision.client_ip {
                parts.extensions.insert(ClientIp(ip));
            }
            if let Some(route) = &decision.route {
                parts.extensions.insert(MatchedRoute(Arc::clone(route)));
            }
            if let Some(r) = &decision.dry_run_refusal {
                parts.extensions.insert(DryRunRefusal(r.code));
            }
            let request_id = http::HeaderValue::from_str(&decision.request_id).ok();
            if let Some(v) = &request_id {
                parts.headers.insert(REQUEST_ID, v.clone());
            }
            let response = inner.call(Request::from_parts(parts, body)).await?;
            let (mut head, body) = response.into_parts();
            for (name, value) in &decision.headers {
                head.headers.append(name.clone(), value.clone());
            }
            if let Some(v) = request_id {
                head.headers.insert(REQUEST_ID, v);
            }
            decision.finish(head.status);
            Ok(Response::from_parts(head, Either::Left(body)))
        })
    }
}
