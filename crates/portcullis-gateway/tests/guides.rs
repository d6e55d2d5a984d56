//! Runs the walkthroughs in `docs/guides/` the way a newcomer follows them,
//! so a guide that drifts from the binary fails here.
//!
//! The guides' fenced blocks say what they are in their info string:
//!
//! - ```` ```toml file=portcullis.toml ```` (any language): a file the reader
//!   creates; written into the guide's working directory.
//! - ```` ```sh run ````: commands run once, top to bottom; each must succeed
//!   (`bash -e`). Shell variables they set (`TOKEN=$(…)`) stay set for the
//!   later blocks, as in the reader's terminal.
//! - ```` ```sh serve port=N ````: a server the reader starts in a terminal of
//!   its own; started in the background in its own process group (killed at
//!   the end, with its children), and waited for until port N accepts
//!   connections.
//! - ```` ```sh check ````: commands, each followed by one or more
//!   `# => TEXT` lines; each command is run with bash and its standard output
//!   must contain every TEXT, in that order.
//!   (Its output is the contract, not its exit status; variables it sets
//!   are not kept.)
//! - any other block (installing packages, sample output) is only shown.
//!
//! The guides use fixed ports ([`PORTS`]); each is replaced by a free port,
//! as plain text wherever it appears in a block (not inside a longer
//! number). The binaries are the ones under test: the directory of
//! `portcullis` (this build), the e2e venv's `bin` (`python`, `uvicorn`),
//! nginx's and Caddy's directories come first on `PATH`. Python, nginx and
//! Caddy are found like the other e2e tests do (`tests/e2e/support.rs`):
//! missing, the test skips, unless `PORTCULLIS_REQUIRE_BACKENDS` is set.

#[path = "e2e/support.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{Proc, TempDir, caddy, free_port, nginx, portcullis_bin, python, repo};

/// The well-known ports the guides use: gateway, its ops listener, the app,
/// the proxy in front.
const PORTS: [u16; 4] = [8080, 9090, 8000, 8081];

/// How long one `run` or `check` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum Block {
    File { name: String, text: String },
    Run(String),
    Serve { port: u16, text: String },
    Check(String),
}

/// The fenced blocks of a guide that the conventions above mark.
fn parse(guide: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let fence_indent = line.len() - line.trim_start().len();
        let mut body = String::new();
        for inner in lines.by_ref() {
            if inner.trim_start() == "```" {
                break;
            }
            body.push_str(inner.get(fence_indent..).unwrap_or(inner.trim_start()));
            body.push('\n');
        }
        let words: Vec<&str> = info.split_whitespace().collect();
        let attr = |key: &str| {
            words
                .iter()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        if let Some(name) = attr("file") {
            blocks.push(Block::File { name, text: body });
        } else if words.get(1) == Some(&"run") {
            blocks.push(Block::Run(body));
        } else if words.get(1) == Some(&"serve") {
            let port = attr("port")
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("```{info}: a serve block needs port=N"));
            blocks.push(Block::Serve { port, text: body });
        } else if words.get(1) == Some(&"check") {
            blocks.push(Block::Check(body));
        }
    }
    blocks
}

/// A check block's commands (continuation lines joined) with what each
/// must print.
fn checks(block: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut command = String::new();
    for line in block.lines() {
        if let Some(want) = line.trim_start().strip_prefix("# =>") {
            assert!(
                !command.trim().is_empty() || !out.is_empty(),
                "`# =>` before any command in:\n{block}"
            );
            if !command.trim().is_empty() {
                out.push((std::mem::take(&mut command), Vec::new()));
            }
            if let Some(last) = out.last_mut() {
                last.1.push(want.trim().to_owned());
            }
        } else if !line.trim().is_empty() {
            command.push_str(line);
            command.push('\n');
        }
    }
    assert!(
        command.trim().is_empty(),
        "a check command without `# =>`: {command}"
    );
    out
}

