//! `portcullis users|sessions|api-keys|apps …`: the admin API of a running
//! gateway from the command line (`--admin URL`, the ops listener, default
//! `http://127.0.0.1:9090`; the key from `--key-file FILE` or
//! `PORTCULLIS_ADMIN_KEY`). Tables for people, `--format json` for scripts;
//! a refusal prints its stable code and detail (exit 2).
//!
//! Over 800 lines: one command per resource, each a few lines over the
//! shared request and table helpers here; split per resource it would
//! scatter one small file per command.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};

use super::duration::parse_duration;
use super::{CliError, console};

/// The environment variable holding the admin API key.
pub const ADMIN_KEY_ENV: &str = "PORTCULLIS_ADMIN_KEY";

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// The API's JSON.
    Json,
}

/// Where the admin API is and how to authenticate.
#[derive(Debug, Args)]
pub struct Target {
    /// The gateway's ops listener.
    #[arg(
        long = "admin",
        value_name = "URL",
        default_value = "http://127.0.0.1:9090"
    )]
    pub url: String,
    /// A file holding the admin API key (default: $PORTCULLIS_ADMIN_KEY).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

impl Target {
    pub(super) fn key(&self) -> Result<String, CliError> {
        let key = match &self.key_file {
            Some(path) => {
                let raw = console::read_file(path, super::error::Input::Secret)?;
                String::from_utf8_lossy(&raw).trim().to_owned()
            }
            None => std::env::var(ADMIN_KEY_ENV).unwrap_or_default(),
        };
        if key.is_empty() {
            return Err(CliError::Usage(format!(
                "no admin key: pass --key-file FILE or set {ADMIN_KEY_ENV} (portcullis admin bootstrap makes one)"
            )));
        }
        Ok(key)
    }

    /// `host:port` of an `http://` URL (the ops listener speaks plain HTTP).
    pub(super) fn authority(&self) -> Result<String, CliError> {
        let rest = self.url.strip_prefix("http://").ok_or_else(|| {
            CliError::Usage(format!("--admin `{}`: an http://HOST:PORT URL", self.url))
        })?;
        Ok(rest.trim_end_matches('/').to_owned())
    }

    /// One call: the answer's JSON (null for 204), or the refusal as an error.
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Body>,
    ) -> Result<Value, CliError> {
        let key = self.key()?;
        let authority = self.authority()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CliError::Output)?;
        let (status, bytes) = runtime.block_on(exchange(
            "the admin API",
            &authority,
            Some(&key),
            method,
            path,
            body,
            Duration::from_secs(300),
        ))?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|_| {
                CliError::Usage(format!(
                    "{} answered {status} without JSON; is it a Portcullis ops listener?",
                    self.url
                ))
            })?
        };
        if status.is_success() {
            Ok(value)
        } else {
            Err(CliError::Usage(format!(
                "{status}: {}: {}",
                value["code"].as_str().unwrap_or("?"),
                value["detail"].as_str().unwrap_or("")
            )))
        }
    }
}

/// A request body: JSON, or JSON lines (imports).
pub(crate) enum Body {
    /// `application/json`.
    Json(Value),
    /// `application/x-ndjson` (one JSON value per line).
    Lines(String),
}

/// One HTTP/1.1 exchange with a gateway listener at `authority`: the
/// status and at most 64 MiB of body, within `limit`. `what` names the
/// listener in errors ("the admin API", "the gateway's ops listener").
pub(super) async fn exchange(
    what: &str,
    authority: &str,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Body>,
    limit: Duration,
) -> Result<(http::StatusCode, Bytes), CliError> {
    let unreachable =
        |e: String| CliError::Usage(format!("cannot reach {what} at {authority}: {e}"));
    let call = async {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority);
        if let Some(key) = key {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let payload = match body {
            None => Bytes::new(),
            Some(Body::Json(v)) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            Some(Body::Lines(text)) => {
                req = req.header(http::header::CONTENT_TYPE, "application/x-ndjson");
                Bytes::from(text)
            }
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| CliError::Usage(format!("request: {e}")))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), 64 << 20)
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", limit.as_secs())))?
}

