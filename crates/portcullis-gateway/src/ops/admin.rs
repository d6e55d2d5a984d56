//! The admin API on the operations listener (never on the public one):
//! users, sessions, tokens, API keys, app credentials and bans, for
//! operators who should not write SQL or Redis commands.
//!
//! Every route is in [`ROUTES`], which is three things at once: the guard's
//! route table (each route needs an admin API key holding its permission —
//! `admin.*` holds them all, `admin.users.read` only that one), the axum
//! router's routes, and the OpenAPI document served at `/openapi.json`.
//! The guard is the library's own `Guard`, so every admin call is audited
//! (allowed or refused, with the route and the key that made it) and
//! refusals are the usual problem+json with stable codes. Bans do not apply
//! here (a ban must not lock out the operators who lift it). Admin keys are
//! API keys whose owner is `admin:<name>`, made by `portcullis admin
//! bootstrap` (printed once); no other key passes the guard, whatever its
//! grants. A key grants only what it holds ([`crate::ops::escalation`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use portcullis::anomaly::AnomalyEngine;
use portcullis::audit::{AuditQuery, AuditStore, AuditWriter, Cursor, LiveEvent};
use portcullis::keyring::{KeyRing, RotateError};
use portcullis::service::{BodyLimit, JsonBody, Problem};
use portcullis::stores::{ApiKeyRecord, AppRecord, NewApiKey, NewUser, Session, Stores, User};
use portcullis::{Guard, GuardConfig};
use portcullis_core::anomaly::BanTarget;
use portcullis_core::authz::grant::Grantee;
use serde::{Deserialize, Serialize};

use crate::ops::escalation::{Granter, RoleSource, grantee_of_owner};

/// The caller of an admin request, as the admin guard authenticated it.
type Caller = portcullis::http::Principal;
use portcullis::anomaly::webhook::{SecurityEventKind, SecurityNotice};

/// The owner of admin API keys: `admin:<name>`.
pub const ADMIN_OWNER_PREFIX: &str = "admin:";

/// The realm of the admin API's `WWW-Authenticate` challenges.
const REALM: &str = "portcullis-admin";

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

/// Longest an admin call may wait on the stores (a store that does not
/// answer in time is down: 503 `backend.unavailable`, never a hung call).
/// The live stream has no deadline; an import applies it to each user.
pub(crate) const STORE_BUDGET: Duration = Duration::from_secs(10);

/// Default and largest page of `GET /admin/users`.
const DEFAULT_PAGE: usize = 50;

/// One admin route: method, axum path, guard path pattern, the permission
/// it needs, and its one-line summary (for the OpenAPI document).
pub struct AdminRoute {
    /// HTTP method.
    pub method: &'static str,
    /// The path as axum and OpenAPI write it (`{id}` parameters).
    pub path: &'static str,
    /// The permission an admin key needs; `None`: open (the document itself).
    pub permission: Option<&'static str>,
    /// What it does.
    pub summary: &'static str,
}

const fn route(
    method: &'static str,
    path: &'static str,
    permission: &'static str,
    summary: &'static str,
) -> AdminRoute {
    AdminRoute {
        method,
        path,
        permission: Some(permission),
        summary,
    }
}

