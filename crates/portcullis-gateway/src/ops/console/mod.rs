//! The operator console at `/console` on the ops listener (never on the
//! public one): a page served from assets embedded in the binary, signed
//! in with an admin API key, whose every data call goes through the admin
//! API's own guard.
//!
//! - `POST /console/session` `{"key": "pck_…"}`: checks the key (an API key
//!   whose owner is `admin:<name>`), keeps it server-side in a
//!   [`session::Sessions`] entry and sets a cookie holding only the random
//!   session id (`HttpOnly; SameSite=Strict; Path=/console`).
//!   `DELETE /console/session` signs out.
//! - `GET /console/api/session`: who is signed in and the CSRF token;
//!   `GET /console/api/config`: the running configuration, secrets
//!   redacted, its load time and the last reload's result
//!   (permission `admin.config.read`).
//! - `/console/api/admin/…`: forwarded to the admin API (`/admin/…`) with
//!   the session's key as `Authorization: Bearer`, so every call is
//!   authorized and audited by the admin guard; the live decision stream
//!   passes through as it streams.
//!
//! Every call but the page's own files and the sign-in needs the cookie;
//! every state change also needs `X-CSRF-Token` (the session's token,
//! compared in constant time) and a same-origin `Origin` when one is sent.
//! Every answer carries a strict Content-Security-Policy (no inline script
//! or style), `nosniff`, `no-referrer`, `no-store` and `frame-ancestors
//! 'none'`.

mod redact;
mod regulate;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, HeaderValue,
    LOCATION, ORIGIN, SET_COOKIE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use portcullis::http::{GuardService, PeerAddr};
use portcullis::service::Problem;
use portcullis::stores::Stores;
use portcullis_core::ErrorCode;
use tower_service::Service;

use crate::ops::reload::{Outcome, Reloader};
use crate::proxy::{BoxError, ResponseBody, full};
use session::{Sessions, SignedIn};

/// The console's path prefix on the ops listener.
pub(crate) const PREFIX: &str = "/console";
/// The session cookie's name.
const COOKIE_NAME: &str = "portcullis_console";
/// The header every state change carries the session's CSRF token in.
const CSRF_HEADER: &str = "x-csrf-token";
/// Largest sign-in body.
const MAX_SIGN_IN_BODY: usize = 4 * 1024;
/// Largest body forwarded to the admin API (its own limit).
const MAX_FORWARD_BODY: usize = 64 * 1024;
/// The permission the console's own configuration view needs.
const CONFIG_PERMISSION: &str = "admin.config.read";

/// The policy of every console answer: scripts, styles and connections
/// from the ops listener itself only; nothing inline; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// An embedded file: name under `/console/assets/`, content type, bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// The page: one HTML shell, one style sheet, plain JavaScript modules.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("assets/index.html"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/console.css"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_str!("assets/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_str!("assets/api.js"),
    },
    Asset {
        name: "ui.js",
        content_type: JS,
        body: include_str!("assets/ui.js"),
    },
    Asset {
        name: "live.js",
        content_type: JS,
        body: include_str!("assets/live.js"),
    },
    Asset {
        name: "threats.js",
        content_type: JS,
        body: include_str!("assets/threats.js"),
    },
    Asset {
        name: "people.js",
        content_type: JS,
        body: include_str!("assets/people.js"),
    },
    Asset {
        name: "keys.js",
        content_type: JS,
        body: include_str!("assets/keys.js"),
    },
    Asset {
        name: "audit.js",
        content_type: JS,
        body: include_str!("assets/audit.js"),
    },
    Asset {
        name: "explain.js",
        content_type: JS,
        body: include_str!("assets/explain.js"),
    },
    Asset {
        name: "config.js",
        content_type: JS,
        body: include_str!("assets/config.js"),
    },
];

