//! `portcullis serve --config FILE`.

use std::path::PathBuf;

use clap::Args;

use super::CliError;

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file (see docs/config.md).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Runs the gateway until SIGTERM / SIGINT.
pub fn run(args: &ServeArgs) -> Result<(), CliError> {
    crate::serve::run(&args.config).map_err(|e| match e {
        crate::serve::ServeError::Config(errors) => CliError::Config(errors),
        other => CliError::Usage(format!("cannot start: {other}")),
    })
}
