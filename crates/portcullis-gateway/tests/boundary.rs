//! The boundary, differentially: a table of ambiguous requests (identity
//! headers spelled with `_`, duplicated credentials, absolute-form URIs
//! with another Host, trailing-dot and upper-case hosts, lower-case
//! methods, method-override headers, `;` path parameters, encoded dots and
//! slashes, doubled slashes, `Connection` naming the request id) sent
//! through the real `portcullis serve` to three real upstreams that report
//! what they read: Flask on werkzeug, the stdlib's `wsgiref` (which folds
//! `X_Foo` into `X-Foo`), and Starlette under uvicorn. For every request,
//! either the gateway refused it, or the method, path, host and identity
//! the upstream acted on are exactly those the guard decided on, as its
//! audit event records them.

#[path = "e2e/support.rs"]
mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn config(public: u16, ops: u16, app: u16) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{public}"
ops_listen = "127.0.0.1:{ops}"

[storage]
url = "sqlite://{{db}}"
pepper_file = "{{pepper}}"

[keys]
dir = "{{keys}}"
issuer = "http://127.0.0.1:{public}"
audience = ["api"]

[audit]
sqlite = "{{audit}}"

[[guard.routes]]
name = "admin-host"
host = "admin.example"
path = "/**"
require = {{ permissions_all = ["admin.all"] }}

[[guard.routes]]
name = "items-delete"
effect = "deny"
methods = ["DELETE"]
path = "/items/**"

[[guard.routes]]
name = "private"
path = "/admin/**"
require = {{ permissions_all = ["admin.all"] }}

[[guard.routes]]
name = "me"
path = "/me/**"

[[guard.routes]]
name = "dry"
path = "/dry/**"
mode = "dry_run"
require = {{ permissions_all = ["admin.all"] }}

[[guard.routes]]
name = "matrix"
path = "/matrix/**"
credentials = ["anonymous"]
path_parameters = true

[[guard.routes]]
name = "public"
path = "/**"
credentials = ["anonymous"]

[[upstreams]]
name = "app"
url = "http://127.0.0.1:{app}"
routes = ["admin-host", "items-delete", "private", "me", "dry", "matrix", "public"]
"#
    )
}

/// What a request must come to.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Refused by the gateway with this status and problem code.
    Refused(u16, &'static str),
    /// Passed to the upstream as this method and (decoded) path, decided
    /// by this route.
    Passed {
        method: &'static str,
        path: &'static str,
        route: &'static str,
    },
}

struct Case {
    name: &'static str,
    /// Request line and headers; `{token}` is alice's access token.
    head: &'static str,
    expect: Expect,
}

const SPOOF: &str = "\nX_Portcullis_Subject: admin\nx_portcullis_roles: admin\nx_portcullis_permissions: admin.all\nx_portcullis_identity: forged.jwt.token\nX_Forwarded_For: 6.6.6.6";

