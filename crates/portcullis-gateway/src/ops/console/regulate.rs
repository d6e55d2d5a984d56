//! Console sign-in regulation and audit: every sign-in, refused or not, is
//! an audit event (`login.succeeded`, `login.failed`, `login.throttled` on
//! route `/console/session`), and failures are regulated per client IP
//! like the token service's logins (`[token_service.regulation]`), so the
//! sign-in is no unlogged, unlimited oracle for admin keys.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use portcullis::audit::AuditWriter;
use portcullis::regulation::{Regulator, Ticket};
use portcullis::service::Problem;
use portcullis_core::ErrorCode;
use portcullis_core::audit::{AuditEvent, Decision, EventKind};
use portcullis_core::ratelimit::ClientIpConfig;
use portcullis_core::regulation::Surface;

/// What regulates and records console sign-ins (nothing by default).
#[derive(Default)]
pub(crate) struct SignInGuard {
    pub(crate) regulator: Option<Arc<Regulator>>,
    pub(crate) audit: Option<Arc<AuditWriter>>,
    pub(crate) client_ip: ClientIpConfig,
}

/// The client of one sign-in.
pub(crate) struct SignInClient {
    /// The client address (the peer, or what a trusted proxy says).
    ip: String,
    /// The address grouped as limits count it.
    key: String,
    user_agent: Option<String>,
}

/// Every line of `name` joined by commas.
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let v = v.to_str().ok()?;
        match &mut out {
            None => out = Some(v.to_owned()),
            Some(s) => {
                s.push(',');
                s.push_str(v);
            }
        }
    }
    out
}

impl SignInGuard {
    /// The client of a sign-in from `peer` with `headers`.
    pub(crate) fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SignInClient {
        let forwarded = joined(headers, "forwarded");
        let xff = joined(headers, "x-forwarded-for");
        let ip = self
            .client_ip
            .client_ip(peer.ip(), forwarded.as_deref(), xff.as_deref());
        SignInClient {
            ip: ip.to_string(),
            key: self.client_ip.group(ip).to_string(),
            user_agent: headers
                .get(http::header::USER_AGENT)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        }
    }

    /// Charges one sign-in attempt; a client that used up its attempts is
    /// refused (429 `auth.too_many_attempts`, audited) before the key is
    /// looked at.
    pub(crate) async fn attempt(&self, client: &SignInClient) -> Result<Option<Ticket>, Problem> {
        let Some(regulator) = &self.regulator else {
            return Ok(None);
        };
        let ticket = regulator
            .attempt(Surface::Console, Some(&client.key), None)
            .await;
        let Some(retry) = ticket.attempt.retry_after_secs() else {
            return Ok(Some(ticket));
        };
        let code = ErrorCode::TooManyAttempts;
        self.record(EventKind::LoginThrottled, client, 429, Some(code), None)
            .await;
        tracing::warn!(client_ip = %client.ip, "console sign-in throttled");
        Err(Problem::code(
            code,
            "too many failed sign-ins from this client; retry later",
        )
        .header(http::header::RETRY_AFTER, retry.to_string()))
    }

    /// A refused key (unknown, revoked, not an admin's): audited.
    pub(crate) async fn failed(&self, client: &SignInClient, code: ErrorCode) {
        tracing::warn!(client_ip = %client.ip, "console sign-in refused");
        self.record(EventKind::LoginFailed, client, 401, Some(code), None)
            .await;
    }

    /// A signed-in admin: audited, and the attempt's charge given back.
    pub(crate) async fn succeeded(
        &self,
        client: &SignInClient,
        ticket: Option<Ticket>,
        owner: &str,
        key_id: &str,
    ) {
        if let (Some(regulator), Some(ticket)) = (&self.regulator, ticket) {
            regulator.succeeded(ticket).await;
        }
        self.record(
            EventKind::LoginSucceeded,
            client,
            201,
            None,
            Some((owner, key_id)),
        )
        .await;
    }

    async fn record(
        &self,
        kind: EventKind,
        client: &SignInClient,
        status: u16,
        code: Option<ErrorCode>,
        who: Option<(&str, &str)>,
    ) {
        let Some(audit) = &self.audit else { return };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ts_us = i64::try_from(now.as_micros()).unwrap_or(i64::MAX);
        let decision = if status < 400 {
            Decision::Allow
        } else {
            Decision::Deny
        };
        let mut event = AuditEvent::new(kind, ts_us, decision);
        event.client_ip = Some(client.ip.clone());
        event.method = Some("POST".to_owned());
        event.route = Some(format!("{}/session", super::PREFIX));
        event.status = Some(status);
        event.code = code.map(|c| c.as_str().to_owned());
        event.user_agent = client
            .user_agent
            .as_deref()
            .map(portcullis_core::audit::redact::user_agent);
        if let Some((owner, key_id)) = who {
            event.subject = Some(owner.to_owned());
            event.credential_id = Some(key_id.to_owned());
        }
        audit.record(event).await;
    }
}
