//! `[signed_requests]`: the apps that may send HMAC-signed requests, their
//! secrets, and the checks of the section.

use std::path::PathBuf;
use std::time::Duration;

use portcullis::guard::GuardConfig;
use serde::Deserialize;

use super::{MAX_SECRET_FILE_BYTES, duration, suggest};

/// `[signed_requests]`: the apps that may send HMAC-signed service
/// requests (`x-portcullis-app`, `-timestamp`, `-nonce`, `-signature`).
/// Nonces live on Redis when `storage.redis` / `storage.redis_cluster` is
/// set (a nonce spent on one replica is refused by every other), else in
/// this process. Reloadable: apps, secrets and the window.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignedRequestsConfig {
    /// How far a request's timestamp may be from now, either side (default
    /// `5m`, between `1s` and `1h`); each nonce is remembered twice as long.
    #[serde(default = "default_signed_window", deserialize_with = "duration")]
    pub window: Duration,
    /// The apps trusted to sign.
    #[serde(default)]
    pub apps: Vec<SignedAppConfig>,
}

/// `[[signed_requests.apps]]`: one app, its secret and its grants.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignedAppConfig {
    /// The app id it sends in `x-portcullis-app`: 1-128 of `[A-Za-z0-9._-]`;
    /// the principal's subject.
    pub id: String,
    /// File holding the app's HMAC secret: at least 32 bytes once one
    /// trailing newline is trimmed. Never inline: a secret stays out of
    /// the configuration file.
    pub secret_file: PathBuf,
    /// Roles the app's principal holds.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Permissions the app's principal holds directly.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// The app's tenant.
    #[serde(default)]
    pub tenant: Option<String>,
}

fn default_signed_window() -> Duration {
    portcullis_core::authz::signed_request::DEFAULT_WINDOW
}

impl SignedAppConfig {
    /// The app's secret: the file's bytes, one trailing newline (`\n` or
    /// `\r\n`) trimmed, at least
    /// [`MIN_SECRET_BYTES`](portcullis_core::authz::signed_request::MIN_SECRET_BYTES)
    /// and at most [`MAX_SECRET_FILE_BYTES`].
    pub fn read_secret(&self) -> Result<Vec<u8>, String> {
        use std::io::Read;
        let path = &self.secret_file;
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let mut bytes = Vec::new();
        file.take(MAX_SECRET_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
            return Err(format!(
                "`{}` is larger than {MAX_SECRET_FILE_BYTES} bytes; a secret file holds one value",
                path.display()
            ));
        }
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        let min = portcullis_core::authz::signed_request::MIN_SECRET_BYTES;
        if bytes.len() < min {
            return Err(format!(
                "`{}` holds {} bytes; an app secret needs at least {min} (e.g. `openssl rand -hex 32 > {}`)",
                path.display(),
                bytes.len(),
                path.display()
            ));
        }
        Ok(bytes)
    }
}

/// `[signed_requests]`: the window, and each app's id, secret file and grants.
pub(super) fn validate_signed_requests(
    signed: &SignedRequestsConfig,
    guard: &GuardConfig,
    err: &mut impl FnMut(String, String),
) {
    if signed.window < Duration::from_secs(1) || signed.window > Duration::from_secs(3600) {
        err(
            "signed_requests.window".into(),
            "must be between 1s and 1h; it bounds how long a captured request stays replayable elsewhere and how long nonces are kept".into(),
        );
    }
    if signed.apps.is_empty() {
        err(
            "signed_requests.apps".into(),
            "no app is trusted; add a [[signed_requests.apps]] entry with `id` and `secret_file`, or remove [signed_requests]".into(),
        );
    }
    for (i, app) in signed.apps.iter().enumerate() {
        let key = |field: &str| format!("signed_requests.apps[{i}].{field}");
        let id_ok = !app.id.is_empty()
            && app.id.len() <= 128
            && app
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !id_ok {
            err(
                key("id"),
                format!(
                    "`{}` is not an app id: 1-128 of [A-Za-z0-9._-], as sent in x-portcullis-app",
                    app.id
                ),
            );
        } else if signed.apps[..i].iter().any(|a| a.id == app.id) {
            err(key("id"), format!("`{}` names two apps", app.id));
        }
        if let Err(message) = app.read_secret() {
            err(key("secret_file"), message);
        }
        for (j, role) in app.roles.iter().enumerate() {
            if !guard.roles.iter().any(|r| &r.name == role) {
                let known: Vec<String> = guard.roles.iter().map(|r| r.name.clone()).collect();
                let hint = suggest(role, &known)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| "; define it under [[guard.roles]]".into());
                err(
                    format!("signed_requests.apps[{i}].roles[{j}]"),
                    format!("no role is named `{role}`{hint}"),
                );
            }
        }
        for (j, permission) in app.permissions.iter().enumerate() {
            if permission.is_empty() || permission.chars().any(char::is_whitespace) {
                err(
                    format!("signed_requests.apps[{i}].permissions[{j}]"),
                    format!("`{permission}` is not a permission (e.g. `orders.read`)"),
                );
            }
        }
        if app.tenant.as_deref() == Some("") {
            err(key("tenant"), "must not be empty".into());
        }
    }
}
