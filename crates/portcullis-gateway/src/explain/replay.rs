//! Impact before deploy (`portcullis test --replay-audit`): the request
//! events of an audit log decided again under another configuration by
//! [`crate::explain`] (the engine's own code, never a second copy of the
//! rules), from what each event records: method, host, path, client IP and
//! the caller (subject, tenant, credential kind, roles, permissions,
//! scopes). What the record cannot decide again (a credential's signature,
//! a ban, a rate limit, an event without those fields) is counted by
//! reason, never guessed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use portcullis_core::audit::{AuditEvent, Decision, EventKind};
use portcullis_core::{AuthMethod, ErrorCode};

use crate::explain::{AssumedCaller, ExplainRequest, Explainer, Report};

/// Examples kept per group of changed decisions.
pub const EXAMPLES_PER_GROUP: usize = 3;

/// Why an event cannot be decided again from its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotRedecidable {
    /// Written before schema v3: no host, no roles or permissions.
    BeforeSchemaV3,
    /// The method, path or client IP is missing.
    IncompleteRecord,
    /// The caller's grants are missing or unreadable.
    GrantsMissing,
    /// The caller held more than the record keeps.
    GrantsTruncated,
    /// A credential kind this build does not know.
    UnknownCredentialKind,
    /// The credential was refused: its signature, expiry or revocation
    /// is not in the record.
    CredentialRefused,
    /// A ban refused it (bans come and go).
    Banned,
    /// A rate limit decided it (counters are not in the record).
    RateLimited,
    /// A backend was down when it was decided.
    BackendUnavailable,
    /// Refused before any check (malformed, body too large): the headers
    /// and body that decided it are not recorded.
    RefusedBeforeChecks,
    /// An outcome this build does not know.
    UnknownOutcome,
    /// The new configuration's route takes its credential from other
    /// sources: what the client would send instead is unknown.
    CredentialSourceChanged,
    /// The new configuration cannot decide it alone (another surface, a
    /// credential that needs the stores).
    Undetermined,
    /// The recorded request cannot be rebuilt (a bad method or target).
    Unreadable,
}

impl NotRedecidable {
    /// In words, as printed.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BeforeSchemaV3 => "recorded before schema v3",
            Self::IncompleteRecord => "recorded without method, path or client IP",
            Self::GrantsMissing => "caller's roles and permissions not recorded",
            Self::GrantsTruncated => "caller's roles and permissions truncated in the record",
            Self::UnknownCredentialKind => "unknown credential kind",
            Self::CredentialRefused => {
                "credential refused (signature, expiry, revocation are not recorded)"
            }
            Self::Banned => "ban (bans are not replayed)",
            Self::RateLimited => "rate-limit decision (counters are not recorded)",
            Self::BackendUnavailable => "backend unavailable when decided",
            Self::RefusedBeforeChecks => {
                "refused before any check (malformed or too large; headers are not recorded)"
            }
            Self::UnknownOutcome => "unknown recorded outcome",
            Self::CredentialSourceChanged => "the new route takes other credential kinds",
            Self::Undetermined => "undetermined under the new configuration",
            Self::Unreadable => "recorded request cannot be rebuilt",
        }
    }
}

/// One changed decision, as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// When it was recorded (RFC 3339).
    pub time: String,
    /// `METHOD host/path`.
    pub request: String,
    /// `subject (credential kind)` or `anonymous`.
    pub caller: String,
    /// The recorded request id.
    pub request_id: Option<String>,
}

/// The changed decisions of one route and one old → new outcome.
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// How many.
    pub count: u64,
    /// The first [`EXAMPLES_PER_GROUP`].
    pub examples: Vec<Example>,
}

/// What a replay found.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Request events read.
    pub events: u64,
    /// Decided again, same outcome.
    pub unchanged: u64,
    /// Decided again, another outcome.
    pub changed: u64,
    /// Changed decisions by (route under the new configuration, old outcome, new outcome).
    pub changes: BTreeMap<(String, String, String), Group>,
    /// Events not decided again, by reason.
    pub not_redecidable: BTreeMap<NotRedecidable, u64>,
}

