//! The SQLite audit store (the embedded default): WAL, one multi-row insert
//! transaction per batch, `ON CONFLICT (ts_us, id) DO NOTHING` so replays are idempotent.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use portcullis_core::audit::query::{AuditPage, AuditQuery};
use portcullis_core::audit::{AuditEvent, Grants};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::{AuditError, AuditSink, AuditStore, BoxFuture, COLUMNS, sql};

/// Rows per INSERT statement (24 columns: well under SQLite's 32 766
/// variables), largest first. A batch is split into statements of these
/// sizes (at most one of each size below the largest), so only these nine
/// statement texts exist: each is parsed once and then found in the
/// connection's statement cache. A statement sized to each batch was parsed
/// anew for almost every batch (batch sizes vary with load), which cost more
/// than the insert itself.
const STATEMENT_ROWS: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

/// `events` cut into chunks of [`STATEMENT_ROWS`] sizes, in order.
fn statement_chunks<T>(mut events: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = STATEMENT_ROWS
            .iter()
            .copied()
            .find(|&rows| rows <= events.len())?;
        let (chunk, rest) = events.split_at(size);
        events = rest;
        Some(chunk)
    })
}

/// Rows deleted per prune statement.
pub const PRUNE_CHUNK: i64 = 10_000;

/// Schema version this code writes (kept in `portcullis_audit_schema`).
pub const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS portcullis_audit_schema (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_events (
        id TEXT NOT NULL,
        ts_us INTEGER NOT NULL,
        kind TEXT NOT NULL,
        request_id TEXT,
        client_ip TEXT,
        method TEXT,
        route TEXT,
        path TEXT,
        status INTEGER,
        latency_us INTEGER,
        upstream_latency_us INTEGER,
        subject TEXT,
        tenant TEXT,
        auth_method TEXT,
        credential_id TEXT,
        decision TEXT NOT NULL,
        code TEXT,
        rate_limit_remaining INTEGER,
        anomaly_flags TEXT,
        user_agent TEXT,
        reason TEXT,
        host TEXT,
        grants TEXT,
        guard TEXT,
        PRIMARY KEY (ts_us, id)
    )",
    "CREATE INDEX IF NOT EXISTS audit_events_ts_subject ON audit_events (ts_us, subject)",
    "CREATE INDEX IF NOT EXISTS audit_events_ts_client_ip ON audit_events (ts_us, client_ip)",
    "CREATE INDEX IF NOT EXISTS audit_events_ts_code ON audit_events (ts_us, code)",
];

/// Audit events in a SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteAudit {
    pool: SqlitePool,
}

