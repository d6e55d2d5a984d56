//! The OpenAPI 3.1 document of the admin API and the token service, and
//! the route that serves it.

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::{AdminState, ROUTES};

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

pub(super) async fn openapi_document(State(s): State<AdminState>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        s.openapi.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

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
