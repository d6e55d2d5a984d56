//! The audit log's I/O shell: a non-blocking [`writer::AuditWriter`] that
//! batches events into a sink (SQLite, PostgreSQL, JSON Lines, stdout),
//! spools to local disk while the sink is down, and stores that answer
//! [`AuditQuery`](portcullis_core::audit::query::AuditQuery)s.

pub mod jsonl;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod request;
pub mod spool;
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

/// Appends the WHERE clause, order and limit of `q` to a query builder
/// (identical SQL on SQLite and PostgreSQL; placeholders come from the builder).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! push_query {
    ($qb:expr, $q:expr) => {{
        let q: &portcullis_core::audit::query::AuditQuery = $q;
        let qb = $qb;
        qb.push(" WHERE 1=1");
        if let Some(v) = &q.subject {
            qb.push(" AND subject = ").push_bind(v.clone());
        }
        if let Some(v) = &q.client_ip {
            qb.push(" AND client_ip = ").push_bind(v.clone());
        }
        if let Some(v) = &q.path_prefix {
            qb.push(format!(" AND substr(path, 1, {}) = ", v.chars().count()))
                .push_bind(v.clone());
        }
        if let Some(v) = q.since_us {
            qb.push(" AND ts_us >= ").push_bind(v);
        }
        if let Some(v) = q.until_us {
            qb.push(" AND ts_us < ").push_bind(v);
        }
        if let Some(v) = q.status {
            qb.push(" AND status = ").push_bind(i64::from(v));
        }
        if let Some(v) = q.decision {
            qb.push(" AND decision = ").push_bind(v.as_str().to_owned());
        }
        if let Some(v) = &q.code {
            qb.push(" AND code = ").push_bind(v.clone());
        }
        if q.anomalies_only {
            qb.push(" AND anomaly_flags IS NOT NULL");
        }
        if q.rate_limited_only {
            qb.push(" AND code = ").push_bind(
                portcullis_core::ErrorCode::RateLimitExceeded
                    .as_str()
                    .to_owned(),
            );
        }
        if let Some(c) = &q.cursor {
            qb.push(" AND (ts_us < ")
                .push_bind(c.ts_us)
                .push(" OR (ts_us = ")
                .push_bind(c.ts_us)
                .push(" AND id < ")
                .push_bind(c.id.clone())
                .push("))");
        }
        qb.push(" ORDER BY ts_us DESC, id DESC LIMIT ");
        qb.push_bind(i64::try_from(q.limit).unwrap_or(1000) + 1);
    }};
}
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use push_query;

/// Decodes one `audit_events` row (selected with [`COLUMNS`]).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! decode_row {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        (|| -> Result<portcullis_core::audit::AuditEvent, $crate::audit::AuditError> {
            let kind: String = row.try_get("kind")?;
            let decision: String = row.try_get("decision")?;
            let status: Option<i64> = row.try_get("status")?;
            let flags: Option<String> = row.try_get("anomaly_flags")?;
            let grants: Option<String> = row.try_get("grants")?;
            Ok(portcullis_core::audit::AuditEvent {
                id: row.try_get("id")?,
                ts_us: row.try_get("ts_us")?,
                kind: portcullis_core::audit::EventKind::parse(&kind).ok_or_else(|| {
                    $crate::audit::AuditError::Corrupt(format!("unknown kind `{kind}`"))
                })?,
                request_id: row.try_get("request_id")?,
                client_ip: row.try_get("client_ip")?,
                method: row.try_get("method")?,
                route: row.try_get("route")?,
                path: row.try_get("path")?,
                status: status.and_then(|s| u16::try_from(s).ok()),
                latency_us: row.try_get("latency_us")?,
                upstream_latency_us: row.try_get("upstream_latency_us")?,
                subject: row.try_get("subject")?,
                tenant: row.try_get("tenant")?,
                auth_method: row.try_get("auth_method")?,
                credential_id: row.try_get("credential_id")?,
                decision: portcullis_core::audit::Decision::parse(&decision).ok_or_else(|| {
                    $crate::audit::AuditError::Corrupt(format!("unknown decision `{decision}`"))
                })?,
                code: row.try_get("code")?,
                rate_limit_remaining: row.try_get("rate_limit_remaining")?,
                anomaly_flags: portcullis_core::audit::AuditEvent::parse_anomaly_flags(
                    flags.as_deref(),
                ),
                user_agent: row.try_get("user_agent")?,
                reason: row.try_get("reason")?,
                host: row.try_get("host")?,
                guard: row.try_get("guard")?,
                // Unreadable grants read as not recorded (a replay says so).
                grants: grants
                    .as_deref()
                    .and_then(portcullis_core::audit::Grants::parse),
            })
        })()
    }};
}
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use decode_row;
