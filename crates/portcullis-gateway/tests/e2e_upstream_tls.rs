//! TLS to `https://` upstreams against real nginx (Debian's) holding
//! certificates from a private CA made here with the `openssl` CLI: the
//! `ca_file` is trusted and nothing else, SNI is the URL's host (or
//! `server_name`), an unknown CA, an expired certificate and a host-name
//! mismatch each answer 502 `gateway.upstream_unavailable` with a log line
//! and a metric naming the reason, nginx's `ssl_verify_client on` lets
//! through only the configured client certificate, `insecure_skip_verify`
//! is warned about at start and by `config check`, a reload re-reads
//! the CA and client-certificate files, and `protocol = "h2"` speaks
//! HTTP/2 (ALPN `h2`) to nginx's `http2` listener behind an HTTP/1.1 client.

#[path = "e2e/support.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// nginx with four TLS servers: a valid `localhost` certificate, an
/// expired one, the valid one requiring a client certificate from
/// `clientca`, and the valid one with HTTP/2 (ALPN `h2`) as well. Each
/// answers with what it saw of the TLS session.
fn nginx_config(dir: &Path, good: u16, expired: u16, mtls: u16, h2: u16) -> String {
    let d = dir.display();
    format!(
        r#"
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log info;
events {{ worker_connections 128; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    server {{
        listen 127.0.0.1:{good} ssl;
        ssl_certificate {d}/good.pem;
        ssl_certificate_key {d}/good.key;
        keepalive_timeout 60s;
        location /pool/ {{ return 200 "connection=$connection\n"; }}
        location / {{ return 200 "tls-upstream sni=$ssl_server_name uri=$request_uri\n"; }}
    }}
    server {{
        listen 127.0.0.1:{expired} ssl;
        ssl_certificate {d}/expired.pem;
        ssl_certificate_key {d}/expired.key;
        location / {{ return 200 "expired-upstream uri=$request_uri\n"; }}
    }}
    server {{
        listen 127.0.0.1:{mtls} ssl;
        ssl_certificate {d}/good.pem;
        ssl_certificate_key {d}/good.key;
        ssl_client_certificate {d}/clientca.pem;
        ssl_verify_client on;
        location / {{ return 200 "mtls-upstream client=$ssl_client_s_dn\n"; }}
    }}
    server {{
        listen 127.0.0.1:{h2} ssl http2;
        ssl_certificate {d}/good.pem;
        ssl_certificate_key {d}/good.key;
        location / {{ return 200 "h2-upstream proto=$server_protocol alpn=$ssl_alpn_protocol uri=$request_uri\n"; }}
    }}
}}
"#
    )
}

/// One anonymous route `/<name>/**` per upstream, and the upstreams.
fn gateway_config(public: u16, ops: u16, upstreams: &[(&str, String)]) -> String {
    let mut text = format!(
        r#"
[server]
listen = "127.0.0.1:{public}"
ops_listen = "127.0.0.1:{ops}"
upstream_connect_timeout = "1s"
upstream_read_timeout = "20s"

[storage]
url = "sqlite://{{db}}"
pepper_file = "{{pepper}}"

[keys]
dir = "{{keys}}"
issuer = "http://127.0.0.1:{public}"
audience = ["api"]

[audit]
sqlite = "{{audit}}"

[log]
format = "json"
"#
    );
    for (name, _) in upstreams {
        text.push_str(&format!(
            "\n[[guard.routes]]\nname = \"{name}\"\npath = \"/{name}/**\"\ncredentials = [\"anonymous\"]\n"
        ));
    }
    for (name, body) in upstreams {
        text.push_str(&format!(
            "\n[[upstreams]]\nname = \"{name}\"\nroutes = [\"{name}\"]\n{body}\n"
        ));
    }
    text
}

async fn get(port: u16, path: &str) -> Reply {
    raw(port, &format!("GET {path} HTTP/1.1\nHost: 127.0.0.1")).await
}

/// The gateway's JSON log lines whose message starts with `message`.
fn log_events(log: &Path, message: &str) -> Vec<Value> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
        .collect()
}

