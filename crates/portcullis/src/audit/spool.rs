//! The local spool: batches the sink refused, framed as
//! `[len u32 LE][FNV-1a 64 of payload, u64 LE][payload]`, fsynced per batch
//! and replayed in order. The payload is `{"v":2,"events":[...]}`; a bare
//! JSON array is a version 1 record, still read.
//!
//! Every record is checked when the spool opens: a torn tail (a crash in
//! mid-append) is cut off, and a record that is whole but corrupt moves the
//! file aside (`<spool>.corrupt-<ms>`, kept intact) with the good records
//! before it copied back. An append that fails is rolled back, so the file
//! never holds bytes the spool does not account for. A record that is whole
//! but cannot be decoded by this build goes to the dead-letter file
//! (`<spool>.dead`, same format) instead of blocking or emptying the spool.
//!
//! The read position is kept in memory only: after a crash the whole spool
//! replays, and sinks ignore ids they already hold, so each event is stored
//! exactly once.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_core::audit::AuditEvent;
use serde::{Deserialize, Serialize};

use super::AuditError;

/// Largest record accepted when reading back (a torn or foreign file is not trusted).
pub const MAX_RECORD_BYTES: u32 = 256 * 1024 * 1024;
/// The record version this build writes; older ones are read too.
pub const RECORD_VERSION: u32 = 2;
const HEADER: u64 = 12;

/// A record as written.
#[derive(Serialize)]
struct RecordOut<'a> {
    v: u32,
    events: &'a [AuditEvent],
}

/// A record as read (version 2 and later).
#[derive(Deserialize)]
struct RecordIn {
    v: u32,
    events: Vec<AuditEvent>,
}

/// The events of a record payload, whatever its version up to
/// [`RECORD_VERSION`]; the error says why it cannot be read.
pub fn decode_payload(payload: &[u8]) -> Result<Vec<AuditEvent>, String> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        // Version 1: a bare array of events.
        return serde_json::from_slice(payload).map_err(|e| format!("version 1 record: {e}"));
    }
    match serde_json::from_slice::<RecordIn>(payload) {
        Ok(r) if r.v <= RECORD_VERSION => Ok(r.events),
        Ok(r) => Err(format!(
            "record version {} is newer than this build ({RECORD_VERSION})",
            r.v
        )),
        Err(e) => Err(format!("record: {e}")),
    }
}

