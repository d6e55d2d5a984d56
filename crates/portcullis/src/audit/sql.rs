//! What the SQLite and PostgreSQL audit stores share: the query page (its
//! WHERE clause, order and limit, identical SQL on both; placeholders come
//! from the builder), the row decoding and the chunked prune loop.

use portcullis_core::audit::query::{AuditPage, AuditQuery};
use portcullis_core::audit::{AuditEvent, Decision, EventKind, Grants};
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Row, Type,
};

use super::{AuditError, COLUMNS};
use crate::stores::sql::SqlDb;

/// Appends the WHERE clause, order and limit of `q` to a query builder
/// (identical SQL on SQLite and PostgreSQL; placeholders come from the builder).
fn push_query<'a, DB>(qb: &mut QueryBuilder<'a, DB>, q: &AuditQuery)
where
    DB: Database,
    String: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
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
}

/// Decodes one `audit_events` row (selected with [`COLUMNS`]).
fn decode_row<'r, R>(row: &'r R) -> Result<AuditEvent, AuditError>
where
    R: Row,
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let kind: String = row.try_get("kind")?;
    let decision: String = row.try_get("decision")?;
    let status: Option<i64> = row.try_get("status")?;
    let flags: Option<String> = row.try_get("anomaly_flags")?;
    let grants: Option<String> = row.try_get("grants")?;
    Ok(AuditEvent {
        id: row.try_get("id")?,
        ts_us: row.try_get("ts_us")?,
        kind: EventKind::parse(&kind)
            .ok_or_else(|| AuditError::Corrupt(format!("unknown kind `{kind}`")))?,
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
        decision: Decision::parse(&decision)
            .ok_or_else(|| AuditError::Corrupt(format!("unknown decision `{decision}`")))?,
        code: row.try_get("code")?,
        rate_limit_remaining: row.try_get("rate_limit_remaining")?,
        anomaly_flags: AuditEvent::parse_anomaly_flags(flags.as_deref()),
        user_agent: row.try_get("user_agent")?,
        reason: row.try_get("reason")?,
        host: row.try_get("host")?,
        guard: row.try_get("guard")?,
        // Unreadable grants read as not recorded (a replay says so).
        grants: grants.as_deref().and_then(Grants::parse),
    })
}

/// The query for one page of events, newest first (validated first).
/// Each backend runs it on its own pool: a generic function cannot borrow
/// the builder for as long as the driver's arguments need.
pub(crate) fn page_query<'a, DB>(query: &AuditQuery) -> Result<QueryBuilder<'a, DB>, AuditError>
where
    DB: Database,
    String: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    query.validate()?;
    let mut qb = QueryBuilder::new(format!("SELECT {COLUMNS} FROM audit_events"));
    push_query(&mut qb, query);
    Ok(qb)
}

/// The page of events `rows` (fetched by [`page_query`]) hold.
pub(crate) fn page_of<R>(rows: &[R], limit: usize) -> Result<AuditPage, AuditError>
where
    R: Row,
    for<'r> &'r str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let events = rows
        .iter()
        .map(|row| decode_row(row))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AuditPage::from_rows(events, limit))
}

/// Runs the prune `DELETE` (its first placeholder bound to `before_us`, its
/// second to `chunk`) until it deletes fewer than `chunk` rows, each
/// statement its own transaction, calling `progress` with the running total
/// after each full chunk; returns how many.
pub(crate) async fn prune_in_chunks<DB>(
    pool: &Pool<DB>,
    sql: &'static str,
    before_us: i64,
    chunk: i64,
    mut progress: impl FnMut(u64) + Send,
) -> Result<u64, AuditError>
where
    DB: SqlDb,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    let mut total = 0;
    loop {
        let done = DB::rows_affected(
            &sqlx::query(sql)
                .bind(before_us)
                .bind(chunk)
                .execute(pool)
                .await?,
        );
        total += done;
        if done < chunk as u64 {
            return Ok(total);
        }
        progress(total);
        tokio::task::yield_now().await;
    }
}
