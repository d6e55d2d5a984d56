//! A gateway configuration file built from typed calls, so that a test
//! states only what it needs and not the same `[server]`, `[storage]`,
//! `[keys]`, `[audit]` and `[log]` lines as every other test.
//!
//! [`GatewayConfig::new`] starts from the defaults most tests use: two free
//! ports, the key (kid `k1`) and pepper of [`keys_and_pepper`] in the test's
//! directory, the stores in `<dir>/stores.db`, the issuer
//! `https://issuer.test`, the audit log in `<dir>/audit.db` and log level
//! `warn`. Each section can be changed or left out; roles, rate limits,
//! routes, upstreams and [`GatewayConfig::raw`] sections are written in the
//! order they were added (the order of the routes is the order the guard
//! matches them in).

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{Gateway, TempDir, free_port, keys_and_pepper};

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML array of strings.
pub fn toml_list(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A `[[guard.routes]]` entry.
#[derive(Clone, Debug)]
pub struct Route {
    lines: Vec<String>,
}

impl Route {
    /// The route `name` on `path` (no credentials line: the configured default).
    pub fn new(name: &str, path: &str) -> Self {
        Self {
            lines: vec![
                format!("name = {}", toml_str(name)),
                format!("path = {}", toml_str(path)),
            ],
        }
    }

    /// `methods = [...]`.
    #[must_use]
    pub fn methods(self, methods: &[&str]) -> Self {
        self.line(&format!("methods = {}", toml_list(methods)))
    }

    /// `credentials = [...]`.
    #[must_use]
    pub fn credentials(self, credentials: &[&str]) -> Self {
        self.line(&format!("credentials = {}", toml_list(credentials)))
    }

    /// `require = { permissions_all = [...] }`.
    #[must_use]
    pub fn permissions_all(self, permissions: &[&str]) -> Self {
        self.line(&format!(
            "require = {{ permissions_all = {} }}",
            toml_list(permissions)
        ))
    }

    /// `require = { roles_any = [...] }`.
    #[must_use]
    pub fn roles_any(self, roles: &[&str]) -> Self {
        self.line(&format!("require = {{ roles_any = {} }}", toml_list(roles)))
    }

    /// `rate_limits = [...]`.
    #[must_use]
    pub fn rate_limits(self, rules: &[&str]) -> Self {
        self.line(&format!("rate_limits = {}", toml_list(rules)))
    }

    /// `mode = "..."` (`dry_run`, ...).
    #[must_use]
    pub fn mode(self, mode: &str) -> Self {
        self.line(&format!("mode = {}", toml_str(mode)))
    }

    /// Any other `key = value` line, as given.
    #[must_use]
    pub fn line(mut self, line: &str) -> Self {
        self.lines.push(line.to_owned());
        self
    }
}

/// A `[[guard.rate_limits]]` rule.
#[derive(Clone, Debug)]
pub struct RateLimit {
    lines: Vec<String>,
}

impl RateLimit {
    /// A `fixed_window` rule of `limit` calls per `period` seconds per `key`.
    pub fn fixed_window(name: &str, limit: u64, period: u64, key: &[&str]) -> Self {
        Self::new(name, "fixed_window", limit, period, key)
    }

    /// A rule of `algorithm` (`fixed_window`, `sliding_log`, ...).
    pub fn new(name: &str, algorithm: &str, limit: u64, period: u64, key: &[&str]) -> Self {
        Self {
            lines: vec![
                format!("name = {}", toml_str(name)),
                format!("algorithm = {}", toml_str(algorithm)),
                format!("limit = {limit}"),
                format!("period = {period}"),
                format!("key = {}", toml_list(key)),
            ],
        }
    }

    /// Any other `key = value` line (`on_backend_error = "allow"`, ...).
    #[must_use]
    pub fn line(mut self, line: &str) -> Self {
        self.lines.push(line.to_owned());
        self
    }
}

/// An `[[upstreams]]` entry.
#[derive(Clone, Debug)]
pub struct Upstream {
    lines: Vec<String>,
}

impl Upstream {
    /// The upstream `name` at `url` serving `routes`.
    pub fn new(name: &str, url: &str, routes: &[&str]) -> Self {
        Self {
            lines: vec![
                format!("name = {}", toml_str(name)),
                format!("url = {}", toml_str(url)),
                format!("routes = {}", toml_list(routes)),
            ],
        }
    }

    /// The default upstream `name` at `url` (`default = true`, no routes).
    pub fn default(name: &str, url: &str) -> Self {
        Self {
            lines: vec![
                format!("name = {}", toml_str(name)),
                format!("url = {}", toml_str(url)),
                "default = true".to_owned(),
            ],
        }
    }

    /// Any other `key = value` line (`protocol = "h2c"`, ...).
    #[must_use]
    pub fn line(mut self, line: &str) -> Self {
        self.lines.push(line.to_owned());
        self
    }
}

/// A gateway's configuration file, built up call by call.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    dir: PathBuf,
    /// `server.listen`.
    pub public: SocketAddr,
    /// `server.ops_listen`.
    pub ops: SocketAddr,
    server: Vec<String>,
    storage: Option<Vec<String>>,
    keys: Vec<String>,
    audit: Option<Vec<String>>,
    log: Option<String>,
    sections: Vec<String>,
}

