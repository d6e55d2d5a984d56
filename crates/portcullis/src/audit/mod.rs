//! The audit log's I/O shell: a non-blocking [`writer::AuditWriter`] that
//! batches events into a sink (SQLite, PostgreSQL, JSON Lines, stdout),
//! spools to local disk while the sink is down, and stores that answer
//! [`AuditQuery`](portcullis_core::audit::query::AuditQuery)s.

pub mod jsonl;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod request;
pub mod spool;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod stdout;
pub mod store;
pub mod writer;

pub use portcullis_core::audit::query::{AuditPage, AuditQuery, Cursor, QueryError};
pub use portcullis_core::audit::{AuditEvent, Decision, EventKind};
pub use store::{AuditError, AuditSink, AuditStore, BoxFuture};
pub use writer::{
    AuditStats, AuditWriter, AuditWriterConfig, FullPolicy, LIVE_BUFFER, LiveEvent, LiveEvents,
    PrunePolicy, Recorded,
};

/// Columns of the `audit_events` table, in insert order (shared by the SQL stores).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) const COLUMNS: &str = "id, ts_us, kind, request_id, client_ip, method, route, path, status, \
     latency_us, upstream_latency_us, subject, tenant, auth_method, credential_id, decision, code, \
     rate_limit_remaining, anomaly_flags, user_agent, reason, host, grants, guard";
