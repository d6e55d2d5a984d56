//! The PostgreSQL audit store. A batch is written with `COPY ... FROM STDIN`
//! (text format; batches of 2 000 or more as two concurrent halves); a piece that
//! hits an id already stored (a replay) is retried with
//! `INSERT ... SELECT FROM UNNEST(arrays) ON CONFLICT (ts_us, id) DO NOTHING`,
//! so replays are idempotent. PostgreSQL text cannot hold NUL, so a NUL
//! in any field is stored as U+FFFD instead of failing the batch. Prune
//! deletes in chunks of [`PRUNE_CHUNK`] rows.

use std::borrow::Cow;
use std::time::Duration;

use portcullis_core::audit::query::{AuditPage, AuditQuery};
use portcullis_core::audit::{AuditEvent, Grants};
use sqlx::postgres::{PgConnectOptions, PgPoolCopyExt, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use super::{AuditError, AuditSink, AuditStore, BoxFuture, COLUMNS, sql};

/// Schema version this code writes (kept in `portcullis_audit_schema`).
pub const SCHEMA_VERSION: i64 = 3;

/// Serialises concurrent schema creation by several replicas.
const MIGRATION_LOCK: i64 = 0x5043_4155_4449_5431; // "PCAUDIT1"

/// Indexed text columns compare bytewise (`COLLATE "C"`): faster, and the
/// same order as the keyset cursor's, whatever the database locale.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS portcullis_audit_schema (version BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_events (
        id TEXT NOT NULL COLLATE \"C\",
        ts_us BIGINT NOT NULL,
        kind TEXT NOT NULL,
        request_id TEXT,
        client_ip TEXT COLLATE \"C\",
        method TEXT,
        route TEXT,
        path TEXT,
        status BIGINT,
        latency_us BIGINT,
        upstream_latency_us BIGINT,
        subject TEXT COLLATE \"C\",
        tenant TEXT,
        auth_method TEXT,
        credential_id TEXT,
        decision TEXT NOT NULL,
        code TEXT COLLATE \"C\",
        rate_limit_remaining BIGINT,
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

const INSERT: &str = "INSERT INTO audit_events (id, ts_us, kind, request_id, client_ip, method, \
    route, path, status, latency_us, upstream_latency_us, subject, tenant, auth_method, \
    credential_id, decision, code, rate_limit_remaining, anomaly_flags, user_agent, reason, \
    host, grants, guard) \
    SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
    $6::text[], $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], \
    $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], \
    $18::bigint[], $19::text[], $20::text[], $21::text[], $22::text[], $23::text[], $24::text[]) \
    ON CONFLICT (ts_us, id) DO NOTHING";

/// Rows deleted per prune statement (short transactions, bounded WAL and locks).
pub const PRUNE_CHUNK: i64 = 10_000;

const PRUNE: &str = "DELETE FROM audit_events WHERE (ts_us, id) IN \
    (SELECT ts_us, id FROM audit_events WHERE ts_us < $1 ORDER BY ts_us LIMIT $2)";

/// What a NUL becomes (PostgreSQL text cannot hold NUL).
const NUL_REPLACEMENT: &str = "\u{fffd}";

