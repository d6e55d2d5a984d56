//! Real nginx (`auth_request`) and real Caddy (`forward_auth`) in front of
//! the Flask app (`tests/e2e/flask_app.py`), asking the gateway's
//! forward-auth endpoints: allowed requests reach the app with the identity
//! headers the proxy copied from the gateway's answer, 401 / 403 / 429 come
//! back as each proxy passes them, spoofed identity and forwarding headers
//! never count, and the gateway answers forward-auth only to the proxies
//! in `trusted_proxies`.
//!
//! The nginx and Caddy configurations are written here by hand.

#[path = "e2e/support.rs"]
mod support;

use std::process::Command;

use support::*;

const IDENTITY: [&str; 6] = [
    "x-user",
    "x-user-roles",
    "x-user-permissions",
    "x-user-tenant",
    "x-user-session",
    "x-user-auth",
];

/// The gateway: forward-auth for proxies on 127.0.0.1 only.
fn gateway_config(public: u16, ops: u16, flask: u16) -> String {
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

[identity]
subject = "x-user"
roles = "x-user-roles"
permissions = "x-user-permissions"
tenant = "x-user-tenant"
session = "x-user-session"
auth_method = "x-user-auth"

[guard.client_ip]
trusted_proxies = ["127.0.0.1/32"]

[[guard.rate_limits]]
name = "two"
algorithm = "fixed_window"
limit = 2
period = 600
key = ["subject"]

[[guard.rate_limits]]
name = "two_raw"
algorithm = "fixed_window"
limit = 2
period = 600
key = ["subject"]

[[guard.routes]]
name = "public"
path = "/public"
credentials = ["anonymous"]

[[guard.routes]]
name = "whoami"
path = "/whoami"
credentials = ["jwt", "api_key"]
require = {{ permissions_all = ["docs.read"] }}

[[guard.routes]]
name = "admin"
path = "/admin/**"
require = {{ permissions_all = ["admin.all"] }}

[[guard.routes]]
name = "admin-host"
host = "admin.example"
path = "/**"
require = {{ permissions_all = ["admin.all"] }}

[[guard.routes]]
name = "limited"
path = "/limited"
rate_limits = ["two"]

[[guard.routes]]
name = "limited_raw"
path = "/raw/limited"
rate_limits = ["two_raw"]

[forward_auth]
enabled = true

[[upstreams]]
name = "flask"
url = "http://127.0.0.1:{flask}"
routes = ["public", "whoami", "admin", "admin-host", "limited", "limited_raw"]
"#
    )
}

/// nginx: `auth_request` to the gateway's nginx endpoint; the six identity
/// headers copied with `auth_request_set` / `proxy_set_header` (which also
/// drops the client's own copies); a refusal coded `rate_limit.exceeded`
/// (answered 403 to nginx, which passes only 401 / 403) shown as 429 with
/// the gateway's Retry-After. `/raw/` has no such mapping.
fn nginx_config(dir: &TempDir, port: u16, gateway: u16, flask: u16) -> String {
    let d = dir.path().display();
    let mut set = String::new();
    let mut pass = String::new();
    for name in IDENTITY {
        let var = name.replace('-', "_");
        set.push_str(&format!(
            "            auth_request_set ${var} $upstream_http_{var};\n"
        ));
        pass.push_str(&format!("            proxy_set_header {name} ${var};\n"));
    }
    format!(
        r#"
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log info;
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    server {{
        listen 127.0.0.1:{port};

        location = /_portcullis {{
            internal;
            proxy_pass http://127.0.0.1:{gateway}/_portcullis/auth/nginx;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}

        location @portcullis_refused {{
            if ($pc_code = "rate_limit.exceeded") {{
                add_header Retry-After $pc_retry_after always;
                return 429;
            }}
            return 403;
        }}

        location /raw/ {{
            auth_request /_portcullis;
{set}{pass}            proxy_pass http://127.0.0.1:{flask};
        }}

        location / {{
            auth_request /_portcullis;
{set}            auth_request_set $pc_code $upstream_http_x_portcullis_code;
            auth_request_set $pc_retry_after $upstream_http_retry_after;
            error_page 403 = @portcullis_refused;
{pass}            proxy_pass http://127.0.0.1:{flask};
        }}
    }}
}}
"#
    )
}