impl Summary {
    /// Events not decided again.
    pub fn not_redecidable_total(&self) -> u64 {
        self.not_redecidable.values().sum()
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} request events: {} decisions would change, {} unchanged, {} not re-decidable\n",
            self.events,
            self.changed,
            self.unchanged,
            self.not_redecidable_total()
        );
        if !self.changes.is_empty() {
            out.push_str("\nchanged:\n");
        }
        for ((route, from, to), group) in &self.changes {
            out.push_str(&format!("  {route}: {from} → {to}: {}\n", group.count));
            for e in &group.examples {
                out.push_str(&format!(
                    "      {}  {}  {}{}\n",
                    e.time,
                    e.request,
                    e.caller,
                    e.request_id
                        .as_deref()
                        .map_or_else(String::new, |id| format!("  request {id}"))
                ));
            }
        }
        if !self.not_redecidable.is_empty() {
            out.push_str(&format!(
                "\nnot re-decidable: {}, by reason:\n",
                self.not_redecidable_total()
            ));
            for (reason, n) in &self.not_redecidable {
                out.push_str(&format!("  {}: {n}\n", reason.as_str()));
            }
        }
        out
    }
}

/// The outcome recorded: `allow`, `allow (dry run: CODE)` or the
/// refusal's code. Only codes this build knows are taken (the log is not
/// trusted: a group per unknown string would grow without bound).
fn recorded_outcome(e: &AuditEvent) -> Result<String, NotRedecidable> {
    let dry_run = e
        .reason
        .as_deref()
        .is_some_and(|r| r.starts_with("dry_run: "));
    let Some(text) = e.code.as_deref() else {
        return match e.decision {
            Decision::Allow => Ok("allow".into()),
            Decision::Deny => Err(NotRedecidable::UnknownOutcome),
        };
    };
    if text.starts_with("request.") {
        return Err(NotRedecidable::RefusedBeforeChecks);
    }
    let code = ErrorCode::ALL
        .iter()
        .copied()
        .find(|c| c.as_str() == text)
        .ok_or(NotRedecidable::UnknownOutcome)?;
    if dry_run || e.decision == Decision::Allow {
        return Ok(format!("allow (dry run: {})", code.as_str()));
    }
    match code {
        ErrorCode::RateLimitExceeded => Err(NotRedecidable::RateLimited),
        ErrorCode::Banned => Err(NotRedecidable::Banned),
        ErrorCode::BackendUnavailable | ErrorCode::JwksUnavailable => {
            Err(NotRedecidable::BackendUnavailable)
        }
        ErrorCode::MissingCredentials => Ok(code.as_str().to_owned()),
        c if c.as_str().starts_with("authz.") => Ok(c.as_str().to_owned()),
        c if c.as_str().starts_with("auth.") => Err(NotRedecidable::CredentialRefused),
        _ => Err(NotRedecidable::UnknownOutcome),
    }
}

/// The outcome of a report, in the words of [`recorded_outcome`].
fn new_outcome(report: &Report) -> Result<String, NotRedecidable> {
    let d = &report.decision;
    if d.undetermined.is_some() {
        return Err(NotRedecidable::Undetermined);
    }
    Ok(match (d.allow, &d.dry_run_would_refuse, &d.code) {
        (true, Some(w), _) => format!("allow (dry run: {})", w.code),
        (true, None, _) => "allow".into(),
        (false, _, Some(code)) => code.clone(),
        (false, _, None) => "deny".into(),
    })
}

/// The source name (`explain`'s) a credential kind comes from.
fn source_of(method: AuthMethod) -> &'static str {
    match method {
        AuthMethod::ApiKey => "api_key",
        AuthMethod::App => "app",
        AuthMethod::SignedRequest => "signed",
        AuthMethod::Anonymous => "anonymous",
        _ => "jwt",
    }
}