impl GatewayConfig {
    /// The defaults (see the module's documentation); generates the key
    /// and pepper in `dir` unless `<dir>/keys` is there already.
    pub fn new(dir: &TempDir) -> Self {
        Self::with_ports(dir, free_port(), free_port())
    }

    /// [`Self::new`] listening on `public` and `ops`.
    pub fn with_ports(dir: &TempDir, public: SocketAddr, ops: SocketAddr) -> Self {
        if !dir.join("keys").is_dir() {
            keys_and_pepper(dir);
        }
        let path = |name: &str| dir.join(name).display().to_string();
        Self {
            dir: dir.0.clone(),
            public,
            ops,
            server: Vec::new(),
            storage: Some(vec![
                format!(
                    "url = {}",
                    toml_str(&format!("sqlite://{}", path("stores.db")))
                ),
                format!("pepper_file = {}", toml_str(&path("pepper"))),
            ]),
            keys: vec![
                format!("dir = {}", toml_str(&path("keys"))),
                "issuer = \"https://issuer.test\"".to_owned(),
            ],
            audit: Some(vec![format!("sqlite = {}", toml_str(&path("audit.db")))]),
            log: Some("warn".to_owned()),
            sections: Vec::new(),
        }
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Listens on `public` and `ops` instead of the free ports chosen.
    #[must_use]
    pub fn ports(mut self, public: SocketAddr, ops: SocketAddr) -> Self {
        self.public = public;
        self.ops = ops;
        self
    }

    /// Another `[server]` line (or several, separated by newlines; none
    /// if blank, as for the other sections' lines).
    #[must_use]
    pub fn server(mut self, lines: &str) -> Self {
        if !lines.trim().is_empty() {
            self.server.push(lines.to_owned());
        }
        self
    }

    /// `storage.url` is `url` instead of the SQLite file.
    #[must_use]
    pub fn storage_url(mut self, url: &str) -> Self {
        let storage = self.storage.get_or_insert_with(Vec::new);
        storage.retain(|l| !l.starts_with("url = "));
        storage.insert(0, format!("url = {}", toml_str(url)));
        self
    }

    /// No `storage.url` (the in-memory stores), the pepper file kept.
    #[must_use]
    pub fn no_storage_url(mut self) -> Self {
        if let Some(storage) = &mut self.storage {
            storage.retain(|l| !l.starts_with("url = "));
        }
        self
    }

    /// `[storage]` holds exactly `lines` (the pepper line too, if wanted).
    #[must_use]
    pub fn storage_lines(mut self, lines: &str) -> Self {
        self.storage = Some(vec![lines.to_owned()]);
        self
    }

    /// Another `[storage]` line (`redis = ...`, `redis_prefix = ...`).
    #[must_use]
    pub fn storage(mut self, lines: &str) -> Self {
        if !lines.trim().is_empty() {
            self.storage
                .get_or_insert_with(Vec::new)
                .push(lines.to_owned());
        }
        self
    }

    /// No `[storage]` section at all.
    #[must_use]
    pub fn no_storage(mut self) -> Self {
        self.storage = None;
        self
    }

    /// `keys.dir` is `dir` instead of `<dir>/keys`.
    #[must_use]
    pub fn keys_dir(mut self, dir: &Path) -> Self {
        self.keys[0] = format!("dir = {}", toml_str(&dir.display().to_string()));
        self
    }

    /// `keys.issuer` is `issuer`.
    #[must_use]
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.keys[1] = format!("issuer = {}", toml_str(issuer));
        self
    }

    /// `keys.issuer` is `http://<public>`.
    #[must_use]
    pub fn issuer_is_public(self) -> Self {
        let issuer = format!("http://{}", self.public);
        self.issuer(&issuer)
    }

