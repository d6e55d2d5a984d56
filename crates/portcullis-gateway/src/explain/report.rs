//! The report of one explained decision: what the request looked like after
//! canonicalisation, which route matched and why, the credentials found,
//! the caller, each requirement, bans, rate rules, the decision and the
//! headers the upstream would receive; as JSON (`--json`, the admin API)
//! and as the text `portcullis explain` prints.

use super::*;

/// Everything `explain` says about one request (the JSON of `--format json`
/// and of `POST /admin/explain`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Whether live state (stores, bans, counters) was read.
    pub live: bool,
    /// The request as the guard sees it (canonical, unless malformed).
    pub request: RequestView,
    /// Why the request has no single meaning (then nothing else ran).
    pub malformed: Option<Malformed>,
    /// Which surface answers: `proxy` (the guarded routes), `token_service`,
    /// `forward_auth`, `jwks`.
    pub surface: String,
    /// The matching routes.
    pub routes: Option<RoutesView>,
    /// Authentication.
    pub credentials: Option<CredentialsView>,
    /// The caller.
    pub principal: Option<PrincipalView>,
    /// What the route whose settings apply requires.
    pub requirement: Option<RequirementView>,
    /// The authorization step, when reached.
    pub authorization: Option<AuthorizationView>,
    /// Ban checks.
    pub bans: Vec<BanView>,
    /// The route's rate rules and the key each counts under.
    pub rate_limits: Vec<RateView>,
    /// `enforce` or `dry_run`.
    pub mode: Option<String>,
    /// Where an allowed request goes, and its header changes.
    pub upstream: Option<UpstreamView>,
    /// The final decision.
    pub decision: DecisionView,
}

/// The request's method, host, path and query.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestView {
    /// Method.
    pub method: String,
    /// Host.
    pub host: Option<String>,
    /// Path.
    pub path: String,
    /// Query.
    pub query: Option<String>,
    /// The client address the guard keys on.
    pub client_ip: Option<IpAddr>,
    /// The request as sent, when its canonical form differs.
    #[serde(default)]
    pub as_sent: Option<Box<RequestView>>,
}

impl RequestView {
    pub(crate) fn of(parts: &http::request::Parts) -> Self {
        Self {
            method: parts.method.to_string(),
            host: parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .or_else(|| parts.uri.host().map(str::to_owned)),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            client_ip: None,
            as_sent: None,
        }
    }
}

/// Why a request is refused before any check (400 `request.malformed`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Malformed {
    /// The specific stable reason (`request.host_mismatch`, …).
    pub reason: String,
    /// In words.
    pub detail: String,
}

/// The routes matching a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutesView {
    /// The path the routes were matched against (`None`: no single meaning).
    pub matched_path: Option<String>,
    /// The path had parameters (`;`).
    pub path_parameters: bool,
    /// Every matching route, in precedence order.
    pub matches: Vec<RouteMatchView>,
    /// The route that decides.
    pub decided_by: Option<String>,
    /// The route whose credentials, rate limits, mode and upstream apply.
    pub settings_from: Option<String>,
    /// No route matched: the configured default.
    pub default: Option<String>,
    /// Why the deciding route beats each other match.
    pub why: Vec<Precedence>,
}

/// A matching route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteMatchView {
    /// Name.
    pub name: String,
    /// `allow` or `deny`.
    pub effect: String,
}

/// Why the deciding route beats another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Precedence {
    /// The other route.
    pub over: String,
    /// The stable rule (`deny_overrides_allow`, `more_specific_path`, …).
    pub rule: String,
    /// In words.
    pub detail: String,
}

/// Authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialsView {
    /// The route's sources in the order tried, and whether each is present.
    pub sources: Vec<SourceView>,
    /// The credential that decides.
    pub presented: Option<String>,
    /// `verified`, `refused`, `none_presented`, `assumed`, `not_checked_offline`,
    /// `not_checked` (a signed request: verifying would spend its nonce).
    pub outcome: String,
    /// The stable code of a refusal.
    pub code: Option<String>,
    /// `passed`, `failed`, `not_checked_offline`, `not_applicable`.
    pub revocation: String,
    /// What offline cannot tell.
    pub note: Option<String>,
}

