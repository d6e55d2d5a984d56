//! The caller's own API keys: create (the key is shown once), list, revoke.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use http::StatusCode;
use portcullis_core::ErrorCode;
use portcullis_core::audit::EventKind;
use portcullis_core::authz::grant::user_grant_covers;
use serde::{Deserialize, Serialize};

use super::extract::{Caller, Client, JsonBody};
use super::problem::{INVALID_INPUT, Problem};
use super::{Inner, Route, json_response};
use crate::stores::{ApiKeyRecord, NewApiKey};

const CREATE: Route = Route::new("POST", "/api-keys");
const REVOKE: Route = Route::new("DELETE", "/api-keys/{id}");

/// Longest lifetime a key may be given: ten years.
const MAX_EXPIRES_IN: u64 = 10 * 365 * 24 * 3600;

/// `POST /api-keys`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateRequest {
    name: String,
    /// Defaults to the caller's own grants (its roles and permissions); when
    /// given, the key holds exactly these, each one the caller holds directly.
    #[serde(default)]
    permissions: Option<Vec<String>>,
    /// Lifetime in seconds; none: the key does not expire.
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A key as its owner sees it: never the key or its hash.
#[derive(Serialize)]
struct KeyView {
    id: String,
    name: String,
    permissions: Vec<String>,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

impl From<ApiKeyRecord> for KeyView {
    fn from(r: ApiKeyRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            permissions: r.permissions,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            last_used_at: r.last_used_at,
        }
    }
}

/// The answer of `POST /api-keys`: the only time the key is shown.
#[derive(Serialize)]
struct CreatedView {
    key: String,
    #[serde(flatten)]
    record: KeyView,
}

#[derive(Serialize)]
struct KeyList {
    api_keys: Vec<KeyView>,
}

/// Whether the user holding `grants` may hand `requested` on: one of its
/// grants covers it (wildcards on both sides), and it is not in the
/// `admin.` namespace, which no user's grant reaches, `*` included.
fn may_delegate(grants: &[String], requested: &str) -> bool {
    grants.iter().any(|g| user_grant_covers(g, requested))
}

/// `POST /api-keys`: a key for the caller with at most the caller's
/// grants (read from the user record, not the token): by default its roles
/// and permissions, so a user whose grants come from roles gets a key that
/// can do what they can; or a list of permissions it holds directly.
pub(super) async fn create(
    State(s): State<Arc<Inner>>,
    client: Client,
    caller: Caller,
    JsonBody(req): JsonBody<CreateRequest>,
) -> Result<Response, Problem> {
    let user = s.within(s.stores.user(caller.user_id())).await?;
    let Some(user) = user.filter(|u| !u.disabled) else {
        return Err(Problem::code(
            ErrorCode::TokenRevoked,
            "the account is disabled",
        ));
    };
    let (roles, permissions) = match req.permissions {
        None => (user.roles.clone(), user.permissions.clone()),
        Some(requested) => {
            if let Some(p) = requested
                .iter()
                .find(|p| !may_delegate(&user.permissions, p))
            {
                return Err(Problem::code(
                    ErrorCode::Denied,
                    format!("you do not hold the permission `{p}` and cannot give it to a key"),
                ));
            }
            (Vec::new(), requested)
        }
    };
    let expires_at = match req.expires_in {
        None => None,
        Some(secs) if (1..=MAX_EXPIRES_IN).contains(&secs) => Some(
            s.now()
                .saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)),
        ),
        Some(_) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                INVALID_INPUT,
                format!("invalid expires_in: must be 1..={MAX_EXPIRES_IN} seconds"),
            ));
        }
    };
    let created = s
        .within(s.stores.create_api_key(&NewApiKey {
            name: req.name,
            owner: user.id.clone(),
            roles,
            permissions,
            expires_at,
            ..NewApiKey::default()
        }))
        .await?;
    let mut event = s.event(EventKind::ApiKeyCreated, CREATE, &client);
    event.status = Some(201);
    event.set_principal(&caller.0);
    event.credential_id = Some(created.record.id.clone());
    s.record(event).await;
    Ok(json_response(
        StatusCode::CREATED,
        &CreatedView {
            key: created.key,
            record: created.record.into(),
        },
    ))
}

/// `GET /api-keys`: the caller's keys, revoked and expired ones included.
pub(super) async fn list(State(s): State<Arc<Inner>>, caller: Caller) -> Result<Response, Problem> {
    let api_keys = s
        .within(s.stores.api_keys_of(caller.user_id()))
        .await?
        .into_iter()
        .map(KeyView::from)
        .collect();
    Ok(json_response(StatusCode::OK, &KeyList { api_keys }))
}

/// `DELETE /api-keys/{id}`: revokes one of the caller's live keys; any
/// other id is 404.
pub(super) async fn revoke(
    State(s): State<Arc<Inner>>,
    client: Client,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let owned = s
        .within(s.stores.api_keys_of(caller.user_id()))
        .await?
        .into_iter()
        .any(|k| k.id == id && k.revoked_at.is_none());
    if !owned || !s.within(s.stores.revoke_api_key(&id)).await? {
        return Err(Problem::not_found("API key"));
    }
    let mut event = s.event(EventKind::ApiKeyRevoked, REVOKE, &client);
    event.status = Some(204);
    event.set_principal(&caller.0);
    event.credential_id = Some(id);
    s.record(event).await;
    Ok(StatusCode::NO_CONTENT)
}