/// Every admin route (see the module docs).
pub const ROUTES: &[AdminRoute] = &[
    route(
        "GET",
        "/admin/users",
        "admin.users.read",
        "List users by username (search, after, limit)",
    ),
    route(
        "POST",
        "/admin/users",
        "admin.users.write",
        "Create a user (password or an imported argon2id / bcrypt hash)",
    ),
    route(
        "POST",
        "/admin/users/import",
        "admin.users.write",
        "Import users from JSON lines (each a create body; bcrypt / argon2id hashes kept)",
    ),
    route(
        "GET",
        "/admin/users/{id}",
        "admin.users.read",
        "Show a user",
    ),
    route(
        "DELETE",
        "/admin/users/{id}",
        "admin.users.write",
        "Delete a user (its sessions, refresh tokens and API keys are revoked)",
    ),
    route(
        "POST",
        "/admin/users/{id}/disable",
        "admin.users.write",
        "Disable a user: every session and refresh family is revoked at once",
    ),
    route(
        "POST",
        "/admin/users/{id}/enable",
        "admin.users.write",
        "Enable a user again",
    ),
    route(
        "POST",
        "/admin/users/{id}/reset-token",
        "admin.users.write",
        "A one-time password reset token for a user (a reset link)",
    ),
    route(
        "POST",
        "/admin/users/{id}/password",
        "admin.users.write",
        "Set a new password (every session is revoked)",
    ),
    route(
        "PUT",
        "/admin/users/{id}/grants",
        "admin.users.write",
        "Replace a user's roles and permissions",
    ),
    route(
        "GET",
        "/admin/users/{id}/sessions",
        "admin.sessions.read",
        "List a user's sessions",
    ),
    route(
        "DELETE",
        "/admin/users/{id}/sessions",
        "admin.sessions.write",
        "Revoke every session and refresh family of a user",
    ),
    route(
        "DELETE",
        "/admin/sessions/{id}",
        "admin.sessions.write",
        "Revoke one session",
    ),
    route(
        "POST",
        "/admin/tokens/revoke",
        "admin.tokens.write",
        "Revoke an access token's jti until its expiry",
    ),
    route(
        "GET",
        "/admin/users/{id}/api-keys",
        "admin.api_keys.read",
        "List a user's API keys",
    ),
    route(
        "POST",
        "/admin/users/{id}/api-keys",
        "admin.api_keys.write",
        "Create an API key for a user (the key is shown once)",
    ),
    route(
        "DELETE",
        "/admin/api-keys/{id}",
        "admin.api_keys.write",
        "Revoke an API key",
    ),
    route(
        "POST",
        "/admin/apps",
        "admin.apps.write",
        "Register an app credential (the secret is shown once)",
    ),
    route(
        "GET",
        "/admin/apps/{id}",
        "admin.apps.read",
        "Show an app credential",
    ),
    route(
        "POST",
        "/admin/apps/{id}/rotate",
        "admin.apps.write",
        "Rotate an app secret; the old one works for the grace period",
    ),
    route(
        "POST",
        "/admin/apps/{id}/disable",
        "admin.apps.write",
        "Disable an app credential",
    ),
    route(
        "POST",
        "/admin/apps/{id}/enable",
        "admin.apps.write",
        "Enable an app credential again",
    ),
    route("GET", "/admin/bans", "admin.bans.read", "List active bans"),
    route(
        "POST",
        "/admin/bans",
        "admin.bans.write",
        "Ban an IP or a subject for a while",
    ),
    route(
        "DELETE",
        "/admin/bans/{target}",
        "admin.bans.write",
        "Lift a ban (`ip:<address>` or `subject:<id>`)",
    ),
    route(
        "GET",
        "/admin/anomalies",
        "admin.anomalies.read",
        "The latest anomaly detections of this replica and its last webhook deliveries, newest first",
    ),
    route(
        "GET",
        "/admin/audit",
        "admin.audit.read",
        "Query the audit log (filters, keyset paging), newest first",
    ),
    route(
        "GET",
        "/admin/audit/stream",
        "admin.audit.read",
        "Live decisions as Server-Sent Events (filter by route, decision, subject, code)",
    ),
    AdminRoute {
        method: "GET",
        path: "/openapi.json",
        permission: None,
        summary: "This document",
    },
    route(
        "GET",
        "/admin/keys",
        "admin.keys.read",
        "The signing keys (public parts only) with their state and rotation schedule",
    ),
    route(
        "POST",
        "/admin/keys/rotate",
        "admin.keys.write",
        "Start a signing-key rotation: a new key is published now and signs after the propagation delay",
    ),
    route(
        "POST",
        "/admin/explain",
        "admin.explain",
        "Explain one decision against the running gateway: routes, credential and revocation, bans, rate-limit counters (read, not consumed), upstream",
    ),
    route(
        "POST",
        "/reload",
        "admin.config.write",
        "Reload the configuration file (validate, then swap); from a loopback peer",
    ),
];

/// The token service's routes under its prefix, for the OpenAPI document.
pub const TOKEN_SERVICE_ROUTES: &[(&str, &str, &str)] = &[
    ("POST", "/login", "Log in with username and password"),
    (
        "POST",
        "/refresh",
        "Rotate a refresh token (reuse revokes the family)",
    ),
    ("POST", "/logout", "End the access token's session"),
    ("POST", "/logout-all", "End every session of the caller"),
    (
        "POST",
        "/password/reset",
        "Set a password with a one-time reset token (invitations, reset links)",
    ),
    ("GET", "/sessions", "The caller's sessions"),
    (
        "DELETE",
        "/sessions/{id}",
        "Revoke one of the caller's sessions",
    ),
    (
        "POST",
        "/api-keys",
        "Create an API key of the caller's (shown once)",
    ),
    ("GET", "/api-keys", "The caller's API keys"),
    (
        "DELETE",
        "/api-keys/{id}",
        "Revoke one of the caller's API keys",
    ),
    (
        "GET",
        "/.well-known/jwks.json",
        "The public keys of the local issuer",
    ),
    (
        "GET",
        "/.well-known/openid-configuration",
        "OpenID discovery of the local issuer",
    ),
];