/// Whether `path` is the console's (`/console` or under it).
pub(crate) fn owns(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The console: its sessions, and what it reads (every data call goes
/// through the admin API, passed in with each request).
pub(crate) struct Console {
    /// Where sign-in checks the key (its owner must be an admin).
    stores: Arc<Stores>,
    /// The running configuration's text, load time and last reload.
    reloader: Arc<Reloader>,
    /// Shared with the live streams it forwards (each checks its session).
    sessions: Arc<Sessions>,
    /// Sign-in regulation and audit.
    sign_ins: regulate::SignInGuard,
}

/// A refusal as a response.
fn refuse(p: Problem) -> Response<ResponseBody> {
    portcullis::service::problem(p).map(|b| b.map_err(BoxError::from).boxed_unsync())
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn not_found() -> Response<ResponseBody> {
    refuse(Problem::new(
        StatusCode::NOT_FOUND,
        "request.not_found",
        "no such console page or call",
    ))
}

fn denied(detail: &str) -> Problem {
    Problem::code(ErrorCode::Denied, detail)
}

/// The headers every console answer carries.
fn harden(headers: &mut HeaderMap) {
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The session id in the request's cookie, if any.
fn cookie_session(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

/// A cross-origin state change is refused: `Origin`, when sent, must be
/// this listener's own (`http://<Host>` or `https://<Host>`), and
/// `Sec-Fetch-Site`, when sent, `same-origin`.
fn check_origin(headers: &HeaderMap) -> Result<(), Problem> {
    if let Some(origin) = headers.get(ORIGIN) {
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        // `https://` too: behind a TLS-terminating proxy that keeps `Host`.
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
            })
            .is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host));
        if !same {
            return Err(denied("cross-origin request refused"));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return Err(denied("cross-site request refused"));
    }
    Ok(())
}

/// A state change must carry the session's CSRF token.
fn check_csrf(headers: &HeaderMap, who: &SignedIn) -> Result<(), Problem> {
    let presented = headers
        .get(CSRF_HEADER)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if presented.is_empty() || !portcullis_core::opaque::ct_eq(presented, who.csrf.as_bytes()) {
        return Err(denied("missing or wrong X-CSRF-Token"));
    }
    Ok(())
}

fn is_state_change(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The body of `req`, at most `max` bytes.
async fn read_body<B>(body: B, headers: &HeaderMap, max: usize) -> Result<Bytes, Problem>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request.body_too_large",
            format!("a console request body is at most {max} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    http_body_util::Limited::new(body, max)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|_| too_large())
}

fn session_view(who: &SignedIn) -> serde_json::Value {
    serde_json::json!({
        "csrf_token": who.csrf,
        "key_id": who.key_id,
        "owner": who.owner,
        "permissions": who.permissions,
        "idle_timeout_secs": session::IDLE_TIMEOUT.as_secs(),
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    key: String,
}

impl Console {
    /// A console checking admin keys in `stores`, showing `reloader`'s status.
    pub(crate) fn new(stores: Arc<Stores>, reloader: Arc<Reloader>) -> Self {
        Self {
            stores,
            reloader,
            sessions: Arc::new(Sessions::new(session::MAX_SESSIONS)),
            sign_ins: regulate::SignInGuard::default(),
        }
    }

    /// Regulates sign-ins with `regulator` (per client IP, as
    /// `client_ip` resolves it) and records each to `audit`.
    pub(crate) fn with_sign_in_guard(
        mut self,
        regulator: Option<Arc<portcullis::regulation::Regulator>>,
        audit: Option<Arc<portcullis::audit::AuditWriter>>,
        client_ip: portcullis_core::ratelimit::ClientIpConfig,
    ) -> Self {
        self.sign_ins = regulate::SignInGuard {
            regulator,
            audit,
            client_ip,
        };
        self
    }

    /// One request under `/console` on the ops listener; `admin` is the
    /// admin API behind its guard.
    pub(crate) async fn handle<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
        admin: &GuardService<axum::Router>,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut response = self.route(req, peer, admin).await;
        harden(response.headers_mut());
        response
    }

    async fn route<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
        admin: &GuardService<axum::Router>,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let path = req.uri().path().to_owned();
        let read = matches!(*req.method(), Method::GET | Method::HEAD);
        match path.as_str() {
            "/console" if read => {
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
                r.headers_mut()
                    .insert(LOCATION, HeaderValue::from_static("/console/"));
                r
            }
            "/console/" if read => asset("index.html"),
            "/console/session" => match *req.method() {
                Method::POST => self.sign_in(req, peer).await.unwrap_or_else(refuse),
                Method::DELETE => self.sign_out(req.headers()).unwrap_or_else(refuse),
                _ => not_found(),
            },
            p => match p.strip_prefix("/console/assets/") {
                Some(name) if read => asset(name),
                _ if p.starts_with("/console/api/") => {
                    self.api(req, peer, admin).await.unwrap_or_else(refuse)
                }
                _ => not_found(),
            },
        }
    }

    /// `POST /console/session`: an admin key in, a session cookie out.
    async fn sign_in<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
    ) -> Result<Response<ResponseBody>, Problem>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        check_origin(&parts.headers)?;
        let json_body = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json_body {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "request.unsupported_media_type",
                "sign in with a JSON body {\"key\": \"pck_…\"}",
            ));
        }
        let bytes = read_body(body, &parts.headers, MAX_SIGN_IN_BODY).await?;
        let SignIn { key } = serde_json::from_slice(&bytes)
            .map_err(|e| Problem::bad_body(format!("invalid body: {e}")))?;
        let key = key.trim().to_owned();
        if key.is_empty() {
            return Err(Problem::code(
                ErrorCode::MissingCredentials,
                "an admin API key is required",
            ));
        }
        let invalid = || Problem::code(ErrorCode::InvalidApiKey, "not a valid admin API key");
        // Regulated before the key is looked at; every outcome is audited.
        let client = self.sign_ins.client(peer, &parts.headers);
        let ticket = self.sign_ins.attempt(&client).await?;
        // A hung store answers 503, never a hung sign-in.
        let record = match portcullis::stores::hook::within_budget(
            crate::ops::admin::STORE_BUDGET,
            self.stores.verify_api_key(&key),
        )
        .await
        {
            Ok(r) => r,
            Err(portcullis::stores::StoreError::InvalidApiKey) => {
                self.sign_ins
                    .failed(&client, ErrorCode::InvalidApiKey)
                    .await;
                return Err(invalid());
            }
            Err(e) => return Err(Problem::from(e)),
        };
        // The same kind of principal as the admin API accepts.
        if !crate::ops::escalation::is_admin_owner(&record.owner) {
            tracing::warn!(key_id = %record.id, "console sign-in refused: not an admin key");
            self.sign_ins
                .failed(&client, ErrorCode::InvalidApiKey)
                .await;
            return Err(invalid());
        }
        let who = self
            .sessions
            .create(
                key,
                record.id.clone(),
                record.owner.clone(),
                record.permissions.clone(),
                Instant::now(),
            )
            .map_err(|e| Problem::unavailable(&e))?;
        if let Some(previous) = cookie_session(&parts.headers) {
            // Signing in again replaces this browser's previous session.
            self.sessions.remove(previous);
        }
        tracing::info!(key_id = %who.key_id, owner = %who.owner, "console sign-in");
        self.sign_ins
            .succeeded(&client, ticket, &who.owner, &who.key_id)
            .await;
        let mut response = json(StatusCode::CREATED, &session_view(&who));
        let cookie = format!(
            "{COOKIE_NAME}={}; HttpOnly; SameSite=Strict; Path={PREFIX}; Max-Age={}",
            who.id,
            session::ABSOLUTE_TIMEOUT.as_secs()
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(SET_COOKIE, v);
        }
        Ok(response)
    }

    /// `DELETE /console/session`: ends the session and clears the cookie.
    fn sign_out(&self, headers: &HeaderMap) -> Result<Response<ResponseBody>, Problem> {
        let who = self.signed_in(headers)?;
        check_origin(headers)?;
        check_csrf(headers, &who)?;
        self.sessions.remove(&who.id);
        tracing::info!(key_id = %who.key_id, "console sign-out");
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        response.headers_mut().insert(
            SET_COOKIE,
            HeaderValue::from_static(
                "portcullis_console=; HttpOnly; SameSite=Strict; Path=/console; Max-Age=0",
            ),
        );
        Ok(response)
    }

    /// The session of the request's cookie.
    fn signed_in(&self, headers: &HeaderMap) -> Result<SignedIn, Problem> {
        let id = cookie_session(headers).ok_or_else(|| {
            Problem::code(
                ErrorCode::MissingCredentials,
                "sign in to the console first",
            )
        })?;
        self.sessions.get(id, Instant::now()).ok_or_else(|| {
            Problem::code(
                ErrorCode::SessionRevoked,
                "the console session ended; sign in again",
            )
        })
    }

    /// `/console/api/…`: the cookie, then (for a state change) origin and
    /// CSRF token, then the call.
    async fn api<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
        admin: &GuardService<axum::Router>,
    ) -> Result<Response<ResponseBody>, Problem>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let who = self.signed_in(req.headers())?;
        if is_state_change(req.method()) {
            let checked =
                check_origin(req.headers()).and_then(|()| check_csrf(req.headers(), &who));
            if let Err(refusal) = checked {
                tracing::warn!(
                    key_id = %who.key_id,
                    method = %req.method(),
                    path = %req.uri().path(),
                    "console state change refused: cross-origin or without its CSRF token"
                );
                return Err(refusal);
            }
        }
        let path = req.uri().path();
        let read = *req.method() == Method::GET;
        match path {
            "/console/api/session" if read => Ok(json(StatusCode::OK, &session_view(&who))),
            "/console/api/config" if read => self.config(&who).await,
            p if p.starts_with("/console/api/admin/") => {
                Ok(self.forward(req, peer, admin, &who).await?)
            }
            _ => Ok(not_found()),
        }
    }

    /// `GET /console/api/config`: the running configuration, redacted.
    async fn config(&self, who: &SignedIn) -> Result<Response<ResponseBody>, Problem> {
        // The key is checked again: a revoked admin key ends its session.
        let checked = portcullis::stores::hook::within_budget(
            crate::ops::admin::STORE_BUDGET,
            self.stores.verify_api_key(&who.key),
        )
        .await;
        if let Err(e @ portcullis::stores::StoreError::Unavailable(_)) = &checked {
            return Err(Problem::unavailable(e));
        }
        if checked.is_err() {
            self.sessions.remove(&who.id);
            return Err(Problem::code(
                ErrorCode::InvalidApiKey,
                "the session's admin key is no longer valid; sign in again",
            ));
        }
        let allowed = who
            .permissions
            .iter()
            .any(|g| portcullis_core::authz::permission::grant_str_matches(g, CONFIG_PERMISSION));
        if !allowed {
            return Err(denied(&format!(
                "the admin key lacks the permission {CONFIG_PERMISSION}"
            )));
        }
        let status = self.reloader.status();
        let config = status.text.as_deref().and_then(redact::redacted_config);
        let last_reload = status.last_reload.map(|(at, outcome)| match outcome {
            Outcome::Ok { warnings } => {
                serde_json::json!({"at": at, "result": "ok", "warnings": warnings})
            }
            Outcome::Error { errors } => {
                serde_json::json!({"at": at, "result": "error", "errors": errors})
            }
        });
        let overrides: Vec<String> = crate::config::env_overrides(std::env::vars())
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({
                "file": status.path.display().to_string(),
                "loaded_at": status.loaded_at,
                "last_reload": last_reload,
                "config": config,
                "env_overrides": overrides,
                "redacted": redact::REDACTED,
            }),
        ))
    }

    /// `/console/api/admin/…` → `/admin/…` through the admin guard, with
    /// the session's key; nothing of the browser's own credentials passes.
    async fn forward<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
        admin: &GuardService<axum::Router>,
        who: &SignedIn,
    ) -> Result<Response<ResponseBody>, Problem>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let rest = parts
            .uri
            .path_and_query()
            .map_or("", http::uri::PathAndQuery::as_str)
            .strip_prefix("/console/api")
            .unwrap_or("");
        let bytes = read_body(body, &parts.headers, MAX_FORWARD_BODY).await?;
        let mut builder = Request::builder().method(parts.method.clone()).uri(rest);
        for name in [CONTENT_TYPE, http::header::ACCEPT, http::header::USER_AGENT] {
            if let Some(v) = parts.headers.get(&name) {
                builder = builder.header(name, v);
            }
        }
        let mut forwarded = builder
            .header(http::header::AUTHORIZATION, format!("Bearer {}", who.key))
            .body(axum::body::Body::from(bytes))
            .map_err(|e| Problem::bad_body(format!("invalid request: {e}")))?;
        forwarded.extensions_mut().insert(PeerAddr(peer));
        let mut admin = admin.clone();
        let response = match admin.call(forwarded).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        if response.status() == StatusCode::UNAUTHORIZED {
            // The key was revoked or expired since sign-in.
            self.sessions.remove(&who.id);
        }
        let streaming = response
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if streaming {
            // A live stream answers to the console session too: sign-out,
            // the idle and the 12 h limits end it with `event: revoked`
            // (the admin API ends it when the key is revoked).
            let (parts, body) = response.into_parts();
            let sessions = Arc::clone(&self.sessions);
            let id = who.id.clone();
            let stream = crate::ops::live_stream::until_revoked(
                http_body_util::BodyDataStream::new(body),
                None,
                move || {
                    let alive = sessions.alive(&id, Instant::now());
                    Box::pin(async move {
                        if alive {
                            crate::ops::live_stream::Standing::Valid
                        } else {
                            crate::ops::live_stream::Standing::Revoked(
                                "the console session ended; sign in again".into(),
                            )
                        }
                    })
                },
            );
            let body = http_body_util::StreamBody::new(futures_util::StreamExt::map(stream, |r| {
                r.map(http_body::Frame::data)
            }));
            return Ok(Response::from_parts(parts, body.boxed_unsync()));
        }
        Ok(response.map(|b| b.map_err(BoxError::from).boxed_unsync()))
    }
}