/// Prints `rows` (objects) as aligned `columns`, or the whole `value` as JSON.
fn show(format: Format, value: &Value, rows: &[Value], columns: &[&str]) -> Result<(), CliError> {
    if format == Format::Json {
        return console::print_json(value);
    }
    let cell = |row: &Value, c: &str| -> String {
        match &row[c] {
            Value::Null => "-".into(),
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        }
    };
    let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
    for row in rows {
        for (i, c) in columns.iter().enumerate() {
            widths[i] = widths[i].max(cell(row, c).len());
        }
    }
    let line = |cells: Vec<String>| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(columns.iter().map(|c| c.to_uppercase()).collect())];
    for row in rows {
        out.push(line(columns.iter().map(|c| cell(row, c)).collect()));
    }
    console::print(&out.join("\n"))
}

/// A path segment, percent-encoded where a URL needs it.
pub(super) fn seg(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

const USER_COLUMNS: &[&str] = &[
    "id",
    "username",
    "roles",
    "permissions",
    "tenant",
    "disabled",
];

// ------------------------------------------------------------------ users

/// `portcullis users …`
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users by username.
    List(UsersList),
    /// Show one user.
    Show(ById),
    /// Create a user.
    Create(UsersCreate),
    /// Disable a user (every session and refresh token is revoked).
    Disable(ById),
    /// Enable a user again.
    Enable(ById),
    /// Delete a user (sessions, refresh tokens and API keys revoked).
    Delete(ById),
    /// Replace a user's roles and permissions.
    Grants(UsersGrants),
    /// Set a new password (read from a file; every session is revoked).
    Password(UsersPassword),
    /// Import users from a JSON-lines file (existing bcrypt / argon2id hashes kept).
    Import(UsersImport),
}

/// An id argument.
#[derive(Debug, Args)]
pub struct ById {
    /// The id.
    #[arg(allow_hyphen_values = true)]
    pub id: String,
    #[command(flatten)]
    pub target: Target,
}

/// `users list`.
#[derive(Debug, Args)]
pub struct UsersList {
    /// Usernames starting with this (case-insensitive).
    #[arg(long, default_value = "")]
    pub search: String,
    /// Continue after this username (the previous page's `next`).
    #[arg(long)]
    pub after: Option<String>,
    /// At most this many (1-500).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[command(flatten)]
    pub target: Target,
}

