//! API keys: list and create a user's (or an admin's) keys, revoke one.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use portcullis::anomaly::webhook::SecurityEventKind;
use portcullis::service::{JsonBody, Problem};
use portcullis::stores::{ApiKeyRecord, NewApiKey};
use serde::{Deserialize, Serialize};

use super::respond::{json, no_content_or_404};
use super::users::user_or_404;
use super::{ADMIN_OWNER_PREFIX, AdminState, Caller};
use crate::ops::escalation::grantee_of_owner;

#[derive(Serialize)]
struct ApiKeyView {
    id: String,
    name: String,
    owner: String,
    roles: Vec<String>,
    permissions: Vec<String>,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

impl From<ApiKeyRecord> for ApiKeyView {
    fn from(k: ApiKeyRecord) -> Self {
        Self {
            id: k.id,
            name: k.name,
            owner: k.owner,
            roles: k.roles,
            permissions: k.permissions,
            created_at: k.created_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
        }
    }
}

pub(super) async fn list_api_keys(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let keys: Vec<ApiKeyView> = s
        .stores
        .api_keys_of(&id)
        .await?
        .into_iter()
        .map(ApiKeyView::from)
        .collect();
    Ok(json(StatusCode::OK, &serde_json::json!({"api_keys": keys})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKey {
    name: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
    /// Lifetime in seconds; none: the key does not expire.
    #[serde(default)]
    expires_in: Option<u32>,
}

pub(super) async fn create_api_key(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateKey>,
) -> Result<Response, Problem> {
    // An admin key or a user's: either way, no more than the caller holds
    // (and a user's key nothing of the admin namespace).
    s.granter(&caller)
        .check(grantee_of_owner(&id), &req.roles, &req.permissions)?;
    if !id.starts_with(ADMIN_OWNER_PREFIX) {
        user_or_404(&s, &id).await?;
    }
    let now = s.stores.now();
    // An admin key: owned by an admin, or holding anything of the admin
    // namespace (a user's key cannot, the check above refused it).
    let admin_key = crate::ops::escalation::is_admin_owner(&id)
        || req
            .permissions
            .iter()
            .any(|p| portcullis_core::authz::grant::names_admin_namespace(p));
    let created = s
        .stores
        .create_api_key(&NewApiKey {
            name: req.name,
            owner: id,
            roles: req.roles,
            permissions: req.permissions,
            expires_at: req
                .expires_in
                .map(|secs| now.saturating_add(i64::from(secs))),
            ..NewApiKey::default()
        })
        .await?;
    if admin_key {
        let record = &created.record;
        s.notify(SecurityEventKind::AdminKeyCreated, &caller, || {
            (
                record.id.clone(),
                format!(
                    "owner {}, roles [{}], permissions [{}]",
                    record.owner,
                    record.roles.join(", "),
                    record.permissions.join(", ")
                ),
            )
        });
    }
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({"key": created.key, "api_key": ApiKeyView::from(created.record)}),
    ))
}

pub(super) async fn revoke_api_key(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, Problem> {
    // A narrow admin key must not lock a broader one out: revoking an
    // admin-owned key takes everything that key holds.
    if let Some(record) = s.stores.api_key(&id).await?
        && crate::ops::escalation::is_admin_owner(&record.owner)
    {
        s.granter(&caller)
            .check_takeover(&record.roles, &record.permissions)?;
    }
    no_content_or_404(s.stores.revoke_api_key(&id).await?, "API key")
}
