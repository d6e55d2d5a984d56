//! End-to-end tests of the `portcullis` binary: keys, tokens, exit codes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

const ISS: &str = "https://issuer.test";
const AUD: &str = "api";
/// 2100-01-01, long after any token issued by these tests expires.
const FAR_FUTURE: &str = "4102444800";

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("portcullis-cli-{}-{name}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> Output {
    run_with_stdin(args, None)
}

fn run_with_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portcullis");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait for portcullis")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(out)))
}

#[track_caller]
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

/// `keys generate`; returns the kid it printed.
fn generate(dir: &Path, alg: &str, kid: Option<&str>) -> String {
    let out_dir = dir.to_str().expect("utf-8 path");
    let mut args = vec!["keys", "generate", "--alg", alg, "--out", out_dir];
    if let Some(kid) = kid {
        args.extend(["--kid", kid]);
    }
    let out = run(&args);
    assert_exit(&out, 0);
    let text = stdout(&out);
    text.lines()
        .find_map(|l| l.strip_prefix("kid: "))
        .unwrap_or_else(|| panic!("no kid printed: {text}"))
        .to_owned()
}

/// `keys jwks DIR` written to DIR/../jwks.json; returns its path.
fn publish(keys: &Path, into: &TempDir) -> PathBuf {
    let out = run(&["keys", "jwks", keys.to_str().expect("utf-8 path")]);
    assert_exit(&out, 0);
    let path = into.join("jwks.json");
    fs::write(&path, &out.stdout).expect("write jwks");
    path
}

fn issue(key: &Path, sub: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "token",
        "issue",
        "--key",
        key.to_str().expect("utf-8 path"),
        "--sub",
        sub,
        "--iss",
        ISS,
        "--aud",
        AUD,
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert_exit(&out, 0);
    let token = stdout(&out).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "not a compact JWS: {token}");
    token
}

fn verify(jwks: &Path, aud: &str, extra: &[&str], token: &str, stdin: Option<&str>) -> Output {
    let mut args = vec![
        "token",
        "verify",
        "--jwks",
        jwks.to_str().expect("utf-8 path"),
        "--iss",
        ISS,
        "--aud",
        aud,
    ];
    args.extend_from_slice(extra);
    args.push(token);
    run_with_stdin(&args, stdin)
}

/// An ES256 key in its own directory, its published JWKS and the token-signing PEM.
struct Fixture {
    dir: TempDir,
    jwks: PathBuf,
    pem: PathBuf,
}

fn es256_fixture(name: &str) -> Fixture {
    let dir = TempDir::new(name);
    let keys = dir.join("keys");
    let kid = generate(&keys, "ES256", Some("signer"));
    let jwks = publish(&keys, &dir);
    let pem = keys.join(format!("{kid}.pem"));
    Fixture { dir, jwks, pem }
}

#[test]
fn generate_writes_a_private_pem_0600_and_a_public_jwk_and_jwks_lists_the_kids() {
    let dir = TempDir::new("generate");
    let keys = dir.join("keys");
    let ec = generate(&keys, "ES256", None);
    let ed = generate(&keys, "EdDSA", Some("ed-1"));
    let rsa = generate(&keys, "RS256", Some("rsa-1"));
    assert_eq!(ed, "ed-1");
    assert_eq!(rsa, "rsa-1");
    assert_eq!(
        ec.len(),
        43,
        "default kid is the base64url SHA-256 thumbprint"
    );

    for kid in [&ec, &ed, &rsa] {
        let pem = keys.join(format!("{kid}.pem"));
        let mode = fs::metadata(&pem).expect("pem").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{kid}.pem mode {mode:o}");
        let text = fs::read_to_string(&pem).expect("read pem");
        assert!(text.contains("PRIVATE KEY"), "{text}");
        let jwk: Value = serde_json::from_str(
            &fs::read_to_string(keys.join(format!("{kid}.jwk.json"))).expect("read jwk"),
        )
        .expect("jwk json");
        assert!(jwk.get("d").is_none(), "public JWK has d: {jwk}");
        assert_eq!(jwk["kid"], kid.as_str());
    }

    let out = run(&["keys", "jwks", keys.to_str().expect("utf-8 path")]);
    assert_exit(&out, 0);
    let doc = json(&out);
    let keys_out = doc["keys"].as_array().expect("keys array");
    let mut kids: Vec<&str> = keys_out.iter().filter_map(|k| k["kid"].as_str()).collect();
    kids.sort_unstable();
    let mut expected = vec![ec.as_str(), ed.as_str(), rsa.as_str()];
    expected.sort_unstable();
    assert_eq!(kids, expected);
    for k in keys_out {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(k.get(private).is_none(), "JWKS leaks `{private}`: {k}");
        }
    }
    assert!(!stdout(&out).contains("PRIVATE"));
}

