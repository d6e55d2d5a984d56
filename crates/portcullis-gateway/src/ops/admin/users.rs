//! Users: list, create, import, show, delete, disable and enable,
//! passwords, reset tokens and grants.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis::service::{JsonBody, Problem};
use portcullis::stores::{NewUser, User};
use portcullis_core::authz::grant::Grantee;
use serde::{Deserialize, Serialize};

use super::respond::{backend_unavailable, bad_param, json, query};
use super::{AdminState, Caller, DEFAULT_PAGE, STORE_BUDGET};

/// A user as the admin API shows it: never its password hash.
#[derive(Serialize)]
struct UserView {
    id: String,
    username: String,
    roles: Vec<String>,
    permissions: Vec<String>,
    tenant: Option<String>,
    disabled: bool,
    created_at: i64,
    updated_at: i64,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            username: u.username,
            roles: u.roles,
            permissions: u.permissions,
            tenant: u.tenant,
            disabled: u.disabled,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    #[serde(default)]
    search: String,
    after: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn list_users(
    State(s): State<AdminState>,
    params: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let q = query(params)?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    let users = s
        .stores
        .list_users(&q.search, q.after.as_deref(), limit)
        .await?;
    let next = (users.len() == limit)
        .then(|| users.last().map(|u| u.username.clone()))
        .flatten();
    let users: Vec<UserView> = users.into_iter().map(UserView::from).collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"users": users, "next": next}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    username: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
    /// No password: the answer carries a one-time reset token to send the
    /// user (`POST <token service>/password/reset`).
    #[serde(default)]
    invite: bool,
    /// How long the invitation's token lives (default 3 days).
    #[serde(default)]
    invite_ttl_seconds: Option<u32>,
}

impl CreateUser {
    /// The store's form of this body; `invitation` is an invitation's
    /// random password, used instead of the body's.
    fn new_user(self, invitation: Option<String>) -> NewUser {
        NewUser {
            username: self.username,
            password: invitation.or(self.password),
            password_hash: self.password_hash,
            roles: self.roles,
            permissions: self.permissions,
            tenant: self.tenant,
        }
    }
}

/// How long an invitation's reset token lives unless told.
const DEFAULT_INVITE_TTL: Duration = Duration::from_secs(3 * 24 * 3600);

pub(super) async fn create_user(
    State(s): State<AdminState>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateUser>,
) -> Result<Response, Problem> {
    // Everything is checked before anything is written.
    s.granter(&caller)
        .check(Grantee::NonAdmin, &req.roles, &req.permissions)?;
    if let Some(t) = req.invite_ttl_seconds
        && (t == 0 || u64::from(t) > portcullis::stores::users::MAX_RESET_TTL)
    {
        return Err(bad_param(
            "invite_ttl_seconds",
            &format!(
                "must be 1..={} seconds (30 days)",
                portcullis::stores::users::MAX_RESET_TTL
            ),
        ));
    }
    let invitation = if req.invite {
        if req.password.is_some() || req.password_hash.is_some() {
            return Err(bad_param("invite", "an invitation has no password"));
        }
        // A random password nobody knows: the invitation's token sets one.
        let mut random = [0u8; 32];
        portcullis_core::opaque::fill_random(&mut random).map_err(|e| Problem::unavailable(&e))?;
        Some(portcullis_core::jose::b64_encode(&random))
    } else {
        None
    };
    let (invite, invite_ttl) = (req.invite, req.invite_ttl_seconds);
    let user = s.stores.create_user(&req.new_user(invitation)).await?;
    let mut view =
        serde_json::to_value(UserView::from(user.clone())).map_err(|e| Problem::unavailable(&e))?;
    if invite {
        let ttl = invite_ttl.map_or(DEFAULT_INVITE_TTL, |t| Duration::from_secs(u64::from(t)));
        let (token, expires_at) = s.stores.password_reset_token(&user.id, ttl).await?;
        view["reset_token"] = serde_json::json!(token);
        view["reset_expires_at"] = serde_json::json!(expires_at);
    }
    Ok(json(StatusCode::CREATED, &view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResetTokenBody {
    /// Default one day.
    #[serde(default)]
    ttl_seconds: Option<u32>,
}

pub(super) async fn reset_token(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    caller: Caller,
    JsonBody(body): JsonBody<ResetTokenBody>,
) -> Result<Response, Problem> {
    // A reset token is the user's account: only for a caller holding all it holds.
    let user = user_or_404(&s, &id).await?;
    s.granter(&caller)
        .check_takeover(&user.roles, &user.permissions)?;
    let ttl = body
        .ttl_seconds
        .map_or(Duration::from_secs(24 * 3600), |t| {
            Duration::from_secs(u64::from(t))
        });
    let (token, expires_at) = s.stores.password_reset_token(&id, ttl).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"reset_token": token, "expires_at": expires_at}),
    ))
}

/// Largest import body (8 MiB) and most lines in one import call; the CLI
/// sends bigger files in parts.
const MAX_IMPORT_BYTES: usize = 8 << 20;
const MAX_IMPORT_LINES: usize = 10_000;

/// 413: an import over `limit` (its bytes or its lines).
fn import_too_large(limit: &str) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request.body_too_large",
        format!("an import is at most {limit}; send the file in parts"),
    )
}

