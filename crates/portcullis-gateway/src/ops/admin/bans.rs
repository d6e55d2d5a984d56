//! Bans (list, add, lift) and the latest anomaly detections.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use portcullis::anomaly::AnomalyEngine;
use portcullis::service::{JsonBody, Problem};
use portcullis_core::anomaly::BanTarget;
use serde::Deserialize;

use super::AdminState;
use super::respond::{bad_param, json, no_content_or_404, unavailable_feature};

/// The anomaly engine that keeps the bans, or 409 when it is off.
fn engine(s: &AdminState) -> Result<&Arc<AnomalyEngine>, Problem> {
    s.anomaly
        .as_ref()
        .ok_or_else(|| unavailable_feature("bans are off (anomaly.enabled = false)"))
}

/// `ip:<address or IPv6 network>` (grouped as the guard groups clients, so
/// the ban matches what requests are checked against) or `subject:<id>`.
fn ban_target(s: &AdminState, raw: &str) -> Result<BanTarget, Problem> {
    match raw.split_once(':') {
        Some(("ip", ip)) => s
            .client_ip
            .ban_key(ip)
            .map(BanTarget::Ip)
            .map_err(|e| bad_param("target", &format!("`{ip}`: {e}"))),
        Some(("subject", s)) if !s.trim().is_empty() && s.len() <= 256 => {
            Ok(BanTarget::Subject(s.trim().to_owned()))
        }
        _ => Err(bad_param("target", "`ip:<address>` or `subject:<id>`")),
    }
}

fn ban_view(ban: &portcullis_core::anomaly::Ban) -> serde_json::Value {
    serde_json::json!({
        "target": ban.target.render(),
        "until_ms": ban.until_ms,
        "reason": ban.reason,
    })
}

pub(super) async fn list_bans(State(s): State<AdminState>) -> Result<Response, Problem> {
    let bans = engine(&s)?
        .list_bans()
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let bans: Vec<_> = bans.iter().map(ban_view).collect();
    Ok(json(StatusCode::OK, &serde_json::json!({"bans": bans})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddBan {
    target: String,
    duration_seconds: u32,
    #[serde(default)]
    reason: Option<String>,
}

pub(super) async fn add_ban(
    State(s): State<AdminState>,
    JsonBody(req): JsonBody<AddBan>,
) -> Result<Response, Problem> {
    let target = ban_target(&s, &req.target)?;
    if req.duration_seconds == 0 {
        return Err(bad_param("duration_seconds", "must be positive"));
    }
    let reason = req.reason.unwrap_or_else(|| "manual".into());
    if reason.len() > 200 {
        return Err(bad_param("reason", "at most 200 bytes"));
    }
    let ban = engine(&s)?
        .ban(
            target,
            Duration::from_secs(u64::from(req.duration_seconds)),
            &reason,
        )
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    Ok(json(StatusCode::CREATED, &ban_view(&ban)))
}

pub(super) async fn lift_ban(
    State(s): State<AdminState>,
    Path(target): Path<String>,
) -> Result<Response, Problem> {
    let target = ban_target(&s, &target)?;
    let lifted = engine(&s)?
        .lift_ban(&target)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    no_content_or_404(lifted, "ban")
}

pub(super) async fn recent_anomalies(State(s): State<AdminState>) -> Result<Response, Problem> {
    let engine = engine(&s)?;
    let detections = engine.recent_detections();
    // `null` when no webhook is configured.
    let deliveries = engine.alerts().map(|a| a.recent_deliveries());
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"detections": detections, "deliveries": deliveries}),
    ))
}