impl SqliteAudit {
    /// Opens (creating when missing) the database at `path` and its tables,
    /// waiting up to `busy_timeout` for a lock held by another connection.
    pub async fn open(path: &Path, busy_timeout: Duration) -> Result<Self, AuditError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy_timeout);
        Self::connect_with(options).await
    }

    /// Opens a `sqlite:` URL (e.g. `sqlite://audit.db?mode=rwc`).
    pub async fn open_url(url: &str) -> Result<Self, AuditError> {
        let options = SqliteConnectOptions::from_str(url)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        Self::connect_with(options).await
    }

    async fn connect_with(options: SqliteConnectOptions) -> Result<Self, AuditError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let this = Self { pool };
        this.migrate().await?;
        Ok(this)
    }

    /// Creates the tables and indexes when missing (idempotent; separate
    /// from the stores' migrations, so both can share one database).
    pub async fn migrate(&self) -> Result<(), AuditError> {
        let mut tx = self.pool.begin().await?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&mut *tx).await?;
        }
        let have: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM portcullis_audit_schema")
                .fetch_one(&mut *tx)
                .await?;
        match have {
            None => {
                sqlx::query("INSERT INTO portcullis_audit_schema (version) VALUES (?)")
                    .bind(SCHEMA_VERSION)
                    .execute(&mut *tx)
                    .await?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(AuditError::Config(format!(
                    "audit schema version {v} is newer than this build ({SCHEMA_VERSION}); upgrade portcullis"
                )));
            }
            Some(v) if v < SCHEMA_VERSION => {
                // Version 2 adds `reason`; version 3 `host`, `grants` and `guard`
                // (rows written before keep NULL there).
                for column in ["reason", "host", "grants", "guard"] {
                    let has: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM pragma_table_info('audit_events') WHERE name = ?",
                    )
                    .bind(column)
                    .fetch_one(&mut *tx)
                    .await?;
                    if has == 0 {
                        sqlx::query(&format!(
                            "ALTER TABLE audit_events ADD COLUMN {column} TEXT"
                        ))
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                sqlx::query("UPDATE portcullis_audit_schema SET version = ?")
                    .bind(SCHEMA_VERSION)
                    .execute(&mut *tx)
                    .await?;
            }
            Some(_) => {}
        }
        tx.commit().await?;
        Ok(())
    }

    /// The connection pool (for tests and tools).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn insert(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        let mut tx = self.pool.begin().await?;
        for chunk in statement_chunks(events) {
            let mut qb: QueryBuilder<'_, Sqlite> =
                QueryBuilder::new(format!("INSERT INTO audit_events ({COLUMNS}) "));
            qb.push_values(chunk, |mut b, e| {
                b.push_bind(e.id.as_str())
                    .push_bind(e.ts_us)
                    .push_bind(e.kind.as_str())
                    .push_bind(e.request_id.as_deref())
                    .push_bind(e.client_ip.as_deref())
                    .push_bind(e.method.as_deref())
                    .push_bind(e.route.as_deref())
                    .push_bind(e.path.as_deref())
                    .push_bind(e.status.map(i64::from))
                    .push_bind(e.latency_us)
                    .push_bind(e.upstream_latency_us)
                    .push_bind(e.subject.as_deref())
                    .push_bind(e.tenant.as_deref())
                    .push_bind(e.auth_method.as_deref())
                    .push_bind(e.credential_id.as_deref())
                    .push_bind(e.decision.as_str())
                    .push_bind(e.code.as_deref())
                    .push_bind(e.rate_limit_remaining)
                    .push_bind(e.anomaly_flags_text())
                    .push_bind(e.user_agent.as_deref())
                    .push_bind(e.reason.as_deref())
                    .push_bind(e.host.as_deref())
                    .push_bind(e.grants.as_ref().map(Grants::to_text))
                    .push_bind(e.guard.as_deref());
            });
            qb.push(" ON CONFLICT (ts_us, id) DO NOTHING");
            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes events older than `before_us`, [`PRUNE_CHUNK`] rows per
    /// statement (each its own transaction, so writers wait for one chunk
    /// at most); returns how many.
    pub async fn prune_before(&self, before_us: i64) -> Result<u64, AuditError> {
        self.prune_before_with(before_us, |_| {}).await
    }

    /// Like [`Self::prune_before`], calling `progress` with the running
    /// total after each chunk (a long prune can say how far it got).
    pub async fn prune_before_with(
        &self,
        before_us: i64,
        progress: impl FnMut(u64) + Send,
    ) -> Result<u64, AuditError> {
        sql::prune_in_chunks(
            &self.pool,
            "DELETE FROM audit_events WHERE rowid IN \
             (SELECT rowid FROM audit_events WHERE ts_us < ? ORDER BY ts_us LIMIT ?)",
            before_us,
            PRUNE_CHUNK,
            progress,
        )
        .await
    }

    /// One page of events, newest first.
    pub async fn query_page(&self, query: &AuditQuery) -> Result<AuditPage, AuditError> {
        let mut qb = sql::page_query::<Sqlite>(query)?;
        let rows = qb.build().fetch_all(&self.pool).await?;
        sql::page_of(&rows, query.limit)
    }
}

impl AuditSink for SqliteAudit {
    fn write_batch<'a>(
        &'a self,
        events: &'a [AuditEvent],
    ) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(self.insert(events))
    }

    fn prune(&self, before_us: i64) -> BoxFuture<'_, Result<u64, AuditError>> {
        Box::pin(self.prune_before(before_us))
    }
}

impl AuditStore for SqliteAudit {
    fn query<'a>(&'a self, query: &'a AuditQuery) -> BoxFuture<'a, Result<AuditPage, AuditError>> {
        Box::pin(self.query_page(query))
    }
}

#[cfg(test)]
mod statement_tests {
    use super::*;

    #[test]
    fn batches_split_into_the_few_cached_statement_sizes() {
        for n in [0usize, 1, 3, 255, 256, 257, 1000, 1023] {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = statement_chunks(&rows).collect();
            assert_eq!(chunks.concat(), rows, "every row once, in order ({n})");
            assert!(chunks.iter().all(|c| STATEMENT_ROWS.contains(&c.len())));
            let small = chunks.iter().filter(|c| c.len() < 256).count();
            assert!(small <= 8, "{n} rows: {small} small statements");
        }
    }
}