/// An embedded file by name, or 404.
fn asset(name: &str) -> Response<ResponseBody> {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        return not_found();
    };
    let mut response = Response::new(full(Bytes::from_static(a.body.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; portcullis_console=abc; b=2"),
        );
        assert_eq!(cookie_session(&h), Some("abc"));
        h.insert(COOKIE, HeaderValue::from_static("portcullis_consolex=1"));
        assert_eq!(cookie_session(&h), None);
    }

    #[test]
    fn only_same_origin_state_changes_pass() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::HOST,
            HeaderValue::from_static("127.0.0.1:9090"),
        );
        assert!(
            check_origin(&h).is_ok(),
            "no Origin: not a browser's cross-site call"
        );
        h.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:9090"));
        assert!(check_origin(&h).is_ok());
        h.insert(ORIGIN, HeaderValue::from_static("https://127.0.0.1:9090"));
        assert!(check_origin(&h).is_ok(), "through a TLS proxy keeping Host");
        h.insert(ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert!(check_origin(&h).is_err());
        h.insert(
            ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9090.evil.test"),
        );
        assert!(check_origin(&h).is_err());
        h.insert(ORIGIN, HeaderValue::from_static("null"));
        assert!(check_origin(&h).is_err());
        h.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:9090"));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(check_origin(&h).is_err());
    }

    #[test]
    fn every_asset_is_listed_once_and_the_page_has_no_inline_script_or_style() {
        for a in ASSETS {
            assert_eq!(ASSETS.iter().filter(|b| b.name == a.name).count(), 1);
        }
        let html = ASSETS[0].body;
        assert!(!html.contains("<style"), "no inline style element");
        assert!(!html.contains(" style="), "no style attributes");
        for (i, _) in html.match_indices(" on") {
            let attr: String = html[i + 3..]
                .chars()
                .take_while(char::is_ascii_lowercase)
                .collect();
            assert!(
                !html[i + 3 + attr.len()..].starts_with('='),
                "no inline event handler: on{attr}"
            );
        }
        for tag in html.split("<script").skip(1) {
            let (open, rest) = tag.split_once('>').unwrap();
            assert!(open.contains("src="), "a script is a file: {open}");
            assert!(rest.starts_with("</script>"), "and has no body");
        }
        assert!(!CSP.contains("unsafe"));
        assert!(owns("/console") && owns("/console/x") && !owns("/consoles"));
    }
}
