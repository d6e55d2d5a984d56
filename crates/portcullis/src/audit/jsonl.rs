//! A JSON Lines audit file, one event per line, fsynced per batch and
//! rotated by size: `audit.jsonl` -> `audit.jsonl.1` -> ... -> `.N` (oldest dropped).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use portcullis_core::audit::AuditEvent;

use super::{AuditError, AuditSink, BoxFuture};

struct JsonlFile {
    path: PathBuf,
    file: File,
    len: u64,
    max_bytes: u64,
    keep: usize,
}

/// A size-rotated JSON Lines sink.
#[derive(Clone)]
pub struct JsonlSink {
    inner: Arc<Mutex<JsonlFile>>,
}

impl std::fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlSink").finish_non_exhaustive()
    }
}

fn open_append(path: &Path) -> Result<(File, u64), AuditError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| AuditError::io(path, e))?;
    let len = file.metadata().map_err(|e| AuditError::io(path, e))?.len();
    Ok((file, len))
}

impl JsonlSink {
    /// Appends to `path`, rotating once it passes `max_bytes` and keeping
    /// `keep` rotated files.
    pub fn open(path: impl Into<PathBuf>, max_bytes: u64, keep: usize) -> Result<Self, AuditError> {
        let path = path.into();
        if max_bytes == 0 {
            return Err(AuditError::Config(
                "jsonl max_bytes must be positive".into(),
            ));
        }
        let (file, len) = open_append(&path)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(JsonlFile {
                path,
                file,
                len,
                max_bytes,
                keep,
            })),
        })
    }
}

impl JsonlFile {
    fn rotate(&mut self) -> Result<(), AuditError> {
        let name = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        if self.keep == 0 {
            self.file
                .set_len(0)
                .map_err(|e| AuditError::io(&self.path, e))?;
            self.len = 0;
            return Ok(());
        }
        for i in (1..self.keep).rev() {
            let from = name(i);
            if from.exists() {
                std::fs::rename(&from, name(i + 1)).map_err(|e| AuditError::io(&from, e))?;
            }
        }
        std::fs::rename(&self.path, name(1)).map_err(|e| AuditError::io(&self.path, e))?;
        let (file, len) = open_append(&self.path)?;
        self.file = file;
        self.len = len;
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> Result<(), AuditError> {
        if self.len > 0 && self.len + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let io = |e| AuditError::io(&self.path, e);
        self.file.write_all(buf).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.len += buf.len() as u64;
        Ok(())
    }
}

/// Events as JSON lines.
pub(crate) fn encode_lines(events: &[AuditEvent]) -> Result<Vec<u8>, AuditError> {
    let mut buf = Vec::with_capacity(events.len() * 256);
    for e in events {
        serde_json::to_writer(&mut buf, e)
            .map_err(|e| AuditError::Corrupt(format!("cannot encode event: {e}")))?;
        buf.push(b'\n');
    }
    Ok(buf)
}

impl AuditSink for JsonlSink {
    fn write_batch<'a>(
        &'a self,
        events: &'a [AuditEvent],
    ) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            let buf = encode_lines(events)?;
            let inner = Arc::clone(&self.inner);
            tokio::task::spawn_blocking(move || {
                inner.lock().unwrap_or_else(|p| p.into_inner()).write(&buf)
            })
            .await
            .map_err(|e| AuditError::Corrupt(format!("jsonl task failed: {e}")))?
        })
    }
}
