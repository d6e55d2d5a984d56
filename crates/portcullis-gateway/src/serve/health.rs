//! What the ops listener answers itself: liveness, readiness (stores,
//! keys, revocation feed), metrics sampled at scrape, and routing to the
//! admin API and the console.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis::audit::AuditWriter;
use portcullis::http::{GuardService, PeerAddr};
use portcullis::keyring::KeyRing;
use portcullis::stores::Stores;
use tower_service::Service;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::proxy::{ResponseBody, full};
use arc_swap::ArcSwap;

use super::*;

/// What the ops listener reports on.
pub(crate) struct Health {
    pub(crate) ready: AtomicBool,
    pub(crate) stores: Arc<Stores>,
    pub(crate) keyring: Arc<KeyRing>,
    pub(crate) metrics: PrometheusHandle,
    /// The running app: its rate limiter's breaker is sampled at scrape.
    pub(crate) live: Arc<ArcSwap<App>>,
    /// The audit writer: its queue is sampled at scrape.
    pub(crate) audit: Option<Arc<AuditWriter>>,
    /// Whether rate limits count on Redis (so there is a breaker to report).
    pub(crate) redis: bool,
    /// The admin API (`/admin/…`, `/openapi.json`) behind its own guard.
    pub(crate) admin: GuardService<axum::Router>,
    /// The operator console (`/console`), over the admin API.
    pub(crate) console: crate::ops::console::Console,
    /// The `Host` names it answers to; no cross-site state change.
    pub(crate) ops_hosts: crate::ops::hosts::OpsHosts,
}

/// Gauge: events waiting in the audit queue, sampled at each scrape.
pub(crate) const AUDIT_QUEUE_DEPTH_METRIC: &str = "portcullis_audit_queue_depth";
/// Counter: audit events dropped (queue full or closed).
pub(crate) const AUDIT_DROPPED_METRIC: &str = "portcullis_audit_dropped_total";
/// Gauge: the rate limiter's Redis circuit breaker, 0 closed, 1 open
/// (calls skipped, one probe per interval), sampled at each scrape.
pub(crate) const BREAKER_STATE_METRIC: &str = "portcullis_ratelimit_breaker_state";

/// Gauge: age of the revocation feed's last complete read of the log, in
/// seconds (how stale the local revocation set may be).
pub(crate) const REVOCATION_LAG_METRIC: &str = "portcullis_revocation_lag_seconds";
/// Gauge: live entries in the local revocation set.
pub(crate) const REVOCATION_ENTRIES_METRIC: &str = "portcullis_revocation_entries";
/// Gauge: estimated bytes the local revocation set holds.
pub(crate) const REVOCATION_BYTES_METRIC: &str = "portcullis_revocation_bytes";
/// Counter: token checks decided while the feed was past `max_stale`, by
/// `decision` (`deny` | `allow`).
pub(crate) const REVOCATION_STALE_METRIC: &str = "portcullis_revocation_stale_decisions_total";
/// Counter: reads of the revocation log that failed or timed out.
pub(crate) const REVOCATION_POLL_FAILURES_METRIC: &str =
    "portcullis_revocation_poll_failures_total";
/// Counter: immediate reads of the log asked by its watch (PostgreSQL
/// `LISTEN`): each announced append and each (re)start of listening.
pub(crate) const REVOCATION_WAKEUPS_METRIC: &str = "portcullis_revocation_wakeups_total";
/// Counter: appends announced by the log (PostgreSQL `NOTIFY` received).
pub(crate) const REVOCATION_NOTIFICATIONS_METRIC: &str =
    "portcullis_revocation_notifications_total";
/// Counter: times the log's watch started listening (1, plus one per
/// reconnect after its connection was lost).
pub(crate) const REVOCATION_LISTENS_METRIC: &str = "portcullis_revocation_listens_total";
/// Counter: log entries this build cannot read (a newer version's kind, or
/// corrupt), skipped by the feed.
pub(crate) const REVOCATION_UNRECOGNIZED_METRIC: &str = "portcullis_revocation_unrecognized_total";