/// `users create`.
#[derive(Debug, Args)]
pub struct UsersCreate {
    /// The username.
    pub username: String,
    /// A file holding the password.
    #[arg(long, value_name = "FILE", conflicts_with = "password_hash")]
    pub password_file: Option<PathBuf>,
    /// An existing argon2id or bcrypt hash instead.
    #[arg(long, value_name = "HASH")]
    pub password_hash: Option<String>,
    /// A role (repeatable).
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// A permission (repeatable).
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// The tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// `users grants`.
#[derive(Debug, Args)]
pub struct UsersGrants {
    /// The user id.
    #[arg(allow_hyphen_values = true)]
    pub id: String,
    /// A role (repeatable; none: no roles).
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// A permission (repeatable; none: no permissions).
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    #[command(flatten)]
    pub target: Target,
}

/// `users password`.
#[derive(Debug, Args)]
pub struct UsersPassword {
    /// The user id.
    #[arg(allow_hyphen_values = true)]
    pub id: String,
    /// A file holding the new password.
    #[arg(long, value_name = "FILE")]
    pub password_file: PathBuf,
    #[command(flatten)]
    pub target: Target,
}

/// `users import`.
#[derive(Debug, Args)]
pub struct UsersImport {
    /// JSON lines: one `{"username", "password_hash" | "password", "roles", "permissions", "tenant"}` per line.
    pub file: PathBuf,
    /// Lines per call.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    #[command(flatten)]
    pub target: Target,
}

fn secret_file(path: &std::path::Path) -> Result<String, CliError> {
    let raw = console::read_file(path, super::error::Input::Secret)?;
    let text = String::from_utf8(raw)
        .map_err(|_| CliError::Usage(format!("`{}` is not UTF-8", path.display())))?;
    Ok(text
        .strip_suffix('\n')
        .unwrap_or(&text)
        .trim_end_matches('\r')
        .to_owned())
}

/// Runs a `users` command.
pub fn users(cmd: &UsersCommand) -> Result<(), CliError> {
    match cmd {
        UsersCommand::List(a) => {
            let mut path = format!("/admin/users?limit={}&search={}", a.limit, seg(&a.search));
            if let Some(after) = &a.after {
                path.push_str(&format!("&after={}", seg(after)));
            }
            let v = a.target.call("GET", &path, None)?;
            let rows = v["users"].as_array().cloned().unwrap_or_default();
            show(a.target.format, &v, &rows, USER_COLUMNS)?;
            if a.target.format == Format::Table
                && let Some(next) = v["next"].as_str()
            {
                console::warn(format!("more: --after {next}"));
            }
            Ok(())
        }
        UsersCommand::Show(a) => {
            let v = a
                .target
                .call("GET", &format!("/admin/users/{}", seg(&a.id)), None)?;
            show(a.target.format, &v, std::slice::from_ref(&v), USER_COLUMNS)
        }
        UsersCommand::Create(a) => {
            let mut body = json!({"username": a.username, "roles": a.roles, "permissions": a.permissions, "tenant": a.tenant});
            match (&a.password_file, &a.password_hash) {
                (Some(f), None) => body["password"] = json!(secret_file(f)?),
                (None, Some(h)) => body["password_hash"] = json!(h),
                _ => {
                    return Err(CliError::Usage(
                        "pass --password-file FILE or --password-hash HASH".into(),
                    ));
                }
            }
            let v = a
                .target
                .call("POST", "/admin/users", Some(Body::Json(body)))?;
            show(a.target.format, &v, std::slice::from_ref(&v), USER_COLUMNS)
        }
        UsersCommand::Disable(a) | UsersCommand::Enable(a) => {
            let verb = if matches!(cmd, UsersCommand::Disable(_)) {
                "disable"
            } else {
                "enable"
            };
            let v = a
                .target
                .call("POST", &format!("/admin/users/{}/{verb}", seg(&a.id)), None)?;
            show(a.target.format, &v, std::slice::from_ref(&v), USER_COLUMNS)
        }
        UsersCommand::Delete(a) => {
            a.target
                .call("DELETE", &format!("/admin/users/{}", seg(&a.id)), None)?;
            console::print(&format!("deleted {}", a.id))
        }
        UsersCommand::Grants(a) => {
            let body = json!({"roles": a.roles, "permissions": a.permissions});
            let v = a.target.call(
                "PUT",
                &format!("/admin/users/{}/grants", seg(&a.id)),
                Some(Body::Json(body)),
            )?;
            show(a.target.format, &v, std::slice::from_ref(&v), USER_COLUMNS)
        }
        UsersCommand::Password(a) => {
            let body = json!({"password": secret_file(&a.password_file)?});
            a.target.call(
                "POST",
                &format!("/admin/users/{}/password", seg(&a.id)),
                Some(Body::Json(body)),
            )?;
            console::print(&format!(
                "password set for {}; its sessions are revoked",
                a.id
            ))
        }
        UsersCommand::Import(a) => import(a),
    }
}

/// Sends the file in parts of `--batch` lines, with progress on stderr.
fn import(a: &UsersImport) -> Result<(), CliError> {
    if !(1..=10_000).contains(&a.batch) {
        return Err(CliError::Usage("--batch is 1 to 10000".into()));
    }
    let raw = std::fs::read_to_string(&a.file)
        .map_err(|e| CliError::Usage(format!("cannot read `{}`: {e}", a.file.display())))?;
    let lines: Vec<&str> = raw.lines().collect();
    let total = lines.iter().filter(|l| !l.trim().is_empty()).count();
    let (mut created, mut failed, mut done) = (0u64, Vec::new(), 0usize);
    for (part, chunk) in lines.chunks(a.batch).enumerate() {
        let v = a.target.call(
            "POST",
            "/admin/users/import",
            Some(Body::Lines(chunk.join("\n"))),
        )?;
        created += v["created"].as_u64().unwrap_or(0);
        for f in v["failed"].as_array().cloned().unwrap_or_default() {
            // Line numbers of the whole file, not of the part.
            let line = f["line"].as_u64().unwrap_or(0) + (part * a.batch) as u64;
            failed.push(json!({"line": line, "code": f["code"], "detail": f["detail"]}));
        }
        done += chunk.iter().filter(|l| !l.trim().is_empty()).count();
        eprintln!(
            "imported {done}/{total} lines ({created} created, {} failed)",
            failed.len()
        );
    }
    let summary = json!({"created": created, "failed": failed});
    show(
        a.target.format,
        &summary,
        &failed,
        &["line", "code", "detail"],
    )?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "{} lines were not imported",
            failed.len()
        )))
    }
}