/// The request to decide again, and its caller's credential kind.
fn rebuild(e: &AuditEvent) -> Result<(ExplainRequest, Option<AuthMethod>), NotRedecidable> {
    let Some(host) = &e.host else {
        return Err(NotRedecidable::BeforeSchemaV3);
    };
    let (Some(method), Some(path), Some(ip)) = (&e.method, &e.path, &e.client_ip) else {
        return Err(NotRedecidable::IncompleteRecord);
    };
    let client_ip: IpAddr = ip.parse().map_err(|_| NotRedecidable::IncompleteRecord)?;
    if !path.starts_with('/') || path.len() > crate::explain::MAX_TARGET {
        return Err(NotRedecidable::Unreadable);
    }
    let (assume, kind) = match &e.subject {
        None => (None, None),
        Some(subject) => {
            let grants = e.grants.as_ref().ok_or(NotRedecidable::GrantsMissing)?;
            if grants.truncated {
                return Err(NotRedecidable::GrantsTruncated);
            }
            let method = e
                .auth_method
                .as_deref()
                .and_then(|m| serde_json::from_value(serde_json::Value::String(m.into())).ok())
                .ok_or(NotRedecidable::UnknownCredentialKind)?;
            let caller = AssumedCaller {
                subject: Some(subject.clone()),
                roles: grants.roles.clone(),
                permissions: grants.permissions.clone(),
                scopes: grants.scopes.clone(),
                tenant: e.tenant.clone(),
                method: Some(method),
            };
            (Some(caller), Some(method))
        }
    };
    let request = ExplainRequest {
        method: Some(method.clone()),
        target: path.clone(),
        host: (!host.is_empty()).then(|| host.clone()),
        headers: Vec::new(),
        token: None,
        api_key: None,
        assume,
        client_ip: Some(client_ip),
    };
    Ok((request, kind))
}

fn example(e: &AuditEvent, kind: Option<AuthMethod>) -> Example {
    Example {
        time: portcullis_core::audit::time::format_rfc3339_micros(e.ts_us),
        request: format!(
            "{} {}{}",
            e.method.as_deref().unwrap_or("-"),
            e.host.as_deref().unwrap_or(""),
            e.path.as_deref().unwrap_or("")
        ),
        caller: match (&e.subject, kind) {
            (Some(s), Some(k)) => format!("{s} ({})", k.as_str()),
            _ => "anonymous".into(),
        },
        request_id: e.request_id.clone(),
    }
}

/// Decides recorded events again under one configuration.
#[derive(Debug)]
pub struct Replay {
    explainer: Explainer,
    summary: Summary,
}

impl Replay {
    /// A replay under `explainer`'s configuration.
    pub fn new(explainer: Explainer) -> Self {
        Self {
            explainer,
            summary: Summary::default(),
        }
    }

    /// Decides `event` again (events other than the request path's
    /// requests are skipped).
    pub async fn add(&mut self, event: &AuditEvent) {
        // The admin API's own calls are not the configuration's to decide.
        if event.kind != EventKind::Request || event.guard.is_some() {
            return;
        }
        self.summary.events += 1;
        if let Err(why) = self.decide(event).await {
            *self.summary.not_redecidable.entry(why).or_default() += 1;
        }
    }

    async fn decide(&mut self, event: &AuditEvent) -> Result<(), NotRedecidable> {
        let old = recorded_outcome(event)?;
        let (request, kind) = rebuild(event)?;
        let report = self
            .explainer
            .explain(&request)
            .await
            .map_err(|_| NotRedecidable::Unreadable)?;
        if let (Some(kind), Some(c)) = (kind, &report.credentials)
            && !c.sources.iter().any(|s| s.source == source_of(kind))
        {
            return Err(NotRedecidable::CredentialSourceChanged);
        }
        let new = new_outcome(&report)?;
        if new == old {
            self.summary.unchanged += 1;
            return Ok(());
        }
        self.summary.changed += 1;
        let route = report
            .routes
            .as_ref()
            .and_then(|r| r.decided_by.clone())
            .map_or_else(
                || "(no route: the default)".to_owned(),
                |r| format!("route `{r}`"),
            );
        let group = self.summary.changes.entry((route, old, new)).or_default();
        group.count += 1;
        if group.examples.len() < EXAMPLES_PER_GROUP {
            group.examples.push(example(event, kind));
        }
        Ok(())
    }

