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
//!
//! The handlers live in one file per resource (`users`, `sessions`,
//! `api_keys`, `apps`, `bans`, `audit`, `stream`, `keys`, `ops`,
//! `openapi`); this file holds the route tables, the shared state and the
//! router, `respond` the helpers the handlers share.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use portcullis::anomaly::AnomalyEngine;
use portcullis::audit::{AuditStore, AuditWriter};
use portcullis::keyring::KeyRing;
use portcullis::service::BodyLimit;
use portcullis::stores::Stores;
use portcullis::{Guard, GuardConfig};

use crate::ops::escalation::{Granter, RoleSource};

mod api_keys;
mod apps;
mod audit;
mod bans;
mod keys;
mod openapi;
mod ops;
mod respond;
mod sessions;
mod stream;
mod users;

pub use keys::UNPUBLISHABLE_ALG;
pub use openapi::{TOKEN_SERVICE_ROUTES, openapi};
pub use stream::TOO_MANY_STREAMS;

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
        .route(
            "/admin/users",
            get(users::list_users).post(users::create_user),
        )
        .route("/admin/users/import", post(users::import_users))
        .route(
            "/admin/users/{id}",
            get(users::show_user).delete(users::delete_user),
        )
        .route("/admin/users/{id}/disable", post(users::disable_user))
        .route("/admin/users/{id}/enable", post(users::enable_user))
        .route("/admin/users/{id}/reset-token", post(users::reset_token))
        .route("/admin/users/{id}/password", post(users::reset_password))
        .route("/admin/users/{id}/grants", put(users::set_grants))
        .route(
            "/admin/users/{id}/sessions",
            get(sessions::list_sessions).delete(sessions::revoke_user_sessions),
        )
        .route("/admin/sessions/{id}", delete(sessions::revoke_session))
        .route("/admin/tokens/revoke", post(sessions::revoke_token))
        .route(
            "/admin/users/{id}/api-keys",
            get(api_keys::list_api_keys).post(api_keys::create_api_key),
        )
        .route("/admin/api-keys/{id}", delete(api_keys::revoke_api_key))
        .route("/admin/apps", post(apps::create_app))
        .route("/admin/apps/{id}", get(apps::show_app))
        .route("/admin/apps/{id}/rotate", post(apps::rotate_app))
        .route("/admin/apps/{id}/disable", post(apps::disable_app))
        .route("/admin/apps/{id}/enable", post(apps::enable_app))
        .route("/admin/bans", get(bans::list_bans).post(bans::add_ban))
        .route("/admin/bans/{target}", delete(bans::lift_ban))
        .route("/admin/anomalies", get(bans::recent_anomalies))
        .route("/admin/audit", get(audit::query_audit))
        .route("/admin/audit/stream", get(stream::audit_stream))
        .route("/admin/keys", get(keys::list_keys))
        .route("/admin/keys/rotate", post(keys::rotate_keys))
        .route("/admin/explain", post(ops::explain_request))
        .route("/reload", post(ops::reload_config))
        .route("/openapi.json", get(openapi::openapi_document))
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
        Err(_) => respond::backend_unavailable(format!(
            "the stores did not answer within {} s; check that the database is up",
            STORE_BUDGET.as_secs()
        ))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use portcullis::stores::NewApiKey;

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
}
