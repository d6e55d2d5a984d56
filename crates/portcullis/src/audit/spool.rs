//! The append-only local spool: batches the sink refused, framed as
//! `[len u32 LE][FNV-1a 64 of payload, u64 LE][JSON array of events]`,
//! fsynced per batch and replayed in order.
//!
//! The read position is kept in memory only: after a crash the whole spool
//! replays, and sinks ignore ids they already hold, so each event is stored
//! exactly once.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use portcullis_core::audit::AuditEvent;

use super::AuditError;

/// Largest record accepted when reading back (a torn or foreign file is not trusted).
pub const MAX_RECORD_BYTES: u32 = 256 * 1024 * 1024;
const HEADER: u64 = 12;

struct SpoolFile {
    path: PathBuf,
    file: File,
    read_offset: u64,
    len: u64,
}

/// A spool file; cheap to clone, blocking work runs on the blocking pool.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Mutex<SpoolFile>>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").finish_non_exhaustive()
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Spool {
    /// Opens (creating it and its directory when missing) the spool at `path`;
    /// anything already in it is pending replay.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| AuditError::io(path, e))?;
        let len = file.metadata().map_err(|e| AuditError::io(path, e))?.len();
        Ok(Self {
            inner: Arc::new(Mutex::new(SpoolFile {
                path: path.to_path_buf(),
                file,
                read_offset: 0,
                len,
            })),
        })
    }

    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SpoolFile) -> Result<T, AuditError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, AuditError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut guard)
            })
            .await
            .map_err(|e| AuditError::Corrupt(format!("spool task failed: {e}")))?
        }
    }

    /// Whether batches are waiting for replay.
    pub fn pending(&self) -> bool {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.read_offset < g.len
    }

    /// Appends one batch and fsyncs it.
    pub async fn append(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        let payload = serde_json::to_vec(events)
            .map_err(|e| AuditError::Corrupt(format!("cannot encode spool record: {e}")))?;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD_BYTES)
            .ok_or_else(|| AuditError::Config("batch too large for the spool".into()))?;
        let mut frame = Vec::with_capacity(payload.len() + HEADER as usize);
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&fnv1a(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        self.with(move |s| {
            let io = |e| AuditError::io(&s.path, e);
            s.file.write_all(&frame).map_err(io)?;
            s.file.sync_data().map_err(io)?;
            s.len += frame.len() as u64;
            Ok(())
        })
        .await
    }

    /// The oldest batch not yet replayed, and where the next one starts.
    /// A torn or corrupt tail (e.g. after a crash mid-write) is cut off.
    pub async fn peek(&self) -> Result<Option<(Vec<AuditEvent>, u64)>, AuditError> {
        self.with(|s| {
            if s.read_offset >= s.len {
                return Ok(None);
            }
            match read_record(s) {
                Ok(Some(found)) => Ok(Some(found)),
                Ok(None) => {
                    tracing::error!(
                        path = %s.path.display(),
                        offset = s.read_offset,
                        "audit spool has a torn or corrupt tail; discarding it"
                    );
                    // Everything before the read offset is replayed already.
                    let io = |e| AuditError::io(&s.path, e);
                    s.file.set_len(0).map_err(io)?;
                    s.file.sync_data().map_err(io)?;
                    s.read_offset = 0;
                    s.len = 0;
                    Ok(None)
                }
                Err(e) => Err(AuditError::io(&s.path, e)),
            }
        })
        .await
    }

    /// Marks everything before `next` replayed; empties the file once all is.
    pub async fn advance(&self, next: u64) -> Result<(), AuditError> {
        self.with(move |s| {
            s.read_offset = next.min(s.len);
            if s.read_offset >= s.len {
                let io = |e| AuditError::io(&s.path, e);
                s.file.set_len(0).map_err(io)?;
                s.file.sync_data().map_err(io)?;
                s.read_offset = 0;
                s.len = 0;
            }
            Ok(())
        })
        .await
    }
}

/// `Ok(None)` when the record at the read offset is torn or corrupt.
fn read_record(s: &mut SpoolFile) -> std::io::Result<Option<(Vec<AuditEvent>, u64)>> {
    if s.len - s.read_offset < HEADER {
        return Ok(None);
    }
    s.file.seek(SeekFrom::Start(s.read_offset))?;
    let mut header = [0u8; HEADER as usize];
    s.file.read_exact(&mut header)?;
    let (len_bytes, sum_bytes) = header.split_at(4);
    let len = u32::from_le_bytes(len_bytes.try_into().unwrap_or_default());
    let sum = u64::from_le_bytes(sum_bytes.try_into().unwrap_or_default());
    if len > MAX_RECORD_BYTES || s.len - s.read_offset - HEADER < u64::from(len) {
        return Ok(None);
    }
    let mut payload = vec![0u8; len as usize];
    s.file.read_exact(&mut payload)?;
    if fnv1a(&payload) != sum {
        return Ok(None);
    }
    let Ok(events) = serde_json::from_slice(&payload) else {
        return Ok(None);
    };
    Ok(Some((events, s.read_offset + HEADER + u64::from(len))))
}
