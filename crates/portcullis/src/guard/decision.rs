//! What the guard decided for one request: let it through (with the
//! principal and the response headers to add) or refuse it (status, stable
//! code, message, headers), and the request's one audit event.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue, StatusCode};
use portcullis_core::audit::redact::Redactor;
use portcullis_core::audit::{AuditEvent, EventIds, EventKind};
use portcullis_core::{ErrorCode, Principal};

use crate::audit::AuditWriter;
use crate::audit::writer::DeferredEvent;

/// Why a request was refused: everything a renderer needs.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// HTTP status (401, 403, 429 or 503).
    pub status: StatusCode,
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong and what to do, safe to show the caller.
    pub detail: String,
    /// Headers the refusal carries (`WWW-Authenticate`, `Retry-After`, `RateLimit`…).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refusal {
    /// A refusal with `code`'s status and no header.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    /// The RFC 9457 title of the status.
    pub fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }
}

/// The guard's answer for one request.
#[derive(Debug)]
pub struct Decision {
    /// The request id (adopted from a trusted proxy, else generated).
    pub request_id: RequestIdText,
    /// The client address, as the trusted-proxy configuration resolves it.
    pub client_ip: Option<IpAddr>,
    /// The route (rule) that decided, `None` for the default.
    pub route: Option<Arc<str>>,
    /// The authenticated caller (`None` when anonymous or refused before authentication).
    pub principal: Option<Arc<Principal>>,
    /// Headers to add to the response (`RateLimit`, `RateLimit-Policy`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Why the request is refused; `None` when it may go through.
    pub refusal: Option<Refusal>,
    /// The refusal a `dry_run` route did not enforce.
    pub dry_run_refusal: Option<Refusal>,
    pub(crate) audit: AuditTicket,
}

impl Decision {
    /// Whether the request may go through.
    pub fn allowed(&self) -> bool {
        self.refusal.is_none()
    }

    /// Records the request's audit event with the status answered. Called by
    /// the layers once the response is known; if a decision is dropped
    /// unfinished, its event is recorded without a status.
    pub fn finish(&mut self, status: StatusCode) {
        self.audit.finish(Some(status.as_u16()), None);
    }

    /// Like [`Self::finish`], also recording the upstream's own latency.
    pub fn finish_with_upstream(&mut self, status: StatusCode, upstream_us: i64) {
        self.audit.finish(Some(status.as_u16()), Some(upstream_us));
    }

    /// Takes the audit ticket, to finish it later (e.g. when a streamed body ends).
    pub fn take_audit(&mut self) -> AuditTicket {
        std::mem::take(&mut self.audit)
    }
}

/// A request id as the guard assigned it: generated ids (32 hex digits)
/// are kept inline, so assigning one allocates nothing; an id adopted from
/// a trusted proxy (at most 128 bytes of visible ASCII) is shared.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestIdText(IdRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum IdRepr {
    Generated([u8; 32]),
    Adopted(Arc<str>),
}

impl RequestIdText {
    /// A fresh id from the process-wide generator.
    pub fn generate() -> Self {
        Self(IdRepr::Generated(EventIds::global().next_hex()))
    }

