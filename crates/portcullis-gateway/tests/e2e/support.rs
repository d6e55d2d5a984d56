//! Shared by the end-to-end tests (`tests/e2e_*.rs`): finding the real
//! components (the venv's Python, nginx, Caddy), running each in its own
//! temp dir on free ports and killing it at the end, a gateway with a
//! SQLite user store, raw HTTP/1.1 on the wire (header-name case
//! variants cannot be sent through a client that normalises them), and a
//! private CA's certificates made with the `openssl` CLI.

#![allow(dead_code)]

use std::fs;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis::stores::sqlite::SqliteStores;
use portcullis::stores::{Backends, NewUser, Stores, StoresConfig};
use portcullis_core::SecretHasher;
use serde_json::Value;

pub const PEPPER: [u8; 32] = [42; 32];
pub const PASSWORD: &str = "correct horse battery staple";

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// This directory (`tests/e2e`).
pub fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

/// The `portcullis` binary under test.
pub fn portcullis_bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

fn required() -> bool {
    std::env::var_os("PORTCULLIS_REQUIRE_BACKENDS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// `None` (the test skips) when `what` is missing, unless
/// PORTCULLIS_REQUIRE_BACKENDS is set: then the test fails.
fn found(what: &str, path: Option<PathBuf>) -> Option<PathBuf> {
    if path.is_some() {
        return path;
    }
    assert!(
        !required(),
        "{what} is missing and PORTCULLIS_REQUIRE_BACKENDS is set: run scripts/e2e-env.sh"
    );
    eprintln!("skipping: {what} is missing (run scripts/e2e-env.sh)");
    None
}

/// The e2e venv's Python (`<repo>/.venv-e2e/bin/python`, or PORTCULLIS_E2E_PYTHON).
pub fn python() -> Option<PathBuf> {
    let path = std::env::var_os("PORTCULLIS_E2E_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-e2e/bin/python"));
    let ok = path.exists()
        && Command::new(&path)
            .args([
                "-c",
                "import flask, flask_sock, fastapi, uvicorn, jwt, grpc, grpc_health",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    found(
        &format!("the e2e Python venv ({})", path.display()),
        ok.then_some(path),
    )
}

/// Any Python 3 interpreter, resolved to its executable (a version
/// manager's shim may need a `HOME` the tests replace): for what needs no
/// package, such as a file server.
pub fn python3() -> Option<PathBuf> {
    let path = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_file());
    found("python3 (on PATH)", path)
}

/// Debian's nginx.
pub fn nginx() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/sbin/nginx");
    found("nginx (/usr/sbin/nginx)", path.exists().then_some(path))
}

/// Caddy on PATH.
pub fn caddy() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("caddy"))
            .find(|p| p.is_file())
    });
    found("caddy (on PATH)", path)
}

/// A fresh directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-e2e-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port (bound, then released).
/// A loopback port nothing listens on now, never one this process handed
/// out before (the system may offer a released port again before the
/// server it was meant for has bound it).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A child process in its own process group, its output in a log file;
/// on drop the whole group gets SIGTERM, then SIGKILL (nginx's workers
/// included), and the log is printed if the test failed.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` (stdout and stderr to `<dir>/<name>.log`).
    pub fn spawn(name: &str, dir: &Path, mut cmd: Command) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `port` accepts connections; fails if the process exits.
    pub fn wait_port(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "{} exited ({status}) before listening on {port}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not listening on {port} in 30 s:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn signal_group(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            signal_group(pid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            signal_group(pid, "KILL");
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log_text());
        }
    }
}

/// Runs `portcullis ARGS`, asserting success; its stdout.
pub fn portcullis(args: &[&str]) -> String {
    let out = Command::new(portcullis_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "portcullis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Flask app of `tests/e2e/flask_app.py` on a free port.
pub fn start_flask(python: &Path, dir: &TempDir) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new(python);
    cmd.arg(e2e_dir().join("flask_app.py"))
        .arg(port.to_string())
        .current_dir(dir.path());
    let mut p = Proc::spawn("flask", dir.path(), cmd);
    p.wait_port(port);
    (p, port)
}

/// Alice: role `editor`, permission `docs.read`, tenant `acme`.
pub async fn create_alice(db: &Path) {
    let backend = Arc::new(SqliteStores::open(db).await.unwrap());
    let stores = Stores::new(
        Backends::all(backend),
        StoresConfig::new(SecretHasher::new(&PEPPER).unwrap()),
    )
    .unwrap();
    stores
        .create_user(&NewUser {
            username: "alice".into(),
            password: Some(PASSWORD.into()),
            roles: vec!["editor".into()],
            permissions: vec!["docs.read".into()],
            tenant: Some("acme".into()),
            ..NewUser::default()
        })
        .await
        .unwrap();
}

/// A gateway in `dir`: an ES256 key, the pepper, a SQLite store with
/// alice, and `config` (`{keys}`, `{db}`, `{pepper}`, `{audit}` are
/// filled in) written to `portcullis.toml`.
pub async fn start_gateway(dir: &TempDir, config: &str, public: u16, ops: u16) -> Proc {
    let keys = dir.join("keys");
    portcullis(&[
        "keys",
        "generate",
        "--alg",
        "ES256",
        "--kid",
        "k1",
        "--out",
        keys.to_str().unwrap(),
    ]);
    fs::write(dir.join("pepper"), PEPPER).unwrap();
    let db = dir.join("stores.db");
    create_alice(&db).await;
    let config = config
        .replace("{keys}", &keys.display().to_string())
        .replace("{db}", &db.display().to_string())
        .replace("{pepper}", &dir.join("pepper").display().to_string())
        .replace("{audit}", &dir.join("audit.db").display().to_string());
    let path = dir.join("portcullis.toml");
    fs::write(&path, config).unwrap();
    let mut cmd = Command::new(portcullis_bin());
    cmd.args(["serve", "--config", path.to_str().unwrap()]);
    let mut p = Proc::spawn("gateway", dir.path(), cmd);
    p.wait_port(public);
    p.wait_port(ops);
    p
}

/// A response read off the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Names lowercased, in order, repeated names kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {:?} {}",
                self.status,
                self.headers,
                self.text()
            )
        })
    }
    /// The headers the echo app says it received.
    pub fn seen(&self) -> serde_json::Map<String, Value> {
        match self.json().get("headers") {
            Some(Value::Object(m)) => m.clone(),
            _ => panic!("no headers in {}", self.text()),
        }
    }
}