/// The guard path pattern of an axum path: each `{param}` is one segment.
fn guard_path(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "*" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// The admin guard's configuration: one route per [`ROUTES`] entry, API
/// keys only, deny by default.
fn guard_config() -> Result<GuardConfig, String> {
    let mut text = format!("realm = \"{REALM}\"\ndefault = \"deny\"\n");
    for r in ROUTES {
        let name = format!("{} {}", r.method, r.path);
        let (credentials, require) = match r.permission {
            Some(p) => (
                "[\"api_key\"]",
                format!("require = {{ permissions_all = [\"{p}\"] }}\n"),
            ),
            None => ("[\"anonymous\"]", String::new()),
        };
        text.push_str(&format!(
            "\n[[routes]]\nname = \"{name}\"\nmethods = [\"{}\"]\npath = \"{}\"\ncredentials = {credentials}\n{require}",
            r.method,
            guard_path(r.path),
        ));
    }
    toml::from_str(&text).map_err(|e| format!("admin routes: {e}"))
}

/// The `guard` of the admin API's audit events (a replay of the request
/// path's decisions leaves them out).
pub const AUDIT_GUARD: &str = "admin";

/// What the handlers share.
#[derive(Clone)]
struct AdminState {
    stores: Arc<Stores>,
    anomaly: Option<Arc<AnomalyEngine>>,
    audit: Option<Arc<AuditWriter>>,
    audit_store: Option<Arc<dyn AuditStore>>,
    /// How clients are grouped: bans are stored under a client group.
    client_ip: portcullis_core::ratelimit::ClientIpConfig,
    keyring: Arc<KeyRing>,
    openapi: Arc<serde_json::Value>,
    /// Open live streams, capped in total and per key.
    streams: Arc<crate::ops::live_stream::StreamSlots>,
    /// `POST /reload` (none: not served, as in unit tests).
    reloader: Option<Arc<crate::ops::reload::Reloader>>,
    /// Where roles get their meaning, for the grant checks.
    roles: Option<RoleSource>,
    /// The running request path, explained (none: `POST /admin/explain` answers 404).
    explainer: Option<ExplainerSource>,
}

/// The explainer of the running request path (the live app's, as reloaded).
pub type ExplainerSource = Arc<dyn Fn() -> crate::explain::Explainer + Send + Sync>;

impl AdminState {
    /// The caller with what it holds, for the grant checks.
    fn granter(&self, caller: &Caller) -> Granter {
        Granter::new(caller, self.roles.as_ref())
    }

    /// Queues a security notice of what `caller` did to the webhooks that
    /// opted into `event`; `what` gives its target and detail.
    fn notify(
        &self,
        event: SecurityEventKind,
        caller: &Caller,
        what: impl FnOnce() -> (String, String),
    ) {
        let Some(engine) = &self.anomaly else { return };
        let at_ms = u64::try_from(self.stores.now())
            .unwrap_or_default()
            .saturating_mul(1000);
        engine.notify(
            || {
                let (target, detail) = what();
                SecurityNotice {
                    event,
                    at_ms,
                    subject: Some(caller.subject.clone()),
                    client_ip: None,
                    target: Some(target),
                    detail: Some(detail),
                }
            },
            event,
            std::time::Duration::ZERO,
        );
    }
}

impl BodyLimit for AdminState {
    fn max_body_bytes(&self) -> usize {
        MAX_BODY
    }
}

/// What the admin API works on: the gateway's own stores, bans and audit log.
pub struct AdminParts {
    /// Users, sessions, keys, apps, revocation.
    pub stores: Arc<Stores>,
    /// Bans (none: `anomaly.enabled = false`).
    pub anomaly: Option<Arc<AnomalyEngine>>,
    /// The audit writer: admin calls are recorded, the live stream reads it.
    pub audit: Option<Arc<AuditWriter>>,
    /// The audit database, for queries.
    pub audit_store: Option<Arc<dyn AuditStore>>,
    /// Whose forwarding headers are believed.
    pub client_ip: portcullis_core::ratelimit::ClientIpConfig,
    /// The token service's prefix, for the OpenAPI document.
    pub token_prefix: Option<String>,
    /// The signing keys and their rotation.
    pub keyring: Arc<KeyRing>,
    /// Open live streams, capped in total and per key.
    pub streams: Arc<crate::ops::live_stream::StreamSlots>,
    /// What `POST /reload` reloads (none: the route answers 404).
    pub reloader: Option<Arc<crate::ops::reload::Reloader>>,
    /// The guard whose role table gives granted roles their meaning (the
    /// public listener's, as reloaded); none: no role is defined.
    pub roles: Option<RoleSource>,
    /// The running request path, for `POST /admin/explain` (none: 404).
    pub explainer: Option<ExplainerSource>,
}

/// The admin API: its guard (over the same stores, bans and audit log as
/// the public listener's) in front of its router.
pub fn build(parts: AdminParts) -> Result<(Guard, Router), String> {
    let AdminParts {
        stores,
        anomaly,
        audit,
        audit_store,
        client_ip,
        token_prefix,
        keyring,
        streams,
        reloader,
        roles,
        explainer,
    } = parts;
    let token_prefix = token_prefix.as_deref();
    let mut config = guard_config()?;
    config.client_ip = client_ip.clone();
    // No anomaly engine on this guard: a ban (an automatic one included)
    // must never lock the operators out of the API that lifts it. Admin
    // keys are 256-bit secrets, so there is nothing to guess by bursts.
    // Only admin keys: a user's key whose grants happen to cover an admin
    // route is still not an admin key (the console accepts the same kind).
    let mut builder = Guard::builder(config)
        .stores(Arc::clone(&stores))
        .require_api_key_owner(ADMIN_OWNER_PREFIX)
        .audit_as(AUDIT_GUARD);
    if let Some(a) = &audit {
        builder = builder.audit(Arc::clone(a));
    }
    let guard = builder.build().map_err(|e| e.to_string())?;
    let state = AdminState {
        stores,
        anomaly,
        audit,
        audit_store,
        client_ip,
        keyring,
        openapi: Arc::new(openapi(token_prefix)),
        streams,
        reloader,
        roles,
        explainer,
    };
    let router = Router::new()
        .route("/admin/users", get(list_users).post(create_user))
        .route("/admin/users/import", post(import_users))
        .route("/admin/users/{id}", get(show_user).delete(delete_user))
        .route("/admin/users/{id}/disable", post(disable_user))
        .route("/admin/users/{id}/enable", post(enable_user))
        .route("/admin/users/{id}/reset-token", post(reset_token))
        .route("/admin/users/{id}/password", post(reset_password))
        .route("/admin/users/{id}/grants", put(set_grants))
        .route(
            "/admin/users/{id}/sessions",
            get(list_sessions).delete(revoke_user_sessions),
        )
        .route("/admin/sessions/{id}", delete(revoke_session))
        .route("/admin/tokens/revoke", post(revoke_token))
        .route(
            "/admin/users/{id}/api-keys",
            get(list_api_keys).post(create_api_key),
        )
        .route("/admin/api-keys/{id}", delete(revoke_api_key))
        .route("/admin/apps", post(create_app))
        .route("/admin/apps/{id}", get(show_app))
        .route("/admin/apps/{id}/rotate", post(rotate_app))
        .route("/admin/apps/{id}/disable", post(disable_app))
        .route("/admin/apps/{id}/enable", post(enable_app))
        .route("/admin/bans", get(list_bans).post(add_ban))
        .route("/admin/bans/{target}", delete(lift_ban))
        .route("/admin/anomalies", get(recent_anomalies))
        .route("/admin/audit", get(query_audit))
        .route("/admin/audit/stream", get(audit_stream))
        .route("/admin/keys", get(list_keys))
        .route("/admin/keys/rotate", post(rotate_keys))
        .route("/admin/explain", post(explain_request))
        .route("/reload", post(reload_config))
        .route("/openapi.json", get(openapi_document))
        .layer(axum::middleware::from_fn(within_store_budget))
        .with_state(state);
    Ok((guard, router))
}

/// Answers 503 `backend.unavailable` when a call takes longer than
/// [`STORE_BUDGET`] (a hung database); the live stream and the import
/// (which budgets each user) are exempt.
async fn within_store_budget(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if path == "/admin/audit/stream" || path == "/admin/users/import" {
        return next.run(req).await;
    }
    match tokio::time::timeout(STORE_BUDGET, next.run(req)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend.unavailable",
            format!(
                "the stores did not answer within {} s; check that the database is up",
                STORE_BUDGET.as_secs()
            ),
        )
        .into_response(),
    }
}