/// `events` with every NUL replaced by U+FFFD; borrowed when there is none
/// (the common case costs one scan).
fn without_nul(events: &[AuditEvent]) -> Cow<'_, [AuditEvent]> {
    fn has_nul(e: &AuditEvent) -> bool {
        let opt = |v: &Option<String>| v.as_deref().is_some_and(|t| t.contains('\0'));
        e.id.contains('\0')
            || opt(&e.request_id)
            || opt(&e.client_ip)
            || opt(&e.method)
            || opt(&e.route)
            || opt(&e.path)
            || opt(&e.subject)
            || opt(&e.tenant)
            || opt(&e.auth_method)
            || opt(&e.credential_id)
            || opt(&e.code)
            || opt(&e.user_agent)
            || opt(&e.reason)
            || opt(&e.host)
            || opt(&e.guard)
            || e.anomaly_flags.iter().any(|f| f.contains('\0'))
    }
    fn clean(e: &AuditEvent) -> AuditEvent {
        let fix = |v: &Option<String>| v.as_ref().map(|t| t.replace('\0', NUL_REPLACEMENT));
        AuditEvent {
            id: e.id.replace('\0', NUL_REPLACEMENT),
            request_id: fix(&e.request_id),
            client_ip: fix(&e.client_ip),
            method: fix(&e.method),
            route: fix(&e.route),
            path: fix(&e.path),
            subject: fix(&e.subject),
            tenant: fix(&e.tenant),
            auth_method: fix(&e.auth_method),
            credential_id: fix(&e.credential_id),
            code: fix(&e.code),
            user_agent: fix(&e.user_agent),
            reason: fix(&e.reason),
            host: fix(&e.host),
            guard: fix(&e.guard),
            anomaly_flags: e
                .anomaly_flags
                .iter()
                .map(|f| f.replace('\0', NUL_REPLACEMENT))
                .collect(),
            ..e.clone()
        }
    }
    if events.iter().any(has_nul) {
        Cow::Owned(events.iter().map(clean).collect())
    } else {
        Cow::Borrowed(events)
    }
}

/// Below this many events per half, a batch is written in one piece (at
/// 1 000 events, two concurrent halves measured slower than one COPY).
const MIN_HALF: usize = 1000;

/// Appends `value` as a COPY text field (`\N` for NULL; backslash, tab,
/// newline and carriage return escaped).
fn push_field(out: &mut String, value: Option<&str>) {
    let Some(v) = value else {
        out.push_str("\\N");
        return;
    };
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// The batch as COPY text rows, columns in [`COLUMNS`] order.
fn copy_text(events: &[AuditEvent]) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(events.len() * 256);
    for e in events {
        let text = |out: &mut String, v: Option<&str>| {
            push_field(out, v);
            out.push('\t');
        };
        let int = |out: &mut String, v: Option<i64>| {
            match v {
                Some(n) => {
                    let _ = write!(out, "{n}");
                }
                None => out.push_str("\\N"),
            }
            out.push('\t');
        };
        text(&mut out, Some(&e.id));
        int(&mut out, Some(e.ts_us));
        text(&mut out, Some(e.kind.as_str()));
        text(&mut out, e.request_id.as_deref());
        text(&mut out, e.client_ip.as_deref());
        text(&mut out, e.method.as_deref());
        text(&mut out, e.route.as_deref());
        text(&mut out, e.path.as_deref());
        int(&mut out, e.status.map(i64::from));
        int(&mut out, e.latency_us);
        int(&mut out, e.upstream_latency_us);
        text(&mut out, e.subject.as_deref());
        text(&mut out, e.tenant.as_deref());
        text(&mut out, e.auth_method.as_deref());
        text(&mut out, e.credential_id.as_deref());
        text(&mut out, Some(e.decision.as_str()));
        text(&mut out, e.code.as_deref());
        int(&mut out, e.rate_limit_remaining);
        text(&mut out, e.anomaly_flags_text().as_deref());
        text(&mut out, e.user_agent.as_deref());
        text(&mut out, e.reason.as_deref());
        text(&mut out, e.host.as_deref());
        text(&mut out, e.grants.as_ref().map(Grants::to_text).as_deref());
        push_field(&mut out, e.guard.as_deref());
        out.push('\n');
    }
    out.into_bytes()
}

/// Audit events in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresAudit {
    pool: PgPool,
}

impl PostgresAudit {
    /// Connects and creates the tables when missing.
    pub async fn open(url: &str) -> Result<Self, AuditError> {
        let this = Self::connect(url).await?;
        this.migrate().await?;
        Ok(this)
    }

