//! `portcullis config check`: validate a configuration file without starting anything.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, console};

/// Arguments of `config check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The configuration file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Prints `OK`, or every error (one a line, `FILE:LINE:COL: `key`: message`) and exits 2.
pub fn check(args: &CheckArgs) -> Result<(), CliError> {
    match crate::config::load(&args.file) {
        Ok(_) => console::print(&format!("{}: OK", args.file.display())),
        Err(errors) => Err(CliError::Config(errors)),
    }
}
