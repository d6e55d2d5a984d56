//! `portcullis demo [--check] [--listen ADDR] [--dir DIR]`: the arguments,
//! and the file and console helpers the demo session ([`session`]) shares
//! with the other commands.

mod echo;
pub mod script;
mod session;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use portcullis_core::Key;
use portcullis_core::jose::jwk::public_jwk;

use crate::cli::{CliError, console};
use crate::keys::{self as keyfile, JWK_SUFFIX, PEM_SUFFIX, PRIVATE_MODE, PUBLIC_MODE};

/// Arguments of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run the printed script against the demo itself: ✓ or ✗ per step, exit 0 only if every step behaved as printed.
    #[arg(long)]
    pub check: bool,
    /// The gateway's public listener; port 0 picks a free port [default: 127.0.0.1:8080, with --check 127.0.0.1:0].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Keep the demo's files (config, key, pepper, SQLite stores and audit) in DIR, which must be empty or absent [default: a temporary directory, removed on exit].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Runs the demo (see [`session`]).
pub fn run(args: &DemoArgs) -> Result<(), CliError> {
    let listen = args.listen.unwrap_or_else(|| {
        let port = if args.check { 0 } else { 8080 };
        SocketAddr::from(([127, 0, 0, 1], port))
    });
    session::run(&session::Options {
        check: args.check,
        listen,
        dir: args.dir.clone(),
    })
}

/// Creates `dir` (mode 0700) if missing.
pub(crate) fn create_dir(dir: &Path) -> Result<(), CliError> {
    Ok(keyfile::create_dir(dir)?)
}

/// Writes `key` into `dir` as `portcullis keys generate` does:
/// `<kid>.pem` (0600) and `<kid>.jwk.json`.
pub(crate) fn write_key(dir: &Path, key: &Key) -> Result<(), CliError> {
    let missing = |what: &str| {
        CliError::key(
            "cannot export the demo key",
            portcullis_core::KeyError::Unsupported(format!("no {what}")),
        )
    };
    let pem = key
        .private_pkcs8_pem()
        .ok_or_else(|| missing("PKCS#8 form"))?;
    let public = public_jwk(key).ok_or_else(|| missing("public JWK"))?;
    let public = serde_json::to_vec_pretty(&public)
        .map_err(|e| CliError::Output(std::io::Error::other(e)))?;
    keyfile::create_dir(dir)?;
    keyfile::write_new(
        &keyfile::key_path(dir, key.kid(), PEM_SUFFIX),
        pem.as_bytes(),
        PRIVATE_MODE,
    )?;
    keyfile::write_new(
        &keyfile::key_path(dir, key.kid(), JWK_SUFFIX),
        &public,
        PUBLIC_MODE,
    )?;
    Ok(())
}

/// Writes a new secret file (0600).
pub(crate) fn write_secret(path: &Path, contents: &[u8]) -> Result<(), CliError> {
    Ok(keyfile::write_new(path, contents, PRIVATE_MODE)?)
}

/// Writes a new readable file (0644).
pub(crate) fn write_public(path: &Path, contents: &[u8]) -> Result<(), CliError> {
    Ok(keyfile::write_new(path, contents, PUBLIC_MODE)?)
}

/// Writes `text` and a newline to stdout.
pub(crate) fn print(text: &str) -> Result<(), CliError> {
    console::print(text)
}
