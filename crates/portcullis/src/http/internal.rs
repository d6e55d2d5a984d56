//! The gateway's internal identity token: [`InternalTokenLayer`] verifies
//! the short-lived JWT the gateway signs for each request it forwards, so
//! a service behind the gateway trusts a signature, never plain identity
//! headers (`X-User-*` and the like are not read, whatever they say).
//!
//! The token is an access token of the gateway's issuer: `typ: at+jwt`,
//! `iss` the gateway, `aud` this service, `sub`, roles, permissions and
//! tenant as claims. It is checked against the gateway's published JWKS
//! (a [`TrustedIssuers`] entry) or a key set held locally (a [`Verifier`]).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body_util::Either;
use portcullis_core::{ErrorCode, TokenError, Verifier};
use serde::Deserialize;

use super::{BoxFuture, GuardBody, Principal, ProblemJson, RenderRefusal, RequestId, refused};
use crate::guard::Refusal;
use crate::jwks::{IssuerError, TrustedIssuers};

/// The header the gateway puts its internal identity token in.
pub const INTERNAL_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-portcullis-identity");

/// Where the gateway's keys come from.
#[derive(Clone)]
enum GatewayKeys {
    /// Its published JWKS, fetched and cached.
    Remote(TrustedIssuers),
    /// A key set held by this service.
    Local(Arc<Verifier>),
}

/// Verifies the gateway's internal identity token on every request and
/// puts its [`Principal`] into the extensions; 401 when it is missing or
/// bad (503 while the gateway's keys cannot be fetched).
#[derive(Clone)]
pub struct InternalTokenLayer {
    keys: GatewayKeys,
    header: HeaderName,
    renderer: Arc<dyn RenderRefusal>,
}

impl std::fmt::Debug for InternalTokenLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalTokenLayer")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl InternalTokenLayer {
    /// Trusts the gateway as a remote issuer (its JWKS URL, its issuer and
    /// this service's audience, which a remote issuer cannot be built
    /// without). Tokens must declare `typ: at+jwt`, whatever the issuer's
    /// validation says.
    pub fn remote(issuers: TrustedIssuers) -> Self {
        Self::with_keys(GatewayKeys::Remote(issuers))
    }

    /// Trusts the tokens `verifier` accepts. Its validation must name an
    /// issuer and an audience; `typ: at+jwt` is required regardless.
    pub fn local(verifier: Verifier) -> Result<Self, IssuerError> {
        let setting = |field, reason| Err(IssuerError::Setting { field, reason });
        let validation = verifier.validation();
        if validation.audiences.is_empty() || validation.audiences.iter().any(String::is_empty) {
            return setting(
                "validation.audiences",
                "the internal token's audience (this service) must be configured",
            );
        }
        if validation.issuers.is_empty() {
            return setting(
                "validation.issuers",
                "the internal token's issuer (the gateway) must be configured",
            );
        }
        let validation = validation.clone().with_require_typ(true);
        let verifier = Verifier::new(Arc::clone(verifier.keys()), validation)
            .with_clock(Arc::clone(verifier.clock()));
        Ok(Self::with_keys(GatewayKeys::Local(Arc::new(verifier))))
    }

    fn with_keys(keys: GatewayKeys) -> Self {
        Self {
            keys,
            header: INTERNAL_TOKEN_HEADER,
            renderer: Arc::new(ProblemJson),
        }
    }

    /// Reads the token from `name` instead of [`INTERNAL_TOKEN_HEADER`].
    #[must_use]
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// Refusals rendered by `renderer` (problem+json by default).
    #[must_use]
    pub fn renderer(mut self, renderer: impl RenderRefusal) -> Self {
        self.renderer = Arc::new(renderer);
        self
    }
}

impl<S> tower_layer::Layer<S> for InternalTokenLayer {
    type Service = InternalTokenService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InternalTokenService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`InternalTokenLayer`] makes.
#[derive(Clone)]
pub struct InternalTokenService<S> {
    inner: S,
    layer: InternalTokenLayer,
}

