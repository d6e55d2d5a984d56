//! `portcullis config check`: validate a configuration file without starting anything.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, console};
use crate::config::ConfigErrors;

/// Arguments of `config check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The configuration file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Prints `OK`, or every error (one a line, `FILE:LINE:COL: `key`: message`)
/// and exits 2. Besides the file itself, the TLS files of `https://`
/// upstreams are read and parsed as the gateway would (a missing CA file is
/// found here, not at the start), `insecure_skip_verify` is warned about,
/// and the cases of `[tests]` run (a failing one is an error).
pub fn check(args: &CheckArgs) -> Result<(), CliError> {
    let config = crate::config::load(&args.file).map_err(CliError::Config)?;
    // Only for locating errors: the file was just read whole by `load`.
    let text = std::fs::read_to_string(&args.file).unwrap_or_default();
    let mut errors = Vec::new();
    for (i, up) in config.upstreams.iter().enumerate() {
        if up.is_tls() && up.insecure_skip_verify {
            console::warn(format_args!(
                "{}: `upstreams[{i}].insecure_skip_verify`: the certificate of upstream `{}` is not verified; anyone on the network path can impersonate it",
                args.file.display(),
                up.name
            ));
        }
        if let Err(e) = crate::proxy::upstream_tls::UpstreamTls::load(up) {
            errors.push(crate::config::error_at_key(
                &args.file,
                &text,
                format!("upstreams[{i}].{}", e.key),
                e.source.to_string(),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(CliError::Config(ConfigErrors(errors)));
    }
    if config.tests.files.is_empty() {
        return console::print(&format!("{}: OK", args.file.display()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)?;
    match runtime.block_on(crate::explain::cases::run_config_tests(&config, &args.file)) {
        Ok(passed) => console::print(&format!(
            "{}: OK ({passed} pinned decisions hold)",
            args.file.display()
        )),
        Err(failures) => Err(CliError::Lines(failures)),
    }
}
