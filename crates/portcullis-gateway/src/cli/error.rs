//! Everything that can stop a command, each with a message that says what to fix.

use std::io;
use std::path::PathBuf;

use portcullis_core::{IssueError, KeyError, TokenError};

pub use crate::keys::{FileError, Input};

/// Exit code of a rejected token.
pub const EXIT_REJECTED: u8 = 1;
/// Exit code of a usage, configuration or key error.
pub const EXIT_USAGE: u8 = 2;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The token was checked and rejected (exit 1).
    #[error("token rejected: {0}")]
    Rejected(TokenError),
    /// An argument is invalid in a way the parser cannot see.
    #[error("{0}")]
    Usage(String),
    /// Standard input could not be read.
    #[error("cannot read the token from stdin: {0}")]
    Stdin(io::Error),
    /// A key file or input file could not be read, written or used.
    #[error(transparent)]
    File(#[from] FileError),
    /// The JWKS document is not usable at all.
    #[error(
        "cannot load JWKS `{path}`: {source}; pass --jwks a JSON document {{\"keys\": [...]}}, such as the output of `portcullis keys jwks DIR`"
    )]
    Jwks {
        /// The JWKS file.
        path: PathBuf,
        /// The key error.
        source: KeyError,
    },
    /// Every entry of the JWKS was skipped.
    #[error(
        "JWKS `{path}` has no usable key (skipped: {skipped}, see the warnings above); it needs an RSA key of at least 2048 bits, a P-256, P-384 or Ed25519 key, or an oct secret of at least 32 bytes"
    )]
    NoUsableKeys {
        /// The JWKS file.
        path: PathBuf,
        /// How many entries were skipped.
        skipped: usize,
    },
    /// A key directory holds nothing to publish.
    #[error(
        "`{0}` holds no asymmetric key to publish; create one with `portcullis keys generate --alg ES256 --out DIR`"
    )]
    NoPublicKeys(PathBuf),
    /// The issuer refused to issue.
    #[error("cannot issue the token: {0}")]
    Issue(#[from] IssueError),
    /// A configuration file is invalid: every error, one a line.
    #[error("{0}")]
    Config(crate::config::ConfigErrors),
    /// Writing to stdout failed.
    #[error("cannot write to stdout: {0}")]
    Output(io::Error),
    /// `demo --check`: some steps did not behave as printed (exit 1).
    /// Problems listed one a line (cases that failed under `config check`).
    #[error("{}", .0.join("\n"))]
    Lines(Vec<String>),
    /// `portcullis test`: some cases did not decide as expected (printed above).
    #[error("{failed} of {total} cases did not decide as expected")]
    CasesFailed {
        /// Cases that failed.
        failed: usize,
        /// Cases run.
        total: usize,
    },
    /// `portcullis test --replay-audit --fail-on-change`: some recorded
    /// decisions would change (printed above).
    #[error("{changed} recorded decisions would change under the new configuration")]
    DecisionsChanged {
        /// Decisions that would change.
        changed: u64,
    },
    #[error("{failed} of {total} demo steps did not behave as printed (see the ✗ lines above)")]
    CheckFailed {
        /// Steps that failed.
        failed: usize,
        /// Steps run.
        total: usize,
    },
}

impl CliError {
    /// The process exit code of this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Rejected(_)
            | Self::CheckFailed { .. }
            | Self::CasesFailed { .. }
            | Self::DecisionsChanged { .. } => EXIT_REJECTED,
            _ => EXIT_USAGE,
        }
    }

    /// A key error with its context.
    pub fn key(context: impl Into<String>, source: KeyError) -> Self {
        Self::File(FileError::key(context, source))
    }
}