impl<S> std::fmt::Debug for InternalTokenService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalTokenService")
            .field("header", &self.layer.header)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for InternalTokenService<S>
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
            let (mut parts, body) = req.into_parts();
            match layer.verify(&parts.headers).await {
                Ok(principal) => {
                    parts
                        .extensions
                        .insert(Principal::new(Arc::new(principal), None));
                }
                Err(refusal) => {
                    let id = parts.extensions.get::<RequestId>().map_or_else(
                        || portcullis_core::audit::EventIds::global().next_id(),
                        |r| r.0.clone(),
                    );
                    tracing::info!(code = %refusal.code, detail = %refusal.detail, "internal identity token refused");
                    return Ok(refused(&*layer.renderer, &refusal, &id));
                }
            }
            let response = inner.call(Request::from_parts(parts, body)).await?;
            Ok(response.map(Either::Left))
        })
    }
}

impl InternalTokenLayer {
    /// The principal of the request's internal token, or why there is none.
    async fn verify(&self, headers: &HeaderMap) -> Result<portcullis_core::Principal, Refusal> {
        let mut values = headers.get_all(&self.header).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(if headers.contains_key(&self.header) {
                self.invalid(ErrorCode::MalformedToken)
            } else {
                self.missing()
            });
        };
        let token = value.as_bytes();
        let verified = match &self.keys {
            GatewayKeys::Local(verifier) => verifier.verify(token).map_err(|e| e.code()),
            GatewayKeys::Remote(issuers) => match declared_type(token) {
                Ok(()) => issuers.verify(token).await.map_err(|e| e.code()),
                Err(e) => Err(e.code()),
            },
        };
        verified.map_err(|code| self.invalid(code))
    }

    fn missing(&self) -> Refusal {
        let mut refusal = Refusal::new(
            ErrorCode::MissingCredentials,
            format!(
                "this service is called through the gateway, which sends the caller's identity in `{}`; it is missing",
                self.header
            ),
        );
        refusal.headers.push((
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"internal\""),
        ));
        refusal
    }

    fn invalid(&self, code: ErrorCode) -> Refusal {
        let detail = match code {
            ErrorCode::TokenExpired => "the internal identity token expired",
            ErrorCode::TokenNotYetValid => "the internal identity token is not valid yet",
            ErrorCode::InvalidAudience => {
                "the internal identity token is not meant for this service"
            }
            ErrorCode::InvalidIssuer => {
                "the internal identity token is not from the trusted gateway"
            }
            ErrorCode::WrongTokenType => {
                "the internal identity token is not an access token (`typ: at+jwt`)"
            }
            ErrorCode::JwksUnavailable => "the gateway's keys are unavailable; retry shortly",
            ErrorCode::TokenRevoked | ErrorCode::SessionRevoked => {
                "the internal identity token was revoked"
            }
            _ => "the internal identity token is invalid",
        };
        let mut refusal = Refusal::new(code, detail);
        if refusal.status == http::StatusCode::UNAUTHORIZED {
            let challenge = format!(
                "Bearer realm=\"internal\", error=\"invalid_token\", error_description=\"{detail}\""
            );
            if let Ok(v) = HeaderValue::from_str(&challenge.replace('`', "'")) {
                refusal.headers.push((http::header::WWW_AUTHENTICATE, v));
            }
        }
        refusal
    }
}

/// The largest internal token whose header is read before verification.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Deserialize)]
struct TypOnly {
    typ: Option<String>,
}

/// Checks the unverified JOSE header declares `typ: at+jwt` (RFC 9068), so
/// no other JWT of the gateway's key (an ID token, a refresh token) passes
/// whatever the remote issuer's validation says; the signature over the
/// header is verified next.
fn declared_type(token: &[u8]) -> Result<(), TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed("token too large"));
    }
    let header = token.split(|&b| b == b'.').next().unwrap_or_default();
    let header = portcullis_core::jose::b64_decode(header)
        .ok_or(TokenError::Malformed("header is not base64url"))?;
    let typ = serde_json::from_slice::<TypOnly>(&header)
        .map_err(|_| TokenError::Malformed("header is not a JSON object"))?
        .typ
        .unwrap_or_default();
    let media = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ.as_str(),
    };
    if media.eq_ignore_ascii_case("at+jwt") {
        Ok(())
    } else {
        Err(TokenError::WrongTokenType("`typ` header is not at+jwt"))
    }
}