#[test]
fn generate_never_overwrites_an_existing_key() {
    let dir = TempDir::new("overwrite");
    generate(dir.path(), "ES256", Some("k1"));
    let pem = dir.join("k1.pem");
    let before = fs::read(&pem).expect("read pem");
    let out = run(&[
        "keys",
        "generate",
        "--alg",
        "ES256",
        "--kid",
        "k1",
        "--out",
        dir.path().to_str().expect("utf-8 path"),
    ]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("refusing to overwrite"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(&pem).expect("read pem"), before);
}

#[test]
fn hmac_secrets_are_written_0600_and_never_published() {
    let dir = TempDir::new("hmac");
    let keys = dir.join("keys");
    let kid = generate(&keys, "HS256", Some("shared"));
    let secret = keys.join(format!("{kid}.secret.jwk.json"));
    let mode = fs::metadata(&secret).expect("secret").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    generate(&keys, "ES256", Some("public"));

    let out = run(&["keys", "jwks", keys.to_str().expect("utf-8 path")]);
    assert_exit(&out, 0);
    let doc = json(&out);
    let kids: Vec<&str> = doc["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert_eq!(kids, ["public"]);

    // The secret JWK signs; a JWKS holding the secret verifies.
    let token = issue(&secret, "svc", &[]);
    let jwks = dir.join("secret-jwks.json");
    let jwk: Value =
        serde_json::from_slice(&fs::read(&secret).expect("read secret")).expect("secret json");
    fs::write(&jwks, serde_json::json!({ "keys": [jwk] }).to_string()).expect("write");
    let out = verify(&jwks, AUD, &["--alg", "HS256"], &token, None);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["subject"], "svc");
}

#[test]
fn issued_token_verifies_from_argument_and_from_stdin() {
    let f = es256_fixture("roundtrip");
    let token = issue(
        &f.pem,
        "alice",
        &[
            "--claim",
            r#"roles=["admin"]"#,
            "--claim",
            "tier=gold",
            "--ttl",
            "2h",
        ],
    );

    let out = verify(&f.jwks, AUD, &["--alg", "ES256"], &token, None);
    assert_exit(&out, 0);
    let principal = json(&out);
    assert_eq!(principal["subject"], "alice");
    assert_eq!(principal["issuer"], ISS);
    let roles = principal["roles"].as_array().expect("roles");
    assert!(roles.iter().any(|r| r == "admin"), "{principal}");
    assert_eq!(principal["claims"]["tier"], "gold");
    let lifetime = principal["claims"]["exp"].as_i64().expect("exp")
        - principal["claims"]["iat"].as_i64().expect("iat");
    assert_eq!(lifetime, 7200);

    let out = verify(&f.jwks, AUD, &[], "-", Some(&format!("\n  {token} \r\n\t")));
    assert_exit(&out, 0);
    assert_eq!(json(&out)["subject"], "alice");
}

#[test]
fn eddsa_rs256_and_ps256_keys_sign_tokens_that_verify() {
    let dir = TempDir::new("algs");
    let keys = dir.join("keys");
    let ed = generate(&keys, "EdDSA", Some("ed"));
    let rs = generate(&keys, "RS256", Some("rs"));
    // PS256 is not the RSA default: the PEM's <kid>.jwk.json pins it.
    let ps = generate(&keys, "PS256", Some("ps"));
    let jwks = publish(&keys, &dir);
    for kid in [ed, rs, ps] {
        let token = issue(&keys.join(format!("{kid}.pem")), &kid, &[]);
        let out = verify(&jwks, AUD, &[], &token, None);
        assert_exit(&out, 0);
        assert_eq!(json(&out)["subject"], kid.as_str());
    }
}

#[test]
fn rejected_tokens_exit_1_with_a_stable_code() {
    let f = es256_fixture("rejected");
    let token = issue(&f.pem, "bob", &[]);

    let out = verify(&f.jwks, "someone-else", &[], &token, None);
    assert_exit(&out, 1);
    let rejection = json(&out);
    assert_eq!(rejection["code"], "auth.invalid_audience");
    assert!(rejection["message"].is_string());

    let out = verify(&f.jwks, AUD, &["--now", FAR_FUTURE], &token, None);
    assert_exit(&out, 1);
    assert_eq!(json(&out)["code"], "auth.token_expired");

    let out = verify(&f.jwks, AUD, &["--alg", "RS256"], &token, None);
    assert_exit(&out, 1);
    assert_eq!(json(&out)["code"], "auth.unsupported_algorithm");

    let mut tampered = token.clone();
    tampered.push('A');
    let out = verify(&f.jwks, AUD, &[], &tampered, None);
    assert_exit(&out, 1);
    assert!(json(&out)["code"].is_string());
}

#[test]
fn unusable_jwks_entries_are_warnings_and_the_rest_still_verifies() {
    let f = es256_fixture("warnings");
    let token = issue(&f.pem, "carol", &[]);
    let mut doc: Value =
        serde_json::from_slice(&fs::read(&f.jwks).expect("read jwks")).expect("jwks json");
    // A 1024-bit modulus (the size is checked before anything else).
    let weak_n = format!("{}8", "_".repeat(170));
    let keys = doc["keys"].as_array_mut().expect("keys");
    keys.insert(
        0,
        serde_json::json!({"kty": "RSA", "kid": "weak", "n": weak_n, "e": "AQAB"}),
    );
    keys.push(serde_json::json!({"kty": "foo", "kid": "odd"}));
    let jwks = f.dir.join("mixed.json");
    fs::write(&jwks, doc.to_string()).expect("write");

    let out = verify(&jwks, AUD, &[], &token, None);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["subject"], "carol");
    let err = stderr(&out);
    assert!(
        err.contains("warning: skipping JWKS entry #0 (kid weak):") && err.contains("1024"),
        "{err}"
    );
    assert!(
        err.contains("warning: skipping JWKS entry #2 (kid odd):"),
        "{err}"
    );
}

