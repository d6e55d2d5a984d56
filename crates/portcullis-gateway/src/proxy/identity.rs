//! What an upstream learns about the caller besides the identity headers:
//! the signed internal identity token, and whether the caller's credential
//! reaches it at all.
//!
//! The internal token is the library's format (`InternalTokenLayer`
//! verifies it): an `at+jwt` access token signed with the gateway's active
//! key, `iss` = `internal_token.issuer` (never `keys.issuer`, so the gateway
//! refuses its own internal tokens as credentials), `aud` = the upstream,
//! `exp` = now + `internal_token.ttl`, `sub`, `sid`, and the claims
//! `roles`, `permissions`, `tenant`, `auth_method` and `request_id`. Its
//! keys are the gateway's JWKS, served at `internal_token.jwks_path`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use portcullis_core::{AccessRequest, IssuerConfig, KeySet, SecretHasher, TokenIssuer};
use serde_json::{Map, Value};

use crate::config::Config;

/// Why the outbound identity could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OutboundError(String);

/// What one upstream gets.
#[derive(Debug, Clone)]
struct UpstreamPolicy {
    /// `aud` of its internal tokens, when it gets them.
    audience: Option<String>,
    /// Whether the credential headers are removed.
    strip_credentials: bool,
}

/// The outbound identity of every upstream; cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<OutboundInner>,
}

struct OutboundInner {
    /// Signs internal tokens (its refresh side is never used).
    issuer: TokenIssuer,
    header: HeaderName,
    credentials: Vec<HeaderName>,
    upstreams: HashMap<Arc<str>, UpstreamPolicy>,
    jwks: Bytes,
    jwks_path: String,
}

/// An internal token could not be signed (no active key, a crypto failure).
#[derive(Debug, thiserror::Error)]
#[error("the internal identity token could not be signed: {0}")]
pub struct SignError(String);

impl Outbound {
    /// The outbound identity of a validated configuration, signing with `keys`.
    pub fn new(config: &Config, keys: Arc<KeySet>) -> Result<Self, OutboundError> {
        let it = &config.internal_token;
        let header = HeaderName::from_bytes(it.header.to_ascii_lowercase().as_bytes())
            .map_err(|e| OutboundError(format!("internal_token.header: {e}")))?;
        let mut credentials = vec![http::header::AUTHORIZATION];
        let h = &config.guard.headers;
        for name in [&h.api_key, &h.app_id, &h.app_secret] {
            let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|e| OutboundError(format!("guard.headers: {e}")))?;
            if !credentials.contains(&name) {
                credentials.push(name);
            }
        }
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let policy = UpstreamPolicy {
                    audience: u
                        .sends_internal_token(it)
                        .then(|| u.internal_audience().to_owned()),
                    strip_credentials: u
                        .strip_credentials
                        .unwrap_or(config.identity.strip_credentials),
                };
                (Arc::from(u.name.as_str()), policy)
            })
            .collect();
        let mut issuer_config = IssuerConfig::new(it.issuer(&config.keys));
        issuer_config.access_ttl = it.ttl;
        let mut pepper = [0u8; 32];
        portcullis_core::opaque::fill_random(&mut pepper)
            .map_err(|e| OutboundError(format!("random: {e}")))?;
        let hasher = SecretHasher::new(&pepper).map_err(|e| OutboundError(e.to_string()))?;
        let jwks = Bytes::from(keys.public_jwks().to_string());
        Ok(Self {
            inner: Arc::new(OutboundInner {
                issuer: TokenIssuer::new(keys, issuer_config, hasher),
                header,
                credentials,
                upstreams,
                jwks,
                jwks_path: it.jwks_path.clone(),
            }),
        })
    }

    /// The path of the published JWKS on the public listener.
    pub fn jwks_path(&self) -> &str {
        &self.inner.jwks_path
    }

    /// The gateway's public JWKS, as served.
    pub fn jwks(&self) -> Bytes {
        self.inner.jwks.clone()
    }

    /// Rewrites `headers` for `upstream`: the inbound internal-token header
    /// is always removed (nobody but the gateway writes it); the credential
    /// headers are removed when the upstream's policy says so; a fresh
    /// internal token for `principal` is added when the upstream gets one.
    /// Anonymous requests (no principal) get no token.
    pub fn apply(
        &self,
        upstream: &str,
        principal: Option<&portcullis_core::Principal>,
        request_id: Option<&str>,
        headers: &mut HeaderMap,
    ) -> Result<(), SignError> {
        let inner = &*self.inner;
        headers.remove(&inner.header);
        // An upstream not in the configuration gets the safe defaults:
        // credentials stripped, no token.
        let policy = inner.upstreams.get(upstream);
        if policy.is_none_or(|p| p.strip_credentials) {
            crate::proxy::remove_names(headers, &inner.credentials);
        }
        if let (Some(audience), Some(p)) = (policy.and_then(|p| p.audience.as_ref()), principal) {
            let token = self.sign(p, audience, request_id)?;
            let value = HeaderValue::from_str(&token).map_err(|e| SignError(e.to_string()))?;
            headers.insert(inner.header.clone(), value);
        }
        Ok(())
    }

    /// A signed internal token for `principal`, meant for `audience`.
    pub fn sign(
        &self,
        principal: &portcullis_core::Principal,
        audience: &str,
        request_id: Option<&str>,
    ) -> Result<String, SignError> {
        let mut claims = Map::new();
        claims.insert("roles".into(), strings(&principal.roles));
        claims.insert("permissions".into(), strings(&principal.permissions));
        if let Some(t) = &principal.tenant {
            claims.insert("tenant".into(), Value::from(t.as_str()));
        }
        if let Ok(method @ Value::String(_)) = serde_json::to_value(principal.auth_method) {
            claims.insert("auth_method".into(), method);
        }
        if let Some(id) = request_id {
            claims.insert("request_id".into(), Value::from(id));
        }
        let request = AccessRequest {
            subject: principal.subject.clone(),
            session_id: principal.session_id.clone(),
            audience: Some(vec![audience.to_owned()]),
            ttl: None,
            claims,
        };
        self.inner
            .issuer
            .issue_access(&request)
            .map(|issued| issued.token)
            .map_err(|e| SignError(e.to_string()))
    }
}

fn strings(list: &[String]) -> Value {
    Value::Array(list.iter().map(|s| Value::from(s.as_str())).collect())
}

/// The answer at `internal_token.jwks_path`: the JWKS to `GET` / `HEAD`,
/// 405 to anything else.
pub fn jwks_response<B>(
    req: &http::Request<B>,
    jwks: &Bytes,
) -> http::Response<crate::proxy::ResponseBody> {
    use http::{Method, StatusCode, header};
    let mut r = if matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = http::Response::new(crate::proxy::full(if req.method() == Method::HEAD {
            Bytes::new()
        } else {
            jwks.clone()
        }));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        );
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        r
    } else {
        let mut r = crate::proxy::problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "gateway.method_not_allowed",
            "the JWKS is read with GET",
            None,
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    };
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}