// --------------------------------------------------------------- sessions

/// `portcullis sessions …`
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List a user's sessions.
    List(ById),
    /// Revoke one session.
    Revoke(ById),
    /// Revoke every session and refresh token of a user.
    RevokeAll(ById),
}

/// Runs a `sessions` command.
pub fn sessions(cmd: &SessionsCommand) -> Result<(), CliError> {
    match cmd {
        SessionsCommand::List(a) => {
            let v = a.target.call(
                "GET",
                &format!("/admin/users/{}/sessions", seg(&a.id)),
                None,
            )?;
            let rows = v["sessions"].as_array().cloned().unwrap_or_default();
            show(
                a.target.format,
                &v,
                &rows,
                &[
                    "id",
                    "created_at",
                    "expires_at",
                    "revoked_at",
                    "client_ip",
                    "user_agent",
                ],
            )
        }
        SessionsCommand::Revoke(a) => {
            a.target
                .call("DELETE", &format!("/admin/sessions/{}", seg(&a.id)), None)?;
            console::print(&format!("revoked session {}", a.id))
        }
        SessionsCommand::RevokeAll(a) => {
            let v = a.target.call(
                "DELETE",
                &format!("/admin/users/{}/sessions", seg(&a.id)),
                None,
            )?;
            show(
                a.target.format,
                &v,
                std::slice::from_ref(&v),
                &["sessions", "refresh_tokens"],
            )
        }
    }
}

// --------------------------------------------------------------- API keys

/// `portcullis api-keys …`
#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// List a user's API keys (never the keys).
    List(ById),
    /// Create an API key for a user (or `admin:<name>`); printed once.
    Create(KeysCreate),
    /// Revoke an API key.
    Revoke(ById),
}

/// `api-keys create`.
#[derive(Debug, Args)]
pub struct KeysCreate {
    /// The owner: a user id, or `admin:<name>` for an admin key.
    #[arg(allow_hyphen_values = true)]
    pub owner: String,
    /// A name for people.
    #[arg(long)]
    pub name: String,
    /// A role (repeatable).
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// A permission (repeatable).
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// Lifetime (`30d`); none: no expiry.
    #[arg(long, value_parser = parse_duration)]
    pub expires_in: Option<Duration>,
    #[command(flatten)]
    pub target: Target,
}

const KEY_COLUMNS: &[&str] = &[
    "id",
    "name",
    "owner",
    "roles",
    "permissions",
    "expires_at",
    "revoked_at",
    "last_used_at",
];

/// Runs an `api-keys` command.
pub fn api_keys(cmd: &ApiKeysCommand) -> Result<(), CliError> {
    match cmd {
        ApiKeysCommand::List(a) => {
            let v = a.target.call(
                "GET",
                &format!("/admin/users/{}/api-keys", seg(&a.id)),
                None,
            )?;
            let rows = v["api_keys"].as_array().cloned().unwrap_or_default();
            show(a.target.format, &v, &rows, KEY_COLUMNS)
        }
        ApiKeysCommand::Create(a) => {
            let mut body = json!({"name": a.name, "roles": a.roles, "permissions": a.permissions});
            if let Some(d) = a.expires_in {
                body["expires_in"] = json!(u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
            }
            let v = a.target.call(
                "POST",
                &format!("/admin/users/{}/api-keys", seg(&a.owner)),
                Some(Body::Json(body)),
            )?;
            if a.target.format == Format::Table {
                eprintln!("the key is shown this once:");
                console::print(v["key"].as_str().unwrap_or(""))
            } else {
                console::print_json(&v)
            }
        }
        ApiKeysCommand::Revoke(a) => {
            a.target
                .call("DELETE", &format!("/admin/api-keys/{}", seg(&a.id)), None)?;
            console::print(&format!("revoked API key {}", a.id))
        }
    }
}

// ------------------------------------------------------------------- apps

/// `portcullis apps …`
#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Register an app credential; the secret is printed once.
    Create(AppsCreate),
    /// Show an app.
    Show(ById),
    /// Rotate an app secret; the old one works for the grace period.
    Rotate(AppsRotate),
    /// Disable an app.
    Disable(ById),
    /// Enable an app again.
    Enable(ById),
}