#[test]
fn key_and_usage_errors_exit_2_with_a_hint() {
    let f = es256_fixture("usage");
    let token = issue(&f.pem, "dave", &[]);

    let missing = f.dir.join("missing.json");
    let out = verify(&missing, AUD, &[], &token, None);
    assert_exit(&out, 2);
    assert!(stdout(&out).is_empty());
    assert!(stderr(&out).contains("--jwks"), "{}", stderr(&out));

    let bad = f.dir.join("bad.json");
    fs::write(&bad, "not json").expect("write");
    assert_exit(&verify(&bad, AUD, &[], &token, None), 2);

    let empty = f.dir.join("empty.json");
    fs::write(&empty, r#"{"keys":[{"kty":"foo"}]}"#).expect("write");
    let out = verify(&empty, AUD, &[], &token, None);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("no usable key"), "{}", stderr(&out));

    let key = f.pem.to_str().expect("utf-8 path");
    for extra in [
        ["--claim", "sub=mallory"],
        ["--claim", "exp=1"],
        ["--ttl", "15 minutes"],
        ["--ttl", "0s"],
    ] {
        let mut args = vec!["token", "issue", "--key", key, "--sub", "x"];
        args.extend(extra);
        assert_exit(&run(&args), 2);
    }
    assert_exit(&run(&["token", "verify", "--jwks", "x.json", "tok"]), 2);
}

#[test]
fn inspect_decodes_without_verifying() {
    let f = es256_fixture("inspect");
    let token = issue(&f.pem, "erin", &["--claim", "roles=[\"ops\"]"]);
    let out = run_with_stdin(&["token", "inspect", "-"], Some(&format!(" {token}\n")));
    assert_exit(&out, 0);
    let doc = json(&out);
    assert_eq!(doc["verified"], false);
    assert!(
        doc["warning"]
            .as_str()
            .expect("warning")
            .contains("UNVERIFIED")
    );
    assert_eq!(doc["header"]["alg"], "ES256");
    assert_eq!(doc["header"]["kid"], "signer");
    assert_eq!(doc["claims"]["sub"], "erin");
    assert!(stderr(&out).contains("UNVERIFIED"));

    let out = run(&["token", "inspect", "not-a-token"]);
    assert_exit(&out, 1);
    assert_eq!(json(&out)["code"], "auth.malformed_token");
}

