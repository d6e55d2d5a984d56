//! The `portcullis` command line: the command tree and how an outcome is reported.

pub mod admin;
pub mod audit;
pub mod bans;
pub mod config;
mod console;
pub mod demo;
pub mod duration;
mod error;
pub mod explain;
pub mod init;
pub mod keys;
pub mod reload;
pub mod remote;
pub mod serve;
pub mod snippets;
pub mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

pub use crate::keys::load_key_dir;
pub use error::CliError;

/// Portcullis: an API security gateway.
#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    after_help = "Exit codes: 0 ok, 1 token rejected, a `demo --check` step failed or a `test` case failed, 2 usage, configuration or key error."
)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate signing keys and publish their public JWKS.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Issue, inspect and verify access tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run the gateway in front of a built-in echo app and print copy-paste curl lines (--check: run them).
    Demo(demo::DemoArgs),
    /// List, add and lift the anomaly bans shared through Redis.
    #[command(subcommand)]
    Bans(BansCommand),
    /// Query, follow and prune the audit log (SQLite or PostgreSQL).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Validate a gateway configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the gateway: reverse proxy, forward-auth, token service, ops listener.
    Serve(serve::ServeArgs),
    /// Make a running gateway reload its configuration (validate, then swap).
    Reload(reload::ReloadArgs),
    /// Write a starter configuration, a signing key and a pepper.
    Init(init::InitArgs),
    /// Explain one decision step by step: canonical request, matching routes, credential,
    /// caller, rate limits, mode, upstream and the decision (offline, or --admin URL live).
    Explain(explain::ExplainArgs),
    /// Decide files of pinned cases under a configuration; exit 1 when one differs.
    Test(explain::TestArgs),
    /// Print nginx / Caddy / Traefik / Envoy configuration that asks this gateway's forward-auth.
    Snippets(snippets::SnippetsArgs),
    /// Admin API keys (the admin API itself is on the ops listener).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Users of a running gateway, through its admin API.
    #[command(subcommand)]
    Users(remote::UsersCommand),
    /// Sessions of a running gateway, through its admin API.
    #[command(subcommand)]
    Sessions(remote::SessionsCommand),
    /// API keys of a running gateway, through its admin API.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(remote::ApiKeysCommand),
    /// App credentials of a running gateway, through its admin API.
    #[command(subcommand)]
    Apps(remote::AppsCommand),
}

/// `portcullis admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an admin API key in the configured stores and print it once.
    Bootstrap(admin::BootstrapArgs),
}

/// `portcullis config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print OK, or every error with its file, line and key (exit 2).
    Check(config::CheckArgs),
}

/// `portcullis audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print one page of matching events, newest first.
    Query(audit::QueryArgs),
    /// Print the latest events, then follow new ones.
    Tail(audit::TailArgs),
    /// Delete events older than a retention period.
    Prune(audit::PruneArgs),
}

/// `portcullis bans ...`
#[derive(Debug, Subcommand)]
pub enum BansCommand {
    /// Print the active bans.
    List(bans::ListArgs),
    /// Ban an IP or a subject for a duration, on every replica.
    Add(bans::AddArgs),
    /// Lift a ban on every replica.
    Lift(bans::LiftArgs),
}

/// `portcullis keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a key: DIR/<kid>.pem (private, mode 0600) and DIR/<kid>.jwk.json (public).
    Generate(keys::GenerateArgs),
    /// Print the public JWKS of the keys in DIR (never private or symmetric material).
    Jwks(keys::JwksArgs),
    /// A running gateway's signing keys: state, activation and retirement (admin API).
    List(remote::KeysList),
    /// Start a signing-key rotation on a running gateway: the new key is published now
    /// and signs after keys.rotation.propagation_delay (admin API).
    Rotate(remote::KeysRotate),
}

/// `portcullis token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Sign an access token with a private key file and print it.
    Issue(token::IssueArgs),
    /// Decode a token WITHOUT verifying it and print its header and claims.
    Inspect(token::InspectArgs),
    /// Verify an access token against a JWKS and print the principal.
    Verify(token::VerifyArgs),
}

/// The JSON printed on stdout when a token is rejected.
#[derive(Serialize)]
struct Rejection<'a> {
    code: &'a str,
    message: String,
}

/// Reports the outcome of a command and turns it into the process exit code:
/// a rejected token as `{"code","message"}` on stdout (exit 1), any other
/// error as a message on stderr (exit 2).
pub fn finish(result: Result<(), CliError>) -> ExitCode {
    let Err(err) = result else {
        return ExitCode::SUCCESS;
    };
    match &err {
        CliError::Rejected(token_err) => {
            let rejection = Rejection {
                code: token_err.code().as_str(),
                message: token_err.to_string(),
            };
            if let Err(out_err) = console::print_json(&rejection) {
                console::error(&out_err);
            }
        }
        CliError::Output(io) if io.kind() == std::io::ErrorKind::BrokenPipe => {}
        CliError::Config(errors) => {
            for e in &errors.0 {
                console::error(e);
            }
        }
        CliError::Lines(lines) => {
            for l in lines {
                console::error(l);
            }
        }
        other => console::error(other),
    }
    ExitCode::from(err.exit_code())
}