impl Health {
    pub(crate) async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        // DNS rebinding (a foreign `Host`: 421) and cross-site state
        // changes (403) are refused before any route.
        if let Err((status, code, detail)) =
            self.ops_hosts.check(req.method(), req.uri(), req.headers())
        {
            tracing::warn!(%peer, method = %req.method(), path = %req.uri().path(), code, "ops listener request refused");
            return portcullis::service::problem(portcullis::service::Problem::new(
                status, code, detail,
            ))
            .map(|b| b.map_err(crate::proxy::BoxError::from).boxed_unsync());
        }
        let path = req.uri().path();
        if crate::ops::console::owns(path) {
            return self.console.handle(req, peer, &self.admin).await;
        }
        // `/reload` is an admin route: an admin key with
        // `admin.config.write`, checked by the admin guard.
        if path.starts_with("/admin/") || path == "/openapi.json" || path == "/reload" {
            req.extensions_mut().insert(PeerAddr(peer));
            let mut admin = self.admin.clone();
            let req = req.map(axum::body::Body::new);
            let response = match admin.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            return response.map(|b| b.map_err(crate::proxy::BoxError::from).boxed_unsync());
        }
        let (status, body) = match req.uri().path() {
            "/health/live" => (StatusCode::OK, serde_json::json!({"status": "live"})),
            "/health/ready" => self.readiness().await,
            "/metrics" => {
                self.sample();
                let mut response = Response::new(full(self.metrics.render()));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                return response;
            }
            _ => (
                StatusCode::NOT_FOUND,
                serde_json::json!({"status": "not found"}),
            ),
        };
        let mut response = Response::new(full(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }

    /// Sets the gauges that are read rather than counted: the audit
    /// queue's depth and drops, the Redis breaker's state.
    pub(crate) fn sample(&self) {
        let set = self.stores.revocations();
        let stats = set.stats();
        metrics::gauge!(REVOCATION_LAG_METRIC)
            .set(set.lag().map_or(f64::INFINITY, |lag| lag.as_secs_f64()));
        metrics::gauge!(REVOCATION_ENTRIES_METRIC).set(stats.entries as f64);
        metrics::gauge!(REVOCATION_BYTES_METRIC).set(stats.bytes as f64);
        metrics::counter!(REVOCATION_STALE_METRIC, "decision" => "deny")
            .absolute(stats.stale_denied);
        metrics::counter!(REVOCATION_STALE_METRIC, "decision" => "allow")
            .absolute(stats.stale_allowed);
        metrics::counter!(REVOCATION_POLL_FAILURES_METRIC).absolute(stats.poll_failures);
        metrics::counter!(REVOCATION_WAKEUPS_METRIC).absolute(stats.wakeups);
        metrics::counter!(REVOCATION_NOTIFICATIONS_METRIC).absolute(stats.notifications);
        metrics::counter!(REVOCATION_LISTENS_METRIC).absolute(stats.listens);
        metrics::counter!(REVOCATION_UNRECOGNIZED_METRIC).absolute(stats.unrecognized);
        if let Some(audit) = &self.audit {
            let depth = u32::try_from(audit.queued()).unwrap_or(u32::MAX);
            metrics::gauge!(AUDIT_QUEUE_DEPTH_METRIC).set(f64::from(depth));
            // The writer counts drops as they happen; this makes the series
            // exist (at 0) before the first one.
            metrics::counter!(AUDIT_DROPPED_METRIC).absolute(audit.stats().dropped);
        }
        if self.redis
            && let Some(limiter) = self.live.load().guard.rate_limiter()
        {
            let open = if limiter.backend_down() { 1.0 } else { 0.0 };
            metrics::gauge!(BREAKER_STATE_METRIC).set(open);
        }
    }

    pub(crate) async fn readiness(&self) -> (StatusCode, serde_json::Value) {
        if !self.ready.load(Ordering::SeqCst) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "shutting down"}),
            );
        }
        let keys = self.keyring.keys().active().is_some();
        // Ready once the revocation set is loaded, and while it answers:
        // fresh, or stale under `on_stale = "allow"`. A store outage
        // within `max_stale` leaves the replica ready.
        let set = self.stores.revocations();
        // A watchdog: restarts the feed if its task ended (a panic); a
        // no-op while it runs. storage.rs starts it at open.
        set.start_feed();
        let storage = set.is_loaded()
            && (!set.is_stale() || set.policy().on_stale == portcullis::stores::OnStale::Allow);
        let lag_ms = set
            .lag()
            .map(|lag| u64::try_from(lag.as_millis()).unwrap_or(u64::MAX));
        let ok = keys && storage;
        (
            if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            serde_json::json!({
                "status": if ok { "ready" } else { "not ready" },
                "storage": storage,
                "keys": keys,
                "revocation": {"loaded": set.is_loaded(), "lag_ms": lag_ms},
            }),
        )
    }
}
