//! The caller's own sessions: list them, revoke one.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use http::StatusCode;
use portcullis_core::audit::EventKind;
use serde::Serialize;

use super::extract::{Caller, Client};
use super::problem::Problem;
use super::{Inner, Route, json_response};
use crate::stores::{Session, StoreError};

const REVOKE: Route = Route::new("DELETE", "/sessions/{id}");

/// One live session, as its owner sees it.
#[derive(Serialize)]
struct SessionView {
    id: String,
    created_at: i64,
    last_seen_at: i64,
    expires_at: i64,
    user_agent: Option<String>,
    client_ip: Option<String>,
    remember_me: bool,
    /// Whether the presented access token belongs to it.
    current: bool,
}

#[derive(Serialize)]
struct SessionList {
    sessions: Vec<SessionView>,
}

fn view(s: Session, current: Option<&str>) -> SessionView {
    SessionView {
        current: current == Some(s.id.as_str()),
        id: s.id,
        created_at: s.created_at,
        last_seen_at: s.last_seen_at,
        expires_at: s.expires_at,
        user_agent: s.user_agent,
        client_ip: s.client_ip,
        remember_me: s.remember_me,
    }
}

/// `GET /sessions`: the caller's live sessions, newest first.
pub(super) async fn list(State(s): State<Arc<Inner>>, caller: Caller) -> Result<Response, Problem> {
    let current = caller.0.session_id.as_deref();
    let sessions = s
        .within(s.stores.sessions_of(caller.user_id()))
        .await?
        .into_iter()
        .map(|session| view(session, current))
        .collect();
    Ok(json_response(StatusCode::OK, &SessionList { sessions }))
}

/// `DELETE /sessions/{id}`: revokes one of the caller's live sessions; any
/// other id (someone else's, revoked, unknown) is 404.
pub(super) async fn revoke(
    State(s): State<Arc<Inner>>,
    client: Client,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let found = match s.within(s.stores.session(&id)).await {
        Ok(found) => found,
        Err(StoreError::InvalidInput { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let now = s.now();
    let Some(session) = found.filter(|x| x.user_id == caller.user_id() && x.is_active(now)) else {
        return Err(Problem::not_found("session"));
    };
    s.within(s.stores.revoke_session(&session.id)).await?;
    let mut event = s.event(EventKind::TokenRevoked, REVOKE, &client);
    event.status = Some(204);
    event.set_principal(&caller.0);
    event.credential_id = Some(session.id);
    s.record(event).await;
    Ok(StatusCode::NO_CONTENT)
}