/// The `{name}` segments of `path` as OpenAPI path parameters.
fn path_params(path: &str) -> Vec<serde_json::Value> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            serde_json::json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
        })
        .collect()
}

/// The OpenAPI 3.1 document of the admin API and the token service.
pub fn openapi(token_prefix: Option<&str>) -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    let mut add = |path: String, method: &str, op: serde_json::Value| {
        let entry = paths.entry(path).or_insert_with(|| serde_json::json!({}));
        if let Some(obj) = entry.as_object_mut() {
            obj.insert(method.to_ascii_lowercase(), op);
        }
    };
    let problem = serde_json::json!({"$ref": "#/components/responses/Problem"});
    for r in ROUTES {
        let params = path_params(r.path);
        let mut op = serde_json::json!({
            "summary": r.summary,
            "operationId": format!("{} {}", r.method, r.path),
            "tags": ["admin"],
            "parameters": params,
            "responses": {"200": {"description": "OK"}, "default": problem},
        });
        if let Some(p) = r.permission {
            op["security"] = serde_json::json!([{"adminKey": []}]);
            op["x-permission"] = serde_json::json!(p);
        }
        add(r.path.to_owned(), r.method, op);
    }
    if let Some(prefix) = token_prefix {
        for (method, path, summary) in TOKEN_SERVICE_ROUTES {
            let op = serde_json::json!({
                "summary": summary,
                "operationId": format!("{method} {prefix}{path}"),
                "tags": ["token service"],
                "parameters": path_params(path),
                "responses": {"200": {"description": "OK"}, "default": problem},
            });
            add(format!("{prefix}{path}"), method, op);
        }
    }
    serde_json::json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Portcullis admin API and token service",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "adminKey": {"type": "http", "scheme": "bearer", "description": "An admin API key (`portcullis admin bootstrap`)"},
            },
            "responses": {
                "Problem": {
                    "description": "RFC 9457 problem with the stable `code`",
                    "content": {"application/problem+json": {"schema": {"type": "object", "required": ["type", "title", "status", "code"]}}},
                },
            },
        },
    })
}

async fn openapi_document(State(s): State<AdminState>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        s.openapi.to_string(),
    )
        .into_response()
}

/// The token service's JSON answer (`Cache-Control: no-store`: some carry
/// a key or secret shown once).
fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    portcullis::service::json_response(status, value)
}

// ------------------------------------------------------------------- keys

/// `GET /admin/keys`: every key's state and times, and the rotation settings.
async fn list_keys(State(s): State<AdminState>) -> Response {
    json(StatusCode::OK, &s.keyring.status())
}

/// The body of `POST /admin/keys/rotate`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateKeys {
    /// The new key's algorithm (default: the active key's).
    #[serde(default)]
    alg: Option<String>,
    /// Accept an HMAC algorithm (HS256, …): its secret cannot be in the
    /// JWKS, so every outside verifier must be given it out of band.
    #[serde(default)]
    shared_out_of_band: bool,
}

/// Stable code: the rotation names a key the JWKS cannot publish.
pub const UNPUBLISHABLE_ALG: &str = "keys.unpublishable_algorithm";

