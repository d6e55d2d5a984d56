//! Login, refresh (rotation with reuse detection), logout and logout-all.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use http::{HeaderName, StatusCode};
use portcullis_core::anomaly::Signal;
use portcullis_core::audit::{AuditEvent, EventKind};
use portcullis_core::ratelimit::RequestFacts;
use portcullis_core::{AccessRequest, ErrorCode, IssueError, TokenIssuer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::extract::{Caller, Client, JsonBody, OptionalJsonBody};
use super::problem::Problem;
use super::{Inner, Route, json_response};
use crate::ratelimit::Verdict;
use crate::stores::{
    NewSession, RefreshRecord, Rotation, SecurityEvent, StoreError, User, Username,
};

const LOGIN: Route = Route::new("POST", "/login");
const REFRESH: Route = Route::new("POST", "/refresh");
const LOGOUT: Route = Route::new("POST", "/logout");
const LOGOUT_ALL: Route = Route::new("POST", "/logout-all");
const PASSWORD_RESET: Route = Route::new("POST", "/password/reset");

/// `POST /password/reset`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordResetRequest {
    token: String,
    password: String,
}

/// `POST /password/reset`: sets a password with a one-time reset token (an
/// invitation or a reset link the admin API made). A token that is
/// malformed, forged, expired or spent is one answer, 401
/// `auth.invalid_credentials`, counted as an auth failure of the client;
/// attempts are limited per IP like logins. Every session of the user is
/// revoked; the user then logs in.
pub(super) async fn password_reset(
    State(s): State<Arc<Inner>>,
    client: Client,
    JsonBody(req): JsonBody<PasswordResetRequest>,
) -> Result<Response, Problem> {
    s.refuse_banned(&client).await?;
    s.limit_login(&client, None).await?;
    let ticket = s.regulate(&client, None, PASSWORD_RESET).await?;
    match s
        .within(s.stores.redeem_password_reset(&req.token, &req.password))
        .await
    {
        Ok(user_id) => {
            s.settle(ticket).await;
            let mut event = s.event(EventKind::PasswordReset, PASSWORD_RESET, &client);
            event.status = Some(204);
            event.subject = Some(user_id);
            s.record(event).await;
            Ok(axum::response::IntoResponse::into_response(
                StatusCode::NO_CONTENT,
            ))
        }
        Err(StoreError::InvalidCredentials) => {
            let code = ErrorCode::InvalidCredentials;
            let mut event = s.event(EventKind::LoginFailed, PASSWORD_RESET, &client);
            event.status = Some(401);
            event.code = Some(code.as_str().to_owned());
            if let Some(ip) = client.ip_text() {
                let signal = Signal::AuthFailure {
                    ip: &ip,
                    account: None,
                };
                s.observe(signal, PASSWORD_RESET, &client, &mut event).await;
            }
            s.record(event).await;
            Err(Problem::code(
                code,
                "the reset token is invalid, expired or already used",
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginRequest {
    username: String,
    password: String,
    #[serde(default)]
    remember_me: bool,
}

/// `POST /refresh`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RefreshRequest {
    refresh_token: String,
}

/// `POST /logout` (the body is optional).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogoutRequest {
    #[serde(default)]
    refresh_token: Option<String>,
}

/// The answer of login and refresh (RFC 6749 §5.1 names).
#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_expires_in: Option<i64>,
    session_id: String,
}

#[derive(Serialize)]
struct LogoutAllResponse {
    revoked_sessions: u64,
}

fn issue_failed(e: IssueError) -> Problem {
    Problem::unavailable(&e)
}

/// The claims of an access token for `user`: roles, permissions, tenant, name.
fn access_request(user: &User, session_id: &str) -> AccessRequest {
    let mut claims = Map::new();
    claims.insert("name".into(), Value::from(user.username.clone()));
    claims.insert("roles".into(), Value::from(user.roles.clone()));
    claims.insert("permissions".into(), Value::from(user.permissions.clone()));
    if let Some(tenant) = &user.tenant {
        claims.insert("tenant".into(), Value::from(tenant.clone()));
    }
    AccessRequest {
        subject: user.id.clone(),
        session_id: Some(session_id.to_owned()),
        claims,
        ..AccessRequest::default()
    }
}

fn refresh_ttl(issuer: &TokenIssuer, remember_me: bool) -> Duration {
    let config = issuer.config();
    if remember_me {
        config.remember_me_ttl
    } else {
        config.refresh_ttl
    }
}

impl Inner {
    /// Refuses a banned client (403 `anomaly.banned`); a detector backend
    /// that fails lets the request through (fail open, logged).
    async fn refuse_banned(&self, client: &Client) -> Result<(), Problem> {
        let (Some(engine), Some(ip)) = (&self.anomaly, client.ip_text()) else {
            return Ok(());
        };
        match engine.banned(Some(&ip), None).await {
            Ok(None) => Ok(()),
            Ok(Some(ban)) => {
                let now_ms = u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX);
                let retry = ban.until_ms.saturating_sub(now_ms).div_ceil(1000).max(1);
                Err(
                    Problem::code(ErrorCode::Banned, "this client is temporarily banned")
                        .header(http::header::RETRY_AFTER, retry.to_string()),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "ban check skipped");
                Ok(())
            }
        }
    }

    /// Counts a login attempt against the per-IP and per-account rules.
    async fn limit_login(&self, client: &Client, account: Option<&str>) -> Result<(), Problem> {
        let Some(limiter) = &self.login_limiter else {
            return Ok(());
        };
        let facts = RequestFacts {
            client_ip: client.key,
            subject: account,
            route: Some(LOGIN.path),
            ..RequestFacts::default()
        };
        let outcome = limiter.check(&facts).await;
        match outcome.verdict() {
            Verdict::Admitted => Ok(()),
            Verdict::Limited => {
                let mut p = Problem::code(
                    ErrorCode::RateLimitExceeded,
                    "too many login attempts; retry later",
                );
                for (name, value) in limiter.headers(&outcome) {
                    p = p.header(HeaderName::from_static(name), value);
                }
                Err(p)
            }
            Verdict::Unavailable => Err(Problem::unavailable(&"login rate-limit backend")),
        }
    }

    /// Issues an access token for `user_id` in `session_id`, refusing (and
    /// revoking the session) when the user is gone or disabled.
    async fn access_for(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Result<portcullis_core::IssuedAccess, Problem> {
        let user = self.within(self.stores.user(user_id)).await?;
        let Some(user) = user.filter(|u| !u.disabled) else {
            self.within(self.stores.revoke_session(session_id)).await?;
            return Err(Problem::code(
                ErrorCode::TokenRevoked,
                "the account is disabled; its session was revoked",
            ));
        };
        self.signing()
            .issuer
            .issue_access(&access_request(&user, session_id))
            .map_err(issue_failed)
    }
}

/// `POST /login`: username and password for a new session and token pair.
pub(super) async fn login(
    State(s): State<Arc<Inner>>,
    client: Client,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Result<Response, Problem> {
    s.refuse_banned(&client).await?;
    let account = Username::parse(&req.username)
        .ok()
        .map(|u| u.key().to_owned());
    s.limit_login(&client, account.as_deref()).await?;
    // Before the password is hashed: a throttled source costs no hashing.
    let ticket = s.regulate(&client, account.as_deref(), LOGIN).await?;
    let user = match s
        .stores
        .login_within(
            req.username.as_bytes(),
            req.password.as_bytes(),
            Some(s.store_budget),
        )
        .await
    {
        Ok(user) => user,
        // Unknown user, wrong password, disabled user, malformed input: one answer.
        Err(StoreError::InvalidCredentials | StoreError::InvalidInput { .. }) => {
            let code = ErrorCode::InvalidCredentials;
            let mut event = s.event(EventKind::LoginFailed, LOGIN, &client);
            event.status = Some(401);
            event.code = Some(code.as_str().to_owned());
            if let Some(ip) = client.ip_text() {
                let signal = Signal::AuthFailure {
                    ip: &ip,
                    account: account.as_deref(),
                };
                s.observe(signal, LOGIN, &client, &mut event).await;
            }
            s.record(event).await;
            return Err(Problem::code(code, "invalid username or password"));
        }
        Err(e) => return Err(e.into()),
    };
    s.settle(ticket).await;
    let remember_me = req.remember_me;
    let session = s
        .within(s.stores.create_session(&NewSession {
            user_id: user.id.clone(),
            ttl: refresh_ttl(&s.signing().issuer, remember_me),
            user_agent: client.user_agent.clone(),
            client_ip: client.ip_text(),
            remember_me,
        }))
        .await?;
    let pair = s
        .signing()
        .issuer
        .issue_pair(&access_request(&user, &session.id), remember_me)
        .map_err(issue_failed)?;
    let now = s.now();
    let record = RefreshRecord::from_issued(&pair.refresh, &user.id, now);
    if let Err(e) = s.within(s.stores.store_refresh(&record)).await {
        // No refresh token, no session: do not leave it behind.
        let _ = s.within(s.stores.revoke_session(&session.id)).await;
        return Err(e.into());
    }
    let mut event = s.event(EventKind::LoginSucceeded, LOGIN, &client);
    event.status = Some(200);
    event.subject = Some(user.id.clone());
    event.tenant.clone_from(&user.tenant);
    event.credential_id = Some(session.id.clone());
    s.record(event).await;
    let mut event = s.event(EventKind::TokenIssued, LOGIN, &client);
    event.status = Some(200);
    event.subject = Some(user.id.clone());
    event.tenant = user.tenant;
    event.credential_id = Some(pair.access.jti.clone());
    s.record(event).await;
    Ok(json_response(
        StatusCode::OK,
        &TokenResponse {
            access_token: pair.access.token,
            token_type: "Bearer",
            expires_in: pair.access.expires_at.saturating_sub(now),
            refresh_token: Some(pair.refresh.token),
            refresh_expires_in: Some(pair.refresh.expires_at.saturating_sub(now)),
            session_id: session.id,
        },
    ))
}

/// `POST /refresh`: rotates a refresh token. A token presented again after
/// its rotation revokes its family and its session.
pub(super) async fn refresh(
    State(s): State<Arc<Inner>>,
    client: Client,
    JsonBody(req): JsonBody<RefreshRequest>,
) -> Result<Response, Problem> {
    s.refuse_banned(&client).await?;
    let now = s.now();
    // The successor is derived from the presented token (see
    // `Stores::successor_token`), so a race within the reuse interval can be
    // handed the very token the winner got.
    let successor_token = s.stores.successor_token(&req.refresh_token);
    let successor_hash = s.signing().issuer.refresh_hash(&successor_token);
    let rotation = s
        .within(s.stores.rotate_refresh(&req.refresh_token, |current| {
            Ok(RefreshRecord {
                hash: successor_hash,
                family: current.family.clone(),
                generation: current.generation.saturating_add(1),
                session_id: current.session_id.clone(),
                user_id: current.user_id.clone(),
                // The family keeps the lifetime it got at login, like its
                // session: rotation never extends it.
                expires_at: current.expires_at,
                remember_me: current.remember_me,
                created_at: now,
                rotated_at: None,
                successor: None,
                revoked_at: None,
            })
        }))
        .await;
    let (previous, refresh_token, grace_replay) = match rotation {
        Ok(Rotation::Rotated { previous, .. }) => (previous, Some(successor_token), false),
        Ok(Rotation::AlreadyRotated {
            previous,
            successor_token,
            ..
        }) => (previous, successor_token, true),
        Err(StoreError::RefreshReused(reuse)) => {
            return Err(reuse_detected(&s, &client, reuse).await);
        }
        Err(e) => return Err(e.into()),
    };
    let access = s
        .access_for(&previous.user_id, &previous.session_id)
        .await?;
    let mut event = s.event(EventKind::TokenRotated, REFRESH, &client);
    event.status = Some(200);
    if grace_replay {
        // A rotated token presented again within the reuse interval got the
        // successor already issued (once): recorded, since it is a replay.
        event.reason = Some("refresh_grace_replay".to_owned());
    }
    event.subject = Some(previous.user_id.clone());
    event.credential_id = Some(previous.session_id.clone());
    s.record(event).await;
    Ok(json_response(
        StatusCode::OK,
        &TokenResponse {
            access_token: access.token,
            token_type: "Bearer",
            expires_in: access.expires_at.saturating_sub(now),
            // The successor keeps the family's expiry (see above).
            refresh_expires_in: refresh_token
                .is_some()
                .then(|| previous.expires_at.saturating_sub(now)),
            refresh_token,
            session_id: previous.session_id,
        },
    ))
}

/// Audits a refresh-token reuse (the stores already revoked the family and
/// the session), tells the detectors, and answers 401 `auth.refresh_reused`.
async fn reuse_detected(s: &Inner, client: &Client, reuse: SecurityEvent) -> Problem {
    let code = ErrorCode::RefreshReused;
    let mut event: AuditEvent = s.event(EventKind::TokenReuseDetected, REFRESH, client);
    event.status = Some(401);
    event.code = Some(code.as_str().to_owned());
    let (SecurityEvent::RefreshReuse { session, user, .. }
    | SecurityEvent::RefreshGraceReplay { session, user, .. }) = &reuse;
    event.subject = Some(user.clone());
    event.credential_id = Some(session.clone());
    let ip = client.ip_text().unwrap_or_default();
    let signal = Signal::RefreshReuse {
        ip: &ip,
        subject: user,
    };
    s.observe(signal, REFRESH, client, &mut event).await;
    s.record(event).await;
    s.notify(
        crate::anomaly::webhook::SecurityEventKind::TokenReuseDetected,
        std::time::Duration::ZERO,
        client,
        Some(user),
        Some(session),
    );
    Problem::from(StoreError::RefreshReused(reuse))
}

/// `POST /logout`: revokes the caller's session (so its refresh tokens stop
/// rotating and its access tokens are refused) and denies the presented
/// access token's `jti` until it expires. An optional refresh token of the
/// caller's has its family and session revoked too.
pub(super) async fn logout(
    State(s): State<Arc<Inner>>,
    client: Client,
    caller: Caller,
    OptionalJsonBody(body): OptionalJsonBody<LogoutRequest>,
) -> Result<StatusCode, Problem> {
    let principal = &caller.0;
    // The `jti` first: a replica that reads the log between the two
    // appends already refuses the token as it will after both
    // (`auth.token_revoked`, checked before the session).
    deny_presented(&s, &caller).await?;
    if let Some(sid) = &principal.session_id {
        s.within(s.stores.revoke_session(sid)).await?;
    }
    if let Some(token) = body.and_then(|b| b.refresh_token) {
        revoke_refresh_of(&s, caller.user_id(), &token).await?;
    }
    let mut event = s.event(EventKind::TokenRevoked, LOGOUT, &client);
    event.status = Some(204);
    event.set_principal(principal);
    event.credential_id.clone_from(&principal.session_id);
    s.record(event).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /logout-all`: revokes every session of the caller.
pub(super) async fn logout_all(
    State(s): State<Arc<Inner>>,
    client: Client,
    caller: Caller,
) -> Result<Response, Problem> {
    let revoked = s
        .within(s.stores.revoke_all_sessions(caller.user_id()))
        .await?;
    deny_presented(&s, &caller).await?;
    let mut event = s.event(EventKind::TokenRevoked, LOGOUT_ALL, &client);
    event.status = Some(200);
    event.set_principal(&caller.0);
    event.credential_id.clone_from(&caller.0.session_id);
    s.record(event).await;
    Ok(json_response(
        StatusCode::OK,
        &LogoutAllResponse {
            revoked_sessions: revoked,
        },
    ))
}

/// Denies the presented access token's `jti` until its `exp`.
async fn deny_presented(s: &Inner, caller: &Caller) -> Result<(), Problem> {
    if let (Some(jti), Some(exp)) = (&caller.0.token_id, caller.0.expires_at) {
        s.within(s.stores.revoke_jti(jti, exp)).await?;
    }
    Ok(())
}

/// Revokes the family and session of `token` when it is `user_id`'s; any
/// other token (malformed, unknown, someone else's) is left alone.
async fn revoke_refresh_of(s: &Inner, user_id: &str, token: &str) -> Result<(), Problem> {
    if !TokenIssuer::is_well_formed_refresh(token) {
        return Ok(());
    }
    s.within(s.stores.revoke_refresh_of(user_id, token)).await?;
    Ok(())
}
