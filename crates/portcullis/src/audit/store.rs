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
    /// The sink refused the batch's content (a constraint or data error):
    /// retrying the same batch will not help. The writer retries it a few
    /// times, then moves it to the dead-letter file.
    #[error(
        "audit sink rejected the batch: {0}; it is retried, then kept in the spool's dead-letter file"
    )]
    Rejected(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The sink did not answer in time; the writer spools and retries.
    #[error(
        "audit sink did not answer within {0:?}; check that the database is up and not overloaded"
    )]
    Timeout(std::time::Duration),
    /// The spool (or its dead-letter file) is at its size cap.
    #[error(
        "audit spool `{path}` is at its cap of {max_bytes} bytes; the audit database has been down too long or keeps refusing events"
    )]
    SpoolFull {
        /// The spool or dead-letter file.
        path: PathBuf,
        /// The cap (`AuditWriterConfig::spool_max_bytes`).
        max_bytes: u64,
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
    /// Whether the sink refused the content (retrying the same batch cannot help).
    pub fn is_rejection(&self) -> bool {
        matches!(self, Self::Rejected(_))
    }

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
        if rejects_content(&e) {
            Self::Rejected(Box::new(e))
        } else {
            Self::Database(Box::new(e))
        }
    }
}

/// Whether the database refused the data itself (not the connection, a
/// lock or a privilege, which pass): PostgreSQL classes 22 (data
/// exception), 23 (constraint, but not the unique violation a replay
/// meets) and 54 (limit exceeded); SQLite `TOOBIG`, `CONSTRAINT`,
/// `MISMATCH` and `RANGE`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn rejects_content(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else {
        return false;
    };
    let Some(code) = db.code() else {
        return false;
    };
    #[cfg(feature = "postgres")]
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        return code != "23505" && ["22", "23", "54"].iter().any(|c| code.starts_with(c));
    }
    #[cfg(feature = "sqlite")]
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        return code
            .parse::<i32>()
            .is_ok_and(|c| matches!(c & 0xff, 18 | 19 | 20 | 25));
    }
    let _ = code;
    false
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
