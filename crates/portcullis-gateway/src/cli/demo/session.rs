//! `portcullis demo`: the real gateway ([`crate::serve::serve_until`]) on
//! the embedded default (SQLite stores and audit, a generated signing key,
//! the memory rate limiter) in front of a built-in echo app, with a demo
//! user and API key, and a script of copy-paste `curl` lines
//! ([`script::steps`]). `--check` runs the same script against itself.
//!
//! Everything lives in one directory: a temporary one removed on exit, or
//! `--dir` (kept). It holds the configuration the gateway runs
//! (`portcullis.toml`), the key, the pepper and both databases.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis::stores::sqlite::SqliteStores;
use portcullis::stores::{Backends, NewApiKey, NewUser, Stores, StoresConfig};
use portcullis_core::{Algorithm, Key, SecretHasher};
use tokio::sync::oneshot;

use super::script::{Context, Step};
use super::{echo, script};
use crate::cli::CliError;
use crate::config::Config;
use crate::serve::Bound;

/// The demo user.
const USERNAME: &str = "demo";
/// The role the demo user has, and what it grants.
const ROLE: &str = "reader";
const GRANTED: &str = "notes.read";
/// The permission the admin route requires and the demo user lacks.
const MISSING: &str = "notes.admin";

/// How `portcullis demo` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Run the script against itself instead of serving.
    pub check: bool,
    /// The public listener (port 0: a free port).
    pub listen: SocketAddr,
    /// A directory to keep the files in; `None`: a temporary one.
    pub dir: Option<PathBuf>,
}

/// The demo's directory; a temporary one is removed on drop.
struct Workdir {
    path: PathBuf,
    remove: bool,
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn io_error(what: &str, path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("{what} `{}`: {e}", path.display()))
}