    /// Connects without touching the schema (for a writer role that may
    /// only insert and select).
    pub async fn connect(url: &str) -> Result<Self, AuditError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    /// Creates the tables and indexes when missing, under an advisory lock
    /// (idempotent; separate from the stores' migrations).
    pub async fn migrate(&self) -> Result<(), AuditError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&mut *tx).await?;
        }
        let have: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM portcullis_audit_schema")
                .fetch_one(&mut *tx)
                .await?;
        match have {
            None => {
                sqlx::query("INSERT INTO portcullis_audit_schema (version) VALUES ($1)")
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
                    sqlx::query(&format!(
                        "ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS {column} TEXT"
                    ))
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query("UPDATE portcullis_audit_schema SET version = $1")
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
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn write(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        let events = without_nul(events);
        let events = &events[..];
        if events.len() < 2 * MIN_HALF {
            return self.copy_or_insert(events).await;
        }
        let (a, b) = events.split_at(events.len() / 2);
        let (ra, rb) = tokio::join!(self.copy_or_insert(a), self.copy_or_insert(b));
        ra.and(rb)
    }

    async fn copy_or_insert(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        match self.copy(events).await {
            Ok(()) => Ok(()),
            Err(e)
                if e.as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| c == "23505") =>
            {
                self.insert(events).await
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn copy(&self, events: &[AuditEvent]) -> Result<(), sqlx::Error> {
        let data = copy_text(events);
        let mut copy = self
            .pool
            .copy_in_raw(&format!("COPY audit_events ({COLUMNS}) FROM STDIN"))
            .await?;
        if let Err(e) = copy.send(data).await {
            let _ = copy.abort("audit batch send failed").await;
            return Err(e);
        }
        copy.finish().await?;
        Ok(())
    }

    async fn insert(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        fn col<'e, T>(events: &'e [AuditEvent], f: impl Fn(&'e AuditEvent) -> T) -> Vec<T> {
            events.iter().map(f).collect()
        }
        sqlx::query(INSERT)
            .bind(col(events, |e| e.id.as_str()))
            .bind(col(events, |e| e.ts_us))
            .bind(col(events, |e| e.kind.as_str()))
            .bind(col(events, |e| e.request_id.as_deref()))
            .bind(col(events, |e| e.client_ip.as_deref()))
            .bind(col(events, |e| e.method.as_deref()))
            .bind(col(events, |e| e.route.as_deref()))
            .bind(col(events, |e| e.path.as_deref()))
            .bind(col(events, |e| e.status.map(i64::from)))
            .bind(col(events, |e| e.latency_us))
            .bind(col(events, |e| e.upstream_latency_us))
            .bind(col(events, |e| e.subject.as_deref()))
            .bind(col(events, |e| e.tenant.as_deref()))
            .bind(col(events, |e| e.auth_method.as_deref()))
            .bind(col(events, |e| e.credential_id.as_deref()))
            .bind(col(events, |e| e.decision.as_str()))
            .bind(col(events, |e| e.code.as_deref()))
            .bind(col(events, |e| e.rate_limit_remaining))
            .bind(col(events, AuditEvent::anomaly_flags_text))
            .bind(col(events, |e| e.user_agent.as_deref()))
            .bind(col(events, |e| e.reason.as_deref()))
            .bind(col(events, |e| e.host.as_deref()))
            .bind(col(events, |e| e.grants.as_ref().map(Grants::to_text)))
            .bind(col(events, |e| e.guard.as_deref()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes events older than `before_us`, [`PRUNE_CHUNK`] rows per
    /// statement (each its own transaction); returns how many.
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
        sql::prune_in_chunks(&self.pool, PRUNE, before_us, PRUNE_CHUNK, progress).await
    }

    /// One page of events, newest first.
    pub async fn query_page(&self, query: &AuditQuery) -> Result<AuditPage, AuditError> {
        let mut qb = sql::page_query::<Postgres>(query)?;
        let rows = qb.build().fetch_all(&self.pool).await?;
        sql::page_of(&rows, query.limit)
    }
}

impl AuditSink for PostgresAudit {
    fn write_batch<'a>(
        &'a self,
        events: &'a [AuditEvent],
    ) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(self.write(events))
    }

    fn prune(&self, before_us: i64) -> BoxFuture<'_, Result<u64, AuditError>> {
        Box::pin(self.prune_before(before_us))
    }
}

impl AuditStore for PostgresAudit {
    fn query<'a>(&'a self, query: &'a AuditQuery) -> BoxFuture<'a, Result<AuditPage, AuditError>> {
        Box::pin(self.query_page(query))
    }
}