/// The value of the Prometheus series with every one of `labels`.
async fn metric(ops: u16, name: &str, labels: &[&str]) -> f64 {
    let r = get(ops, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Asserts the 502 of a TLS failure, its log line and its metric.
async fn assert_tls_refused(s: &Setup, route: &str, reason: &str) {
    let r = get(s.public, &format!("/{route}/x")).await;
    assert_eq!(r.status, 502, "{route}: {}", r.text());
    assert_eq!(
        r.json()["code"],
        "gateway.upstream_unavailable",
        "{route}: {}",
        r.text()
    );
    assert!(
        !r.text().contains("upstream uri="),
        "{route}: the upstream's answer leaked through: {}",
        r.text()
    );
    let events = log_events(&s.log, "upstream TLS failed");
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["upstream"] == route && e["fields"]["reason"] == reason),
        "{route}: no log line with reason {reason}: {events:?}"
    );
    let label_up = format!("upstream=\"{route}\"");
    let label_reason = format!("reason=\"{reason}\"");
    assert!(
        metric(
            s.ops,
            "portcullis_gateway_upstream_tls_failures_total",
            &[&label_up, &label_reason]
        )
        .await
            >= 1.0,
        "{route}: no metric with {label_reason}"
    );
    assert!(
        metric(
            s.ops,
            "portcullis_gateway_upstream_failures_total",
            &[&label_up, "kind=\"tls\""]
        )
        .await
            >= 1.0,
        "{route}: no upstream failure counted kind=tls"
    );
}

struct Setup {
    _nginx: Proc,
    /// Accepts connections (the kernel does) and never says a word.
    _silent: std::net::TcpListener,
    gateway: Proc,
    public: u16,
    ops: u16,
    log: PathBuf,
    config: PathBuf,
    dir: TempDir,
}