/// Sends `head` (request line and headers, `\n`-separated, without the
/// final blank line; `Connection: close` and `Content-Length` are added)
/// and `body` from `local` (`None`: the default source address).
pub async fn raw_from(local: Option<[u8; 4]>, port: u16, head: &str, body: &[u8]) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = local {
        // Another loopback address: a peer outside trusted_proxies.
        socket.bind(SocketAddr::from((ip, 0))).unwrap();
    }
    let mut stream = socket.connect(target).await.unwrap();
    let mut req = head.trim_end().replace('\n', "\r\n");
    req.push_str("\r\nConnection: close\r\n");
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("no response in 30 s")
        .unwrap();
    parse_response(&raw)
}

/// [`raw_from`] from the default source address (127.0.0.1), no body.
pub async fn raw(port: u16, head: &str) -> Reply {
    raw_from(None, port, head, b"").await
}

/// Parses an HTTP/1.1 response read to EOF (chunked bodies decoded).
pub fn parse_response(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("0").trim();
        let size = usize::from_str_radix(size_text, 16).unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
}

/// POSTs JSON to the gateway's login; the access token.
pub async fn login(port: u16) -> String {
    let body = serde_json::json!({"username": "alice", "password": PASSWORD}).to_string();
    let r = raw_from(
        None,
        port,
        &format!(
            "POST /auth/login HTTP/1.1\nHost: 127.0.0.1:{port}\nContent-Type: application/json"
        ),
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "login: {}", r.text());
    r.json()["access_token"].as_str().unwrap().to_owned()
}

/// Creates an API key for the bearer's user; the key.
pub async fn create_api_key(port: u16, token: &str) -> String {
    let body = serde_json::json!({"name": "e2e", "permissions": ["docs.read"]}).to_string();
    let r = raw_from(
        None,
        port,
        &format!(
            "POST /auth/api-keys HTTP/1.1\nHost: 127.0.0.1:{port}\nAuthorization: Bearer {token}\nContent-Type: application/json"
        ),
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "api key: {}", r.text());
    let v = r.json();
    v["key"]
        .as_str()
        .or_else(|| v["api_key"].as_str())
        .unwrap_or_else(|| panic!("no key in {v}"))
        .to_owned()
}

/// The claims of a compact JWT (not verified: the gateway did that).
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&portcullis_core::jose::b64_decode(payload.as_bytes()).unwrap()).unwrap()
}

/// Spoofed identity headers, every name in several case spellings plus the
/// underscore spelling some WSGI servers fold into the same variable.
pub fn spoofed(names: &[&str]) -> String {
    let mut out = String::new();
    for name in names {
        let title: String = name
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("-");
        let mixed: String = name
            .chars()
            .enumerate()
            .map(|(i, ch)| {
                if i % 2 == 0 {
                    ch.to_ascii_uppercase()
                } else {
                    ch
                }
            })
            .collect();
        for spelling in [
            name.to_string(),
            name.to_ascii_uppercase(),
            title.clone(),
            mixed,
            title.replace('-', "_"),
        ] {
            out.push_str(&format!("\n{spelling}: spoofed-admin"));
        }
    }
    out
}

/// Asserts that no header the app saw carries a spoofed value, and that no
/// identity header carries a proxy's unreplaced placeholder (`{…}`).
pub fn assert_not_spoofed(seen: &serde_json::Map<String, Value>, names: &[&str]) {
    for (k, v) in seen {
        let v = v.as_str().unwrap_or_default();
        assert!(
            !v.contains("spoofed"),
            "a spoofed header reached the app: {k}: {v}"
        );
        assert!(
            !(names.contains(&k.as_str()) && v.contains('{')),
            "a placeholder reached the app: {k}: {v}"
        );
    }
}

/// Runs `openssl ARGS` in `dir`, asserting success.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA: `<name>.pem` and `<name>.key` in `dir`.
pub fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf `<name>.pem` / `<name>.key` signed by `ca`, valid for `days`
/// (negative: already expired), for `serverAuth` with the DNS name
/// `localhost`, or for `clientAuth`.
pub fn make_leaf(dir: &Path, ca: &str, name: &str, days: i32, client: bool) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    let ext = if client {
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
    } else {
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost\n"
    };
    fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            &days.to_string(),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}
