//! The audit log query (filters, keyset paging).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use portcullis::audit::{AuditQuery, Cursor, Decision};
use portcullis::service::Problem;
use serde::Deserialize;

use super::respond::{bad_param, json, no_audit_log, query};
use super::{AdminState, DEFAULT_PAGE};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditParams {
    subject: Option<String>,
    ip: Option<String>,
    path_prefix: Option<String>,
    /// RFC 3339.
    since: Option<String>,
    /// RFC 3339 (exclusive).
    until: Option<String>,
    status: Option<u16>,
    decision: Option<String>,
    code: Option<String>,
    #[serde(default)]
    anomalies: bool,
    #[serde(default)]
    rate_limited: bool,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// A decision filter (`allow` or `deny`), or 400.
pub(super) fn parse_decision(d: &str) -> Result<Decision, Problem> {
    Decision::parse(d).ok_or_else(|| bad_param("decision", "allow or deny"))
}

fn rfc3339(name: &str, text: Option<&str>) -> Result<Option<i64>, Problem> {
    text.map(|t| {
        portcullis_core::audit::time::parse_rfc3339(t)
            .ok_or_else(|| bad_param(name, "an RFC 3339 time such as 2026-11-29T00:00:00Z"))
    })
    .transpose()
}

pub(super) async fn query_audit(
    State(s): State<AdminState>,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let p = query(params)?;
    let Some(store) = &s.audit_store else {
        return Err(no_audit_log());
    };
    let decision = p.decision.as_deref().map(parse_decision).transpose()?;
    let cursor = p
        .cursor
        .as_deref()
        .map(|c| Cursor::decode(c).map_err(|e| bad_param("cursor", &e.to_string())))
        .transpose()?;
    let query = AuditQuery {
        subject: p.subject,
        client_ip: p.ip,
        path_prefix: p.path_prefix,
        since_us: rfc3339("since", p.since.as_deref())?,
        until_us: rfc3339("until", p.until.as_deref())?,
        status: p.status,
        decision,
        code: p.code,
        anomalies_only: p.anomalies,
        rate_limited_only: p.rate_limited,
        limit: p.limit.unwrap_or(DEFAULT_PAGE),
        cursor,
    };
    query
        .validate()
        .map_err(|e| bad_param("query", &e.to_string()))?;
    let page = store
        .query(&query)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"events": page.events, "next": page.next}),
    ))
}
