//! `portcullis bans` against the real Redis on 127.0.0.1:6379.

use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

fn redis_reachable() -> bool {
    let ok = TcpStream::connect_timeout(
        &"127.0.0.1:6379".parse().unwrap(),
        Duration::from_millis(500),
    )
    .is_ok();
    if !ok {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_BACKENDS").is_none(),
            "Redis at 127.0.0.1:6379 is unreachable and PORTCULLIS_REQUIRE_BACKENDS is set"
        );
        eprintln!("skipping: Redis at 127.0.0.1:6379 is unreachable");
    }
    ok
}

fn bans(prefix: &str, args: &[&str]) -> Output {
    let (cmd, rest) = args.split_first().unwrap();
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "bans",
            cmd,
            "--redis",
            "redis://127.0.0.1:6379",
            "--prefix",
            prefix,
        ])
        .args(rest)
        .output()
        .expect("run portcullis")
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json stdout")
}

#[test]
fn bans_are_added_listed_and_lifted_through_redis() {
    if !redis_reachable() {
        return;
    }
    let prefix = format!("pcx_test_cli_bans_{}", std::process::id());
    let added = json(&bans(
        &prefix,
        &[
            "add",
            "--subject",
            "mallory",
            "--for",
            "10m",
            "--reason",
            "fraud",
        ],
    ));
    assert_eq!(added["target"]["value"], "mallory");
    assert_eq!(added["reason"], "fraud");

    let listed = json(&bans(&prefix, &["list", "--format", "json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["target"]["kind"], "subject");
    let table = bans(&prefix, &["list"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("subject:mallory"));

    assert_eq!(
        json(&bans(&prefix, &["lift", "--subject", "mallory"]))["lifted"],
        true
    );
    assert_eq!(
        json(&bans(&prefix, &["lift", "--subject", "mallory"]))["lifted"],
        false
    );
    assert_eq!(
        json(&bans(&prefix, &["list", "--format", "json"])),
        Value::Array(vec![])
    );
}

#[test]
fn bans_usage_errors_exit_2_with_a_hint() {
    let out = bans(
        "p",
        &["add", "--ip", "192.0.2.1", "--subject", "x", "--for", "1m"],
    );
    assert_eq!(out.status.code(), Some(2));
    let out = bans("p", &["add", "--ip", "192.0.2.1", "--for", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["bans", "list", "--redis", "redis://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to Redis"));
}
