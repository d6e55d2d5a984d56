//! Shared support for the gateway's process-level tests: temp dirs, the
//! real `portcullis` binary as a child process, an echo upstream, an HTTP
//! client, where the real backends are (and whether a test may skip when
//! one is unreachable), per-test isolation (Redis key prefixes, fresh
//! PostgreSQL databases), and redis-server processes of a test's own.
#![allow(dead_code)]

use std::convert::Infallible;
use std::fs;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

pub mod config;
#[allow(unused_imports)]
pub use config::{GatewayConfig, RateLimit, Route, Upstream, toml_list, toml_str};

pub const PEPPER: [u8; 32] = [42; 32];
pub const PASSWORD: &str = "correct horse battery staple";

/// `PORTCULLIS_REQUIRE_BACKENDS` set: an unreachable server is a failure.
pub fn require_backends() -> bool {
    std::env::var_os("PORTCULLIS_REQUIRE_BACKENDS").is_some_and(|v| !v.is_empty() && v != "0")
}

fn reachable(host_port: &str) -> bool {
    host_port.to_socket_addrs().is_ok_and(|mut a| {
        a.any(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
    })
}

fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

fn skip(what: &str, url: &str) {
    assert!(
        !require_backends(),
        "{what} at {url} is unreachable and PORTCULLIS_REQUIRE_BACKENDS is set"
    );
    eprintln!("skipping: {what} at {url} is unreachable");
}

/// The shared single Redis (`PORTCULLIS_REDIS_URL`, default 127.0.0.1:6379).
pub fn redis_url() -> Option<String> {
    let url = std::env::var("PORTCULLIS_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    if reachable(host_port(&url)) {
        Some(url)
    } else {
        skip("Redis", &url);
        None
    }
}

/// The Redis Cluster's seed nodes (`PORTCULLIS_REDIS_CLUSTER`, comma separated).
pub fn redis_cluster_urls() -> Option<Vec<String>> {
    let Ok(list) = std::env::var("PORTCULLIS_REDIS_CLUSTER") else {
        assert!(
            !require_backends(),
            "PORTCULLIS_REDIS_CLUSTER is unset and PORTCULLIS_REQUIRE_BACKENDS is set: run scripts/test.sh"
        );
        eprintln!("skipping: PORTCULLIS_REDIS_CLUSTER is unset (scripts/test.sh sets it)");
        return None;
    };
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(down) = urls.iter().find(|u| !reachable(host_port(u))) {
        skip("Redis Cluster node", down);
        return None;
    }
    Some(urls)
}

/// `<label>_<pid>_<nanos>_<n>`: `[a-z0-9_]`, a valid key prefix and database name.
pub fn unique_name(label: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{label}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deletes every key under `prefix` on each of `urls` (every node of a
/// Cluster, or the one server): SCAN + UNLINK, one key per UNLINK.
pub fn redis_cleanup(urls: &[String], prefix: &str) {
    for url in urls {
        let Ok(client) = redis::Client::open(url.as_str()) else {
            continue;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            continue;
        };
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)
            else {
                break;
            };
            for key in keys {
                let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(key).query(&mut conn);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

/// Removes a Redis prefix's keys on drop.
pub struct RedisPrefix {
    pub urls: Vec<String>,
    pub prefix: String,
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        redis_cleanup(&self.urls, &self.prefix);
    }
}

/// A fresh PostgreSQL database on the shared server, dropped on drop.
pub struct FreshDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl FreshDatabase {
    /// `None` (skip) when PostgreSQL is unreachable and skipping is allowed.
    pub async fn create(label: &str) -> Option<Self> {
        use sqlx::Connection;
        let admin_url = std::env::var("PORTCULLIS_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        if !reachable(host_port(&admin_url)) {
            skip("PostgreSQL", &admin_url);
            return None;
        }
        let name = unique_name(&format!("pcx_{label}"));
        let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Some(Self {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}

/// A fresh directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("portcullis-gw-{}", unique_name(name)));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nothing listens on now, never one this process handed
/// out before (the system may offer a released port again before the
/// gateway it was meant for has bound it).
pub fn free_port() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

pub fn portcullis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The admin API key `portcullis admin bootstrap --config <config>` prints
/// (the configuration's stores must be files or servers the gateway shares).
pub fn bootstrap_admin(config: &Path) -> String {
    bootstrap_admin_with(config, &[])
}

/// [`bootstrap_admin`] with more arguments (`--name`, `--permissions`, ...).
pub fn bootstrap_admin_with(config: &Path, extra: &[&str]) -> String {
    let mut args = vec!["admin", "bootstrap", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = portcullis(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    printed["key"].as_str().unwrap().to_owned()
}

/// Waits up to `within` until the SQLite audit log `audit` holds, under
/// `path_prefix`, one event for each wanted `(path, method, status, code)`
/// (`""` for a method or code: any), read with `portcullis audit query`
/// (the writer batches); panics naming what is missing.
pub async fn wait_for_audit(
    audit: &Path,
    path_prefix: &str,
    wanted: &[(&str, &str, u16, &str)],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let out = portcullis(&[
            "audit",
            "query",
            "--sqlite",
            audit.to_str().unwrap(),
            "--path-prefix",
            path_prefix,
            "--format",
            "json",
        ]);
        let page: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let events = page["events"].as_array().cloned().unwrap_or_default();
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(path, method, status, code)| {
                !events.iter().any(|e| {
                    e["path"] == *path
                        && (method.is_empty() || e["method"] == *method)
                        && e["status"] == *status
                        && (code.is_empty() || e["code"] == *code)
                })
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "audit events missing {missing:?} in {events:#?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An ES256 key (kid `k1`) in `<dir>/keys` and the pepper in `<dir>/pepper`,
/// shared by every replica of a test.
pub fn keys_and_pepper(dir: &TempDir) -> (PathBuf, PathBuf) {
    let keys = dir.join("keys");
    let out = portcullis(&[
        "keys",
        "generate",
        "--alg",
        "ES256",
        "--kid",
        "k1",
        "--out",
        keys.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pepper = dir.join("pepper");
    fs::write(&pepper, PEPPER).unwrap();
    (keys, pepper)
}

/// An upstream answering 200 with the path it got as JSON.
pub async fn echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let json = serde_json::json!({"path": req.uri().path()});
                    let mut r = Response::new(Full::new(Bytes::from(json.to_string())));
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// One `portcullis serve` process: killed on drop, its log printed when
/// the test failed.
pub struct Gateway {
    child: Option<Child>,
    pub log: PathBuf,
    pub public: SocketAddr,
    pub ops: SocketAddr,
}

impl Gateway {
    /// Starts the binary on `config` (written to `<dir>/<name>.toml`).
    pub fn start(
        dir: &TempDir,
        name: &str,
        config: &str,
        public: SocketAddr,
        ops: SocketAddr,
    ) -> Self {
        let path = dir.join(&format!("{name}.toml"));
        fs::write(&path, config).unwrap();
        let log = dir.join(&format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config", path.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            log,
            public,
            ops,
        }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits up to 30 s for `/health/ready` to answer 200.
    pub async fn wait_ready(&self, client: &HttpClient) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(1),
                client.request(get(self.ops, "/health/ready", &[])),
            )
            .await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready in 30 s:\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} ---\n{}",
                self.log.display(),
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The problem+json `code`, if the body is one.
    pub fn code(&self) -> Option<String> {
        self.json()["code"].as_str().map(str::to_owned)
    }
}

/// The sum of every series of the metric `name` (any labels) on the
/// `/metrics` of the ops listener `ops`; 0 when it is absent.
pub async fn metric_total(ops: SocketAddr, name: &str) -> f64 {
    let text = send(&client(), get(ops, "/metrics", &[])).await.body;
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    let response = client.request(req).await.unwrap();
    let (head, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: head.status,
        headers: head.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

pub fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::post(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// Logs `username` in through the token service at `public`; the access token.
pub async fn login(client: &HttpClient, public: SocketAddr, username: &str) -> String {
    let body = serde_json::json!({"username": username, "password": PASSWORD}).to_string();
    let r = send(
        client,
        post(
            public,
            "/auth/login",
            &[("content-type", "application/json")],
            &body,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json()["access_token"].as_str().unwrap().to_owned()
}

/// The claims of a JWT (not verified: for reading `sid` in tests).
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = portcullis_core::jose::b64_decode(payload.as_bytes()).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A redis-server of the test's own on a free port (never the shared one),
/// without persistence; SIGSTOP / SIGCONT / kill / restart on the same
/// port; killed on drop.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> Self {
        Self::start_on(free_port().port())
    }

    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be on the PATH for this test");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        Self {
            port,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// SIGSTOP: it hangs with its sockets open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL, and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-node Redis Cluster of the test's own (no replicas, nothing
/// persisted) on free ports whose bus ports (+10000) are free too; its
/// nodes can be paused like [`OwnRedis`]; killed on drop.
pub struct OwnRedisCluster {
    pub nodes: Vec<OwnRedis>,
}

impl OwnRedisCluster {
    pub fn start(dir: &Path) -> Self {
        let mut nodes = Vec::new();
        while nodes.len() < 3 {
            let port = free_port().port();
            if port > 55_000 || StdListener::bind(("127.0.0.1", port + 10_000)).is_err() {
                continue;
            }
            let node_dir = dir.join(format!("redis-node-{port}"));
            fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "15000",
                ])
                .arg("--cluster-config-file")
                .arg(node_dir.join("nodes.conf"))
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server must be on the PATH for this test");
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "redis-server on {port} did not start"
                );
                std::thread::sleep(Duration::from_millis(25));
            }
            nodes.push(OwnRedis {
                port,
                child: Some(child),
            });
        }
        let this = Self { nodes };
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(this.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be on the PATH for this test");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !this.nodes.iter().all(|n| {
            Command::new("redis-cli")
                .args(["-p", &n.port.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        }) {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        this
    }

    /// The TOML line naming its nodes (`redis_cluster = [...]`).
    pub fn config_line(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect();
        format!("redis_cluster = [{}]", urls.join(", "))
    }

    /// SIGSTOP to every node.
    pub fn pause(&self) {
        self.nodes.iter().for_each(OwnRedis::pause);
    }

    /// SIGCONT to every node.
    pub fn resume(&self) {
        self.nodes.iter().for_each(OwnRedis::resume);
    }

    /// The node that serves `key`'s hash slot (asked of the cluster with
    /// `redis-cli`: `CLUSTER KEYSLOT`, then each node's own slot ranges).
    pub fn node_owning(&self, key: &str) -> &OwnRedis {
        let cli = |port: u16, args: &[&str]| {
            let out = Command::new("redis-cli")
                .args(["-p", &port.to_string()])
                .args(args)
                .output()
                .expect("redis-cli must be on the PATH for this test");
            String::from_utf8(out.stdout).unwrap()
        };
        let slot: u32 = cli(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        self.nodes
            .iter()
            .find(|n| {
                let nodes = cli(n.port, &["CLUSTER", "NODES"]);
                let me = nodes.lines().find(|l| l.contains("myself")).unwrap();
                me.split_whitespace().skip(8).any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    match (lo.parse::<u32>(), hi.parse::<u32>()) {
                        (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                        _ => false,
                    }
                })
            })
            .expect("a node serves every slot")
    }
}

/// A PostgreSQL cluster of the test's own (`scripts/pg-private.sh`), never
/// the shared server: started on a free port in `<dir>`, stopped and
/// removed on drop.
pub struct OwnPostgres {
    pub dir: PathBuf,
    pub port: u16,
}

fn pg_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg-private.sh")
}

impl OwnPostgres {
    /// `None` (skip) when the server binaries are missing and skipping is allowed.
    pub fn start(dir: PathBuf) -> Option<Self> {
        let port = free_port().port();
        let this = Self { dir, port };
        let out = this.run("start");
        if out.status.code() == Some(3) {
            assert!(
                !require_backends(),
                "PostgreSQL server binaries are missing and PORTCULLIS_REQUIRE_BACKENDS is set: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("skipping: {}", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
        assert!(
            out.status.success(),
            "pg-private.sh start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(this)
    }

    fn run(&self, action: &str) -> std::process::Output {
        Command::new("bash")
            .arg(pg_script())
            .args([action, self.dir.to_str().unwrap(), &self.port.to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Immediate shutdown (as a crash: no checkpoint, connections cut).
    pub fn stop(&self) {
        let out = self.run("stop");
        assert!(
            out.status.success(),
            "pg-private.sh stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The postmaster and every backend process (children of the postmaster).
    fn processes(&self) -> Vec<i32> {
        let Some(postmaster) = fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|f| f.lines().next()?.trim().parse::<i32>().ok())
        else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        let Ok(proc_dir) = fs::read_dir("/proc") else {
            return pids;
        };
        for entry in proc_dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Hangs the server (SIGSTOP to the postmaster and its backends):
    /// connections stay open and nothing answers.
    pub fn pause(&self) {
        for pid in self.processes() {
            let _ = Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status();
        }
    }

    /// Undoes [`Self::pause`].
    pub fn resume(&self) {
        for pid in self.processes() {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        let out = self.run("start");
        assert!(
            out.status.success(),
            "pg-private.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        // A test that failed while the server was paused: SIGCONT first,
        // or the immediate stop would wait on stopped processes.
        if self.dir.join("data/postmaster.pid").exists() {
            self.resume();
        }
        let _ = self.run("destroy");
    }
}

/// The e2e venv's Python (scripts/e2e-env.sh makes it; PORTCULLIS_E2E_VENV
/// names another).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("PORTCULLIS_E2E_VENV").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-e2e"),
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/e2e-env.sh (or set PORTCULLIS_E2E_VENV)",
        python.display()
    );
    python
}