/// Caddy: `forward_auth` to the gateway's Caddy endpoint, `copy_headers`
/// for the six identity headers. The client's own copies are removed first,
/// inside a `route` block: Caddy orders a bare `request_header` after
/// `forward_auth`, which would delete the copied identity, and some Caddy
/// versions copy only the headers present in the answer.
fn caddy_config(port: u16, gateway: u16, flask: u16) -> String {
    let names: Vec<String> = IDENTITY
        .iter()
        .map(|n| {
            n.split('-')
                .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect();
    let strip: String = names
        .iter()
        .map(|n| {
            // Both spellings: Caddy passes `X_User` on, and the gateway
            // refuses a forward-auth request that still carries one.
            format!(
                "        request_header -{n}\n        request_header -{}\n",
                n.replace('-', "_")
            )
        })
        .collect();
    format!(
        r#"{{
    admin off
    auto_https off
}}

http://:{port} {{
    bind 127.0.0.1
    route {{
{strip}        forward_auth 127.0.0.1:{gateway} {{
            uri /_portcullis/auth/caddy
            copy_headers {copy}
        }}
        reverse_proxy 127.0.0.1:{flask}
    }}
}}
"#,
        copy = names.join(" ")
    )
}

struct Stack {
    _flask: Proc,
    _gateway: Proc,
    gateway: u16,
    flask: u16,
    dir: TempDir,
}

async fn stack(name: &str) -> Option<Stack> {
    let python = python()?;
    let dir = TempDir::new(name);
    let (flask, flask_port) = start_flask(&python, &dir);
    let (public, ops) = (free_port(), free_port());
    let gateway = start_gateway(&dir, &gateway_config(public, ops, flask_port), public, ops).await;
    Some(Stack {
        _flask: flask,
        _gateway: gateway,
        gateway: public,
        flask: flask_port,
        dir,
    })
}

fn start_nginx(nginx: &std::path::Path, s: &Stack) -> (Proc, u16) {
    let port = free_port();
    let conf = s.dir.join("nginx.conf");
    std::fs::write(&conf, nginx_config(&s.dir, port, s.gateway, s.flask)).unwrap();
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(s.dir.path())
        .arg("-e")
        .arg(s.dir.join("nginx-error.log"))
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"]);
    let mut p = Proc::spawn("nginx", s.dir.path(), cmd);
    p.log = s.dir.join("nginx-error.log");
    p.wait_port(port);
    (p, port)
}

fn start_caddy(caddy: &std::path::Path, s: &Stack) -> (Proc, u16) {
    let port = free_port();
    let conf = s.dir.join("Caddyfile");
    std::fs::write(&conf, caddy_config(port, s.gateway, s.flask)).unwrap();
    let mut cmd = Command::new(caddy);
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&conf)
        .env("HOME", s.dir.path())
        .env("XDG_CONFIG_HOME", s.dir.join("xdg-config"))
        .env("XDG_DATA_HOME", s.dir.join("xdg-data"));
    let mut p = Proc::spawn("caddy", s.dir.path(), cmd);
    p.wait_port(port);
    (p, port)
}

/// Asserts the app saw alice's identity from the gateway, nothing spoofed.
fn assert_alice(r: &Reply, sub: &str, sid: &str, method: &str) {
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_not_spoofed(&seen, &IDENTITY);
    assert_eq!(seen["x-user"], sub, "{seen:?}");
    assert_eq!(seen["x-user-roles"], "editor", "{seen:?}");
    assert_eq!(seen["x-user-permissions"], "docs.read", "{seen:?}");
    assert_eq!(seen["x-user-tenant"], "acme", "{seen:?}");
    assert_eq!(seen["x-user-auth"], method, "{seen:?}");
    if method == "jwt" {
        assert_eq!(seen["x-user-session"], sid, "{seen:?}");
    } else {
        assert_absent_or_empty(&seen, "x-user-session");
    }
}

fn assert_absent_or_empty(seen: &serde_json::Map<String, serde_json::Value>, name: &str) {
    assert!(
        seen.get(name).is_none_or(|v| v == ""),
        "{name} reached the app: {seen:?}"
    );
}

