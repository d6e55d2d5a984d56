//! Standard streams and bounded input: stdout for results, stderr for
//! warnings and errors, tokens from an argument or stdin, files read with a cap.

use std::fmt::Display;
use std::io::{self, Read, Write};

use serde::Serialize;

use super::CliError;
pub use crate::keys::{MAX_INPUT_BYTES, read_file};

/// Writes `text` and a newline to stdout.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(CliError::Output)
}

/// Writes `value` to stdout as pretty JSON.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| CliError::Output(io::Error::other(e)))?;
    print(&text)
}

/// Writes `warning: <message>` to stderr.
pub fn warn(message: impl Display) {
    let _ = writeln!(io::stderr(), "warning: {message}");
}

/// Writes `error: <message>` to stderr.
pub fn error(message: &dyn Display) {
    let _ = writeln!(io::stderr(), "error: {message}");
}

/// The token given as an argument, or read from stdin when it is `-`;
/// surrounding whitespace is trimmed either way.
pub fn read_token(arg: &str) -> Result<Vec<u8>, CliError> {
    let raw = if arg == "-" {
        let mut buf = Vec::new();
        io::stdin()
            .lock()
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(CliError::Stdin)?;
        if buf.len() as u64 > MAX_INPUT_BYTES {
            return Err(CliError::Usage(format!(
                "stdin holds more than {MAX_INPUT_BYTES} bytes; pipe in a single compact token"
            )));
        }
        buf
    } else {
        arg.as_bytes().to_vec()
    };
    let token = raw.trim_ascii();
    if token.is_empty() {
        return Err(CliError::Usage(if arg == "-" {
            "stdin is empty; pipe in a compact token (header.payload.signature)".into()
        } else {
            "TOKEN is empty; pass a compact token (header.payload.signature), or - to read it from stdin".into()
        }));
    }
    Ok(token.to_vec())
}
