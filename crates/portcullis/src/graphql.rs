//! `async-graphql` field guards from the same [`Principal`] the guard layers
//! put into request extensions: [`RequirePermission`], [`RequireRole`] and
//! [`RequireAuthenticated`], plus [`with_principal`] to hand the principal
//! to a request's resolvers.
//!
//! A refusal is a GraphQL error whose `extensions.code` is the stable
//! code: `auth.missing_credentials` when the request has no principal,
//! `authz.denied` (with the missing `permission` or `role`) when the caller
//! lacks what the field needs.
//!
//! Two ways to guard a field:
//!
//! - `#[graphql(guard = "RequirePermission::new(\"docs.write\")")]`: the
//!   error travels up as async-graphql resolves errors, nulling the nearest
//!   nullable *value* above the field (for a root field, all of `data`);
//! - [`permitted`] in the resolver of a nullable field: only that field is
//!   `null` and the rest of the response stands.
//!
//! ```rust,ignore
//! #[Object]
//! impl Query {
//!     #[graphql(guard = "RequirePermission::new(\"docs.read\")")]
//!     async fn docs(&self) -> Vec<Doc> { … }
//! }
//!
//! #[Object]
//! impl Mutation {
//!     async fn update_doc(&self, ctx: &Context<'_>, id: ID, title: String) -> Option<Doc> {
//!         permitted(ctx, &RequirePermission::new("docs.write")).await?;
//!         …
//!     }
//! }
//!
//! async fn graphql(
//!     State(schema): State<MySchema>,
//!     principal: Option<Principal>,
//!     Json(request): Json<async_graphql::Request>,
//! ) -> Json<async_graphql::Response> {
//!     Json(schema.execute(with_principal(request, principal)).await)
//! }
//! ```

use std::borrow::Cow;

use async_graphql::{Context, Error, ErrorExtensions, Guard, Request, Result};
use portcullis_core::ErrorCode;

use crate::http::Principal;

/// `request` with `principal` in its context data, where the guards and
/// [`principal`] find it; `None` (an anonymous caller) adds nothing.
pub fn with_principal(request: Request, principal: Option<Principal>) -> Request {
    match principal {
        Some(p) => request.data(p),
        None => request,
    }
}

/// The caller of the request `ctx` belongs to, or the
/// `auth.missing_credentials` error a resolver can return with `?`.
pub fn principal<'a>(ctx: &Context<'a>) -> Result<&'a Principal> {
    ctx.data_opt::<Principal>().ok_or_else(missing_credentials)
}

/// Runs `guard` for the field `ctx` resolves: `Some(())` when it admits
/// the caller, else `None` after recording its error at this field's path,
/// so a nullable field resolves to `null` and its siblings still resolve.
pub async fn permitted<G: Guard + Sync>(ctx: &Context<'_>, guard: &G) -> Option<()> {
    match guard.check(ctx).await {
        Ok(()) => Some(()),
        Err(e) => {
            ctx.add_error(ctx.set_error_path(e.into_server_error(ctx.item.pos)));
            None
        }
    }
}

fn missing_credentials() -> Error {
    coded(
        ErrorCode::MissingCredentials,
        "this field needs an authenticated caller".to_owned(),
    )
}

fn coded(code: ErrorCode, message: String) -> Error {
    Error::new(message).extend_with(|_, e| e.set("code", code.as_str()))
}

/// Admits any authenticated caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequireAuthenticated;

impl Guard for RequireAuthenticated {
    async fn check(&self, ctx: &Context<'_>) -> Result<()> {
        principal(ctx).map(|_| ())
    }
}

/// Admits callers holding a permission (wildcard grants such as `docs.*`
/// and, under a `GuardLayer`, the permissions of their roles count).
#[derive(Debug, Clone)]
pub struct RequirePermission {
    permission: Cow<'static, str>,
}

impl RequirePermission {
    /// Requires `permission`, e.g. `docs.write`.
    pub fn new(permission: impl Into<Cow<'static, str>>) -> Self {
        Self {
            permission: permission.into(),
        }
    }
}

impl Guard for RequirePermission {
    async fn check(&self, ctx: &Context<'_>) -> Result<()> {
        if principal(ctx)?.has_permission(&self.permission) {
            return Ok(());
        }
        let permission = self.permission.to_string();
        Err(coded(
            ErrorCode::Denied,
            format!("missing permission `{permission}`"),
        )
        .extend_with(|_, e| e.set("permission", permission)))
    }
}

/// Admits callers holding a role, directly or through a role that
/// includes it in the guard's role table.
#[derive(Debug, Clone)]
pub struct RequireRole {
    role: Cow<'static, str>,
}

impl RequireRole {
    /// Requires `role`, e.g. `admin`.
    pub fn new(role: impl Into<Cow<'static, str>>) -> Self {
        Self { role: role.into() }
    }
}

impl Guard for RequireRole {
    async fn check(&self, ctx: &Context<'_>) -> Result<()> {
        if principal(ctx)?.has_role(&self.role) {
            return Ok(());
        }
        let role = self.role.to_string();
        Err(coded(ErrorCode::Denied, format!("missing role `{role}`"))
            .extend_with(|_, e| e.set("role", role)))
    }
}
