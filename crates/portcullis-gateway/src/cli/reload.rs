//! `portcullis reload`: make a running gateway read its configuration file
//! again (see `crate::ops::reload`).
//!
//! `--config FILE` asks the gateway's ops listener (`server.ops_listen`
//! of FILE; loopback when it listens on every address) with `POST /reload`
//! and prints the result: `reloaded`, the warnings about restart-only keys,
//! or every error of the file (exit 2; the gateway keeps serving its running
//! configuration). `POST /reload` is an admin route: the admin key comes
//! from `--key-file FILE` or `PORTCULLIS_ADMIN_KEY` (permission
//! `admin.config.write`). `--pid PID` sends SIGHUP instead (no key) (with
//! `server.pid_file`: `--pid "$(cat /run/portcullis.pid)"`); the result is
//! then in the gateway's log and `portcullis_config_reloads_total`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;

use super::{CliError, console};

/// Arguments of `reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The running gateway's configuration file: its ops listener is asked
    /// and the outcome printed.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "pid",
        required_unless_present = "pid"
    )]
    pub config: Option<PathBuf>,
    /// Send SIGHUP to this process id instead (no outcome is printed).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// A file holding an admin key with `admin.config.write` (default:
    /// $PORTCULLIS_ADMIN_KEY); with --config.
    #[arg(long, value_name = "FILE", conflicts_with = "pid")]
    pub key_file: Option<PathBuf>,
}

/// Triggers the reload and reports it.
pub fn run(args: &ReloadArgs) -> Result<(), CliError> {
    if let Some(pid) = args.pid {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .map_err(|e| CliError::Usage(format!("cannot run `kill`: {e}")))?;
        if !status.success() {
            return Err(CliError::Usage(format!(
                "cannot send SIGHUP to process {pid} (is it running, and yours?)"
            )));
        }
        return console::print(&format!(
            "sent SIGHUP to {pid}; the outcome is in the gateway's log and portcullis_config_reloads_total"
        ));
    }
    let Some(file) = &args.config else {
        return Err(CliError::Usage("pass --config FILE or --pid PID".into()));
    };
    let key = super::remote::Target {
        url: String::new(),
        key_file: args.key_file.clone(),
        format: super::remote::Format::Table,
    }
    .key()
    .map_err(|_| {
        CliError::Usage(format!(
            "no admin key: POST /reload needs an admin key with admin.config.write; pass --key-file FILE or set {} (or send SIGHUP with --pid PID)",
            super::remote::ADMIN_KEY_ENV
        ))
    })?;
    let ops = ops_address(file)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("tokio runtime: {e}")))?;
    let (status, body) = runtime.block_on(post_reload(ops, &key))?;
    let reply: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
        CliError::Usage(format!(
            "{ops} answered {status} without a reload result; is it a Portcullis ops listener?"
        ))
    })?;
    let lines = |key: &str| -> Vec<String> {
        reply[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    if let Some(code) = reply["code"].as_str() {
        // A refusal of the admin guard (problem+json).
        return Err(CliError::Usage(format!(
            "{ops} refused the reload: {status}: {code}: {}",
            reply["detail"].as_str().unwrap_or("")
        )));
    }
    if status == http::StatusCode::OK && reply["status"] == "ok" {
        for w in lines("warnings") {
            console::warn(w);
        }
        console::print(&format!("{}: reloaded", file.display()))
    } else {
        let errors = lines("errors");
        Err(CliError::Usage(format!(
            "the gateway did not reload (it keeps serving its running configuration):\n  {}",
            if errors.is_empty() {
                format!("{status}")
            } else {
                errors.join("\n  ")
            }
        )))
    }
}

/// `server.ops_listen` of `file` (after `PORTCULLIS_SERVER__OPS_LISTEN`),
/// read leniently: the gateway, not this command, validates the file.
fn ops_address(file: &Path) -> Result<SocketAddr, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("cannot read `{}`: {e}", file.display())))?;
    let from_file = toml::de::DeTable::parse(&text).ok().and_then(|doc| {
        match doc.get_ref().get("server").map(|v| v.get_ref()) {
            Some(toml::de::DeValue::Table(t)) => match t.get("ops_listen").map(|v| v.get_ref()) {
                Some(toml::de::DeValue::String(s)) => Some(s.to_string()),
                _ => None,
            },
            _ => None,
        }
    });
    let text = std::env::var("PORTCULLIS_SERVER__OPS_LISTEN")
        .ok()
        .or(from_file)
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    let mut addr: SocketAddr = text.parse().map_err(|_| {
        CliError::Usage(format!(
            "`server.ops_listen` of `{}` is `{text}`, not an address",
            file.display()
        ))
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(addr)
}

async fn post_reload(ops: SocketAddr, key: &str) -> Result<(http::StatusCode, Bytes), CliError> {
    super::remote::exchange(
        "the gateway's ops listener",
        &ops.to_string(),
        Some(key),
        "POST",
        "/reload",
        None,
        Duration::from_secs(60),
    )
    .await
}
