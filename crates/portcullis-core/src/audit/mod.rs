//! Audit event types: what one request decision or security event records,
//! how secrets are kept out of it ([`redact`]), how the log is queried
//! ([`query`]) and how its timestamps are written ([`time`]).

pub mod query;
pub mod redact;
pub mod time;

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::principal::AuthMethod;

/// Whether the request (or security action) was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

impl Decision {
    /// `allow` or `deny`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }

    /// Parses `allow` / `deny`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(Self::Allow),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }
}

macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// What an audit event records: a request decision or a security event.
        #[non_exhaustive]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum EventKind {
            $($(#[$doc])* #[serde(rename = $name)] $variant,)*
        }

        impl EventKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [EventKind] = &[$(Self::$variant,)*];

            /// The stable name, e.g. `token.reuse_detected`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }

            /// Parses a stable name.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($name => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

event_kinds! {
    /// A request went through the guard.
    Request => "request",
    /// A login succeeded.
    LoginSucceeded => "login.succeeded",
    /// A login failed.
    LoginFailed => "login.failed",
    /// A login, password reset or console sign-in was refused before its
    /// credential was checked: its client used up its attempts.
    LoginThrottled => "login.throttled",
    /// A token pair was issued.
    TokenIssued => "token.issued",
    /// A refresh token was rotated.
    TokenRotated => "token.rotated",
    /// A rotated refresh token was presented again; its family was revoked.
    TokenReuseDetected => "token.reuse_detected",
    /// A token, session or family was revoked.
    TokenRevoked => "token.revoked",
    /// An API key was created.
    ApiKeyCreated => "api_key.created",
    /// An API key was revoked.
    ApiKeyRevoked => "api_key.revoked",
    /// An app was created.
    AppCreated => "app.created",
    /// An app was revoked.
    AppRevoked => "app.revoked",
    /// The signing key was rotated.
    SigningKeyRotated => "signing_key.rotated",
    /// A ban was added.
    BanAdded => "ban.added",
    /// A ban was lifted.
    BanLifted => "ban.lifted",
    /// A password was set with a one-time reset token.
    PasswordReset => "password.reset",
}

/// One audit record. Never holds a secret: the path is redacted, the
/// credential is named by its id only, and no header but the user agent is kept.
///
/// Only `id`, `ts_us`, `kind` and `decision` are required when decoding:
/// every other field defaults when missing, so events spooled by an older
/// build (without a field added since) still decode after an upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unique id (32 hex digits); replays are de-duplicated on it.
    pub id: String,
    /// When, in microseconds since the Unix epoch (UTC).
    pub ts_us: i64,
    /// Request decision or security event.
    pub kind: EventKind,
    /// The request id (`x-request-id`, or generated).
    #[serde(default)]
    pub request_id: Option<String>,
    /// The client IP.
    #[serde(default)]
    pub client_ip: Option<String>,
    /// HTTP method.
    #[serde(default)]
    pub method: Option<String>,
    /// Route template, e.g. `/users/{id}`.
    #[serde(default)]
    pub route: Option<String>,
    /// Raw path with secret query parameters removed.
    #[serde(default)]
    pub path: Option<String>,
    /// HTTP status answered.
    #[serde(default)]
    pub status: Option<u16>,
    /// Total latency in microseconds.
    #[serde(default)]
    pub latency_us: Option<i64>,
    /// Upstream latency in microseconds.
    #[serde(default)]
    pub upstream_latency_us: Option<i64>,
    /// Authenticated subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// Tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// How the caller authenticated (`jwt`, `api_key`, ...).
    #[serde(default)]
    pub auth_method: Option<String>,
    /// Credential id (API key id, app id, `jti`, `sid`); never a secret.
    #[serde(default)]
    pub credential_id: Option<String>,
    /// Allow or deny.
    pub decision: Decision,
    /// Stable reason code, e.g. `auth.token_expired`.
    #[serde(default)]
    pub code: Option<String>,
    /// Rate-limit budget left after this request.
    #[serde(default)]
    pub rate_limit_remaining: Option<i64>,
    /// Anomaly detectors that flagged the request.
    #[serde(default)]
    pub anomaly_flags: Vec<String>,
    /// User agent, truncated to [`redact::MAX_USER_AGENT`] bytes.
    #[serde(default)]
    pub user_agent: Option<String>,
    /// Why the rule decided so, e.g. `missing_permission: docs.write`, or
    /// `dry_run: …` for a refusal a dry-run route did not enforce.
    #[serde(default)]
    pub reason: Option<String>,
    /// The request's canonical host (`""` when it had none), at most
    /// [`MAX_HOST`] bytes; `None` on events recorded before schema v3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// What the caller held when it was decided (roles, permissions,
    /// scopes), bounded; `None` without a principal or before schema v3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Grants>,
    /// Which guard decided, when not the request path's: `admin` for the
    /// admin API's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
}