/// `POST /admin/users/import`: one user per line (a `POST /admin/users`
/// body); each line stands alone, so a bad one is reported and the rest
/// are created.
pub(super) async fn import_users(
    State(state): State<AdminState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || import_too_large(&format!("{MAX_IMPORT_BYTES} bytes"));
    if declared.is_some_and(|n| n > MAX_IMPORT_BYTES) {
        return Err(too_large());
    }
    let bytes =
        http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_IMPORT_BYTES))
            .await
            .map_err(|_| too_large())?
            .to_bytes();
    let text =
        std::str::from_utf8(&bytes).map_err(|_| Problem::bad_body("the body is not UTF-8"))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    if lines.len() > MAX_IMPORT_LINES {
        return Err(import_too_large(&format!("{MAX_IMPORT_LINES} lines")));
    }
    // Every line's grants are checked before any user is created: an
    // import that would escalate writes nothing.
    let parsed: Vec<(usize, Result<CreateUser, serde_json::Error>)> = lines
        .into_iter()
        .map(|(line, raw)| (line, serde_json::from_str::<CreateUser>(raw)))
        .collect();
    let granter = state.granter(&caller);
    for (line, u) in &parsed {
        if let Ok(u) = u
            && let Err(e) = granter.verdict(Grantee::NonAdmin, &u.roles, &u.permissions)
        {
            return Err(granter.refuse(&e, &format!("line {line} (nothing was imported): ")));
        }
    }
    let mut created = 0usize;
    let mut failed = Vec::new();
    for (line, user) in parsed {
        let outcome = match user {
            Err(e) => Err(("request.invalid_body", e.to_string())),
            Ok(u) => match portcullis::stores::hook::within_budget(
                STORE_BUDGET,
                state.stores.create_user(&u.new_user(None)),
            )
            .await
            {
                Ok(_) => Ok(()),
                // A store that is down stops the import where it is.
                Err(e @ portcullis::stores::StoreError::Unavailable(_)) => {
                    return Err(backend_unavailable(format!(
                        "{e}; {created} users were imported, nothing from line {line} on: import the rest again"
                    )));
                }
                Err(e) => Err((e.code(), e.to_string())),
            },
        };
        match outcome {
            Ok(()) => created += 1,
            Err((code, detail)) => {
                failed.push(serde_json::json!({"line": line, "code": code, "detail": detail}));
            }
        }
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"created": created, "failed": failed}),
    ))
}

/// The user `id`, or 404.
pub(super) async fn user_or_404(s: &AdminState, id: &str) -> Result<User, Problem> {
    s.stores
        .user(id)
        .await?
        .ok_or_else(|| Problem::not_found("user"))
}

/// 200 with the user `id` as it is now, or 404.
async fn user_view(s: &AdminState, id: &str) -> Result<Response, Problem> {
    Ok(json(
        StatusCode::OK,
        &UserView::from(user_or_404(s, id).await?),
    ))
}

pub(super) async fn show_user(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    user_view(&s, &id).await
}

pub(super) async fn delete_user(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    s.stores.delete_user(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Disables or enables the user `id`; 200 with the user as it is now.
async fn set_disabled(s: &AdminState, id: &str, disabled: bool) -> Result<Response, Problem> {
    s.stores.set_user_disabled(id, disabled).await?;
    user_view(s, id).await
}

pub(super) async fn disable_user(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    set_disabled(&s, &id, true).await
}

pub(super) async fn enable_user(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    set_disabled(&s, &id, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordBody {
    password: String,
}

pub(super) async fn reset_password(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    caller: Caller,
    JsonBody(req): JsonBody<PasswordBody>,
) -> Result<Response, Problem> {
    // Setting the password is taking the account: only for a caller
    // holding all the user holds.
    let user = user_or_404(&s, &id).await?;
    s.granter(&caller)
        .check_takeover(&user.roles, &user.permissions)?;
    s.stores.reset_password(&id, &req.password).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantsBody {
    roles: Vec<String>,
    permissions: Vec<String>,
}

pub(super) async fn set_grants(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    caller: Caller,
    JsonBody(req): JsonBody<GrantsBody>,
) -> Result<Response, Problem> {
    // What the user gains must be the caller's to give; what it keeps was
    // checked when it was given (the admin namespace is refused either way).
    let user = user_or_404(&s, &id).await?;
    let new_roles: Vec<String> = req
        .roles
        .iter()
        .filter(|r| !user.roles.contains(*r))
        .cloned()
        .collect();
    let new_permissions: Vec<String> = req
        .permissions
        .iter()
        .filter(|p| !user.permissions.contains(*p))
        .cloned()
        .collect();
    let granter = s.granter(&caller);
    granter.check(Grantee::NonAdmin, &new_roles, &new_permissions)?;
    let kept_admin: Vec<String> = req
        .permissions
        .iter()
        .filter(|p| portcullis_core::authz::grant::names_admin_namespace(p))
        .cloned()
        .collect();
    granter.check(Grantee::NonAdmin, &[], &kept_admin)?;
    s.stores
        .set_user_grants(&id, &req.roles, &req.permissions)
        .await?;
    user_view(&s, &id).await
}
