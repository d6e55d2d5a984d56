//! Configuration reload, end to end: the real binary, a real upstream on a
//! loopback port, real signals. SIGHUP with a good file changes routing on
//! a kept-alive connection; a bad file keeps the old configuration serving
//! and is counted and logged; `portcullis reload` reports both outcomes;
//! rate-limit counters survive a reload; SIGTERM under concurrent slow
//! requests drains them all; route conflicts are refused by `config check`
//! with file, line and key.

mod support;

use std::convert::Infallible;
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::{
    GatewayConfig, RateLimit, Route, TempDir, Upstream, free_port, keys_and_pepper, portcullis,
    toml_str,
};

/// The gateway process: killed on drop (its log printed if the test failed).
struct Gateway {
    child: Option<Child>,
    log: PathBuf,
    config: PathBuf,
    public: SocketAddr,
    ops: SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- gateway log ---\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Gateway {
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let out = Command::new("kill")
            .args([sig, &pid.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success());
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An upstream answering `<path>` as text; `/slow` after 1 s.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    if req.uri().path() == "/slow" {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                        req.uri().path().to_owned(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The configuration: memory storage, one key, anonymous routes on `paths`
/// (each route named after its path), a limit of 3 an hour per IP on
/// `/limited`, one default upstream; `extra` appended.
fn config_text(
    dir: &TempDir,
    public: SocketAddr,
    ops: SocketAddr,
    upstream: SocketAddr,
    paths: &[&str],
    extra: &str,
) -> String {
    let mut config = GatewayConfig::with_ports(dir, public, ops)
        .server(&format!(
            "shutdown_timeout = \"10s\"\npid_file = {}",
            toml_str(&dir.join("portcullis.pid").display().to_string())
        ))
        .issuer_is_public()
        .no_audit()
        .no_log()
        .rate_limit(RateLimit::fixed_window("per_ip", 3, 3600, &["ip"]));
    for p in paths {
        let mut route = Route::new(p.trim_start_matches('/'), p).credentials(&["anonymous"]);
        if *p == "/limited" {
            route = route.rate_limits(&["per_ip"]);
        }
        config = config.route(route);
    }
    config
        .upstream(Upstream::default("app", &format!("http://{upstream}")))
        .raw(extra)
        .text()
}

async fn start(dir: &TempDir, paths: &[&str]) -> (Gateway, SocketAddr) {
    keys_and_pepper(dir);
    let up = upstream().await;
    let (public, ops) = (free_port(), free_port());
    let config = dir.join("portcullis.toml");
    fs::write(&config, config_text(dir, public, ops, up, paths, "")).unwrap();
    let log = dir.join("gateway.log");
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let gw = Gateway {
        child: Some(child),
        log,
        config,
        public,
        ops,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_once(ops, "/health/ready").await.map(|r| r.0) != Some(StatusCode::OK) {
        assert!(Instant::now() < deadline, "gateway not ready: {}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (gw, up)
}

/// One connection, kept alive across requests.
struct Conn(
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    SocketAddr,
);

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self(send, addr)
    }

    /// Panics if the connection was closed: the test is that it is not.
    async fn get(&mut self, path: &str) -> (StatusCode, String) {
        self.0
            .ready()
            .await
            .expect("the kept-alive connection closed");
        let req = Request::get(path)
            .header("host", self.1.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = self
            .0
            .send_request(req)
            .await
            .expect("the kept-alive connection closed");
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

async fn get_once(addr: SocketAddr, path: &str) -> Option<(StatusCode, String)> {
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .ok()?;
    let r = tokio::time::timeout(Duration::from_secs(30), send.send_request(req))
        .await
        .ok()?
        .ok()?;
    let status = r.status();
    let body = r.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The value of the metric line starting with `series` (0 when absent).
async fn metric(ops: SocketAddr, series: &str) -> f64 {
    let (_, body) = get_once(ops, "/metrics").await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

async fn wait_for_metric(ops: SocketAddr, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(ops, series).await;
        if v == value {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {v}, not {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const OK: &str = "portcullis_config_reloads_total{result=\"ok\"} ";
const ERROR: &str = "portcullis_config_reloads_total{result=\"error\"} ";

fn rewrite(gw: &Gateway, up: SocketAddr, dir: &TempDir, paths: &[&str], extra: &str) {
    fs::write(
        &gw.config,
        config_text(dir, gw.public, gw.ops, up, paths, extra),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_good_file_changes_routing_on_a_kept_alive_connection() {
    let dir = TempDir::new("good");
    let (gw, up) = start(&dir, &["/a"]).await;
    let mut conn = Conn::open(gw.public).await;
    assert_eq!(conn.get("/a").await, (StatusCode::OK, "/a".into()));
    assert_eq!(conn.get("/b").await.0, StatusCode::FORBIDDEN);
    assert!(metric(gw.ops, LAST_OK).await > 1.7e9, "the start counts");

    // /a removed, /b added.
    rewrite(&gw, up, &dir, &["/b"], "");
    gw.signal("-HUP");
    wait_for_metric(gw.ops, OK, 1.0).await;
    // The same connection: the next request uses the new configuration.
    assert_eq!(conn.get("/b").await, (StatusCode::OK, "/b".into()));
    let (status, body) = conn.get("/a").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("authz.denied"), "{body}");
    assert_eq!(metric(gw.ops, ERROR).await, 0.0);
    assert!(gw.log().contains("configuration reloaded"), "{}", gw.log());
}

const LAST_OK: &str = "portcullis_config_last_reload_success_timestamp_seconds ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_bad_file_keeps_the_old_configuration_serving() {
    let dir = TempDir::new("bad");
    let (gw, up) = start(&dir, &["/a"]).await;
    let mut conn = Conn::open(gw.public).await;
    assert_eq!(conn.get("/a").await.0, StatusCode::OK);
    let started = metric(gw.ops, LAST_OK).await;

    // A route that can never match (a deny over it): refused at load.
    rewrite(
        &gw,
        up,
        &dir,
        &["/a", "/b"],
        "\n[[guard.routes]]\nname = \"no-b\"\npath = \"/b\"\neffect = \"deny\"\n",
    );
    gw.signal("-HUP");
    wait_for_metric(gw.ops, ERROR, 1.0).await;
    assert_eq!(metric(gw.ops, OK).await, 0.0);
    assert_eq!(metric(gw.ops, LAST_OK).await, started);
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("configuration reload failed"))
        .unwrap_or_else(|| panic!("no error logged: {log}"));
    // Named: the file, the line of route 1's path, the key, the reason.
    let config = gw.config.display().to_string();
    let path_line = fs::read_to_string(&gw.config)
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("path = \"/b\""))
        .map(|(i, _)| i + 1)
        .next()
        .unwrap();
    assert!(line.contains(&format!("{config}:{path_line}:")), "{line}");
    assert!(line.contains("`guard.routes[1].path`"), "{line}");
    assert!(line.contains("shadowed by route `no-b`"), "{line}");
    // Still the old configuration, on the same connection.
    assert_eq!(conn.get("/a").await.0, StatusCode::OK);
    assert_eq!(conn.get("/b").await.0, StatusCode::FORBIDDEN);

    // A syntax error is refused the same way.
    fs::write(&gw.config, "[server\n").unwrap();
    gw.signal("-HUP");
    wait_for_metric(gw.ops, ERROR, 2.0).await;
    assert_eq!(conn.get("/a").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_reload_reports_ok_warnings_and_errors() {
    let dir = TempDir::new("cli");
    let (gw, up) = start(&dir, &["/a"]).await;
    let config = gw.config.to_str().unwrap().to_owned();
    assert_eq!(
        fs::read_to_string(dir.join("portcullis.pid"))
            .unwrap()
            .trim(),
        gw.child.as_ref().unwrap().id().to_string()
    );

    // `POST /reload` is an admin route: without a key the command says
    // how to get one, and nothing is reloaded.
    rewrite(&gw, up, &dir, &["/a", "/c"], "");
    let out = portcullis(&["reload", "--config", &config]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin.config.write"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bootstrap = portcullis(&["admin", "bootstrap", "--config", &config]);
    assert!(
        bootstrap.status.success(),
        "{}",
        String::from_utf8_lossy(&bootstrap.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&bootstrap.stdout).unwrap();
    let key_file = dir.join("admin.key");
    fs::write(&key_file, printed["key"].as_str().unwrap()).unwrap();
    let key_file = key_file.to_str().unwrap().to_owned();
    let reload =
        |config: &str| portcullis(&["reload", "--config", config, "--key-file", &key_file]);

    let out = reload(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), format!("{config}: reloaded"));
    assert_eq!(get_once(gw.public, "/c").await.unwrap().0, StatusCode::OK);

    // Ambiguous routes: exit 2, every error printed; the old config serves.
    rewrite(
        &gw,
        up,
        &dir,
        &["/a", "/c"],
        "\n[[guard.routes]]\nname = \"c2\"\npath = \"/c\"\ncredentials = [\"anonymous\"]\n",
    );
    let out = reload(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("did not reload"), "{stderr}");
    assert!(stderr.contains("`guard.routes[2].path`"), "{stderr}");
    assert!(
        stderr.contains("route `c2` is ambiguous with route `c`"),
        "{stderr}"
    );
    assert_eq!(get_once(gw.public, "/c").await.unwrap().0, StatusCode::OK);

    // A restart-only key: kept, with a warning; the rest applies.
    let moved = free_port();
    let text = config_text(&dir, moved, gw.ops, up, &["/a"], "");
    fs::write(&gw.config, text).unwrap();
    let out = reload(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("`server.listen` changed"), "{stderr}");
    assert!(stderr.contains("`keys` changed"), "{stderr}");
    assert_eq!(
        get_once(gw.public, "/c").await.unwrap().0,
        StatusCode::FORBIDDEN
    );
    assert!(get_once(moved, "/a").await.is_none(), "the listener moved");

    // --pid sends SIGHUP.
    let pid = gw.child.as_ref().unwrap().id().to_string();
    rewrite(&gw, up, &dir, &["/a", "/c"], "");
    let out = portcullis(&["reload", "--pid", &pid]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_metric(gw.ops, OK, 3.0).await;
    assert_eq!(get_once(gw.public, "/c").await.unwrap().0, StatusCode::OK);

    // Nothing listening: a clear error.
    let elsewhere = dir.join("elsewhere.toml");
    fs::write(
        &elsewhere,
        format!("[server]\nops_listen = \"{}\"\n", free_port()),
    )
    .unwrap();
    let out = reload(elsewhere.to_str().unwrap());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the gateway's ops listener"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_counters_survive_a_reload() {
    let dir = TempDir::new("limits");
    let (gw, up) = start(&dir, &["/limited"]).await;
    for _ in 0..2 {
        assert_eq!(
            get_once(gw.public, "/limited").await.unwrap().0,
            StatusCode::OK
        );
    }
    rewrite(&gw, up, &dir, &["/limited", "/other"], "");
    gw.signal("-HUP");
    wait_for_metric(gw.ops, OK, 1.0).await;
    assert_eq!(
        get_once(gw.public, "/other").await.unwrap().0,
        StatusCode::OK
    );
    // A limit of 3 across the reload admits exactly 3.
    assert_eq!(
        get_once(gw.public, "/limited").await.unwrap().0,
        StatusCode::OK
    );
    assert_eq!(
        get_once(gw.public, "/limited").await.unwrap().0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_completes_every_in_flight_request() {
    let dir = TempDir::new("term");
    let (mut gw, _) = start(&dir, &["/slow"]).await;
    let pid_file = dir.join("portcullis.pid");
    assert!(pid_file.exists());
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let public = gw.public;
            tokio::spawn(async move { get_once(public, "/slow").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("-TERM");
    for r in requests {
        assert_eq!(
            r.await.unwrap(),
            Some((StatusCode::OK, "/slow".to_owned())),
            "an in-flight request was cut"
        );
    }
    let mut child = gw.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", gw.log());
    assert!(!pid_file.exists(), "the pid file is removed at exit");
}

/// Routes in conflict are refused by `config check`, each error at the
/// route's `path` line; a partial overlap resolved by specificity is fine.
#[test]
fn config_check_refuses_shadowed_and_ambiguous_routes() {
    let dir = TempDir::new("check");
    let keys = dir.join("keys");
    let out = portcullis(&[
        "keys",
        "generate",
        "--alg",
        "ES256",
        "--out",
        keys.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let up = free_port();
    let base = |routes: &str| {
        format!(
            "[keys]\ndir = \"{}\"\nissuer = \"https://i.test\"\n\n{routes}\n[[upstreams]]\nname = \"app\"\nurl = \"http://{up}\"\ndefault = true\n",
            dir.join("keys").display()
        )
    };
    let file = dir.join("p.toml");
    let file_s = file.to_str().unwrap();
    fs::write(
        &file,
        base(
            "[[guard.routes]]\nname = \"no-admin\"\neffect = \"deny\"\npath = \"/admin/**\"\n\n\
             [[guard.routes]]\nname = \"admin-users\"\npath = \"/admin/users\"\n\n\
             [[guard.routes]]\nname = \"items\"\npath = \"/items/{id}\"\n\n\
             [[guard.routes]]\nname = \"item\"\npath = \"/items/*\"\n",
        ),
    )
    .unwrap();
    let out = portcullis(&["config", "check", file_s]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{file_s}:12:1: `guard.routes[1].path`: route `admin-users` can never match: it is shadowed by route `no-admin`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file_s}:20:1: `guard.routes[3].path`: route `item` is ambiguous with route `items`"
        )),
        "{stderr}"
    );

    fs::write(
        &file,
        base(
            "[[guard.routes]]\nname = \"items\"\npath = \"/items/{id}\"\n\n\
             [[guard.routes]]\nname = \"summary\"\npath = \"/items/summary\"\n\n\
             [[guard.routes]]\nname = \"all\"\npath = \"/**\"\n",
        ),
    )
    .unwrap();
    let out = portcullis(&["config", "check", file_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