/// Longest host recorded (a canonical host is at most 253 bytes and a port).
pub const MAX_HOST: usize = 260;

/// Most entries recorded per list of [`Grants`].
pub const MAX_GRANTS: usize = 32;

/// Longest entry of [`Grants`] recorded.
pub const MAX_GRANT_LEN: usize = 128;

/// Largest [`Grants`] JSON text read back from a store (a hostile row
/// cannot make a reader parse more).
pub const MAX_GRANTS_TEXT: usize = 3 * MAX_GRANTS * (MAX_GRANT_LEN + 8) + 128;

/// The caller's roles, permissions and scopes as recorded: at most
/// [`MAX_GRANTS`] entries of at most [`MAX_GRANT_LEN`] bytes per list;
/// what did not fit is left out and `truncated` says so (a replay cannot
/// decide for a caller it does not know whole).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Role names.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Permissions held directly.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Token scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Whether something was left out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl Grants {
    /// The bounded record of `principal`'s grants.
    pub fn of(principal: &crate::Principal) -> Self {
        let mut truncated = false;
        let mut bounded = |list: &[String]| -> Vec<String> {
            let kept: Vec<String> = list
                .iter()
                .filter(|e| e.len() <= MAX_GRANT_LEN)
                .take(MAX_GRANTS)
                .cloned()
                .collect();
            truncated |= kept.len() != list.len();
            kept
        };
        let roles = bounded(&principal.roles);
        let permissions = bounded(&principal.permissions);
        let scopes = bounded(&principal.scopes);
        Self {
            roles,
            permissions,
            scopes,
            truncated,
        }
    }

    /// As stored: one JSON object.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads [`Self::to_text`] back from a store, which is not trusted:
    /// text over [`MAX_GRANTS_TEXT`] bytes or unparsable is `None`, and
    /// lists beyond the bounds are cut and marked truncated.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > MAX_GRANTS_TEXT {
            return None;
        }
        let mut g: Self = serde_json::from_str(text).ok()?;
        for list in [&mut g.roles, &mut g.permissions, &mut g.scopes] {
            let before = list.len();
            list.retain(|e| e.len() <= MAX_GRANT_LEN);
            list.truncate(MAX_GRANTS);
            g.truncated |= list.len() != before;
        }
        Some(g)
    }
}

/// `host` cut to at most [`MAX_HOST`] bytes (on a character boundary).
pub fn bounded_host(host: &str) -> &str {
    let mut end = host.len().min(MAX_HOST);
    while !host.is_char_boundary(end) {
        end -= 1;
    }
    &host[..end]
}

impl AuditEvent {
    /// A new event of `kind` at `ts_us` with a fresh id and every optional field empty.
    pub fn new(kind: EventKind, ts_us: i64, decision: Decision) -> Self {
        Self {
            id: EventIds::global().next_id(),
            ts_us,
            kind,
            request_id: None,
            client_ip: None,
            method: None,
            route: None,
            path: None,
            status: None,
            latency_us: None,
            upstream_latency_us: None,
            subject: None,
            tenant: None,
            auth_method: None,
            credential_id: None,
            decision,
            code: None,
            rate_limit_remaining: None,
            anomaly_flags: Vec::new(),
            user_agent: None,
            reason: None,
            host: None,
            grants: None,
            guard: None,
        }
    }

    /// Records who called: subject, tenant, auth method, the credential's
    /// id (`jti`, else `sid`; never the credential itself) and its bounded
    /// [`Grants`].
    pub fn set_principal(&mut self, principal: &crate::Principal) {
        self.subject = Some(principal.subject.clone());
        self.grants = Some(Grants::of(principal));
        self.tenant.clone_from(&principal.tenant);
        self.auth_method = Some(auth_method_name(principal.auth_method).to_owned());
        self.credential_id = principal
            .token_id
            .clone()
            .or_else(|| principal.session_id.clone());
    }

    /// Whether a rate limit rejected this request.
    pub fn is_rate_limited(&self) -> bool {
        self.code.as_deref() == Some(crate::ErrorCode::RateLimitExceeded.as_str())
    }

    /// The anomaly flags as stored: comma separated, `None` when empty.
    pub fn anomaly_flags_text(&self) -> Option<String> {
        (!self.anomaly_flags.is_empty()).then(|| self.anomaly_flags.join(","))
    }

