//! `portcullis demo` end to end, the real binary: `--check` runs every step
//! against itself and passes; the lines the serving demo prints run as
//! printed in a real shell with real curl and show what each step's
//! `=>` says; a taken port and a non-empty `--dir` are refused clearly.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

fn portcullis() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.stdin(Stdio::null());
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh path under the system temp dir (not created), removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-demo-test-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn check_lines(out: &Output) -> (Vec<String>, Vec<String>) {
    let stdout = text(&out.stdout);
    let passed = stdout
        .lines()
        .filter(|l| l.starts_with("✓ "))
        .map(str::to_owned)
        .collect();
    let failed = stdout
        .lines()
        .filter(|l| l.starts_with("✗ "))
        .map(str::to_owned)
        .collect();
    (passed, failed)
}

#[test]
fn check_runs_every_step_against_itself_and_passes() {
    let dir = TempPath::new("check");
    let out = portcullis()
        .args(["demo", "--check", "--dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    let (passed, failed) = check_lines(&out);
    assert!(failed.is_empty(), "{stdout}");
    assert_eq!(passed.len(), 14, "{stdout}");
    for (n, line) in passed.iter().enumerate() {
        assert!(line.starts_with(&format!("✓ {n}. ")), "{line}");
    }
    assert!(stdout.contains("all 14 steps behaved as printed"), "{stdout}");
    // The steps named in the issue are among them.
    for needle in [
        "=> 200 200 200 429",
        "=> 429 rate_limit.exceeded",
        "=> 403 authz.denied",
        "=> 204",
        "=> 401 auth.token_revoked",
    ] {
        assert!(stdout.contains(needle), "{needle}\n{stdout}");
    }

    // --dir keeps what the gateway ran on: its config and the audit log the
    // checked steps wrote, every refusal with its code.
    assert!(dir.0.join("portcullis.toml").is_file());
    let check = portcullis()
        .args(["config", "check"])
        .arg(dir.0.join("portcullis.toml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
    let audit = portcullis()
        .args(["audit", "query", "--format", "json", "--sqlite"])
        .arg(dir.0.join("audit.db"))
        .output()
        .unwrap();
    assert!(audit.status.success(), "{}", text(&audit.stderr));
    let page: Value = serde_json::from_slice(&audit.stdout).unwrap();
    let codes: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["code"].as_str())
        .collect();
    for code in [
        "auth.missing_credentials",
        "rate_limit.exceeded",
        "authz.denied",
        "auth.token_revoked",
    ] {
        assert!(codes.contains(&code), "{code} not in {codes:?}");
    }
    // Two 429s: the last of the burst and the single refused call.
    assert_eq!(
        codes.iter().filter(|c| **c == "rate_limit.exceeded").count(),
        2,
        "{codes:?}"
    );
}

/// The serving demo; SIGTERM and reaped on drop.
struct Demo {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
}

impl Demo {
    fn start(args: &[&str]) -> Self {
        let mut child = portcullis()
            .arg("demo")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child: Some(child),
            lines,
        }
    }

    /// Everything printed up to and including the line containing `end`.
    fn read_until(&self, end: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no `{end}` line; printed so far:\n{}", out.join("\n")));
            let done = line.contains(end);
            out.push(line);
            if done {
                return out;
            }
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        for _ in 0..200 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("the demo did not stop within 10 s of SIGTERM");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A printed step: its number, what follows `=>`, and its shell lines.
#[derive(Debug)]
struct PrintedStep {
    n: usize,
    expect: String,
    lines: Vec<String>,
}

fn parse_steps(printed: &[String]) -> Vec<PrintedStep> {
    let mut steps: Vec<PrintedStep> = Vec::new();
    for line in printed {
        if let Some(rest) = line.strip_prefix("# ")
            && let Some((n, title)) = rest.split_once(". ")
            && let Ok(n) = n.parse::<usize>()
        {
            let expect = title
                .split_once(" => ")
                .map(|(_, e)| e.to_owned())
                .unwrap_or_default();
            steps.push(PrintedStep {
                n,
                expect,
                lines: Vec::new(),
            });
        } else if let Some(step) = steps.last_mut()
            && !line.trim().is_empty()
            && !line.contains("The demo runs until")
        {
            step.lines.push(line.clone());
        }
    }
    steps
}

/// The three-digit statuses at the start of an expectation.
fn statuses(expect: &str) -> Vec<String> {
    expect
        .split([' ', ','])
        .take_while(|w| w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned)
        .collect()
}

/// The stable codes (`area.name`) an expectation mentions.
fn codes(expect: &str) -> Vec<String> {
    expect
        .split([' ', ','])
        .filter(|w| {
            let mut parts = w.split('.');
            matches!(
                (parts.next(), parts.next(), parts.next()),
                (Some(a), Some(b), None)
                    if !a.is_empty() && !b.is_empty()
                        && w.bytes().all(|c| c.is_ascii_lowercase() || c == b'_' || c == b'.')
            )
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_printed_lines_run_in_a_shell_as_printed() {
    let mut demo = Demo::start(&["--listen", "127.0.0.1:0"]);
    let printed = demo.read_until("The demo runs until Ctrl-C");
    let all = printed.join("\n");
    let files = printed
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("files"))
        .and_then(|rest| rest.trim().split(' ').next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no files line:\n{all}"));
    assert!(files.is_dir(), "{all}");
    assert!(all.contains("password "), "{all}");
    assert!(all.contains("API key    pck_"), "{all}");

    let steps = parse_steps(&printed);
    assert_eq!(steps.len(), 14, "{all}");
    assert!(steps[0].lines[0].starts_with("GW=http://127.0.0.1:"), "{all}");

    // One bash runs every printed line in order (the variables carry from
    // step to step, as in the user's shell); markers split the output.
    // The harness adds only the markers and, before the audit step, a
    // pause for the batched audit writer (it flushes every 100 ms).
    let mut script = String::new();
    for step in &steps {
        script.push_str(&format!("echo '@@step {}'\n", step.n));
        if step.lines.iter().any(|l| l.contains(" audit query ")) {
            script.push_str("sleep 1\n");
        }
        for line in &step.lines {
            script.push_str(line);
            script.push('\n');
        }
    }
    script.push_str("echo '@@vars'\necho \"TOKEN=$TOKEN\"\necho \"REFRESH=$REFRESH\"\n");
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shell = text(&out.stdout);
    assert!(out.status.success(), "{shell}\n{}", text(&out.stderr));

    let mut outputs: HashMap<usize, String> = HashMap::new();
    let mut current = None;
    let mut vars = String::new();
    for line in shell.lines() {
        if let Some(n) = line.strip_prefix("@@step ") {
            current = Some(n.parse::<usize>().unwrap());
        } else if line == "@@vars" {
            current = None;
            vars.push('\n');
        } else if let Some(n) = current {
            let o = outputs.entry(n).or_default();
            o.push_str(line);
            o.push('\n');
        } else {
            vars.push_str(line);
            vars.push('\n');
        }
    }

    for step in &steps {
        let output = outputs.get(&step.n).cloned().unwrap_or_default();
        let ctx = format!("step {}: {:?}\n--- output ---\n{output}", step.n, step);
        let command = step.lines.join("\n");
        let want = statuses(&step.expect);
        if command.contains("for i in") {
            assert_eq!(output.trim(), want.join(" "), "{ctx}");
        } else if command.starts_with("curl -si") {
            let status_line = output.lines().next().unwrap_or_default();
            assert!(
                status_line.starts_with(&format!("HTTP/1.1 {} ", want[0])),
                "{ctx}"
            );
            let lower = output.to_ascii_lowercase();
            for header in ["RateLimit-Policy", "RateLimit", "Retry-After"] {
                if step.expect.contains(header) {
                    assert!(
                        lower.contains(&format!("\n{}:", header.to_ascii_lowercase())),
                        "{header}: {ctx}"
                    );
                }
            }
            for code in codes(&step.expect) {
                assert!(output.contains(&format!("\"code\":\"{code}\"")), "{ctx}");
            }
        } else if command.contains("=$(curl -s") {
            // A capture step echoes the JSON it captured from.
            let json: Value = serde_json::from_str(output.trim())
                .unwrap_or_else(|e| panic!("{e}: {ctx}"));
            assert!(json["access_token"].is_string(), "{ctx}");
            assert!(json["refresh_token"].is_string(), "{ctx}");
        } else if command.contains(" audit query ") {
            let listed = codes(&step.expect);
            assert_eq!(listed.len(), 4, "{ctx}");
            for code in listed {
                assert!(output.contains(&code), "{code}: {ctx}");
            }
        } else {
            assert_eq!(step.n, 0, "{ctx}");
            assert!(output.is_empty(), "{ctx}");
        }
    }
    // The refresh replaced both tokens with non-empty ones.
    assert!(vars.contains("TOKEN=ey"), "{vars}");
    assert!(vars.contains("REFRESH=pcr_"), "{vars}");

    // SIGTERM: a graceful stop, exit 0, and the temporary directory is gone.
    assert!(demo.terminate().success());
    assert!(!files.exists(), "{} still exists", files.display());
}

#[test]
fn a_taken_port_is_refused_with_what_to_do() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = portcullis()
        .args(["demo", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
    assert!(stderr.contains("--listen 127.0.0.1:0"), "{stderr}");
    drop(taken);
}

#[test]
fn a_non_empty_dir_is_refused() {
    let dir = TempPath::new("busy");
    fs::create_dir_all(&dir.0).unwrap();
    fs::write(dir.0.join("something"), b"x").unwrap();
    let out = portcullis()
        .args(["demo", "--check", "--dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is not empty"), "{}", text(&out.stderr));
    assert_eq!(fs::read(dir.0.join("something")).unwrap(), b"x");
    assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
}