    /// An id received from a trusted proxy (already checked).
    pub(crate) fn adopt(id: &str) -> Self {
        Self(IdRepr::Adopted(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // The generator writes ASCII hex digits only.
            IdRepr::Generated(hex) => std::str::from_utf8(hex).unwrap_or_default(),
            IdRepr::Adopted(id) => id,
        }
    }
}

impl std::ops::Deref for RequestIdText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for RequestIdText {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for RequestIdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestIdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for RequestIdText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for RequestIdText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<RequestIdText> for String {
    fn from(id: RequestIdText) -> Self {
        id.as_str().to_owned()
    }
}

/// What a request's audit event is made of, captured on the request path;
/// the event itself (path redaction, strings) is built on the audit
/// writer's task. The path and user agent are copied out of the request:
/// a clone of the URI or a header value would share the connection's read
/// buffer, so every queued event would keep a whole buffer alive (a full
/// audit queue then held hundreds of megabytes).
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) ts_us: i64,
    pub(crate) request_id: RequestIdText,
    pub(crate) method: http::Method,
    /// The host (its first `host_len` bytes, at most `MAX_HOST`) then the
    /// path and query as received (redacted when the event is built): one
    /// allocation for both.
    pub(crate) host_and_path: Box<str>,
    pub(crate) host_len: usize,
    /// The guard's name (`GuardBuilder::audit_as`).
    pub(crate) guard: Option<&'static str>,
    /// At most `MAX_USER_AGENT` bytes of the user agent, lossily decoded.
    pub(crate) user_agent: Option<Box<str>>,
    pub(crate) client_ip: Option<IpAddr>,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) principal: Option<Arc<Principal>>,
    pub(crate) deny: bool,
    pub(crate) code: Option<&'static str>,
    pub(crate) reason: Option<String>,
    pub(crate) allow_reason: &'static str,
    pub(crate) rate_limit_remaining: Option<i64>,
    pub(crate) flags: Vec<&'static str>,
    pub(crate) redactor: Arc<Redactor>,
    pub(crate) status: Option<u16>,
    pub(crate) latency_us: i64,
    pub(crate) upstream_us: Option<i64>,
}

impl DeferredEvent for Snapshot {
    fn build(self: Box<Self>) -> AuditEvent {
        self.into_event()
    }
}

impl Snapshot {
    fn into_event(self) -> AuditEvent {
        let decision = if self.deny {
            portcullis_core::audit::Decision::Deny
        } else {
            portcullis_core::audit::Decision::Allow
        };
        let mut e = AuditEvent::new(EventKind::Request, self.ts_us, decision);
        e.request_id = Some(self.request_id.into());
        e.client_ip = self.client_ip.map(|ip| ip.to_string());
        e.method = Some(self.method.as_str().to_owned());
        let (host, path) = self
            .host_and_path
            .split_at_checked(self.host_len)
            .unwrap_or(("", &self.host_and_path));
        e.host = Some(host.to_owned());
        e.guard = self.guard.map(str::to_owned);
        e.path = Some(self.redactor.path(path));
        e.user_agent = self.user_agent.map(String::from);
        e.route = self.route.as_deref().map(str::to_owned);
        if let Some(p) = self.principal.as_deref() {
            e.set_principal(p);
        }
        e.code = self.code.map(str::to_owned);
        e.reason = Some(self.reason.unwrap_or_else(|| self.allow_reason.to_owned()));
        e.rate_limit_remaining = self.rate_limit_remaining;
        e.anomaly_flags = self.flags.into_iter().map(str::to_owned).collect();
        e.status = self.status;
        e.latency_us = Some(self.latency_us);
        e.upstream_latency_us = self.upstream_us;
        e
    }
}

/// The pending audit event of one request: recorded exactly once, by
/// [`AuditTicket::finish`] or, failing that, when dropped.
#[derive(Debug, Default)]
pub struct AuditTicket {
    pending: Option<(Box<Snapshot>, Arc<AuditWriter>, Instant)>,
}

impl AuditTicket {
    pub(crate) fn new(snapshot: Box<Snapshot>, writer: Arc<AuditWriter>, started: Instant) -> Self {
        Self {
            pending: Some((snapshot, writer, started)),
        }
    }

    /// Records the event with the answered status (once; later calls do nothing).
    pub fn finish(&mut self, status: Option<u16>, upstream_us: Option<i64>) {
        if let Some((mut snapshot, writer, started)) = self.pending.take() {
            snapshot.latency_us = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
            snapshot.status = status;
            snapshot.upstream_us = upstream_us;
            // Never blocks the request path: a full queue drops (counted).
            let _ = writer.try_record_deferred(snapshot);
        }
    }

    /// Whether the event is still to be recorded.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }
}

impl Drop for AuditTicket {
    fn drop(&mut self) {
        self.finish(None, None);
    }
}