    /// Parses [`AuditEvent::anomaly_flags_text`] back.
    pub fn parse_anomaly_flags(text: Option<&str>) -> Vec<String> {
        text.map(|t| {
            t.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
    }
}

/// The stable name of an auth method, as stored in [`AuditEvent::auth_method`].
pub const fn auth_method_name(method: AuthMethod) -> &'static str {
    match method {
        AuthMethod::Jwt => "jwt",
        AuthMethod::ApiKey => "api_key",
        AuthMethod::App => "app",
        AuthMethod::SignedRequest => "signed_request",
        AuthMethod::Anonymous => "anonymous",
    }
}

/// Unique event and request ids: a random 64-bit process prefix and a counter,
/// so making one costs a few nanoseconds and never repeats across replicas
/// (short of a 64-bit prefix collision).
#[derive(Debug)]
pub struct EventIds {
    prefix: u64,
    counter: AtomicU64,
}

impl EventIds {
    /// A generator with a random prefix (falls back to the time when no
    /// randomness is available).
    pub fn new() -> Self {
        let mut bytes = [0u8; 8];
        let prefix = if aws_lc_rs::rand::fill(&mut bytes).is_ok() {
            u64::from_le_bytes(bytes)
        } else {
            use crate::Clock;
            u64::try_from(crate::SystemClock.now().as_nanos()).unwrap_or(u64::MAX)
        };
        Self {
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    /// The process-wide generator.
    pub fn global() -> &'static Self {
        static IDS: std::sync::OnceLock<EventIds> = std::sync::OnceLock::new();
        IDS.get_or_init(Self::new)
    }

    /// The next id: 32 lowercase hex digits.
    pub fn next_id(&self) -> String {
        let hex = self.next_hex();
        String::from_utf8_lossy(&hex).into_owned()
    }

    /// The next id as 32 lowercase ASCII hex digits, without allocating
    /// (the request path keeps it inline).
    pub fn next_hex(&self) -> [u8; 32] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut out = [0u8; 32];
        for (i, word) in [self.prefix, n].into_iter().enumerate() {
            for j in 0..16 {
                let nibble = (word >> (60 - 4 * j)) & 0xf;
                out[16 * i + j] = HEX[nibble as usize];
            }
        }
        out
    }
}

impl Default for EventIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(*kind));
            let json = serde_json::to_string(kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(EventKind::parse("nope"), None);
    }

    #[test]
    fn ids_are_unique_and_fixed_width() {
        let ids = EventIds::new();
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a < b, "ids of one generator sort in creation order");
    }

    #[test]
    fn an_event_from_an_older_build_decodes_with_empty_new_fields() {
        let json = r#"{"id":"a","ts_us":1,"kind":"request","decision":"allow","path":"/x"}"#;
        let e: AuditEvent = serde_json::from_str(json).unwrap();
        assert_eq!(e.path.as_deref(), Some("/x"));
        assert_eq!((e.subject, e.upstream_latency_us), (None, None));
        assert!(e.anomaly_flags.is_empty());
        // The identity and the decision stay required.
        assert!(serde_json::from_str::<AuditEvent>(r#"{"id":"a","ts_us":1}"#).is_err());
    }

    #[test]
    fn grants_are_bounded_and_say_when_cut() {
        let mut p = crate::Principal::new("alice", AuthMethod::Jwt);
        p.roles = vec!["editor".into()];
        p.permissions = vec!["docs.read".into(), "x".repeat(MAX_GRANT_LEN + 1)];
        p.scopes = (0..MAX_GRANTS + 5).map(|i| format!("s{i}")).collect();
        let g = Grants::of(&p);
        assert!(g.truncated);
        assert_eq!(g.roles, ["editor"]);
        assert_eq!(g.permissions, ["docs.read"]);
        assert_eq!(g.scopes.len(), MAX_GRANTS);
        assert_eq!(Grants::parse(&g.to_text()), Some(g));

        p.permissions.pop();
        p.scopes.truncate(2);
        let whole = Grants::of(&p);
        assert!(!whole.truncated);
        assert_eq!(Grants::parse(&whole.to_text()), Some(whole));

        // A store is not trusted: oversized, unparsable or over-long lists.
        assert_eq!(Grants::parse(&"x".repeat(MAX_GRANTS_TEXT + 1)), None);
        assert_eq!(Grants::parse("not json"), None);
        let many = format!(
            r#"{{"roles":[{}]}}"#,
            (0..MAX_GRANTS + 1)
                .map(|i| format!("\"r{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        let read = Grants::parse(&many).unwrap();
        assert!(read.truncated);
        assert_eq!(read.roles.len(), MAX_GRANTS);
    }

    #[test]
    fn hosts_are_cut_on_a_character_boundary() {
        assert_eq!(bounded_host("api.example.com"), "api.example.com");
        let long = "é".repeat(MAX_HOST);
        let cut = bounded_host(&long);
        assert!(cut.len() <= MAX_HOST && long.starts_with(cut));
    }

    #[test]
    fn anomaly_flags_round_trip() {
        let mut e = AuditEvent::new(EventKind::Request, 1, Decision::Allow);
        assert_eq!(e.anomaly_flags_text(), None);
        e.anomaly_flags = vec!["burst".into(), "scan".into()];
        let text = e.anomaly_flags_text();
        assert_eq!(text.as_deref(), Some("burst,scan"));
        assert_eq!(
            AuditEvent::parse_anomaly_flags(text.as_deref()),
            e.anomaly_flags
        );
    }
}