/// The checks both proxies pass, through the proxy on `port`.
async fn common(port: u16, gateway: u16, token: &str, key: &str) {
    let c = claims(token);
    let (sub, sid) = (c["sub"].as_str().unwrap(), c["sid"].as_str().unwrap());
    let spoof = spoofed(&IDENTITY);

    // Allowed, JWT and API key: the app gets the gateway's identity.
    let r = raw(
        port,
        &format!("GET /whoami?q=1 HTTP/1.1\nHost: app.test\nAuthorization: Bearer {token}{spoof}"),
    )
    .await;
    assert_alice(&r, sub, sid, "jwt");
    assert_eq!(r.json()["path"], "/whoami?q=1");
    let r = raw(
        port,
        &format!("GET /whoami HTTP/1.1\nHost: app.test\nX-Api-Key: {key}{spoof}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_not_spoofed(&seen, &IDENTITY);
    assert_eq!(seen["x-user"], sub);
    assert_eq!(seen["x-user-auth"], "api_key");
    assert_absent_or_empty(&seen, "x-user-session");

    // A host-scoped route applies behind the proxy as it does direct: the
    // original host reaches the gateway as X-Forwarded-Host (case, a
    // trailing dot and the default port make no difference).
    for host in ["admin.example", "Admin.Example.", "admin.example:80"] {
        let r = raw(port, &format!("GET /public HTTP/1.1\nHost: {host}")).await;
        assert_eq!(r.status, 401, "Host {host}: {}", r.text());
    }
    let r = raw(port, "GET /public HTTP/1.1\nHost: app.test").await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Anonymous route: no identity reaches the app (nginx sends no
    // header for an empty value, Caddy sends it empty).
    let r = raw(
        port,
        &format!("GET /public HTTP/1.1\nHost: app.test{spoof}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_not_spoofed(&seen, &IDENTITY);
    for name in IDENTITY {
        assert_absent_or_empty(&seen, name);
    }

    // No credentials: 401 with the gateway's challenge, even when the client
    // claims (in the headers the proxy sets itself) to be asking for /public.
    let r = raw(
        port,
        &format!(
            "GET /whoami HTTP/1.1\nHost: app.test\nX-Original-URI: /public\nX-Forwarded-Uri: /public\nX-Forwarded-Method: GET{spoof}"
        ),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer") && v.contains("realm=\"api\"")),
        "{:?}",
        r.headers
    );

    // Missing permission: 403.
    let r = raw(
        port,
        &format!("GET /admin/users HTTP/1.1\nHost: app.test\nAuthorization: Bearer {token}"),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());

    // The rate limit of 2: the third call is 429 with Retry-After.
    for i in 1..=3 {
        let r = raw(
            port,
            &format!("GET /limited HTTP/1.1\nHost: app.test\nAuthorization: Bearer {token}"),
        )
        .await;
        if i <= 2 {
            assert_eq!(r.status, 200, "call {i}: {}", r.text());
        } else {
            assert_eq!(r.status, 429, "call {i}: {:?} {}", r.headers, r.text());
            let retry: u64 = r
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no Retry-After: {:?}", r.headers));
            assert!((1..=600).contains(&retry), "{retry}");
        }
    }

    // Forward-auth answers only trusted proxies: a direct call from
    // 127.0.0.2 (outside trusted_proxies) is refused, whatever it claims.
    for dialect in ["nginx", "caddy"] {
        let r = raw_from(
            Some([127, 0, 0, 2]),
            gateway,
            &format!(
                "GET /_portcullis/auth/{dialect} HTTP/1.1\nHost: app.test\nAuthorization: Bearer {token}\nX-Original-URI: /whoami\nX-Forwarded-Uri: /whoami\nX-Forwarded-Method: GET"
            ),
            b"",
        )
        .await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(
            r.header("x-portcullis-code"),
            Some("gateway.untrusted_proxy")
        );
        assert!(r.header("x-user").is_none(), "{:?}", r.headers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_in_front_of_flask() {
    let Some(nginx) = nginx() else { return };
    let Some(s) = stack("nginx").await else {
        return;
    };
    let (_nginx, port) = start_nginx(&nginx, &s);
    let token = login(s.gateway).await;
    let key = create_api_key(s.gateway, &token).await;
    common(port, s.gateway, &token, &key).await;

    // nginx's own rule: auth_request passes 401 and 403 only. Without the
    // error_page mapping (/raw/) the gateway's 429 arrives as its 403.
    for i in 1..=3 {
        let r = raw(
            port,
            &format!("GET /raw/limited HTTP/1.1\nHost: app.test\nAuthorization: Bearer {token}"),
        )
        .await;
        let want = if i <= 2 { 200 } else { 403 };
        assert_eq!(r.status, want, "call {i}: {}", r.text());
        if i > 2 {
            assert!(r.header("retry-after").is_none());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_in_front_of_flask() {
    let Some(caddy) = caddy() else { return };
    let Some(s) = stack("caddy").await else {
        return;
    };
    let (_caddy, port) = start_caddy(&caddy, &s);
    let token = login(s.gateway).await;
    let key = create_api_key(s.gateway, &token).await;
    common(port, s.gateway, &token, &key).await;

    // Caddy hands the gateway's refusal to the client as is: problem+json
    // with the stable code.
    let r = raw(
        port,
        &format!("GET /admin/x HTTP/1.1\nHost: app.test\nAuthorization: Bearer {token}"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["code"], "authz.denied");
    assert_eq!(r.header("x-portcullis-code"), Some("authz.denied"));
}