impl Workdir {
    fn new(dir: Option<&Path>) -> Result<Self, CliError> {
        match dir {
            Some(dir) => {
                let empty = match std::fs::read_dir(dir) {
                    Ok(mut entries) => entries.next().is_none(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                    Err(e) => return Err(io_error("cannot use --dir", dir, e)),
                };
                if !empty {
                    return Err(CliError::Usage(format!(
                        "--dir `{}` is not empty; give the demo an empty or new directory",
                        dir.display()
                    )));
                }
                super::create_dir(dir)?;
                let path =
                    std::path::absolute(dir).map_err(|e| io_error("cannot use --dir", dir, e))?;
                Ok(Self {
                    path,
                    remove: false,
                })
            }
            None => {
                let mut suffix = [0u8; 8];
                portcullis_core::opaque::fill_random(&mut suffix)
                    .map_err(|e| CliError::key("cannot name the demo directory", e))?;
                let name = format!(
                    "portcullis-demo-{}",
                    portcullis_core::jose::b64_encode(&suffix)
                );
                let path = std::path::absolute(std::env::temp_dir().join(name))
                    .map_err(|e| io_error("cannot make the demo directory", Path::new("."), e))?;
                super::create_dir(&path)?;
                Ok(Self { path, remove: true })
            }
        }
    }

    fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// A random password or secret: `bytes` random bytes, base64url.
fn random_text(bytes: usize) -> Result<String, CliError> {
    let mut raw = vec![0u8; bytes];
    portcullis_core::opaque::fill_random(&mut raw)
        .map_err(|e| CliError::key("cannot draw random bytes", e))?;
    Ok(portcullis_core::jose::b64_encode(&raw))
}

/// A TOML basic string.
fn toml_str(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Resolves `addr`'s port 0 to a free port, and says clearly when the
/// address is taken. (The port is released again for the gateway to bind.)
fn claim(addr: SocketAddr, flag: &str) -> Result<SocketAddr, CliError> {
    let listener = StdListener::bind(addr).map_err(|e| {
        CliError::Usage(format!(
            "cannot listen on {addr}: {e}; stop what runs there, or pass {flag} 127.0.0.1:0 for a free port"
        ))
    })?;
    listener
        .local_addr()
        .map_err(|e| CliError::Usage(format!("cannot listen on {addr}: {e}")))
}

/// The configuration the demo runs, as TOML: the public, JWT and
/// permission routes, the tight per-caller limit, the echo app upstream.
fn config_text(dir: &Workdir, listen: SocketAddr, ops: SocketAddr, echo: SocketAddr) -> String {
    let path = |name: &str| toml_str(&dir.join(name).display().to_string());
    let limit = script::RATE_LIMIT;
    format!(
        r#"# The configuration `portcullis demo` runs; docs/config.md describes every key.

[server]
listen = "{listen}"
ops_listen = "{ops}"                  # /health/live, /health/ready, /metrics
shutdown_timeout = "5s"

[storage]
url = {stores}
pepper_file = {pepper}

[keys]
dir = {keys}
issuer = "http://{listen}"
audience = ["demo-api"]

[audit]
sqlite = {audit}

[log]
level = "warn"

[guard]
default = "deny"

[[guard.roles]]
name = "{ROLE}"
permissions = ["{GRANTED}"]

[[guard.rate_limits]]
name = "per_caller"
algorithm = "sliding_log"
limit = {limit}
period = 60
key = ["subject"]

[[guard.routes]]
name = "public"
methods = ["GET"]
path = "/public/**"
credentials = ["anonymous"]

[[guard.routes]]
name = "notes"
methods = ["GET"]
path = "/api/notes/**"
credentials = ["jwt", "api_key"]
require = {{ permissions_all = ["{GRANTED}"] }}
rate_limits = ["per_caller"]

[[guard.routes]]
name = "admin"
path = "/api/admin/**"
credentials = ["jwt", "api_key"]
require = {{ permissions_all = ["{MISSING}"] }}

[[upstreams]]
name = "echo"
url = "http://{echo}"
routes = ["public", "notes", "admin"]
"#,
        stores = toml_str(&format!("sqlite://{}", dir.join("stores.db").display())),
        pepper = path("pepper"),
        keys = path("keys"),
        audit = path("audit.db"),
    )
}

/// What was set up: the configuration and the credentials shown once.
struct Setup {
    config: Config,
    config_path: PathBuf,
    password: String,
    api_key: String,
}

/// Writes the key, the pepper and the configuration, and creates the demo
/// user and API key in the SQLite stores the gateway will open.
async fn set_up(
    dir: &Workdir,
    listen: SocketAddr,
    ops: SocketAddr,
    echo: SocketAddr,
) -> Result<Setup, CliError> {
    use super as files;

    // The signing key, as `portcullis keys generate` writes it.
    let key = Key::generate(Algorithm::ES256)
        .map_err(|e| CliError::key("cannot generate the demo key", e))?;
    files::write_key(&dir.join("keys"), &key)?;

    // The pepper keying the stored hashes of refresh tokens and API keys.
    let mut pepper = [0u8; 32];
    portcullis_core::opaque::fill_random(&mut pepper)
        .map_err(|e| CliError::key("cannot make a pepper", e))?;
    files::write_secret(&dir.join("pepper"), &pepper)?;

    // The configuration, validated as `config check` would.
    let config_path = dir.join("portcullis.toml");
    let text = config_text(dir, listen, ops, echo);
    files::write_public(&config_path, text.as_bytes())?;
    let config = crate::config::parse_with(&config_path, &text, &[]).map_err(CliError::Config)?;

    // The demo user and API key, through the library's stores.
    let db = dir.join("stores.db");
    let backend = SqliteStores::open(&db)
        .await
        .map_err(|e| io_error("cannot open the demo stores", &db, e))?;
    let hasher =
        SecretHasher::new(&pepper).map_err(|e| CliError::key("cannot use the pepper", e))?;
    let stores = Stores::new(Backends::all(Arc::new(backend)), StoresConfig::new(hasher))
        .map_err(|e| CliError::Usage(format!("cannot use the demo stores: {e}")))?;
    let password = random_text(18)?;
    let user = stores
        .create_user(&NewUser {
            username: USERNAME.into(),
            password: Some(password.clone()),
            roles: vec![ROLE.into()],
            ..NewUser::default()
        })
        .await
        .map_err(|e| CliError::Usage(format!("cannot create the demo user: {e}")))?;
    let created = stores
        .create_api_key(&NewApiKey {
            name: "demo".into(),
            owner: user.id,
            roles: vec![ROLE.into()],
            ..NewApiKey::default()
        })
        .await
        .map_err(|e| CliError::Usage(format!("cannot create the demo API key: {e}")))?;
    Ok(Setup {
        config,
        config_path,
        password,
        api_key: created.key,
    })
}

/// Runs the demo: serves until SIGINT / SIGTERM, or with `check` runs the
/// script and fails unless every step behaved as printed.
pub fn run(options: &Options) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)?;
    runtime.block_on(demo(options))
}

async fn demo(options: &Options) -> Result<(), CliError> {
    let listen = claim(options.listen, "--listen")?;
    let ops = claim(SocketAddr::from(([127, 0, 0, 1], 0)), "--listen")?;
    let dir = Workdir::new(options.dir.as_deref())?;
    let identity = crate::config::IdentityHeaders::default();
    let echo = echo::start(
        identity
            .named()
            .iter()
            .map(|(_, n)| (*n).to_owned())
            .collect(),
    )
    .await
    .map_err(|e| CliError::Usage(format!("cannot start the echo app: {e}")))?;
    let setup = set_up(&dir, listen, ops, echo.addr).await?;
    crate::serve::init_logs(&setup.config.log);
    let audit_db = dir.join("audit.db");

    // The real gateway and the demo's own part, side by side on this task:
    // the gateway signals when it listens; `--check` then runs the script
    // and stops it, plain `demo` prints the script and leaves the gateway
    // to SIGINT / SIGTERM.
    let (ready_tx, ready_rx) = oneshot::channel::<Bound>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let check = options.check;
    let shutdown = async move {
        if check {
            let _ = stop_rx.await;
        } else {
            // A dropped sender (the script was printed) disables the first arm.
            tokio::select! {
                Ok(()) = stop_rx => {}
                () = crate::serve::shutdown_signal() => {}
            }
        }
    };
    let gateway = crate::serve::serve_until(
        setup.config.clone(),
        dir.join("portcullis.toml"),
        shutdown,
        move |bound| {
            let _ = ready_tx.send(bound);
        },
    );
    let driver = async {
        // No address: the gateway ended before it listened, and says why.
        let Ok(bound) = ready_rx.await else {
            return Ok(());
        };
        let outcome = drive(check, &setup, &bound, echo.addr, &dir, &audit_db).await;
        // With --check (or when printing failed) the demo ends here.
        if check || outcome.is_err() {
            let _ = stop_tx.send(());
        }
        outcome
    };
    let (served, driven) = tokio::join!(gateway, driver);
    drop(echo);
    served.map_err(|e| CliError::Usage(format!("the gateway failed: {e}")))?;
    driven?;
    if !check && !dir.remove {
        super::print(&format!(
            "stopped; the demo's files stay in {}",
            dir.path.display()
        ))?;
    }
    Ok(())
}

/// Once the gateway listens: `--check` runs the steps, otherwise they are printed.
async fn drive(
    check: bool,
    setup: &Setup,
    bound: &Bound,
    echo: SocketAddr,
    dir: &Workdir,
    audit_db: &Path,
) -> Result<(), CliError> {
    let ctx = Context {
        gateway: format!("http://{}", bound.public),
        username: USERNAME.into(),
        password: setup.password.clone(),
        api_key: setup.api_key.clone(),
        missing_permission: MISSING,
        exe: std::env::current_exe().map_err(CliError::Output)?,
        audit_db: audit_db.to_path_buf(),
    };
    let steps = script::steps(&ctx);
    if check {
        check_steps(&steps).await
    } else {
        super::print(&intro(&ctx, setup, bound, echo, dir, &steps))
    }
}

/// What `portcullis demo` prints: where everything is, then the script.
fn intro(
    ctx: &Context,
    setup: &Setup,
    bound: &Bound,
    echo: SocketAddr,
    dir: &Workdir,
    steps: &[Step],
) -> String {
    let kept = if dir.remove {
        "a temporary directory, removed on exit; --dir DIR keeps it"
    } else {
        "kept on exit"
    };
    let mut out = format!(
        "Portcullis demo: the gateway on {gw}, in front of a built-in echo app on {echo}\n\
         \n\
         \x20 routes     GET /public/** anyone; GET /api/notes/** a token or API key with {GRANTED},\n\
         \x20            {limit} calls a minute per caller; /api/admin/** needs {MISSING}\n\
         \x20 user       {USERNAME}, password {password} (role {ROLE}: {GRANTED}; shown only now)\n\
         \x20 API key    {api_key} (the same user's; shown only now)\n\
         \x20 config     {config}\n\
         \x20 files      {dir} ({kept})\n\
         \x20 health     http://{ops}/health/ready, metrics http://{ops}/metrics\n\
         \n\
         Try it: paste these lines into a shell (curl and sed needed), one step at a time or all at once.\n\
         Each `# N.` line says what the step should show after `=>`.\n\
         `portcullis demo --check` runs this same script against itself.\n\n",
        gw = ctx.gateway,
        limit = script::RATE_LIMIT,
        password = setup.password,
        api_key = setup.api_key,
        config = setup.config_path.display(),
        dir = dir.path.display(),
        ops = bound.ops,
    );
    for (n, step) in steps.iter().enumerate() {
        out.push_str(&step.shell(n));
        out.push('\n');
    }
    out.push_str("The demo runs until Ctrl-C (or SIGTERM).");
    out
}

/// Runs every step in order, printing ✓ or ✗ for each; `Err` unless all passed.
async fn check_steps(steps: &[Step]) -> Result<(), CliError> {
    use super::print;
    let client = script::client();
    let mut vars = script::Vars::new();
    let mut failed = 0;
    print("portcullis demo --check: running the demo's script against itself")?;
    for (n, step) in steps.iter().enumerate() {
        let expectation = step.expectation();
        let line = if expectation.is_empty() {
            format!("{n}. {}", step.title)
        } else {
            format!("{n}. {} => {expectation}", step.title)
        };
        match script::run_step(&client, &mut vars, step).await {
            Ok(()) => print(&format!("✓ {line}"))?,
            Err(why) => {
                failed += 1;
                print(&format!("✗ {line}\n    {why}"))?;
            }
        }
    }
    if failed == 0 {
        print(&format!("all {} steps behaved as printed", steps.len()))?;
        Ok(())
    } else {
        Err(CliError::CheckFailed {
            failed,
            total: steps.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::script::{Action, Auth, Expect, Req};
    use super::*;

    /// The checker against a real server (the echo app): a step whose
    /// expectation the answer does not meet is a ✗ and fails the check
    /// with exit 1; the steps that match still pass.
    #[tokio::test]
    async fn a_step_that_misbehaves_fails_the_check() {
        let echo = echo::start(vec!["x-portcullis-subject".into()])
            .await
            .unwrap();
        let get = |expect: Expect| Step {
            title: "echo",
            note: String::new(),
            action: Action::Http {
                req: Req {
                    method: http::Method::GET,
                    path: "/anything",
                    auth: Auth::None,
                    json: Vec::new(),
                },
                expect,
                response: "",
                capture: Vec::new(),
            },
        };
        let set = Step {
            title: "set",
            note: String::new(),
            action: Action::Set(vec![(script::GW, format!("http://{}", echo.addr))]),
        };
        let good = get(Expect {
            statuses: vec![200],
            body_has: Some(r#""path":"/anything""#),
            ..Expect::default()
        });
        check_steps(&[set.clone(), good.clone()]).await.unwrap();

        // The echo app answers 200, not the 403 this step expects.
        let wrong_status = get(Expect {
            statuses: vec![403],
            ..Expect::default()
        });
        // 200 as expected, but no RateLimit header on the echo's answer.
        let wrong_header = get(Expect {
            statuses: vec![200],
            headers: vec!["ratelimit"],
            ..Expect::default()
        });
        let err = check_steps(&[set, good, wrong_status, wrong_header])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CliError::CheckFailed {
                    failed: 2,
                    total: 4
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 1);
    }

    /// Without a `$GW`, a step cannot run and says why instead of panicking.
    #[tokio::test]
    async fn an_unset_variable_fails_the_step() {
        let step = Step {
            title: "call",
            note: String::new(),
            action: Action::Http {
                req: Req {
                    method: http::Method::GET,
                    path: "/",
                    auth: Auth::Bearer(script::TOKEN),
                    json: Vec::new(),
                },
                expect: Expect {
                    statuses: vec![200],
                    ..Expect::default()
                },
                response: "",
                capture: Vec::new(),
            },
        };
        let mut vars = script::Vars::new();
        vars.insert(script::GW, "http://127.0.0.1:9".into());
        let err = script::run_step(&script::client(), &mut vars, &step)
            .await
            .unwrap_err();
        assert_eq!(err, "$TOKEN is not set (an earlier step failed)");
    }

    #[test]
    fn the_demo_config_is_valid_and_escapes_paths() {
        // The files the config names must exist: loading it reads the
        // pepper and the key directory.
        let path = std::env::temp_dir().join(format!("a \"quoted\" dir {}", std::process::id()));
        let dir = Workdir {
            path: path.clone(),
            remove: true,
        };
        let key = Key::generate(Algorithm::ES256).unwrap();
        crate::cli::demo::write_key(&dir.join("keys"), &key).unwrap();
        crate::cli::demo::write_secret(&dir.join("pepper"), &[7u8; 32]).unwrap();
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let text = config_text(&dir, addr(8080), addr(9091), addr(9999));
        let config = crate::config::parse_with(Path::new("demo.toml"), &text, &[]).unwrap();
        assert_eq!(config.guard.routes.len(), 3);
        assert_eq!(config.audit.sqlite.unwrap(), path.join("audit.db"));
        assert_eq!(
            config.storage.url,
            format!("sqlite://{}", path.join("stores.db").display())
        );
    }
}
