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

/// Prints `OK`, or every error (one a line, `FILE:LINE:COL: `key`: message`)
/// and exits 2; the cases of `[tests]` run too, and a failing one is an error.
pub fn check(args: &CheckArgs) -> Result<(), CliError> {
    let config = crate::config::load(&args.file).map_err(CliError::Config)?;
    if config.tests.files.is_empty() {
        return console::print(&format!("{}: OK", args.file.display()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)?;
    match runtime.block_on(crate::cases::run_config_tests(&config, &args.file)) {
        Ok(passed) => console::print(&format!(
            "{}: OK ({passed} pinned decisions hold)",
            args.file.display()
        )),
        Err(failures) => Err(CliError::Lines(failures)),
    }
}
