//! `portcullis init`: a starter configuration that `config check` accepts
//! and `serve` runs: a signing key, a pepper, SQLite storage and audit, one
//! public health route and one authenticated catch-all route.

use std::path::{Path, PathBuf};

use clap::Args;
use portcullis_core::Algorithm;

use super::{CliError, console, keys};
use crate::keys::{self as keyfile, PRIVATE_MODE, PUBLIC_MODE};

/// Arguments of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to set up (created if missing): portcullis.toml, keys/, pepper, data/.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// The app to protect.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8000")]
    pub upstream: String,
    /// The public listener.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
}

/// Writes the starter files (never overwriting one) and prints what to do next.
pub fn run(args: &InitArgs) -> Result<(), CliError> {
    let dir = &args.dir;
    let config_path = dir.join("portcullis.toml");
    let pepper_path = dir.join("pepper");
    let cases_path = dir.join("cases.toml");
    let keys_dir = dir.join("keys");
    keyfile::refuse_existing(&[&config_path, &pepper_path, &cases_path])?;
    if keys_dir.exists() {
        return Err(crate::keys::FileError::Exists(keys_dir).into());
    }
    keyfile::create_dir(dir)?;
    keyfile::create_dir(&dir.join("data"))?;
    let mut pepper = [0u8; 32];
    portcullis_core::opaque::fill_random(&mut pepper)
        .map_err(|e| CliError::key("cannot make a pepper", e))?;
    keyfile::write_new(&pepper_path, &pepper, PRIVATE_MODE)?;
    keys::generate(&keys::GenerateArgs {
        alg: Algorithm::ES256,
        kid: None,
        out: keys_dir.clone(),
    })?;
    keyfile::write_new(&cases_path, STARTER_CASES.as_bytes(), PUBLIC_MODE)?;
    let text = starter(dir, &args.listen, &args.upstream);
    keyfile::write_new(&config_path, text.as_bytes(), PUBLIC_MODE)?;
    console::print(&format!(
        "wrote {config} and {cases}\n\nnext:\n  portcullis config check {config}\n  portcullis serve --config {config}",
        config = config_path.display(),
        cases = cases_path.display()
    ))
}

/// The starter's pinned decisions (`[tests]` runs them; `portcullis test` too).
const STARTER_CASES: &str = r#"# Pinned decisions of portcullis.toml: `portcullis config check`, start-up
# and every reload decide each case and refuse a configuration that differs
# (its [tests] section lists this file). Run them alone with
#   portcullis test --config portcullis.toml cases.toml
# Add a case for every rule you rely on; see docs/explain.md.

[[case]]
name = "health is public"
request = "GET /health"
anonymous = true
expect = { allow = true, upstream = "app" }

[[case]]
name = "the API needs credentials"
request = "GET /anything"
anonymous = true
expect = { code = "auth.missing_credentials", status = 401 }

[[case]]
name = "an authenticated caller reaches the app"
request = "POST /anything"
as = { subject = "someone" }
expect = { allow = true, upstream = "app", route = "api" }
"#;

fn abs(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    let path = std::path::absolute(&path).unwrap_or(path);
    path.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

fn starter(dir: &Path, listen: &str, upstream: &str) -> String {
    format!(
        r#"# Portcullis gateway: every key is described in docs/config.md.

[server]
listen = "{listen}"
ops_listen = "127.0.0.1:9090"          # /health/live, /health/ready, /metrics

[storage]
url = "sqlite://{stores}"
pepper_file = "{pepper}"               # keep it: stored API keys and refresh tokens depend on it

[keys]
dir = "{keys}"
issuer = "http://{listen}"
audience = ["api"]

[audit]
sqlite = "{audit}"

[forward_auth]
# Off: the gateway proxies to the app itself. Turn it on only when nginx,
# Traefik, Caddy or Envoy in front of the app asks the gateway
# (`portcullis snippets`), and list that proxy in
# guard.client_ip.trusted_proxies: anyone else who reaches the endpoints
# could ask about requests they forge.
enabled = false

[guard]
default = "deny"                       # requests matching no route are refused

[[guard.routes]]
name = "health"
path = "/health"
credentials = ["anonymous"]

[[guard.routes]]
name = "api"
path = "/**"
credentials = ["jwt", "api_key"]

[[upstreams]]
name = "app"
url = "{upstream}"
routes = ["health", "api"]

[tests]
files = ["cases.toml"]                 # pinned decisions, next to this file
"#,
        stores = abs(dir, "data/stores.db"),
        pepper = abs(dir, "pepper"),
        keys = abs(dir, "keys"),
        audit = abs(dir, "data/audit.db"),
    )
}