    /// Another `[keys]` line (`audience = [...]`, ...); a line may open a
    /// sub-table (`[keys.rotation]`) as long as nothing after it belongs
    /// to `[keys]`.
    #[must_use]
    pub fn keys(mut self, lines: &str) -> Self {
        if !lines.trim().is_empty() {
            self.keys.push(lines.to_owned());
        }
        self
    }

    /// `[audit]` holds exactly `lines`.
    #[must_use]
    pub fn audit_lines(mut self, lines: &str) -> Self {
        self.audit = Some(vec![lines.to_owned()]);
        self
    }

    /// Another `[audit]` line (`flush_interval = "50ms"`, ...).
    #[must_use]
    pub fn audit(mut self, lines: &str) -> Self {
        if !lines.trim().is_empty() {
            self.audit
                .get_or_insert_with(Vec::new)
                .push(lines.to_owned());
        }
        self
    }

    /// No `[audit]` section (no audit log).
    #[must_use]
    pub fn no_audit(mut self) -> Self {
        self.audit = None;
        self
    }

    /// `log.level` is `level`.
    #[must_use]
    pub fn log_level(mut self, level: &str) -> Self {
        self.log = Some(level.to_owned());
        self
    }

    /// No `[log]` section (the default level).
    #[must_use]
    pub fn no_log(mut self) -> Self {
        self.log = None;
        self
    }

    /// A `[[guard.roles]]` entry.
    #[must_use]
    pub fn role(self, name: &str, permissions: &[&str]) -> Self {
        self.raw(&format!(
            "[[guard.roles]]\nname = {}\npermissions = {}",
            toml_str(name),
            toml_list(permissions)
        ))
    }

    /// A `[[guard.roles]]` entry that includes other roles.
    #[must_use]
    pub fn role_including(self, name: &str, permissions: &[&str], includes: &[&str]) -> Self {
        self.raw(&format!(
            "[[guard.roles]]\nname = {}\npermissions = {}\nincludes = {}",
            toml_str(name),
            toml_list(permissions),
            toml_list(includes)
        ))
    }

    /// A `[[guard.rate_limits]]` rule.
    #[must_use]
    pub fn rate_limit(self, rule: RateLimit) -> Self {
        self.raw(&format!("[[guard.rate_limits]]\n{}", rule.lines.join("\n")))
    }

    /// A `[[guard.routes]]` entry (after those added before it).
    #[must_use]
    pub fn route(self, route: Route) -> Self {
        self.raw(&format!("[[guard.routes]]\n{}", route.lines.join("\n")))
    }

    /// An `[[upstreams]]` entry.
    #[must_use]
    pub fn upstream(self, upstream: Upstream) -> Self {
        self.raw(&format!("[[upstreams]]\n{}", upstream.lines.join("\n")))
    }

    /// A section as given (nothing if it is blank); it must begin with its
    /// table header (`[x]` or `[[x]]`), or its lines would belong to the
    /// section before it.
    #[must_use]
    pub fn raw(mut self, section: &str) -> Self {
        let section = section.trim();
        if !section.is_empty() {
            self.sections.push(section.to_owned());
        }
        self
    }

    /// The file's text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut section = |header: &str, lines: &[String]| {
            let _ = writeln!(out, "[{header}]");
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
            out.push('\n');
        };
        let mut server = vec![
            format!("listen = \"{}\"", self.public),
            format!("ops_listen = \"{}\"", self.ops),
        ];
        server.extend(self.server.iter().cloned());
        section("server", &server);
        if let Some(storage) = &self.storage {
            section("storage", storage);
        }
        section("keys", &self.keys);
        if let Some(audit) = &self.audit {
            section("audit", audit);
        }
        if let Some(level) = &self.log {
            section("log", &[format!("level = {}", toml_str(level))]);
        }
        for raw in &self.sections {
            out.push_str(raw);
            out.push_str("\n\n");
        }
        out
    }

    /// Writes the file to `<dir>/gateway.toml`; its path.
    pub fn write(&self) -> PathBuf {
        self.write_as("gateway")
    }

    /// Writes the file to `<dir>/<name>.toml`; its path.
    pub fn write_as(&self, name: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.toml"));
        fs::write(&path, self.text()).unwrap();
        path
    }

    /// Starts `portcullis serve` on it (written to `<dir>/<name>.toml`,
    /// the log to `<dir>/<name>.log`).
    pub fn start(&self, dir: &TempDir, name: &str) -> Gateway {
        Gateway::start(dir, name, &self.text(), self.public, self.ops)
    }
}