fn cases() -> Vec<Case> {
    use Expect::*;
    vec![
        Case {
            name: "underscore identity headers on an anonymous route",
            head: "GET /hello HTTP/1.1\nHost: app.test{spoof}",
            expect: Passed {
                method: "GET",
                path: "/hello",
                route: "public",
            },
        },
        Case {
            name: "underscore identity headers on a JWT route",
            head: "GET /me/x HTTP/1.1\nHost: app.test\nAuthorization: Bearer {token}{spoof}",
            expect: Passed {
                method: "GET",
                path: "/me/x",
                route: "me",
            },
        },
        Case {
            name: "underscore identity headers on a protected path, anonymous",
            head: "GET /admin/users HTTP/1.1\nHost: app.test{spoof}",
            expect: Refused(401, "auth.missing_credentials"),
        },
        Case {
            name: "underscore identity headers on a dry-run route that would deny",
            head: "GET /dry/x HTTP/1.1\nHost: app.test\nAuthorization: Bearer {token}{spoof}",
            expect: Passed {
                method: "GET",
                path: "/dry/x",
                route: "dry",
            },
        },
        Case {
            name: "two Authorization headers",
            head: "GET /me/x HTTP/1.1\nHost: app.test\nAuthorization: Bearer {token}\nAuthorization: Bearer other",
            expect: Refused(400, "request.duplicate_header"),
        },
        Case {
            name: "absolute-form URI naming another host than Host",
            head: "GET http://public.example/x HTTP/1.1\nHost: admin.example",
            expect: Refused(400, "request.host_mismatch"),
        },
        Case {
            name: "absolute-form URI agreeing with Host up to case and port",
            head: "GET http://App.Test:80/x HTTP/1.1\nHost: app.test",
            expect: Passed {
                method: "GET",
                path: "/x",
                route: "public",
            },
        },
        Case {
            name: "trailing-dot host",
            head: "GET /x HTTP/1.1\nHost: admin.example.",
            expect: Refused(401, "auth.missing_credentials"),
        },
        Case {
            name: "upper-case host with the default port",
            head: "GET /x HTTP/1.1\nHost: ADMIN.Example:80",
            expect: Refused(401, "auth.missing_credentials"),
        },
        Case {
            name: "two Host headers",
            head: "GET /x HTTP/1.1\nHost: app.test\nHost: admin.example",
            expect: Refused(400, "request.duplicate_host"),
        },
        Case {
            name: "lower-case method past a deny rule",
            head: "delete /items/1 HTTP/1.1\nHost: app.test",
            expect: Refused(400, "request.non_canonical_method"),
        },
        Case {
            name: "mixed-case method",
            head: "Delete /items/1 HTTP/1.1\nHost: app.test",
            expect: Refused(400, "request.non_canonical_method"),
        },
        Case {
            name: "the deny rule itself",
            head: "DELETE /items/1 HTTP/1.1\nHost: app.test",
            expect: Refused(403, "authz.denied"),
        },
        Case {
            name: "method override naming a denied method",
            head: "POST /items/1 HTTP/1.1\nHost: app.test\nX-HTTP-Method-Override: DELETE\nX-HTTP-Method: DELETE\nX-Method-Override: DELETE",
            expect: Passed {
                method: "POST",
                path: "/items/1",
                route: "public",
            },
        },
        Case {
            name: "path parameter hiding a protected path",
            head: "GET /admin;jsessionid=x/users HTTP/1.1\nHost: app.test",
            expect: Refused(401, "auth.missing_credentials"),
        },
        Case {
            name: "empty path parameter",
            head: "GET /admin;/users HTTP/1.1\nHost: app.test",
            expect: Refused(401, "auth.missing_credentials"),
        },
        Case {
            name: "encoded path parameter",
            head: "GET /admin%3B/users HTTP/1.1\nHost: app.test",
            expect: Refused(401, "auth.missing_credentials"),
        },
        Case {
            name: "path parameters on an anonymous route that does not accept them",
            head: "GET /hello;jsessionid=x/there HTTP/1.1\nHost: app.test",
            expect: Refused(403, "authz.denied"),
        },
        Case {
            name: "path parameters on a route that accepts them",
            head: "GET /matrix;v=1/x HTTP/1.1\nHost: app.test",
            expect: Passed {
                method: "GET",
                path: "/matrix;v=1/x",
                route: "matrix",
            },
        },
        Case {
            name: "encoded letters in a protected path",
            head: "GET /%61dmin/users HTTP/1.1\nHost: app.test",
            expect: Refused(401, "auth.missing_credentials"),
        },
        Case {
            name: "encoded dots climbing into a protected path",
            head: "GET /public/%2e%2e/admin/users HTTP/1.1\nHost: app.test",
            expect: Refused(400, "request.malformed_path"),
        },
        Case {
            name: "dot segment",
            head: "GET /./admin/users HTTP/1.1\nHost: app.test",
            expect: Refused(400, "request.malformed_path"),
        },
        Case {
            name: "encoded slash",
            head: "GET /admin%2fusers HTTP/1.1\nHost: app.test",
            expect: Refused(400, "request.malformed_path"),
        },
        Case {
            name: "doubled slashes before a protected path",
            head: "GET /public//..//admin HTTP/1.1\nHost: app.test",
            expect: Refused(400, "request.malformed_path"),
        },
        Case {
            name: "doubled slashes are collapsed",
            head: "GET //me//x HTTP/1.1\nHost: app.test",
            expect: Refused(401, "auth.missing_credentials"),
        },
        Case {
            name: "Connection naming the request id",
            head: "GET /hello HTTP/1.1\nHost: app.test\nConnection: x-request-id",
            expect: Passed {
                method: "GET",
                path: "/hello",
                route: "public",
            },
        },
        Case {
            name: "Transfer-Encoding whose last coding is not chunked",
            head: "POST /hello HTTP/1.1\nHost: app.test\nTransfer-Encoding: gzip\nContent-Length: 3",
            expect: Refused(400, ""),
        },
    ]
}

struct Upstream {
    _proc: Proc,
    port: u16,
}

fn start_upstream(kind: &str, python: &std::path::Path, dir: &TempDir) -> Upstream {
    if kind == "flask" {
        let (p, port) = start_flask(python, dir);
        return Upstream { _proc: p, port };
    }
    let port = free_port();
    let mut cmd = Command::new(python);
    cmd.arg(e2e_dir().join("boundary_apps.py"))
        .arg(kind)
        .arg(port.to_string())
        .current_dir(dir.path());
    let mut p = Proc::spawn(kind, dir.path(), cmd);
    p.wait_port(port);
    Upstream { _proc: p, port }
}