/// `POST /admin/keys/rotate`: 202 with the new key, which signs from its
/// `activates_at`; 409 while an earlier rotation is pending.
async fn rotate_keys(
    State(s): State<AdminState>,
    caller: Caller,
    JsonBody(req): JsonBody<RotateKeys>,
) -> Result<Response, Problem> {
    let alg = match req.alg.as_deref() {
        None => None,
        Some(name) => Some(portcullis_core::Algorithm::from_name(name).ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                portcullis::service::INVALID_INPUT,
                format!("invalid alg: `{name}` is not a supported algorithm (RS256, PS256, ES256, ES384, EdDSA, HS256, …)"),
            )
        })?),
    };
    // An HMAC key is a shared secret: it is never in the JWKS, so after
    // it activates no outside verifier could check a token. Refused unless
    // the caller says the secret is shared out of band.
    let resolved = alg.or_else(|| {
        s.keyring
            .status()
            .keys
            .iter()
            .find(|k| k.state == portcullis_core::jose::rotation::KeyState::Active)
            .map(|k| k.alg)
    });
    if let Some(a) = resolved
        && a.family() == portcullis_core::KeyFamily::Hmac
        && !req.shared_out_of_band
    {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            UNPUBLISHABLE_ALG,
            format!(
                "`{}` is an HMAC algorithm: its key is a shared secret that the JWKS cannot publish, so every outside verifier would reject the tokens it signs; rotate to a public-key algorithm (ES256, EdDSA, RS256, …), or send \"shared_out_of_band\": true if every verifier gets the secret another way",
                a.name()
            ),
        ));
    }
    match s.keyring.rotate(alg).await {
        Ok(key) => {
            s.notify(SecurityEventKind::SigningKeyRotated, &caller, || {
                (
                    key.kid.clone(),
                    format!(
                        "{} key, signs from {} (Unix seconds)",
                        key.alg.name(),
                        key.activates_at.unwrap_or_default()
                    ),
                )
            });
            Ok(json(StatusCode::ACCEPTED, &key))
        }
        Err(RotateError::Pending { kid, activates_at }) => Err(Problem::new(
            StatusCode::CONFLICT,
            "keys.rotation_pending",
            format!(
                "a rotation is already pending: key `{kid}` activates at {activates_at} (Unix seconds); rotate again after that"
            ),
        )),
        Err(RotateError::Store(e)) => Err(e.into()),
        Err(e) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            portcullis::service::INVALID_INPUT,
            e.to_string(),
        )),
    }
}

/// `POST /admin/explain`: what the running gateway makes of one request,
/// with its live state (bans, revocation, rate-limit counters read and not
/// consumed). The request's token or key is never echoed back.
async fn explain_request(
    State(s): State<AdminState>,
    JsonBody(req): JsonBody<crate::explain::ExplainRequest>,
) -> Result<Response, Problem> {
    let Some(source) = &s.explainer else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    let explainer = source();
    let report = tokio::time::timeout(STORE_BUDGET, explainer.explain(&req))
        .await
        .map_err(|_| Problem::unavailable(&"the stores did not answer in time"))?
        .map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                portcullis::service::INVALID_INPUT,
                e.to_string(),
            )
        })?;
    Ok(json(StatusCode::OK, &report))
}

/// `POST /reload`: reloads the configuration file (see [`crate::ops::reload`]).
async fn reload_config(
    State(s): State<AdminState>,
    peer: Option<axum::Extension<portcullis::http::PeerAddr>>,
) -> Response {
    let Some(reloader) = &s.reloader else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let peer = peer.map_or_else(
        || std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        |axum::Extension(p)| p.0,
    );
    let (status, body) =
        crate::ops::reload::handle_request(reloader, &http::Method::POST, peer).await;
    json(status, &body)
}

// ------------------------------------------------------------------ users

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
struct ListQuery {
    #[serde(default)]
    search: String,
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_users(
    State(s): State<AdminState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::bad_body(format!("invalid query: {e}")))?;
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
struct CreateUser {
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

async fn create_user(
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
struct ResetTokenBody {
    /// Default one day.
    #[serde(default)]
    ttl_seconds: Option<u32>,
}

async fn reset_token(
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

/// `POST /admin/users/import`: one user per line (a `POST /admin/users`
/// body); each line stands alone, so a bad one is reported and the rest
/// are created.
async fn import_users(
    State(state): State<AdminState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request.body_too_large",
            format!("an import is at most {MAX_IMPORT_BYTES} bytes; send the file in parts"),
        )
    };
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
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request.body_too_large",
            format!("an import is at most {MAX_IMPORT_LINES} lines; send the file in parts"),
        ));
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
                    return Err(Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "backend.unavailable",
                        format!(
                            "{e}; {created} users were imported, nothing from line {line} on: import the rest again"
                        ),
                    ));
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

async fn user_or_404(s: &AdminState, id: &str) -> Result<User, Problem> {
    s.stores
        .user(id)
        .await?
        .ok_or_else(|| Problem::not_found("user"))
}

async fn show_user(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    Ok(json(
        StatusCode::OK,
        &UserView::from(user_or_404(&s, &id).await?),
    ))
}