/// One framed record of `events` in the current version.
fn encode_frame(events: &[AuditEvent]) -> Result<Vec<u8>, AuditError> {
    let payload = serde_json::to_vec(&RecordOut {
        v: RECORD_VERSION,
        events,
    })
    .map_err(|e| AuditError::Corrupt(format!("cannot encode spool record: {e}")))?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_RECORD_BYTES)
        .ok_or_else(|| AuditError::Config("batch too large for the spool".into()))?;
    let mut frame = Vec::with_capacity(payload.len() + HEADER as usize);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&fnv1a(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

struct SpoolFile {
    path: PathBuf,
    file: File,
    read_offset: u64,
    len: u64,
    max_bytes: u64,
    /// Records moved aside (corrupt or undecodable) since open.
    set_aside: u64,
    /// Test hook: the next append writes this many bytes, then fails.
    fault: Option<usize>,
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

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// What a read at an offset found.
enum Frame {
    /// A whole record with a good checksum, and where the next one starts.
    Whole(Vec<u8>, u64),
    /// The file ends inside the record (a torn append).
    Torn,
    /// A whole record that is not what was written.
    Corrupt(String),
}

/// Reads the record at `offset` of a file `len` bytes long.
fn read_frame(file: &mut File, offset: u64, len: u64) -> std::io::Result<Frame> {
    let rest = len - offset;
    if rest < HEADER {
        return Ok(Frame::Torn);
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut header = [0u8; HEADER as usize];
    file.read_exact(&mut header)?;
    let (len_bytes, sum_bytes) = header.split_at(4);
    let size = u32::from_le_bytes(len_bytes.try_into().unwrap_or_default());
    let sum = u64::from_le_bytes(sum_bytes.try_into().unwrap_or_default());
    if size > MAX_RECORD_BYTES {
        return Ok(Frame::Corrupt(format!("record length {size} is too large")));
    }
    if rest - HEADER < u64::from(size) {
        return Ok(Frame::Torn);
    }
    let mut payload = vec![0u8; size as usize];
    file.read_exact(&mut payload)?;
    if fnv1a(&payload) != sum {
        return Ok(Frame::Corrupt("checksum mismatch".into()));
    }
    Ok(Frame::Whole(payload, offset + HEADER + u64::from(size)))
}

/// Whether every byte of `file` from `offset` on is zero (a file extended
/// by a crash before its data reached the disk).
fn zeros_from(file: &mut File, offset: u64) -> std::io::Result<bool> {
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Writes `frame` at `at`, fsyncs, and on any failure cuts the file back to
/// `at` so no partial record stays behind. `fault` makes the write stop
/// after that many bytes (tests).
fn write_frame_at(
    file: &mut File,
    path: &Path,
    at: u64,
    frame: &[u8],
    fault: Option<usize>,
) -> Result<(), AuditError> {
    let written = (|| {
        file.seek(SeekFrom::Start(at))?;
        if let Some(n) = fault {
            file.write_all(&frame[..n.min(frame.len())])?;
            return Err(std::io::Error::other("injected spool write failure"));
        }
        file.write_all(frame)?;
        file.sync_data()
    })();
    if let Err(e) = written {
        if let Err(undo) = file.set_len(at).and_then(|()| file.sync_data()) {
            // The next append writes at `at` again, and the next open cuts
            // anything after the last whole record: still no misalignment.
            tracing::error!(path = %path.display(), error = %undo, "cannot roll back a failed spool append");
        }
        return Err(AuditError::io(path, e));
    }
    Ok(())
}

/// Appends a whole frame to the file at `path` (created when missing),
/// refusing to grow it past `max_bytes`.
fn append_frame_to(path: &Path, frame: &[u8], max_bytes: u64) -> Result<(), AuditError> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| AuditError::io(path, e))?;
    let len = file.metadata().map_err(|e| AuditError::io(path, e))?.len();
    if len.saturating_add(frame.len() as u64) > max_bytes {
        return Err(AuditError::SpoolFull {
            path: path.to_path_buf(),
            max_bytes,
        });
    }
    write_frame_at(&mut file, path, len, frame, None)
}

impl SpoolFile {
    /// Checks every record: cuts a torn tail, moves a corrupt file aside.
    fn recover(&mut self) -> Result<(), AuditError> {
        let path = self.path.clone();
        let io = |e| AuditError::io(&path, e);
        let file_len = self.file.metadata().map_err(io)?.len();
        let mut offset = 0;
        while offset < file_len {
            match read_frame(&mut self.file, offset, file_len).map_err(io)? {
                Frame::Whole(_, next) => offset = next,
                Frame::Torn => {
                    tracing::warn!(
                        path = %path.display(),
                        offset,
                        bytes = file_len - offset,
                        "audit spool ends in a torn record (crash in mid-append); cutting it off"
                    );
                    self.file.set_len(offset).map_err(io)?;
                    self.file.sync_data().map_err(io)?;
                    break;
                }
                Frame::Corrupt(_) if zeros_from(&mut self.file, offset).map_err(io)? => {
                    tracing::warn!(
                        path = %path.display(),
                        offset,
                        "audit spool ends in zeros (crash before the data reached the disk); cutting them off"
                    );
                    self.file.set_len(offset).map_err(io)?;
                    self.file.sync_data().map_err(io)?;
                    break;
                }
                Frame::Corrupt(why) => {
                    self.move_aside(offset, &why)?;
                    break;
                }
            }
        }
        self.len = offset;
        self.read_offset = 0;
        Ok(())
    }

    /// Renames the file to `<path>.corrupt-<ms>` (kept whole for forensics)
    /// and starts a new one holding its first `keep` bytes.
    fn move_aside(&mut self, keep: u64, why: &str) -> Result<(), AuditError> {
        let path = self.path.clone();
        let io = |e| AuditError::io(&path, e);
        let aside = with_suffix(&path, &format!(".corrupt-{}", unix_ms()));
        std::fs::rename(&path, &aside).map_err(io)?;
        tracing::error!(
            path = %path.display(),
            moved_to = %aside.display(),
            offset = keep,
            reason = why,
            "audit spool holds a corrupt record; the file is moved aside whole and the spool restarts with the records before `offset`"
        );
        let mut fresh = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        if keep > 0 {
            let mut old = File::open(&aside).map_err(|e| AuditError::io(&aside, e))?;
            std::io::copy(&mut (&mut old).take(keep), &mut fresh).map_err(io)?;
        }
        fresh.sync_all().map_err(io)?;
        self.file = fresh;
        self.set_aside += 1;
        Ok(())
    }

    fn empty(&mut self) -> Result<(), AuditError> {
        let io = |e| AuditError::io(&self.path, e);
        self.file.set_len(0).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.read_offset = 0;
        self.len = 0;
        Ok(())
    }
}

impl Spool {
    /// Opens (creating it and its directory when missing) the spool at `path`;
    /// anything already in it is checked and pending replay. No size cap.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Self::open_capped(path, u64::MAX)
    }

    /// [`Spool::open`], refusing appends that would grow the spool (or its
    /// dead-letter file) past `max_bytes`.
    pub fn open_capped(path: &Path, max_bytes: u64) -> Result<Self, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| AuditError::io(path, e))?;
        let mut spool = SpoolFile {
            path: path.to_path_buf(),
            file,
            read_offset: 0,
            len: 0,
            max_bytes,
            set_aside: 0,
            fault: None,
        };
        spool.recover()?;
        Ok(Self {
            inner: Arc::new(Mutex::new(spool)),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, SpoolFile> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether batches are waiting for replay.
    pub fn pending(&self) -> bool {
        let g = self.lock();
        g.read_offset < g.len
    }

    /// Bytes in the spool file (replayed records included until it empties).
    pub fn len_bytes(&self) -> u64 {
        self.lock().len
    }

    /// Records moved aside since open: corrupt files and undecodable records.
    pub fn set_aside(&self) -> u64 {
        self.lock().set_aside
    }

    /// Where batches the sink keeps rejecting, and records this build cannot
    /// read, are kept: `<spool>.dead`, in the spool's format.
    pub fn dead_letter_path(&self) -> PathBuf {
        with_suffix(&self.lock().path, ".dead")
    }

    /// Test hook: the next append writes `bytes` bytes, then fails as a full
    /// disk would.
    #[doc(hidden)]
    pub fn fail_next_append_after(&self, bytes: usize) {
        self.lock().fault = Some(bytes);
    }

    /// Appends one batch and fsyncs it; on failure nothing of it stays.
    /// Refused (`AuditError::SpoolFull`) when it would pass the size cap.
    pub async fn append(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        let frame = encode_frame(events)?;
        self.with(move |s| {
            if s.len.saturating_add(frame.len() as u64) > s.max_bytes {
                return Err(AuditError::SpoolFull {
                    path: s.path.clone(),
                    max_bytes: s.max_bytes,
                });
            }
            let fault = s.fault.take();
            write_frame_at(&mut s.file, &s.path, s.len, &frame, fault)?;
            s.len += frame.len() as u64;
            Ok(())
        })
        .await
    }

    /// Appends `events` to the dead-letter file (same format, same size cap).
    pub async fn dead_letter(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        let frame = encode_frame(events)?;
        self.with(move |s| append_frame_to(&with_suffix(&s.path, ".dead"), &frame, s.max_bytes))
            .await
    }

    /// The oldest batch not yet replayed, and where the next one starts.
    /// A record this build cannot decode goes to the dead-letter file and is
    /// skipped; a record changed under us moves the file aside.
    pub async fn peek(&self) -> Result<Option<(Vec<AuditEvent>, u64)>, AuditError> {
        self.with(|s| {
            loop {
                if s.read_offset >= s.len {
                    return Ok(None);
                }
                let (offset, len) = (s.read_offset, s.len);
                let frame = read_frame(&mut s.file, offset, len);
                match frame.map_err(|e| AuditError::io(&s.path, e))? {
                    Frame::Whole(payload, next) => match decode_payload(&payload) {
                        Ok(events) => return Ok(Some((events, next))),
                        Err(why) => {
                            let dead = with_suffix(&s.path, ".dead");
                            let mut raw = Vec::with_capacity(payload.len() + HEADER as usize);
                            raw.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                            raw.extend_from_slice(&fnv1a(&payload).to_le_bytes());
                            raw.extend_from_slice(&payload);
                            append_frame_to(&dead, &raw, u64::MAX)?;
                            tracing::error!(
                                path = %s.path.display(),
                                dead_letter = %dead.display(),
                                offset,
                                reason = %why,
                                "audit spool record cannot be read by this build; moved to the dead-letter file"
                            );
                            s.set_aside += 1;
                            s.read_offset = next;
                            if s.read_offset >= s.len {
                                s.empty()?;
                            }
                        }
                    },
                    Frame::Torn | Frame::Corrupt(_) => {
                        // Checked at open and appended whole since: the file
                        // was changed under us. Nothing in it is trusted for
                        // replay any more; all of it is kept aside.
                        s.move_aside(0, "record changed after it was written")?;
                        s.read_offset = 0;
                        s.len = 0;
                        return Ok(None);
                    }
                }
            }
        })
        .await
    }

    /// Marks everything before `next` replayed; empties the file once all is.
    pub async fn advance(&self, next: u64) -> Result<(), AuditError> {
        self.with(move |s| {
            s.read_offset = next.min(s.len);
            if s.read_offset >= s.len {
                s.empty()?;
            }
            Ok(())
        })
        .await
    }
}