/// One credential source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceView {
    /// `jwt`, `api_key`, `app`, `signed`, `anonymous`.
    pub source: String,
    /// Whether the request presents one of its kind.
    pub present: bool,
}

/// The caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrincipalView {
    /// Subject.
    pub subject: String,
    /// How it authenticated.
    pub auth_method: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Its own permissions.
    pub permissions: Vec<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Its own permissions and its roles'.
    pub effective_permissions: Vec<String>,
}

/// A route's requirement, as configured (empty lists left out).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RequirementView {
    /// The route.
    pub route: String,
    /// Credential sources accepted.
    pub credentials: Vec<String>,
    /// Any of these roles.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles_any: Vec<String>,
    /// All of these roles.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles_all: Vec<String>,
    /// All of these permissions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permissions_all: Vec<String>,
    /// Any of these permissions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permissions_any: Vec<String>,
    /// These scopes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The tenant parameter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_param: Option<String>,
    /// Custom policies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

impl RequirementView {
    pub(crate) fn of(r: &portcullis::RouteConfig) -> Self {
        let q = &r.require;
        Self {
            route: r.name.clone(),
            credentials: r
                .credentials
                .iter()
                .map(|s| source_name(*s).to_owned())
                .collect(),
            roles_any: q.roles_any.clone(),
            roles_all: q.roles_all.clone(),
            permissions_all: q.permissions_all.clone(),
            permissions_any: q.permissions_any.clone(),
            scopes: q.scopes.clone(),
            tenant_param: q.tenant_param.clone(),
            policies: q.policies.clone(),
        }
    }
}

/// The authorization step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorizationView {
    /// The deciding rule.
    pub rule: Option<String>,
    /// Allowed.
    pub allowed: bool,
    /// The stable reason.
    pub reason: String,
    /// In words, naming the missing grant.
    pub detail: String,
}

/// A ban check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BanView {
    /// `ip` or `subject`.
    pub on: String,
    /// `passed`, `failed` (banned), `not_checked_offline`.
    pub result: String,
}

/// A rate rule of the route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateView {
    /// The rule.
    pub rule: String,
    /// The key the request counts under.
    pub key: Option<String>,
    /// Whether it counts this request (it has every part of the key).
    pub applies: bool,
    /// The quota.
    pub limit: Option<u64>,
    /// Requests still admitted (read, not consumed).
    pub remaining: Option<u64>,
    /// The counters refuse it now.
    pub limited: bool,
}

/// The upstream of an allowed request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamView {
    /// Its name.
    pub name: Option<String>,
    /// The URL the request is sent to.
    pub url: Option<String>,
    /// Why it would not be sent.
    pub error: Option<String>,
    /// Header changes.
    pub headers: HeaderChanges,
}

/// How the headers change on the way to the upstream (secret values redacted).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeaderChanges {
    /// Set by the gateway.
    pub added: Vec<HeaderView>,
    /// Replaced by the gateway.
    pub replaced: Vec<HeaderView>,
    /// Removed.
    pub removed: Vec<String>,
}

/// A header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeaderView {
    /// Name.
    pub name: String,
    /// Value (`<redacted>` for secrets).
    pub value: String,
}

/// The final decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionView {
    /// Whether the request is let through.
    pub allow: bool,
    /// Why it cannot be decided here.
    pub undetermined: Option<String>,
    /// The stable code of a refusal.
    pub code: Option<String>,
    /// The status of a refusal.
    pub status: Option<u16>,
    /// The stable reason.
    pub reason: Option<String>,
    /// In words.
    pub detail: Option<String>,
    /// A dry-run route lets through what it would refuse.
    pub dry_run_would_refuse: Option<DryRunView>,
}