async fn delete_user(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    s.stores.delete_user(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn disable_user(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    s.stores.set_user_disabled(&id, true).await?;
    Ok(json(
        StatusCode::OK,
        &UserView::from(user_or_404(&s, &id).await?),
    ))
}

async fn enable_user(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    s.stores.set_user_disabled(&id, false).await?;
    Ok(json(
        StatusCode::OK,
        &UserView::from(user_or_404(&s, &id).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: String,
}

async fn reset_password(
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
struct GrantsBody {
    roles: Vec<String>,
    permissions: Vec<String>,
}

async fn set_grants(
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
    Ok(json(
        StatusCode::OK,
        &UserView::from(user_or_404(&s, &id).await?),
    ))
}

// --------------------------------------------------------------- sessions

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

async fn list_sessions(
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

async fn revoke_user_sessions(
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

async fn revoke_session(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    if s.stores.revoke_session(&id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found("session"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeToken {
    jti: String,
    /// The token's `exp` (Unix seconds): the denylist entry lasts until then.
    expires_at: i64,
}

async fn revoke_token(
    State(s): State<AdminState>,
    JsonBody(req): JsonBody<RevokeToken>,
) -> Result<Response, Problem> {
    s.stores.revoke_jti(&req.jti, req.expires_at).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// --------------------------------------------------------------- API keys

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

async fn list_api_keys(
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
struct CreateKey {
    name: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
    /// Lifetime in seconds; none: the key does not expire.
    #[serde(default)]
    expires_in: Option<u32>,
}

async fn create_api_key(
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

async fn revoke_api_key(
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
    if s.stores.revoke_api_key(&id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found("API key"))
    }
}

// ------------------------------------------------------------------- apps

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
struct CreateApp {
    name: String,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
}

async fn create_app(
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

async fn app_or_404(s: &AdminState, id: &str) -> Result<AppRecord, Problem> {
    s.stores
        .app(id)
        .await?
        .ok_or_else(|| Problem::not_found("app"))
}

async fn show_app(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    Ok(json(
        StatusCode::OK,
        &AppView::from(app_or_404(&s, &id).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateApp {
    /// How long the previous secret keeps working, in seconds (at most a week).
    #[serde(default)]
    grace_seconds: u32,
}

async fn rotate_app(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    caller: Caller,
    JsonBody(req): JsonBody<RotateApp>,
) -> Result<Response, Problem> {
    // The new secret is the app: only for a caller holding all it holds.
    let app = app_or_404(&s, &id).await?;
    s.granter(&caller).check_takeover(&[], &app.permissions)?;
    if req.grace_seconds > 7 * 24 * 3600 {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            portcullis::service::INVALID_INPUT,
            "invalid grace_seconds: at most 604800 (a week)",
        ));
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

async fn disable_app(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    s.stores.set_app_disabled(&id, true).await?;
    Ok(json(
        StatusCode::OK,
        &AppView::from(app_or_404(&s, &id).await?),
    ))
}

async fn enable_app(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    s.stores.set_app_disabled(&id, false).await?;
    Ok(json(
        StatusCode::OK,
        &AppView::from(app_or_404(&s, &id).await?),
    ))
}

// ------------------------------------------------------------------- bans

fn engine(s: &AdminState) -> Result<&Arc<AnomalyEngine>, Problem> {
    s.anomaly.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            "request.unavailable_feature",
            "bans are off (anomaly.enabled = false)",
        )
    })
}

/// `ip:<address or IPv6 network>` (grouped as the guard groups clients, so
/// the ban matches what requests are checked against) or `subject:<id>`.
fn ban_target(s: &AdminState, raw: &str) -> Result<BanTarget, Problem> {
    match raw.split_once(':') {
        Some(("ip", ip)) => s
            .client_ip
            .ban_key(ip)
            .map(BanTarget::Ip)
            .map_err(|e| bad_param("target", &format!("`{ip}`: {e}"))),
        Some(("subject", s)) if !s.trim().is_empty() && s.len() <= 256 => {
            Ok(BanTarget::Subject(s.trim().to_owned()))
        }
        _ => Err(bad_param("target", "`ip:<address>` or `subject:<id>`")),
    }
}

fn ban_view(ban: &portcullis_core::anomaly::Ban) -> serde_json::Value {
    serde_json::json!({
        "target": ban.target.render(),
        "until_ms": ban.until_ms,
        "reason": ban.reason,
    })
}

async fn list_bans(State(s): State<AdminState>) -> Result<Response, Problem> {
    let bans = engine(&s)?
        .list_bans()
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let bans: Vec<_> = bans.iter().map(ban_view).collect();
    Ok(json(StatusCode::OK, &serde_json::json!({"bans": bans})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBan {
    target: String,
    duration_seconds: u32,
    #[serde(default)]
    reason: Option<String>,
}

async fn add_ban(
    State(s): State<AdminState>,
    JsonBody(req): JsonBody<AddBan>,
) -> Result<Response, Problem> {
    let target = ban_target(&s, &req.target)?;
    if req.duration_seconds == 0 {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            portcullis::service::INVALID_INPUT,
            "invalid duration_seconds: must be positive",
        ));
    }
    let reason = req.reason.unwrap_or_else(|| "manual".into());
    if reason.len() > 200 {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            portcullis::service::INVALID_INPUT,
            "invalid reason: at most 200 bytes",
        ));
    }
    let ban = engine(&s)?
        .ban(
            target,
            Duration::from_secs(u64::from(req.duration_seconds)),
            &reason,
        )
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    Ok(json(StatusCode::CREATED, &ban_view(&ban)))
}

async fn lift_ban(
    State(s): State<AdminState>,
    Path(target): Path<String>,
) -> Result<Response, Problem> {
    let target = ban_target(&s, &target)?;
    let lifted = engine(&s)?
        .lift_ban(&target)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    if lifted {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found("ban"))
    }
}

async fn recent_anomalies(State(s): State<AdminState>) -> Result<Response, Problem> {
    let engine = engine(&s)?;
    let detections = engine.recent_detections();
    // `null` when no webhook is configured.
    let deliveries = engine.alerts().map(|a| a.recent_deliveries());
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"detections": detections, "deliveries": deliveries}),
    ))
}

// ------------------------------------------------------------------ audit

fn bad_param(name: &str, why: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        portcullis::service::INVALID_INPUT,
        format!("invalid {name}: {why}"),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    subject: Option<String>,
    ip: Option<String>,
    path_prefix: Option<String>,
    /// RFC 3339.
    since: Option<String>,
    /// RFC 3339 (exclusive).
    until: Option<String>,
    status: Option<u16>,
    decision: Option<String>,
    code: Option<String>,
    #[serde(default)]
    anomalies: bool,
    #[serde(default)]
    rate_limited: bool,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn rfc3339(name: &str, text: Option<&str>) -> Result<Option<i64>, Problem> {
    text.map(|t| {
        portcullis_core::audit::time::parse_rfc3339(t)
            .ok_or_else(|| bad_param(name, "an RFC 3339 time such as 2026-11-29T00:00:00Z"))
    })
    .transpose()
}

async fn query_audit(
    State(s): State<AdminState>,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(p) = params.map_err(|e| Problem::bad_body(format!("invalid query: {e}")))?;
    let Some(store) = &s.audit_store else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "request.unavailable_feature",
            "no audit log is configured ([audit])",
        ));
    };
    let decision = p
        .decision
        .as_deref()
        .map(|d| {
            portcullis::audit::Decision::parse(d)
                .ok_or_else(|| bad_param("decision", "allow or deny"))
        })
        .transpose()?;
    let cursor = p
        .cursor
        .as_deref()
        .map(|c| Cursor::decode(c).map_err(|e| bad_param("cursor", &e.to_string())))
        .transpose()?;
    let query = AuditQuery {
        subject: p.subject,
        client_ip: p.ip,
        path_prefix: p.path_prefix,
        since_us: rfc3339("since", p.since.as_deref())?,
        until_us: rfc3339("until", p.until.as_deref())?,
        status: p.status,
        decision,
        code: p.code,
        anomalies_only: p.anomalies,
        rate_limited_only: p.rate_limited,
        limit: p.limit.unwrap_or(DEFAULT_PAGE),
        cursor,
    };
    query
        .validate()
        .map_err(|e| bad_param("query", &e.to_string()))?;
    let page = store
        .query(&query)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"events": page.events, "next": page.next}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamParams {
    route: Option<String>,
    decision: Option<String>,
    subject: Option<String>,
    code: Option<String>,
}

impl StreamParams {
    fn matches(&self, e: &portcullis::audit::AuditEvent) -> bool {
        self.route
            .as_ref()
            .is_none_or(|r| e.route.as_ref() == Some(r))
            && self
                .decision
                .as_ref()
                .is_none_or(|d| e.decision.as_str() == d)
            && self
                .subject
                .as_ref()
                .is_none_or(|x| e.subject.as_ref() == Some(x))
            && self
                .code
                .as_ref()
                .is_none_or(|c| e.code.as_ref() == Some(c))
    }
}

/// How often an idle stream sends a comment (proxies close silent ones).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /admin/audit/stream`: every audit event as it is recorded, as
/// Server-Sent Events (`event: decision`, the event as JSON). A client
/// that reads too slowly skips ahead (`event: skipped`, how many) rather
/// than holding anything up: the gateway keeps at most
/// [`portcullis::audit::LIVE_BUFFER`] events for all streams together.
///
/// The stream answers to the key that opened it: checked again every
/// second, it ends with `event: revoked` once the key is revoked or
/// expires. Open streams are capped per key and in total (429).
async fn audit_stream(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
    params: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(filter) = params.map_err(|e| Problem::bad_body(format!("invalid query: {e}")))?;
    if let Some(d) = &filter.decision
        && portcullis::audit::Decision::parse(d).is_none()
    {
        return Err(bad_param("decision", "allow or deny"));
    }
    let Some(writer) = &s.audit else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "request.unavailable_feature",
            "no audit log is configured ([audit])",
        ));
    };
    // The guard let this key in; its id names the per-key cap, and the
    // stream checks it again every second.
    let key = presented_api_key(&headers).unwrap_or_default();
    let record =
        portcullis::stores::hook::within_budget(STORE_BUDGET, s.stores.verify_api_key(&key))
            .await
            .map_err(Problem::from)?;
    let slot = s.streams.acquire(&record.id).map_err(|refused| {
        let detail = match refused {
            crate::ops::live_stream::SlotRefused::Total(n) => format!(
                "{n} live streams are open on this gateway (server.admin_streams); close one or retry later"
            ),
            crate::ops::live_stream::SlotRefused::PerKey(n) => format!(
                "this admin key holds {n} live streams already (server.admin_streams_per_key); close one first"
            ),
        };
        Problem::new(StatusCode::TOO_MANY_REQUESTS, TOO_MANY_STREAMS, detail)
            .header(axum::http::header::RETRY_AFTER, "5")
    })?;
    let live = writer.subscribe();
    let stream = futures_util::stream::unfold(
        (live, filter, true),
        |(mut live, filter, first)| async move {
            if first {
                let hello = bytes::Bytes::from_static(b": portcullis live decisions\n\n");
                return Some((
                    Ok::<_, std::convert::Infallible>(hello),
                    (live, filter, false),
                ));
            }
            loop {
                let chunk = match tokio::time::timeout(KEEP_ALIVE, live.next()).await {
                    Err(_) => bytes::Bytes::from_static(b": keep-alive\n\n"),
                    Ok(LiveEvent::Event(e)) => {
                        if !filter.matches(&e) {
                            continue;
                        }
                        match serde_json::to_string(&*e) {
                            Ok(data) => bytes::Bytes::from(format!(
                                "event: decision\nid: {}\ndata: {data}\n\n",
                                e.id
                            )),
                            Err(_) => continue,
                        }
                    }
                    Ok(LiveEvent::Skipped(n)) => {
                        bytes::Bytes::from(format!("event: skipped\ndata: {n}\n\n"))
                    }
                    Ok(LiveEvent::Closed) => return None,
                };
                return Some((Ok(chunk), (live, filter, false)));
            }
        },
    );
    let stores = Arc::clone(&s.stores);
    let stream = crate::ops::live_stream::until_revoked(stream, Some(slot), move || {
        let stores = Arc::clone(&stores);
        let key = key.clone();
        Box::pin(async move { key_standing(&stores, &key).await })
    });
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/event-stream"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// The API key a request presents, where the admin guard reads it:
/// `Authorization: Bearer pck_…` (scheme in any case), else `X-API-Key`.
fn presented_api_key(headers: &axum::http::HeaderMap) -> Option<String> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| t.starts_with(portcullis::stores::API_KEY_PREFIX));
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::to_owned)
}

/// Stable code: too many live streams are open (429).
pub const TOO_MANY_STREAMS: &str = "rate_limit.too_many_streams";

/// Whether the admin key `key` still stands (an open stream asks every second).
pub(crate) async fn key_standing(stores: &Stores, key: &str) -> crate::ops::live_stream::Standing {
    use crate::ops::live_stream::Standing;
    match tokio::time::timeout(Duration::from_secs(2), stores.verify_api_key(key)).await {
        Ok(Ok(_)) => Standing::Valid,
        Ok(Err(portcullis::stores::StoreError::Unavailable(_))) | Err(_) => Standing::Unknown,
        Ok(Err(_)) => Standing::Revoked("the admin key was revoked or expired".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_guard_config_builds_and_covers_every_route() {
        let config = guard_config().unwrap();
        assert_eq!(config.routes.len(), ROUTES.len());
        assert_eq!(
            guard_path("/admin/users/{id}/sessions"),
            "/admin/users/*/sessions"
        );
    }

    #[tokio::test]
    async fn every_route_is_matched_by_the_admin_guard() {
        let stores = Arc::new(
            Stores::new(
                portcullis::stores::Backends::all(Arc::new(
                    portcullis::stores::memory::MemoryStores::new(),
                )),
                portcullis::stores::StoresConfig::new(
                    portcullis_core::SecretHasher::new(&[7; 32]).unwrap(),
                ),
            )
            .unwrap(),
        );
        let key = stores
            .create_api_key(&NewApiKey {
                name: "root".into(),
                owner: "admin:root".into(),
                permissions: vec!["admin.*".into()],
                ..NewApiKey::default()
            })
            .await
            .unwrap()
            .key;
        let dir = std::env::temp_dir().join(format!("pc-admin-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Arc::new(
            portcullis::audit::sqlite::SqliteAudit::open(&dir.join("a.db"), Duration::from_secs(5))
                .await
                .unwrap(),
        );
        let writer = Arc::new(
            AuditWriter::start(
                db,
                portcullis::audit::AuditWriterConfig::new(dir.join("spool")),
                Arc::new(portcullis_core::SystemClock),
            )
            .unwrap(),
        );
        let mut configured = portcullis_core::KeySet::new();
        configured
            .insert(portcullis_core::Key::generate(portcullis_core::Algorithm::ES256).unwrap())
            .unwrap();
        let keyring = KeyRing::open(
            configured,
            Arc::clone(&stores),
            &portcullis_core::SecretHasher::new(&[7; 32]).unwrap(),
            portcullis::keyring::KeyRingConfig::new(Duration::from_secs(60)),
        )
        .await
        .unwrap();
        let (guard, _) = build(AdminParts {
            stores,
            anomaly: None,
            audit: Some(writer),
            audit_store: None,
            client_ip: Default::default(),
            token_prefix: None,
            keyring,
            streams: crate::ops::live_stream::StreamSlots::new(4, 2),
            reloader: None,
            roles: None,
            explainer: None,
        })
        .unwrap();
        for r in ROUTES {
            let path = r
                .path
                .replace("{id}", "x")
                .replace("{target}", "ip:1.2.3.4");
            let req = http::Request::builder()
                .method(r.method)
                .uri(&path)
                .header("authorization", format!("Bearer {key}"))
                .body(())
                .unwrap();
            let (parts, ()) = req.into_parts();
            let d = guard.check(&parts, Some([127, 0, 0, 1].into())).await;
            assert!(
                d.allowed(),
                "{} {path}: {:?}",
                r.method,
                d.refusal.as_ref().map(|r| &r.detail)
            );
        }
    }

    #[test]
    fn the_document_lists_every_route_once() {
        let doc = openapi(Some("/auth"));
        let mut count = 0;
        for (_, ops) in doc["paths"].as_object().unwrap() {
            count += ops.as_object().unwrap().len();
        }
        assert_eq!(count, ROUTES.len() + TOKEN_SERVICE_ROUTES.len());
    }
}
