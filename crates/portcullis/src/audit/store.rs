//! What the writer writes to ([`AuditSink`]) and what answers queries
//! ([`AuditStore`]), and the one error type of the audit runtime.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use portcullis_core::audit::AuditEvent;
use portcullis_core::audit::query::{AuditPage, AuditQuery, QueryError};

/// A boxed, sendable future (keeps the sink traits object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an audit operation failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database refused or could not be reached; the writer spools and retries.
    #[error(
        "audit database error: {0}; check that the database is up and the audit role may insert and select"
    )]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A local file (spool, JSON Lines) could not be used.
    #[error("audit file `{path}`: {source}; check the path, its permissions and free space")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The query is invalid.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// Stored data could not be read back.
    #[error("audit data is corrupt: {0}")]
    Corrupt(String),
    /// The configuration is invalid.
    #[error("invalid audit configuration: {0}")]
    Config(String),
}

impl AuditError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl From<sqlx::Error> for AuditError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(Box::new(e))
    }
}

/// Where the writer puts batches of events.
pub trait AuditSink: Send + Sync + 'static {
    /// Writes a batch durably, all or nothing. Writing an event whose id is
    /// already stored must be a no-op (spool replays rely on it).
    fn write_batch<'a>(&'a self, events: &'a [AuditEvent])
    -> BoxFuture<'a, Result<(), AuditError>>;

    /// Deletes events older than `before_us`; returns how many. Sinks that
    /// cannot delete (files, stdout) return 0.
    fn prune(&self, before_us: i64) -> BoxFuture<'_, Result<u64, AuditError>> {
        let _ = before_us;
        Box::pin(async { Ok(0) })
    }
}

/// A sink that can answer queries.
pub trait AuditStore: Send + Sync {
    /// One page of events matching `query`, newest first.
    fn query<'a>(&'a self, query: &'a AuditQuery) -> BoxFuture<'a, Result<AuditPage, AuditError>>;
}
