//! The live audit stream (Server-Sent Events), and the checks that keep
//! an open stream answering to the key that opened it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis::audit::LiveEvent;
use portcullis::service::Problem;
use portcullis::stores::Stores;
use serde::Deserialize;

use super::audit::parse_decision;
use super::respond::{no_audit_log, query};
use super::{AdminState, STORE_BUDGET};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamParams {
    route: Option<String>,
    decision: Option<String>,
    subject: Option<String>,
    code: Option<String>,
}

impl StreamParams {
    fn matches(&self, e: &portcullis::audit::AuditEvent) -> bool {
        self.route
            .as_ref()
            .is_none_or(|r| e.route.as_ref() == Some(r))
            && self
                .decision
                .as_ref()
                .is_none_or(|d| e.decision.as_str() == d)
            && self
                .subject
                .as_ref()
                .is_none_or(|x| e.subject.as_ref() == Some(x))
            && self
                .code
                .as_ref()
                .is_none_or(|c| e.code.as_ref() == Some(c))
    }
}

/// How often an idle stream sends a comment (proxies close silent ones).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /admin/audit/stream`: every audit event as it is recorded, as
/// Server-Sent Events (`event: decision`, the event as JSON). A client
/// that reads too slowly skips ahead (`event: skipped`, how many) rather
/// than holding anything up: the gateway keeps at most
/// [`portcullis::audit::LIVE_BUFFER`] events for all streams together.
///
/// The stream answers to the key that opened it: checked again every
/// second, it ends with `event: revoked` once the key is revoked or
/// expires. Open streams are capped per key and in total (429).
pub(super) async fn audit_stream(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
    params: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let filter = query(params)?;
    if let Some(d) = &filter.decision {
        parse_decision(d)?;
    }
    let Some(writer) = &s.audit else {
        return Err(no_audit_log());
    };
    // The guard let this key in; its id names the per-key cap, and the
    // stream checks it again every second.
    let key = presented_api_key(&headers).unwrap_or_default();
    let record =
        portcullis::stores::hook::within_budget(STORE_BUDGET, s.stores.verify_api_key(&key))
            .await
            .map_err(Problem::from)?;
    let slot = s.streams.acquire(&record.id).map_err(|refused| {
        let detail = match refused {
            crate::ops::live_stream::SlotRefused::Total(n) => format!(
                "{n} live streams are open on this gateway (server.admin_streams); close one or retry later"
            ),
            crate::ops::live_stream::SlotRefused::PerKey(n) => format!(
                "this admin key holds {n} live streams already (server.admin_streams_per_key); close one first"
            ),
        };
        Problem::new(StatusCode::TOO_MANY_REQUESTS, TOO_MANY_STREAMS, detail)
            .header(axum::http::header::RETRY_AFTER, "5")
    })?;
    let live = writer.subscribe();
    let stream = futures_util::stream::unfold(
        (live, filter, true),
        |(mut live, filter, first)| async move {
            if first {
                let hello = bytes::Bytes::from_static(b": portcullis live decisions\n\n");
                return Some((
                    Ok::<_, std::convert::Infallible>(hello),
                    (live, filter, false),
                ));
            }
            loop {
                let chunk = match tokio::time::timeout(KEEP_ALIVE, live.next()).await {
                    Err(_) => bytes::Bytes::from_static(b": keep-alive\n\n"),
                    Ok(LiveEvent::Event(e)) => {
                        if !filter.matches(&e) {
                            continue;
                        }
                        match serde_json::to_string(&*e) {
                            Ok(data) => bytes::Bytes::from(format!(
                                "event: decision\nid: {}\ndata: {data}\n\n",
                                e.id
                            )),
                            Err(_) => continue,
                        }
                    }
                    Ok(LiveEvent::Skipped(n)) => {
                        bytes::Bytes::from(format!("event: skipped\ndata: {n}\n\n"))
                    }
                    Ok(LiveEvent::Closed) => return None,
                };
                return Some((Ok(chunk), (live, filter, false)));
            }
        },
    );
    let stores = Arc::clone(&s.stores);
    let stream = crate::ops::live_stream::until_revoked(stream, Some(slot), move || {
        let stores = Arc::clone(&stores);
        let key = key.clone();
        Box::pin(async move { key_standing(&stores, &key).await })
    });
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/event-stream"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// The API key a request presents, where the admin guard reads it:
/// `Authorization: Bearer pck_…` (scheme in any case), else `X-API-Key`.
fn presented_api_key(headers: &axum::http::HeaderMap) -> Option<String> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| t.starts_with(portcullis::stores::API_KEY_PREFIX));
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::to_owned)
}

/// Stable code: too many live streams are open (429).
pub const TOO_MANY_STREAMS: &str = "rate_limit.too_many_streams";

/// Whether the admin key `key` still stands (an open stream asks every second).
pub(crate) async fn key_standing(stores: &Stores, key: &str) -> crate::ops::live_stream::Standing {
    use crate::ops::live_stream::Standing;
    match tokio::time::timeout(Duration::from_secs(2), stores.verify_api_key(key)).await {
        Ok(Ok(_)) => Standing::Valid,
        Ok(Err(portcullis::stores::StoreError::Unavailable(_))) | Err(_) => Standing::Unknown,
        Ok(Err(_)) => Standing::Revoked("the admin key was revoked or expired".into()),
    }
}