    /// What was found.
    pub fn finish(self) -> Summary {
        self.summary
    }
}

#[cfg(test)]
mod tests {
    use portcullis_core::audit::Grants;

    use super::*;

    fn event(decision: Decision, code: Option<&str>) -> AuditEvent {
        let mut e = AuditEvent::new(EventKind::Request, 1, decision);
        e.code = code.map(str::to_owned);
        e.method = Some("GET".into());
        e.path = Some("/docs/1".into());
        e.host = Some("api.example.com".into());
        e.client_ip = Some("10.0.0.1".into());
        e
    }

    #[test]
    fn recorded_outcomes_are_named_or_counted_by_reason() {
        let outcome = |d, c| recorded_outcome(&event(d, c));
        assert_eq!(outcome(Decision::Allow, None), Ok("allow".into()));
        assert_eq!(
            outcome(Decision::Deny, Some("authz.denied")),
            Ok("authz.denied".into())
        );
        assert_eq!(
            outcome(Decision::Deny, Some("rate_limit.exceeded")),
            Err(NotRedecidable::RateLimited)
        );
        assert_eq!(
            outcome(Decision::Deny, Some("anomaly.banned")),
            Err(NotRedecidable::Banned)
        );
        assert_eq!(
            outcome(Decision::Deny, Some("auth.token_expired")),
            Err(NotRedecidable::CredentialRefused)
        );
        assert_eq!(
            outcome(Decision::Deny, Some("request.host_mismatch")),
            Err(NotRedecidable::RefusedBeforeChecks)
        );
        // A log is not trusted: a code this build does not know is not a
        // group of its own.
        assert_eq!(
            outcome(Decision::Deny, Some("authz.made_up_by_the_row")),
            Err(NotRedecidable::UnknownOutcome)
        );
        // A dry-run route's refusal was let through.
        let mut dry = event(Decision::Deny, Some("authz.denied"));
        dry.reason = Some("dry_run: missing_role: beta".into());
        assert_eq!(
            recorded_outcome(&dry),
            Ok("allow (dry run: authz.denied)".into())
        );
    }

    #[test]
    fn a_caller_is_rebuilt_only_when_recorded_whole() {
        let mut e = event(Decision::Allow, None);
        e.subject = Some("v".into());
        e.auth_method = Some("api_key".into());
        assert_eq!(rebuild(&e).err(), Some(NotRedecidable::GrantsMissing));
        e.grants = Some(Grants {
            roles: vec!["viewer".into()],
            truncated: true,
            ..Grants::default()
        });
        assert_eq!(rebuild(&e).err(), Some(NotRedecidable::GrantsTruncated));
        e.grants = Some(Grants {
            roles: vec!["viewer".into()],
            ..Grants::default()
        });
        let (request, kind) = rebuild(&e).unwrap();
        assert_eq!(kind, Some(AuthMethod::ApiKey));
        let caller = request.assume.unwrap();
        assert_eq!(caller.roles, ["viewer"]);
        assert_eq!(caller.method, Some(AuthMethod::ApiKey));
        assert_eq!(request.host.as_deref(), Some("api.example.com"));

        e.auth_method = Some("carrier_pigeon".into());
        assert_eq!(
            rebuild(&e).err(),
            Some(NotRedecidable::UnknownCredentialKind)
        );
        e.host = None;
        assert_eq!(rebuild(&e).err(), Some(NotRedecidable::BeforeSchemaV3));
    }
}
