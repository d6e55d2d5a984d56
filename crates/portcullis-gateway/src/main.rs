//! `portcullis`: the gateway binary. Parses the command line and dispatches
//! to one command; exit codes are 0 ok, 1 token rejected, a `demo --check`
//! step misbehaved or a `test` case failed, 2 usage/config/key error. The commands live in the
//! library (`portcullis_gateway::cli`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: the request path allocates
/// and frees small blocks on every request (a tenth of its instructions
/// went to glibc's malloc and free), and glibc keeps per-thread arenas of
/// freed memory that a burst (the audit queue filling) leaves resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use portcullis_gateway::cli::{
    self, AdminCommand, AuditCommand, BansCommand, Cli, Command, ConfigCommand, KeysCommand,
    TokenCommand,
};

fn main() -> ExitCode {
    let args = Cli::parse();
    let result = match &args.command {
        Command::Keys(KeysCommand::Generate(a)) => cli::keys::generate(a),
        Command::Keys(KeysCommand::Jwks(a)) => cli::keys::jwks(a),
        Command::Keys(KeysCommand::List(a)) => cli::remote::keys_list(a),
        Command::Keys(KeysCommand::Rotate(a)) => cli::remote::keys_rotate(a),
        Command::Token(TokenCommand::Issue(a)) => cli::token::issue(a),
        Command::Token(TokenCommand::Inspect(a)) => cli::token::inspect(a),
        Command::Token(TokenCommand::Verify(a)) => cli::token::verify(a),
        Command::Demo(a) => cli::demo::run(a),
        Command::Bans(BansCommand::List(a)) => cli::bans::list(a),
        Command::Bans(BansCommand::Add(a)) => cli::bans::add(a),
        Command::Bans(BansCommand::Lift(a)) => cli::bans::lift(a),
        Command::Audit(AuditCommand::Query(a)) => cli::audit::query(a),
        Command::Audit(AuditCommand::Tail(a)) => cli::audit::tail(a),
        Command::Audit(AuditCommand::Prune(a)) => cli::audit::prune(a),
        Command::Config(ConfigCommand::Check(a)) => cli::config::check(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::Reload(a) => cli::reload::run(a),
        Command::Init(a) => cli::init::run(a),
        Command::Explain(a) => cli::explain::explain(a),
        Command::Test(a) => cli::explain::test(a),
        Command::Snippets(a) => cli::snippets::run(a),
        Command::Admin(AdminCommand::Bootstrap(a)) => cli::admin::bootstrap(a),
        Command::Users(c) => cli::remote::users(c),
        Command::Sessions(c) => cli::remote::sessions(c),
        Command::ApiKeys(c) => cli::remote::api_keys(c),
        Command::Apps(c) => cli::remote::apps(c),
    };
    cli::finish(result)
}