/// The audit events of `db`, by request id.
fn audit_by_request_id(db: &std::path::Path) -> HashMap<String, Value> {
    let out = portcullis(&[
        "audit",
        "query",
        "--sqlite",
        db.to_str().unwrap_or_default(),
        "--limit",
        "1000",
        "--format",
        "json",
    ]);
    let page: Value = serde_json::from_str(&out).unwrap_or_default();
    page["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["request_id"].as_str()?.to_owned(), e.clone())))
        .collect()
}

async fn differential(kind: &str) {
    let Some(python) = python() else { return };
    let dir = TempDir::new(&format!("boundary-{kind}"));
    let app = start_upstream(kind, &python, &dir);
    let (public, ops) = (free_port(), free_port());
    let _gateway = start_gateway(&dir, &config(public, ops, app.port), public, ops).await;
    let token = login(public).await;
    let sub = claims(&token)["sub"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let mut passed = Vec::new();
    for case in cases() {
        let head = case
            .head
            .replace("{spoof}", SPOOF)
            .replace("{token}", &token);
        let r = raw(public, &head).await;
        match case.expect {
            Expect::Refused(status, code) => {
                assert_eq!(
                    r.status,
                    status,
                    "[{kind}] {}: expected a refusal, got {} {}",
                    case.name,
                    r.status,
                    r.text()
                );
                if !code.is_empty() {
                    let got = r.json()["code"].as_str().unwrap_or_default().to_owned();
                    assert_eq!(got, code, "[{kind}] {}: {}", case.name, r.text());
                }
            }
            Expect::Passed {
                method,
                path,
                route,
            } => {
                assert_eq!(r.status, 200, "[{kind}] {}: {}", case.name, r.text());
                let seen = r.json();
                let seen_path = seen["path"].as_str().unwrap_or_default();
                let seen_path = seen_path.split('?').next().unwrap_or_default();
                assert_eq!(seen["method"], method, "[{kind}] {}", case.name);
                assert_eq!(seen_path, path, "[{kind}] {}", case.name);
                let headers = seen["headers"].as_object().cloned().unwrap_or_default();
                for (name, value) in &headers {
                    let value = value.as_str().unwrap_or_default();
                    assert!(
                        !value.contains("admin")
                            && !value.contains("6.6.6.6")
                            && !value.contains("forged"),
                        "[{kind}] {}: the upstream read a spoofed {name}: {value}",
                        case.name
                    );
                    assert!(
                        !name.starts_with("x-http-method") && name != "x-method-override",
                        "[{kind}] {}: a method override reached the upstream: {name}",
                        case.name
                    );
                }
                let subject = headers.get("x-portcullis-subject").and_then(Value::as_str);
                if head.contains("Authorization") {
                    assert_eq!(subject, Some(sub.as_str()), "[{kind}] {}", case.name);
                } else {
                    assert_eq!(subject, None, "[{kind}] {}", case.name);
                }
                let rid = r.header("x-request-id").unwrap_or_default().to_owned();
                assert!(!rid.is_empty(), "[{kind}] {}: no request id", case.name);
                assert_eq!(
                    headers.get("x-request-id").and_then(Value::as_str),
                    Some(rid.as_str()),
                    "[{kind}] {}: the upstream lost the request id",
                    case.name
                );
                if case
                    .name
                    .starts_with("underscore identity headers on a dry-run")
                {
                    assert_eq!(
                        headers.get("x-portcullis-dry-run").and_then(Value::as_str),
                        Some("would-deny authz.denied"),
                        "[{kind}] {}",
                        case.name
                    );
                } else {
                    assert!(!headers.contains_key("x-portcullis-dry-run"));
                }
                passed.push((case.name, rid, method, path, route));
            }
        }
    }

    // What the upstream acted on is what the audit log says the guard decided.
    let audit = dir.join("audit.db");
    let mut events = HashMap::new();
    for _ in 0..50 {
        events = audit_by_request_id(&audit);
        if passed.iter().all(|(_, rid, ..)| events.contains_key(rid)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (name, rid, method, path, route) in passed {
        let e = events
            .get(&rid)
            .unwrap_or_else(|| panic!("[{kind}] {name}: no audit event for {rid}"));
        assert_eq!(e["method"], method, "[{kind}] {name}: {e}");
        assert_eq!(e["route"], route, "[{kind}] {name}: {e}");
        let audited = e["path"].as_str().unwrap_or_default();
        assert_eq!(
            audited.split('?').next(),
            Some(path),
            "[{kind}] {name}: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn werkzeug_acts_on_exactly_what_the_guard_decided() {
    differential("flask").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsgiref_acts_on_exactly_what_the_guard_decided() {
    differential("wsgiref").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starlette_acts_on_exactly_what_the_guard_decided() {
    differential("starlette").await;
}