async fn setup() -> Option<Setup> {
    let nginx = nginx()?;
    let dir = TempDir::new("upstream-tls");
    let d = dir.path();
    // The upstreams' CA, a CA nobody configured, the client CA nginx trusts.
    make_ca(d, "ca");
    make_ca(d, "otherca");
    make_ca(d, "clientca");
    make_leaf(d, "ca", "good", 30, false);
    make_leaf(d, "ca", "expired", -1, false);
    make_leaf(d, "clientca", "gw-client", 30, true);
    make_leaf(d, "otherca", "rogue-client", 30, true);
    // Files a reload will change: the wrong ones for now.
    fs::copy(d.join("otherca.pem"), d.join("rotating-ca.pem")).unwrap();
    fs::copy(d.join("rogue-client.pem"), d.join("rotating-client.pem")).unwrap();
    fs::copy(d.join("rogue-client.key"), d.join("rotating-client.key")).unwrap();

    let (good, expired, mtls, h2) = (free_port(), free_port(), free_port(), free_port());
    let conf = dir.join("nginx.conf");
    fs::write(&conf, nginx_config(d, good, expired, mtls, h2)).unwrap();
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(d)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"]);
    let mut nginx = Proc::spawn("nginx", d, cmd);
    nginx.log = dir.join("nginx-error.log");
    nginx.wait_port(good);
    nginx.wait_port(expired);
    nginx.wait_port(mtls);
    nginx.wait_port(h2);

    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();

    let p = |name: &str| d.join(name).display().to_string();
    let ca = format!("ca_file = \"{}\"", p("ca.pem"));
    let client = |name: &str| {
        format!(
            "client_cert_file = \"{}\"\nclient_key_file = \"{}\"",
            p(&format!("{name}.pem")),
            p(&format!("{name}.key"))
        )
    };
    let upstreams = [
        ("good", format!("url = \"https://localhost:{good}\"\n{ca}")),
        // No ca_file: the public roots, which do not hold the private CA.
        ("system", format!("url = \"https://localhost:{good}\"")),
        (
            "wrongca",
            format!(
                "url = \"https://localhost:{good}\"\nca_file = \"{}\"",
                p("otherca.pem")
            ),
        ),
        (
            "expired",
            format!("url = \"https://localhost:{expired}\"\n{ca}"),
        ),
        // The certificate names localhost, not 127.0.0.1.
        (
            "mismatch",
            format!("url = \"https://127.0.0.1:{good}\"\n{ca}"),
        ),
        (
            "named",
            format!("url = \"https://127.0.0.1:{good}/base\"\n{ca}\nserver_name = \"localhost\""),
        ),
        (
            "mtls",
            format!(
                "url = \"https://localhost:{mtls}\"\n{ca}\n{}",
                client("gw-client")
            ),
        ),
        (
            "nocert",
            format!("url = \"https://localhost:{mtls}\"\n{ca}"),
        ),
        (
            "roguecert",
            format!(
                "url = \"https://localhost:{mtls}\"\n{ca}\n{}",
                client("rogue-client")
            ),
        ),
        (
            "insecure",
            format!("url = \"https://127.0.0.1:{expired}\"\ninsecure_skip_verify = true"),
        ),
        (
            "rotating",
            format!(
                "url = \"https://localhost:{good}\"\nca_file = \"{}\"",
                p("rotating-ca.pem")
            ),
        ),
        ("pool", format!("url = \"https://localhost:{good}\"\n{ca}")),
        (
            "silent",
            format!("url = \"https://localhost:{silent_port}\"\n{ca}"),
        ),
        (
            "h2",
            format!("url = \"https://localhost:{h2}\"\nprotocol = \"h2\"\n{ca}"),
        ),
        // The default, HTTP/1.1, offers no ALPN: the h2 server answers HTTP/1.1.
        (
            "http1toh2",
            format!("url = \"https://localhost:{h2}\"\n{ca}"),
        ),
        // `h2` offers only `h2`: a server without it cannot be spoken to.
        (
            "h2tohttp1",
            format!("url = \"https://localhost:{good}\"\nprotocol = \"h2\"\n{ca}"),
        ),
        (
            "rotatingclient",
            format!(
                "url = \"https://localhost:{mtls}\"\n{ca}\n{}",
                client("rotating-client")
            ),
        ),
    ];
    let (public, ops) = (free_port(), free_port());
    let gateway = start_gateway(&dir, &gateway_config(public, ops, &upstreams), public, ops).await;
    let log = gateway.log.clone();
    Some(Setup {
        _nginx: nginx,
        _silent: silent,
        gateway,
        public,
        ops,
        log,
        config: dir.join("portcullis.toml"),
        dir,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_against_the_configured_ca() {
    let Some(s) = setup().await else { return };

    // ca_file: verified, SNI from the URL's host, path and query kept.
    let r = get(s.public, "/good/a?b=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "tls-upstream sni=localhost uri=/good/a?b=1\n");
    // A second request (a pooled connection, or a new one) works the same.
    let r = get(s.public, "/good/again").await;
    assert_eq!(r.text(), "tls-upstream sni=localhost uri=/good/again\n");

    // server_name: SNI and the name checked, whatever the URL's host.
    let r = get(s.public, "/named/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "tls-upstream sni=localhost uri=/base/named/x\n");

    // Keep-alive: the TLS connection is pooled and used again.
    let mut connections = Vec::new();
    for i in 0..3 {
        let r = get(s.public, &format!("/pool/{i}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        connections.push(r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    connections.sort();
    connections.dedup();
    assert!(
        connections.len() < 3,
        "every request opened a new TLS connection: {connections:?}"
    );

    // Each failure: 502, the stable code, a log line and a metric saying why.
    assert_tls_refused(&s, "system", "unknown_issuer").await;
    assert_tls_refused(&s, "wrongca", "unknown_issuer").await;
    assert_tls_refused(&s, "expired", "expired").await;
    assert_tls_refused(&s, "mismatch", "name_mismatch").await;

    // An upstream that accepts and never answers the handshake costs
    // `upstream_connect_timeout` (1 s), not `upstream_read_timeout` (20 s).
    let started = Instant::now();
    let r = get(s.public, "/silent/x").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["code"], "gateway.upstream_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let failed = log_events(&s.log, "upstream request failed");
    assert!(
        failed.iter().any(|e| e["fields"]["upstream"] == "silent"
            && e["fields"]["error"]
                .as_str()
                .is_some_and(|m| m.contains("TLS handshake"))),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_upstreams_get_only_the_configured_client_certificate() {
    let Some(s) = setup().await else { return };

    let r = get(s.public, "/mtls/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "mtls-upstream client=CN=gw-client\n");

    // Without a client certificate, or with one from another CA, nginx
    // answers 400 itself: the request never reaches the location.
    for route in ["nocert", "roguecert"] {
        let r = get(s.public, &format!("/{route}/x")).await;
        assert_eq!(r.status, 400, "{route}: {}", r.text());
        assert!(!r.text().contains("mtls-upstream"), "{route}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_works_and_is_warned_about() {
    let Some(s) = setup().await else { return };

    // The expired certificate, on an IP it does not name: accepted.
    let r = get(s.public, "/insecure/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "expired-upstream uri=/insecure/x\n");

    let warnings = log_events(&s.log, "insecure_skip_verify is set");
    assert!(
        warnings
            .iter()
            .any(|e| e["fields"]["upstream"] == "insecure"),
        "no start warning: {}",
        s.gateway.log_text()
    );
    assert!(
        !warnings
            .iter()
            .any(|e| e["fields"]["upstream"] != "insecure"),
        "a verified upstream was warned about: {warnings:?}"
    );

    // `config check`: OK, with the warning.
    let out = Command::new(portcullis_bin())
        .args(["config", "check", s.config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("`upstreams[9].insecure_skip_verify`"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_reads_the_tls_files() {
    let Some(s) = setup().await else { return };
    let text = fs::read_to_string(&s.config).unwrap();
    let check = |text: &str| {
        let path = s.dir.join("check.toml");
        fs::write(&path, text).unwrap();
        Command::new(portcullis_bin())
            .args(["config", "check", path.to_str().unwrap()])
            .output()
            .unwrap()
    };

    // A CA file that is not there: the key and the file named.
    let missing = s.dir.join("no-such-ca.pem").display().to_string();
    let rotating = s.dir.join("rotating-ca.pem").display().to_string();
    let out = check(&text.replace(&rotating, &missing));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("`upstreams[10].ca_file`") && stderr.contains("no-such-ca.pem"),
        "{stderr}"
    );
    // ... at its line in the file.
    let line = text
        .lines()
        .position(|l| l.contains(&rotating))
        .map(|i| i + 1)
        .unwrap();
    assert!(
        stderr.contains(&format!("check.toml:{line}:")),
        "not at line {line}: {stderr}"
    );

    // A key file that holds a certificate, not a key.
    let key = s.dir.join("gw-client.key").display().to_string();
    let cert = s.dir.join("gw-client.pem").display().to_string();
    let out = check(&text.replace(
        &format!("client_key_file = \"{key}\""),
        &format!("client_key_file = \"{cert}\""),
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("`upstreams[6].client_key_file`"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("BEGIN"),
        "file contents in an error: {stderr}"
    );

    // A client certificate without its key.
    let out = check(&text.replace(&format!("client_key_file = \"{key}\"\n"), ""));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("`upstreams[6].client_key_file`"),
        "{stderr}"
    );

    // TLS keys on a plain http:// upstream.
    let out = check(&text.replace("https://localhost", "http://localhost"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("applies only to an https:// upstream"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_re_reads_the_certificate_files() {
    let Some(s) = setup().await else { return };

    assert_tls_refused(&s, "rotating", "unknown_issuer").await;
    assert_eq!(get(s.public, "/rotatingclient/x").await.status, 400);

    // The files change in place; a reload reads them again.
    let d = s.dir.path();
    fs::copy(d.join("ca.pem"), d.join("rotating-ca.pem")).unwrap();
    fs::copy(d.join("gw-client.pem"), d.join("rotating-client.pem")).unwrap();
    fs::copy(d.join("gw-client.key"), d.join("rotating-client.key")).unwrap();
    let pid = s.gateway.pid().to_string();
    portcullis(&["reload", "--pid", &pid]);

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(s.public, "/rotating/x").await;
        if r.status == 200 {
            assert_eq!(r.text(), "tls-upstream sni=localhost uri=/rotating/x\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new CA file was not read: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = get(s.public, "/rotatingclient/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "mtls-upstream client=CN=gw-client\n");

    // A reload with a broken file keeps the running configuration.
    fs::write(d.join("rotating-ca.pem"), "not a certificate").unwrap();
    portcullis(&["reload", "--pid", &pid]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !s.gateway.log_text().contains("configuration reload failed") {
        assert!(
            Instant::now() < deadline,
            "no failed reload logged: {}",
            s.gateway.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        s.gateway.log_text().contains("rotating-ca.pem"),
        "the failed reload does not name the file: {}",
        s.gateway.log_text()
    );
    assert_eq!(get(s.public, "/rotating/x").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstreams_speak_http2_over_verified_tls_behind_http1_clients() {
    let Some(s) = setup().await else { return };

    // An HTTP/1.1 client; HTTP/2 negotiated by ALPN to the upstream.
    let r = get(s.public, "/h2/a?b=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        "h2-upstream proto=HTTP/2.0 alpn=h2 uri=/h2/a?b=1\n"
    );
    // Several requests share the HTTP/2 connection pool.
    for i in 0..3 {
        let r = get(s.public, &format!("/h2/{i}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // The default protocol stays HTTP/1.1 to the same server.
    let r = get(s.public, "/http1toh2/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().starts_with("h2-upstream proto=HTTP/1.1 "),
        "{}",
        r.text()
    );

    // An h2 upstream that cannot speak HTTP/2: 502, never its garbled answer.
    let r = get(s.public, "/h2tohttp1/x").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.json()["code"],
        "gateway.upstream_unavailable",
        "{}",
        r.text()
    );
}