/// `apps create`.
#[derive(Debug, Args)]
pub struct AppsCreate {
    /// A name for people.
    #[arg(long)]
    pub name: String,
    /// A service it may call (repeatable).
    #[arg(long = "service")]
    pub services: Vec<String>,
    /// A permission (repeatable).
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// The tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// `apps rotate`.
#[derive(Debug, Args)]
pub struct AppsRotate {
    /// The app id.
    #[arg(allow_hyphen_values = true)]
    pub id: String,
    /// How long the old secret keeps working (`1h`; at most `7d`; none:
    /// the old secret stops at once).
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,
    #[command(flatten)]
    pub target: Target,
}

const APP_COLUMNS: &[&str] = &[
    "app_id",
    "name",
    "secret_version",
    "previous_valid_until",
    "permissions",
    "disabled",
];

fn print_secret(target: &Target, v: &Value) -> Result<(), CliError> {
    if target.format == Format::Table {
        eprintln!(
            "app {}: the secret is shown this once:",
            v["app"]["app_id"].as_str().unwrap_or("?")
        );
        console::print(v["secret"].as_str().unwrap_or(""))
    } else {
        console::print_json(v)
    }
}

/// Runs an `apps` command.
pub fn apps(cmd: &AppsCommand) -> Result<(), CliError> {
    match cmd {
        AppsCommand::Create(a) => {
            let body = json!({"name": a.name, "services": a.services, "permissions": a.permissions, "tenant": a.tenant});
            let v = a
                .target
                .call("POST", "/admin/apps", Some(Body::Json(body)))?;
            print_secret(&a.target, &v)
        }
        AppsCommand::Show(a) => {
            let v = a
                .target
                .call("GET", &format!("/admin/apps/{}", seg(&a.id)), None)?;
            show(a.target.format, &v, std::slice::from_ref(&v), APP_COLUMNS)
        }
        AppsCommand::Rotate(a) => {
            let body = json!({"grace_seconds": a.grace.map_or(0, |g| u32::try_from(g.as_secs()).unwrap_or(u32::MAX))});
            let v = a.target.call(
                "POST",
                &format!("/admin/apps/{}/rotate", seg(&a.id)),
                Some(Body::Json(body)),
            )?;
            print_secret(&a.target, &v)
        }
        AppsCommand::Disable(a) | AppsCommand::Enable(a) => {
            let verb = if matches!(cmd, AppsCommand::Disable(_)) {
                "disable"
            } else {
                "enable"
            };
            let v = a
                .target
                .call("POST", &format!("/admin/apps/{}/{verb}", seg(&a.id)), None)?;
            show(a.target.format, &v, std::slice::from_ref(&v), APP_COLUMNS)
        }
    }
}

// ------------------------------------------------------------------- keys

/// `keys list`.
#[derive(Debug, Args)]
pub struct KeysList {
    #[command(flatten)]
    pub target: Target,
}

/// `keys rotate`.
#[derive(Debug, Args)]
pub struct KeysRotate {
    /// The new key's algorithm [default: the active key's].
    #[arg(long, value_name = "ALG")]
    pub alg: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

const SIGNING_KEY_COLUMNS: &[&str] = &[
    "kid",
    "alg",
    "state",
    "source",
    "created_at",
    "activates_at",
    "retires_at",
];

/// `keys list`: every key of the running gateway with its schedule.
pub fn keys_list(a: &KeysList) -> Result<(), CliError> {
    let v = a.target.call("GET", "/admin/keys", None)?;
    let rows = v["keys"].as_array().cloned().unwrap_or_default();
    show(a.target.format, &v, &rows, SIGNING_KEY_COLUMNS)
}

/// `keys rotate`: starts a rotation and says when the new key signs.
pub fn keys_rotate(a: &KeysRotate) -> Result<(), CliError> {
    let body = match &a.alg {
        Some(alg) => json!({ "alg": alg }),
        None => json!({}),
    };
    let v = a
        .target
        .call("POST", "/admin/keys/rotate", Some(Body::Json(body)))?;
    if a.target.format == Format::Table {
        eprintln!(
            "key {} published now on every replica; it signs from {} (Unix seconds), and the old key verifies until its tokens expire",
            v["kid"].as_str().unwrap_or("?"),
            v["activates_at"]
        );
    }
    show(
        a.target.format,
        &v,
        std::slice::from_ref(&v),
        SIGNING_KEY_COLUMNS,
    )
}