/// What a dry-run route would refuse with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DryRunView {
    /// The code.
    pub code: String,
    /// The status.
    pub status: u16,
}

impl DecisionView {
    pub(crate) fn undetermined(why: String) -> Self {
        Self {
            allow: false,
            undetermined: Some(why),
            code: None,
            status: None,
            reason: None,
            detail: None,
            dry_run_would_refuse: None,
        }
    }
}

impl Report {
    /// The report for people: one section per step, in order.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let r = &self.request;
        let _ = writeln!(
            o,
            "explain ({})",
            if self.live {
                "live: stores, bans and counters read"
            } else {
                "offline: configuration only"
            }
        );
        let _ = writeln!(o, "\nrequest");
        let _ = writeln!(o, "  method  {}", r.method);
        let _ = writeln!(o, "  host    {}", r.host.as_deref().unwrap_or("(none)"));
        let _ = writeln!(
            o,
            "  path    {}{}",
            r.path,
            r.query
                .as_deref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        );
        if let Some(ip) = r.client_ip {
            let _ = writeln!(o, "  client  {ip}");
        }
        if let Some(sent) = &r.as_sent {
            let _ = writeln!(
                o,
                "  (canonical form of {} {} on {})",
                sent.method,
                sent.path,
                sent.host.as_deref().unwrap_or("no host")
            );
        }
        if let Some(m) = &self.malformed {
            let _ = writeln!(o, "  MALFORMED {}: {}", m.reason, m.detail);
        }
        if self.surface != "proxy" {
            let _ = writeln!(o, "  surface {}", self.surface);
        }
        if let Some(rt) = &self.routes {
            let _ = writeln!(o, "\nroutes");
            if let Some(p) = &rt.matched_path {
                let _ = writeln!(
                    o,
                    "  matched against {p}{}",
                    if rt.path_parameters {
                        " (path parameters removed)"
                    } else {
                        ""
                    }
                );
            }
            if rt.matches.is_empty() {
                let _ = writeln!(
                    o,
                    "  no route matches: default {}",
                    rt.default.as_deref().unwrap_or("deny")
                );
            }
            for (i, m) in rt.matches.iter().enumerate() {
                let mark = if Some(&m.name) == rt.decided_by.as_ref() {
                    "→"
                } else {
                    " "
                };
                let _ = writeln!(o, "  {mark} {}. {} ({})", i + 1, m.name, m.effect);
            }
            for w in &rt.why {
                let _ = writeln!(
                    o,
                    "  `{}` wins over `{}`: {} [{}]",
                    rt.decided_by.as_deref().unwrap_or("?"),
                    w.over,
                    w.detail,
                    w.rule
                );
            }
            if rt.settings_from != rt.decided_by
                && let Some(s) = &rt.settings_from
            {
                let _ = writeln!(
                    o,
                    "  credentials, rate limits, mode and upstream come from `{s}`"
                );
            }
        }
        if let Some(c) = &self.credentials {
            let _ = writeln!(o, "\ncredentials");
            for s in &c.sources {
                let _ = writeln!(
                    o,
                    "  {:<10} {}",
                    s.source,
                    if s.present { "present" } else { "not present" }
                );
            }
            let _ = writeln!(
                o,
                "  outcome    {}{}{}",
                c.outcome,
                c.presented
                    .as_ref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default(),
                c.code
                    .as_ref()
                    .map(|code| format!(": {code}"))
                    .unwrap_or_default()
            );
            let _ = writeln!(o, "  revocation {}", c.revocation.replace('_', " "));
            if let Some(n) = &c.note {
                let _ = writeln!(o, "  note       {n}");
            }
        }
        if let Some(p) = &self.principal {
            let _ = writeln!(o, "\ncaller");
            let _ = writeln!(o, "  subject     {} ({})", p.subject, p.auth_method);
            let _ = writeln!(o, "  roles       {}", list(&p.roles));
            let _ = writeln!(o, "  permissions {}", list(&p.effective_permissions));
            if !p.scopes.is_empty() {
                let _ = writeln!(o, "  scopes      {}", list(&p.scopes));
            }
            if let Some(t) = &p.tenant {
                let _ = writeln!(o, "  tenant      {t}");
            }
        }
        if let Some(q) = &self.requirement {
            let _ = writeln!(o, "\nrequirement of `{}`", q.route);
            let _ = writeln!(o, "  credentials     {}", q.credentials.join(", "));
            for (label, v) in [
                ("roles (any)", &q.roles_any),
                ("roles (all)", &q.roles_all),
                ("permissions", &q.permissions_all),
                ("permissions (any)", &q.permissions_any),
                ("scopes", &q.scopes),
                ("policies", &q.policies),
            ] {
                if !v.is_empty() {
                    let _ = writeln!(o, "  {label:<15} {}", list(v));
                }
            }
            if let Some(t) = &q.tenant_param {
                let _ = writeln!(o, "  tenant          = path {{{t}}}");
            }
        }
        if let Some(a) = &self.authorization {
            let _ = writeln!(
                o,
                "  checked         {} ({})",
                if a.allowed { "granted" } else { "NOT granted" },
                a.detail
            );
        }
        if !self.bans.is_empty() {
            let _ = writeln!(o, "\nbans");
            for b in &self.bans {
                let _ = writeln!(o, "  {:<8} {}", b.on, b.result.replace('_', " "));
            }
        }
        if self.routes.is_some() {
            let _ = writeln!(o, "\nrate limits");
            if self.rate_limits.is_empty() {
                let _ = writeln!(o, "  none on this route");
            }
        }
        for l in &self.rate_limits {
            let key = l.key.as_deref().unwrap_or("(does not apply: no key)");
            let counters = match (l.remaining, l.limit) {
                (Some(rem), Some(lim)) if self.live => format!(" — {rem} of {lim} left"),
                _ => String::new(),
            };
            let _ = writeln!(
                o,
                "  {} key {key}{counters}{}",
                l.rule,
                if l.limited && self.live {
                    " — LIMITED"
                } else {
                    ""
                }
            );
        }
        if let Some(m) = &self.mode {
            let _ = writeln!(o, "\nmode {}", m.replace('_', "-"));
        }
        if let Some(u) = &self.upstream {
            let _ = writeln!(o, "\nupstream");
            if let Some(name) = &u.name {
                let _ = writeln!(o, "  {name} {}", u.url.as_deref().unwrap_or(""));
            }
            if let Some(e) = &u.error {
                let _ = writeln!(o, "  {e}");
            }
            for h in &u.headers.added {
                let _ = writeln!(o, "  + {}: {}", h.name, h.value);
            }
            for h in &u.headers.replaced {
                let _ = writeln!(o, "  ~ {}: {}", h.name, h.value);
            }
            for h in &u.headers.removed {
                let _ = writeln!(o, "  - {h}");
            }
        }
        let d = &self.decision;
        let _ = writeln!(o, "\ndecision");
        if let Some(why) = &d.undetermined {
            let _ = writeln!(o, "  UNDETERMINED: {why}");
        } else if d.allow {
            let _ = writeln!(o, "  ALLOW ({})", d.reason.as_deref().unwrap_or("allowed"));
            if let Some(w) = &d.dry_run_would_refuse {
                let _ = writeln!(
                    o,
                    "  dry run: would refuse {} {} ({})",
                    w.status,
                    w.code,
                    d.detail.as_deref().unwrap_or("")
                );
            }
        } else {
            let _ = writeln!(
                o,
                "  DENY {} {} ({}): {}",
                d.status.unwrap_or(0),
                d.code.as_deref().unwrap_or(""),
                d.reason.as_deref().unwrap_or(""),
                d.detail.as_deref().unwrap_or("")
            );
        }
        o
    }
}

pub(crate) fn list(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".to_owned()
    } else {
        v.join(", ")
    }
}