/// Replaces each well-known port by its free stand-in where it is a whole
/// number (`8080`, not `18080` or `80801`).
fn map_ports(text: &str, ports: &BTreeMap<u16, u16>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_digit() {
            let len = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let number = &rest[..len];
            match number.parse::<u16>().ok().and_then(|n| ports.get(&n)) {
                Some(free) => out.push_str(&free.to_string()),
                None => out.push_str(number),
            }
            rest = &rest[len..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// What a guide needs besides `portcullis`.
struct Tools {
    python: PathBuf,
    extra: Vec<PathBuf>,
}

/// Follows one guide: files, run blocks, servers and checks, in order.
fn follow(guide: &str, tools: &Tools) {
    let path = repo().join("docs/guides").join(guide);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let blocks = parse(&text);
    for (kind, present) in [
        (
            "file=",
            blocks.iter().any(|b| matches!(b, Block::File { .. })),
        ),
        (
            "serve",
            blocks.iter().any(|b| matches!(b, Block::Serve { .. })),
        ),
        ("check", blocks.iter().any(|b| matches!(b, Block::Check(_)))),
    ] {
        assert!(present, "{guide}: no `{kind}` block");
    }

    // Free ports, never one another guide (tests run in parallel) took.
    static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let ports: BTreeMap<u16, u16> = {
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        let taken = taken.get_or_insert_with(HashSet::new);
        PORTS
            .iter()
            .map(|&p| {
                let free = loop {
                    let f = free_port();
                    if taken.insert(f) {
                        break f;
                    }
                };
                (p, free)
            })
            .collect()
    };

    let dir = TempDir::new(guide.trim_end_matches(".md"));
    let mut path_dirs: Vec<PathBuf> = vec![parent(Path::new(portcullis_bin()))];
    path_dirs.push(parent(&tools.python));
    path_dirs.extend(tools.extra.iter().map(|t| parent(t)));
    if let Some(system) = std::env::var_os("PATH") {
        path_dirs.extend(std::env::split_paths(&system));
    }
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    env.insert(
        "PATH".into(),
        std::env::join_paths(path_dirs)
            .unwrap()
            .into_string()
            .unwrap(),
    );
    // Caddy's (and anyone's) state stays in the guide's directory.
    for (var, sub) in [
        ("HOME", "home"),
        ("XDG_CONFIG_HOME", "xdg-config"),
        ("XDG_DATA_HOME", "xdg-data"),
    ] {
        env.insert(var.into(), dir.join(sub).display().to_string());
    }
    env.insert("PYTHONDONTWRITEBYTECODE".into(), "1".into());

    let mut servers: Vec<Proc> = Vec::new();
    let mut ran_checks = 0;
    for (i, block) in blocks.iter().enumerate() {
        match block {
            Block::File { name, text } => {
                let file = dir.join(name);
                if let Some(p) = file.parent() {
                    fs::create_dir_all(p).unwrap();
                }
                fs::write(&file, map_ports(text, &ports)).unwrap();
            }
            Block::Run(text) => {
                let (ok, out, err) = shell(&dir, &mut env, &map_ports(text, &ports), true);
                assert!(
                    ok,
                    "{guide}: run block {i} failed:\n{text}\n--- stdout\n{out}\n--- stderr\n{err}"
                );
            }
            Block::Serve { port, text } => {
                let mut cmd = Command::new("bash");
                cmd.arg("-c")
                    .arg(map_ports(text, &ports))
                    .current_dir(dir.path())
                    .env_clear()
                    .envs(&env);
                let mut server = Proc::spawn(&format!("server-{i}"), dir.path(), cmd);
                let port = *ports.get(port).unwrap_or_else(|| {
                    panic!("{guide}: serve port={port} is not one of the mapped ports {PORTS:?}")
                });
                server.wait_port(port);
                servers.push(server);
            }
            Block::Check(text) => {
                for (command, wants) in checks(text) {
                    let command = map_ports(&command, &ports);
                    let (_, out, err) = shell(&dir, &mut env, &command, false);
                    let mut rest = out.as_str();
                    for want in &wants {
                        let want = map_ports(want, &ports);
                        match rest.find(&want) {
                            Some(at) => rest = &rest[at + want.len()..],
                            None => panic!(
                                "{guide}: the guide says\n{command}# => {want}\n\
                                 but it printed:\n{out}\n--- stderr\n{err}"
                            ),
                        }
                    }
                    ran_checks += 1;
                }
            }
        }
    }
    assert!(ran_checks > 0, "{guide}: no check ran");
    drop(servers);
}

fn parent(path: &Path) -> PathBuf {
    path.parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs `script` with bash in `dir` with `env`; with `keep`, the variables
/// it sets are carried into `env` (`set -a` exports every assignment). Its
/// success, stdout and stderr.
fn shell(
    dir: &TempDir,
    env: &mut BTreeMap<String, String>,
    script: &str,
    keep: bool,
) -> (bool, String, String) {
    let state = dir.join(".guide-env");
    let wrapped = if keep {
        format!("set -ea\n{script}\nenv -0 > '{}'\n", state.display())
    } else {
        script.to_owned()
    };
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&wrapped)
        .current_dir(dir.path())
        .env_clear()
        .envs(&*env)
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join(".out")).unwrap())
        .stderr(fs::File::create(dir.join(".err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {COMMAND_TIMEOUT:?}:\n{script}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = fs::read_to_string(dir.join(".out")).unwrap_or_default();
    let err = fs::read_to_string(dir.join(".err")).unwrap_or_default();
    if keep && status.success() {
        let vars = fs::read(&state).unwrap();
        env.clear();
        for entry in vars.split(|&b| b == 0).filter(|e| !e.is_empty()) {
            let entry = String::from_utf8_lossy(entry);
            if let Some((k, v)) = entry.split_once('=') {
                env.insert(k.to_owned(), v.to_owned());
            }
        }
        // bash's own bookkeeping, not the reader's.
        for var in ["_", "SHLVL", "OLDPWD"] {
            env.remove(var);
        }
    }
    (status.success(), out, err)
}

#[test]
fn conventions_parse() {
    let guide = "text\n```toml file=a.toml\nport = 8080\n```\n```sh run\nX=1\n```\n\
                 ```sh serve port=8000\nuvicorn app:app --port 8000\n```\n\
                 ```sh check\ncurl -s \\\n  http://127.0.0.1:8080/\n# => one\n# => two\n\
                 # a comment\necho 18080\n# => 18080\n```\n```sh\npip install x\n```\n";
    let blocks = parse(guide);
    assert_eq!(blocks.len(), 4, "{blocks:?}");
    let Block::Check(text) = &blocks[3] else {
        panic!("{blocks:?}")
    };
    let c = checks(text);
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(c[0].1, ["one", "two"]);
    assert!(c[1].0.contains("echo 18080"));
    let ports = BTreeMap::from([(8080, 41234)]);
    assert_eq!(
        map_ports("8080 18080 80801 :8080/ 8080", &ports),
        "41234 18080 80801 :41234/ 41234"
    );
}

#[test]
fn fastapi_behind_serve() {
    let Some(python) = python() else { return };
    follow(
        "fastapi-behind-serve.md",
        &Tools {
            python,
            extra: vec![],
        },
    );
}

#[test]
fn nginx_auth_request() {
    let Some(nginx) = nginx() else { return };
    let Some(python) = python() else { return };
    follow(
        "nginx-auth-request.md",
        &Tools {
            python,
            extra: vec![nginx],
        },
    );
}

#[test]
fn caddy_forward_auth() {
    let Some(caddy) = caddy() else { return };
    let Some(python) = python() else { return };
    follow(
        "caddy-forward-auth.md",
        &Tools {
            python,
            extra: vec![caddy],
        },
    );
}

#[test]
fn internal_token_pyjwt() {
    let Some(python) = python() else { return };
    follow(
        "internal-token-pyjwt.md",
        &Tools {
            python,
            extra: vec![],
        },
    );
}

#[test]
fn grpc_behind_portcullis() {
    let Some(python) = python() else { return };
    follow(
        "grpc-behind-portcullis.md",
        &Tools {
            python,
            extra: vec![],
        },
    );
}

#[test]
fn pin_access_rules_in_ci() {
    // Only a file server stands in for the app: any Python 3 will do.
    let Some(python) = support::python3() else {
        return;
    };
    follow(
        "pin-access-rules-in-ci.md",
        &Tools {
            python,
            extra: vec![],
        },
    );
}

#[test]
fn alerts_to_a_webhook() {
    // The receiver verifies with `standardwebhooks`: the e2e venv's Python.
    let Some(python) = python() else { return };
    follow(
        "alerts-to-a-webhook.md",
        &Tools {
            python,
            extra: vec![],
        },
    );
}
