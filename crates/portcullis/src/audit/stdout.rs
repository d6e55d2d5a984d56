//! Audit events as JSON lines on stdout (for log collectors).

use std::io::Write;

use portcullis_core::audit::AuditEvent;

use super::jsonl::encode_lines;
use super::{AuditError, AuditSink, BoxFuture};

/// Writes each batch to stdout, one JSON object per line.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdoutSink;

impl AuditSink for StdoutSink {
    fn write_batch<'a>(
        &'a self,
        events: &'a [AuditEvent],
    ) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            let buf = encode_lines(events)?;
            tokio::task::spawn_blocking(move || {
                let mut out = std::io::stdout().lock();
                out.write_all(&buf).and_then(|()| out.flush())
            })
            .await
            .map_err(|e| AuditError::Corrupt(format!("stdout task failed: {e}")))?
            .map_err(|e| AuditError::io("<stdout>", e))
        })
    }
}
