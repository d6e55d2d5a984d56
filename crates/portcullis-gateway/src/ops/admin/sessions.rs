//! Sessions and access tokens: list or revoke a user's sessions, revoke
//! one session, denylist an access token.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis::service::{JsonBody, Problem};
use portcullis::stores::Session;
use serde::{Deserialize, Serialize};

use super::AdminState;
use super::respond::{json, no_content_or_404};
use super::users::user_or_404;

#[derive(Serialize)]
struct SessionView {
    id: String,
    created_at: i64,
    expires_at: i64,
    last_seen_at: i64,
    revoked_at: Option<i64>,
    client_ip: Option<String>,
    user_agent: Option<String>,
}

impl From<Session> for SessionView {
    fn from(s: Session) -> Self {
        Self {
            id: s.id,
            created_at: s.created_at,
            expires_at: s.expires_at,
            last_seen_at: s.last_seen_at,
            revoked_at: s.revoked_at,
            client_ip: s.client_ip,
            user_agent: s.user_agent,
        }
    }
}

pub(super) async fn list_sessions(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    user_or_404(&s, &id).await?;
    let sessions: Vec<SessionView> = s
        .stores
        .sessions_of(&id)
        .await?
        .into_iter()
        .map(SessionView::from)
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"sessions": sessions}),
    ))
}

pub(super) async fn revoke_user_sessions(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    user_or_404(&s, &id).await?;
    let (sessions, refresh_tokens) = s.stores.revoke_user_tokens(&id).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"sessions": sessions, "refresh_tokens": refresh_tokens}),
    ))
}

pub(super) async fn revoke_session(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    no_content_or_404(s.stores.revoke_session(&id).await?, "session")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeToken {
    jti: String,
    /// The token's `exp` (Unix seconds): the denylist entry lasts until then.
    expires_at: i64,
}

pub(super) async fn revoke_token(
    State(s): State<AdminState>,
    JsonBody(req): JsonBody<RevokeToken>,
) -> Result<Response, Problem> {
    s.stores.revoke_jti(&req.jti, req.expires_at).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
