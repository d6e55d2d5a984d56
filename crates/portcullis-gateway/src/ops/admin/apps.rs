//! App credentials: register, show, rotate the secret, disable and enable.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use portcullis::service::{JsonBody, Problem};
use portcullis::stores::AppRecord;
use portcullis_core::authz::grant::Grantee;
use serde::{Deserialize, Serialize};

use super::respond::{bad_param, json};
use super::{AdminState, Caller};

#[derive(Serialize)]
struct AppView {
    app_id: String,
    name: String,
    secret_version: u32,
    previous_valid_until: Option<i64>,
    services: Vec<String>,
    permissions: Vec<String>,
    tenant: Option<String>,
    disabled: bool,
    created_at: i64,
    updated_at: i64,
}

impl From<AppRecord> for AppView {
    fn from(a: AppRecord) -> Self {
        Self {
            app_id: a.app_id,
            name: a.name,
            secret_version: a.secret_version,
            previous_valid_until: a.previous_valid_until,
            services: a.services,
            permissions: a.permissions,
            tenant: a.tenant,
            disabled: a.disabled,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateApp {
    name: String,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
}

pub(super) async fn create_app(
    State(s): State<AdminState>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateApp>,
) -> Result<Response, Problem> {
    s.granter(&caller)
        .check(Grantee::NonAdmin, &[], &req.permissions)?;
    let created = s
        .stores
        .create_app(&portcullis::stores::NewApp {
            name: req.name,
            services: req.services,
            permissions: req.permissions,
            tenant: req.tenant,
        })
        .await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({"secret": created.secret, "app": AppView::from(created.record)}),
    ))
}

/// The app `id`, or 404.
async fn app_or_404(s: &AdminState, id: &str) -> Result<AppRecord, Problem> {
    s.stores
        .app(id)
        .await?
        .ok_or_else(|| Problem::not_found("app"))
}

/// 200 with the app `id` as it is now, or 404.
async fn app_view(s: &AdminState, id: &str) -> Result<Response, Problem> {
    Ok(json(
        StatusCode::OK,
        &AppView::from(app_or_404(s, id).await?),
    ))
}

pub(super) async fn show_app(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    app_view(&s, &id).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateApp {
    /// How long the previous secret keeps working, in seconds (at most a week).
    #[serde(default)]
    grace_seconds: u32,
}

pub(super) async fn rotate_app(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    caller: Caller,
    JsonBody(req): JsonBody<RotateApp>,
) -> Result<Response, Problem> {
    // The new secret is the app: only for a caller holding all it holds.
    let app = app_or_404(&s, &id).await?;
    s.granter(&caller).check_takeover(&[], &app.permissions)?;
    if req.grace_seconds > 7 * 24 * 3600 {
        return Err(bad_param("grace_seconds", "at most 604800 (a week)"));
    }
    let secret = s
        .stores
        .rotate_app_secret(&id, Duration::from_secs(u64::from(req.grace_seconds)))
        .await?;
    let app = app_or_404(&s, &id).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"secret": secret, "app": AppView::from(app)}),
    ))
}

/// Disables or enables the app `id`; 200 with the app as it is now.
async fn set_disabled(s: &AdminState, id: &str, disabled: bool) -> Result<Response, Problem> {
    s.stores.set_app_disabled(id, disabled).await?;
    app_view(s, id).await
}

pub(super) async fn disable_app(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    set_disabled(&s, &id, true).await
}

pub(super) async fn enable_app(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    set_disabled(&s, &id, false).await
}
