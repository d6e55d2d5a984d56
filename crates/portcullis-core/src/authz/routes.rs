//! Route rules: which requests need what. Every path pattern is compiled
//! into one segment trie when the configuration loads; a request walks it
//! once, without allocating, and the decision names the rule and the reason.
//!
//! Semantics: a matching `deny` rule always wins (deny overrides allow);
//! otherwise the most specific matching `allow` rule decides by its
//! requirements (see [`AccessPolicy`] for the order, computed once at
//! load: the request path pays one comparison per matching rule); a request
//! that matches no rule gets the configured default (deny unless configured).
//! [`AccessPolicy::conflicts`] finds, at load, rules that can never decide
//! (shadowed) and rules whose order would be arbitrary (ambiguous).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use foldhash::fast::RandomState;
use serde::{Deserialize, Serialize};

use super::permission::{self, Permission, PermissionSet, grant_str_matches};
use super::roles::{RoleDef, RoleError, RoleTable};
use crate::error::ErrorCode;
use crate::principal::{AuthMethod, Principal};

/// Whether a rule allows (under its requirements) or denies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Allow when the requirements hold.
    #[default]
    Allow,
    /// Deny, whatever else matches.
    Deny,
}

/// What a caller must satisfy for an `allow` rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Anyone may call, with or without credentials; other fields are ignored.
    #[serde(default)]
    pub anonymous: bool,
    /// Accepted authentication methods; empty means any (but authenticated).
    #[serde(default)]
    pub auth_methods: Vec<AuthMethod>,
    /// The caller must hold at least one of these roles (included roles count).
    #[serde(default)]
    pub roles_any: Vec<String>,
    /// The caller must hold every one of these roles (included roles count).
    #[serde(default)]
    pub roles_all: Vec<String>,
    /// The caller must have every one of these permissions.
    #[serde(default)]
    pub permissions_all: Vec<String>,
    /// The caller must have at least one of these permissions.
    #[serde(default)]
    pub permissions_any: Vec<String>,
    /// The caller's token must carry every one of these scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The caller's tenant must equal this path parameter (`{tenant}`).
    #[serde(default)]
    pub tenant_param: Option<String>,
    /// Named custom policies (registered by the runtime) that must allow too.
    #[serde(default)]
    pub policies: Vec<String>,
}

/// One route rule as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// A name for logs, audit and 403 bodies.
    pub name: String,
    /// Allow (default) or deny.
    #[serde(default)]
    pub effect: Effect,
    /// HTTP methods (upper case); empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path pattern: literal segments, `*` or `{name}` (one segment), and a
    /// final `**` (any number of segments, including none).
    pub path: String,
    /// Host (`api.example.com` or `*.example.com`); absent means any.
    #[serde(default)]
    pub host: Option<String>,
    /// Requirements of an `allow` rule.
    #[serde(default)]
    pub require: Requirements,
    /// Whether paths with parameters (`/a;v=1/b`, as servlet containers
    /// read them) may be allowed by this rule (default false: refused as
    /// `malformed_path`). The rule matches the path with them removed.
    #[serde(default)]
    pub path_parameters: bool,
}

impl RouteRule {
    /// An allow rule named `name` on `path`, any method, authenticated callers.
    pub fn allow(name: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            effect: Effect::Allow,
            methods: Vec::new(),
            path: path.into(),
            host: None,
            require: Requirements::default(),
            path_parameters: false,
        }
    }

    /// A deny rule named `name` on `path`.
    pub fn deny(name: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            effect: Effect::Deny,
            ..Self::allow(name, path)
        }
    }

    /// Restricts the rule to `methods`.
    #[must_use]
    pub fn methods<I: IntoIterator<Item = S>, S: Into<String>>(mut self, methods: I) -> Self {
        self.methods = methods.into_iter().map(Into::into).collect();
        self
    }

    /// Restricts the rule to `host`.
    #[must_use]
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Lets paths with parameters (`;`) through this rule.
    #[must_use]
    pub fn path_parameters(mut self, allowed: bool) -> Self {
        self.path_parameters = allowed;
        self
    }

    /// Allows callers without credentials.
    #[must_use]
    pub fn anonymous(mut self) -> Self {
        self.require.anonymous = true;
        self
    }

    /// Accepts only these authentication methods.
    #[must_use]
    pub fn auth_methods<I: IntoIterator<Item = AuthMethod>>(mut self, m: I) -> Self {
        self.require.auth_methods = m.into_iter().collect();
        self
    }

    /// Requires one of these roles.
    #[must_use]
    pub fn roles_any<I: IntoIterator<Item = S>, S: Into<String>>(mut self, r: I) -> Self {
        self.require.roles_any = r.into_iter().map(Into::into).collect();
        self
    }

    /// Requires all of these roles.
    #[must_use]
    pub fn roles_all<I: IntoIterator<Item = S>, S: Into<String>>(mut self, r: I) -> Self {
        self.require.roles_all = r.into_iter().map(Into::into).collect();
        self
    }

    /// Requires all of these permissions.
    #[must_use]
    pub fn permissions_all<I: IntoIterator<Item = S>, S: Into<String>>(mut self, p: I) -> Self {
        self.require.permissions_all = p.into_iter().map(Into::into).collect();
        self
    }

    /// Requires one of these permissions.
    #[must_use]
    pub fn permissions_any<I: IntoIterator<Item = S>, S: Into<String>>(mut self, p: I) -> Self {
        self.require.permissions_any = p.into_iter().map(Into::into).collect();
        self
    }

    /// Requires all of these scopes.
    #[must_use]
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, s: I) -> Self {
        self.require.scopes = s.into_iter().map(Into::into).collect();
        self
    }

    /// Requires the caller's tenant to equal path parameter `param`.
    #[must_use]
    pub fn tenant_param(mut self, param: impl Into<String>) -> Self {
        self.require.tenant_param = Some(param.into());
        self
    }

    /// Requires the named custom policy to allow too.
    #[must_use]
    pub fn policy(mut self, name: impl Into<String>) -> Self {
        self.require.policies.push(name.into());
        self
    }
}

/// The whole authorization configuration: roles, rules and the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzConfig {
    /// Role definitions.
    #[serde(default)]
    pub roles: Vec<RoleDef>,
    /// Route rules, in order.
    #[serde(default)]
    pub rules: Vec<RouteRule>,
    /// What a request matching no rule gets (deny unless configured).
    #[serde(default = "default_deny")]
    pub default: Effect,
}

fn default_deny() -> Effect {
    Effect::Deny
}

/// Why an authorization configuration was refused; names the rule and field.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzConfigError {
    /// A rule field is invalid.
    #[error("rule `{rule}`, field `{field}`: {message}")]
    Rule {
        /// The rule's name.
        rule: String,
        /// The field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The roles are invalid.
    #[error("roles: {0}")]
    Roles(#[from] RoleError),
}

/// The facts of a request that rules look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// HTTP method, upper case.
    pub method: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    /// `Host` (a port is ignored), when known.
    pub host: Option<&'a str>,
}

impl<'a> RequestFacts<'a> {
    /// Facts of a request without a known host.
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Self {
            method,
            path,
            host: None,
        }
    }

    /// With the `Host`.
    #[must_use]
    pub fn with_host(mut self, host: &'a str) -> Self {
        self.host = Some(host);
        self
    }
}

/// The rules that match one request (see [`AccessPolicy::match_route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch {
    malformed: bool,
    /// The path had parameters (`;`); matched without them.
    params: bool,
    deny: Option<u32>,
    allow: Option<u32>,
}

impl RouteMatch {
    /// The index of the rule whose settings apply: the most specific
    /// matching `allow` rule, else the most specific matching `deny` rule.
    pub fn route_index(&self) -> Option<usize> {
        self.allow.or(self.deny).map(|id| id as usize)
    }
}

/// Why a request was allowed or denied. `as_str` is stable (audit field).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason<'a> {
    /// The rule's requirements hold.
    Allowed,
    /// The rule allows anonymous callers.
    AnonymousAllowed,
    /// No rule matched and the default is allow.
    DefaultAllow,
    /// No rule matched and the default is deny.
    NoMatchingRule,
    /// A deny rule matched.
    DeniedByRule,
    /// The rule needs credentials and the caller has none.
    Unauthenticated,
    /// The caller authenticated with a method the rule does not accept.
    AuthMethodNotAllowed(AuthMethod),
    /// A required role is missing.
    MissingRole(&'a str),
    /// None of the acceptable roles is held.
    MissingAnyRole(&'a [Box<str>]),
    /// A required permission is missing.
    MissingPermission(&'a str),
    /// None of the acceptable permissions is held.
    MissingAnyPermission(&'a [Box<str>]),
    /// A required scope is missing.
    MissingScope(&'a str),
    /// The caller's tenant differs from the path's (or the caller has none).
    TenantMismatch,
    /// The path has no single meaning (`.` or `..` segments, an encoded
    /// `/`), or has parameters (`;`) the rule does not accept.
    MalformedPath,
    /// A custom policy denied.
    Policy(&'a str),
}

impl Reason<'_> {
    /// A stable short name, e.g. `missing_permission`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::AnonymousAllowed => "anonymous_allowed",
            Self::DefaultAllow => "default_allow",
            Self::NoMatchingRule => "no_matching_rule",
            Self::DeniedByRule => "denied_by_rule",
            Self::Unauthenticated => "unauthenticated",
            Self::AuthMethodNotAllowed(_) => "auth_method_not_allowed",
            Self::MissingRole(_) => "missing_role",
            Self::MissingAnyRole(_) => "missing_any_role",
            Self::MissingPermission(_) => "missing_permission",
            Self::MissingAnyPermission(_) => "missing_any_permission",
            Self::MissingScope(_) => "missing_scope",
            Self::TenantMismatch => "tenant_mismatch",
            Self::MalformedPath => "malformed_path",
            Self::Policy(_) => "policy_denied",
        }
    }
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, items: &[Box<str>]| {
            let mut first = true;
            for i in items {
                if !first {
                    f.write_str(", ")?;
                }
                first = false;
                f.write_str(i)?;
            }
            Ok(())
        };
        match self {
            Self::AuthMethodNotAllowed(m) => {
                write!(f, "authentication method {m:?} is not accepted")
            }
            Self::MissingRole(r) => write!(f, "missing role `{r}`"),
            Self::MissingAnyRole(r) => {
                f.write_str("needs one of the roles: ")?;
                join(f, r)
            }
            Self::MissingPermission(p) => write!(f, "missing permission `{p}`"),
            Self::MissingAnyPermission(p) => {
                f.write_str("needs one of the permissions: ")?;
                join(f, p)
            }
            Self::MissingScope(s) => write!(f, "missing scope `{s}`"),
            Self::Policy(p) => write!(f, "policy `{p}` denied"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// The answer for one request: allowed or not, by which rule, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Whether the request may proceed (custom policies may still deny).
    pub allowed: bool,
    /// The deciding rule's name; `None` when the default applied.
    pub rule: Option<&'a str>,
    /// Why.
    pub reason: Reason<'a>,
    /// Custom policies that must also allow (only when `allowed`).
    pub policies: &'a [Box<str>],
}

impl Serialize for Decision<'_> {
    /// `{"allowed", "rule", "reason", "detail", "code"}`: for audit events
    /// and 403 bodies.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Decision", 5)?;
        st.serialize_field("allowed", &self.allowed)?;
        st.serialize_field("rule", &self.rule)?;
        st.serialize_field("reason", self.reason.as_str())?;
        st.serialize_field("detail", &self.reason.to_string())?;
        st.serialize_field("code", &self.code().map(ErrorCode::as_str))?;
        st.end()
    }
}

impl Decision<'_> {
    /// The stable error code of a denial (`auth.missing_credentials` when
    /// credentials are needed, else `authz.denied`); `None` when allowed.
    pub fn code(&self) -> Option<ErrorCode> {
        match (self.allowed, self.reason) {
            (true, _) => None,
            (false, Reason::Unauthenticated) => Some(ErrorCode::MissingCredentials),
            (false, _) => Some(ErrorCode::Denied),
        }
    }
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];
const ANY_METHOD: u16 = u16::MAX;

fn method_bit(m: &str) -> u16 {
    METHODS
        .iter()
        .position(|k| *k == m)
        .map_or(1 << 15, |i| 1 << i)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatSeg {
    Literal(Box<str>),
    One(Option<Box<str>>),
    Rest,
}

#[derive(Debug, Clone)]
enum HostMatch {
    Any,
    Exact(Box<str>),
    Suffix(Box<str>),
}

#[derive(Debug, Clone)]
struct CompiledRule {
    name: Box<str>,
    /// Position in the precedence order: 0 is the most specific rule.
    rank: u32,
    effect: Effect,
    methods: u16,
    host: HostMatch,
    segments: Box<[PatSeg]>,
    anonymous: bool,
    auth_methods: Box<[AuthMethod]>,
    roles_any: Box<[Box<str>]>,
    roles_all: Box<[Box<str>]>,
    permissions_all: Box<[Box<str>]>,
    permissions_any: Box<[Box<str>]>,
    scopes: Box<[Box<str>]>,
    tenant_param: Option<Box<str>>,
    policies: Box<[Box<str>]>,
    path_parameters: bool,
}

#[derive(Debug, Clone, Default)]
struct Node {
    literal: HashMap<Box<str>, u32, RandomState>,
    one: Option<u32>,
    rest: Vec<u32>,
    end: Vec<u32>,
}

/// The compiled configuration: the role table, every rule, and one segment
/// trie over all path patterns.
///
/// Precedence, for a request several rules match: any matching `deny` rule
/// denies (deny overrides allow); otherwise the most specific matching
/// `allow` rule decides. Specificity compares, in order: the host (an exact
/// host, then `*.suffix` with the longer suffix first, then any host); the
/// path segment by segment from the left (a literal segment, then `*` or
/// `{param}`, then `**`; a pattern that ends where the other continues with
/// `**` is the more specific); then the methods (a list before any method,
/// a shorter list first). Among rules equal on all of these the earlier in
/// the configuration wins, but [`Self::conflicts`] reports every such
/// overlap, so a checked configuration never depends on order.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    roles: RoleTable,
    rules: Vec<CompiledRule>,
    nodes: Vec<Node>,
    default: Effect,
}

fn rule_err(rule: &str, field: &'static str, message: impl Into<String>) -> AuthzConfigError {
    AuthzConfigError::Rule {
        rule: rule.to_owned(),
        field,
        message: message.into(),
    }
}

fn compile_path(rule: &str, path: &str) -> Result<Vec<PatSeg>, AuthzConfigError> {
    if !path.starts_with('/') {
        return Err(rule_err(rule, "path", "must start with `/`"));
    }
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut out = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        let seg = match *p {
            "**" if i + 1 == parts.len() => PatSeg::Rest,
            "**" => return Err(rule_err(rule, "path", "`**` may only be the last segment")),
            "*" => PatSeg::One(None),
            "." | ".." => {
                return Err(rule_err(
                    rule,
                    "path",
                    "`.` and `..` segments are not allowed",
                ));
            }
            p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                let name = &p[1..p.len() - 1];
                if name.contains(['{', '}', '*']) {
                    return Err(rule_err(rule, "path", format!("bad parameter `{p}`")));
                }
                PatSeg::One(Some(name.into()))
            }
            p if p.contains(['{', '}', '*']) => {
                return Err(rule_err(
                    rule,
                    "path",
                    format!("segment `{p}`: use `*`, `**` or `{{name}}` as whole segments"),
                ));
            }
            p => PatSeg::Literal(p.into()),
        };
        out.push(seg);
    }
    Ok(out)
}

fn boxed(v: &[String]) -> Box<[Box<str>]> {
    v.iter().map(|s| s.as_str().into()).collect()
}

/// The path as rules see it: the canonical path
/// ([`crate::canonical::path`]), with path parameters removed, and whether
/// it had any. `None` for a path a backend could route elsewhere than we
/// match: `.` or `..` segments, an encoded `/`, backslash or NUL, a raw
/// backslash, a bad escape.
fn normalize_path(path: &str) -> Option<(Cow<'_, str>, bool)> {
    let path = crate::canonical::path(path).ok()?;
    if !crate::canonical::has_path_parameters(&path) {
        return Some((path, false));
    }
    let stripped = crate::canonical::without_path_parameters(&path).into_owned();
    Some((Cow::Owned(stripped), true))
}

/// Splits off the next non-empty path segment.
fn next_segment(path: &str) -> Option<(&str, &str)> {
    let path = path.trim_start_matches('/');
    if path.is_empty() {
        return None;
    }
    Some(match path.find('/') {
        Some(i) => (&path[..i], &path[i..]),
        None => (path, ""),
    })
}

fn host_matches(rule: &HostMatch, host: Option<&str>) -> bool {
    match rule {
        HostMatch::Any => true,
        HostMatch::Exact(h) | HostMatch::Suffix(h) => {
            let Some(host) = host else { return false };
            let host = strip_port(host);
            let host = host.strip_suffix('.').unwrap_or(host);
            match rule {
                HostMatch::Exact(_) => host.eq_ignore_ascii_case(h),
                _ => {
                    host.len() > h.len()
                        && host.is_char_boundary(host.len() - h.len())
                        && host[host.len() - h.len()..].eq_ignore_ascii_case(h)
                }
            }
        }
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

/// A rule that can never decide, or whose precedence is only its place in
/// the file (see [`AccessPolicy::conflicts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConflict {
    /// The rule's name.
    pub rule: String,
    /// Its index in the configuration.
    pub index: usize,
    /// What is wrong.
    pub kind: ConflictKind,
}

/// Why a rule conflicts.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictKind {
    /// An earlier rule of the same effect and the same specificity matches
    /// some of the same requests.
    Ambiguous {
        /// The earlier rule.
        other: String,
    },
    /// Every request the rule matches is decided by these rules.
    Shadowed {
        /// The covering rules, in declaration order.
        by: Vec<String>,
    },
}

impl fmt::Display for RouteConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ConflictKind::Ambiguous { other } => write!(
                f,
                "route `{}` is ambiguous with route `{other}`: both match some of the same requests with the same specificity; make one more specific (host, literal path segments, fewer methods) or split their methods",
                self.rule
            ),
            ConflictKind::Shadowed { by } => {
                write!(
                    f,
                    "route `{}` can never match: it is shadowed by route",
                    self.rule
                )?;
                if by.len() > 1 {
                    f.write_str("s")?;
                }
                for (i, b) in by.iter().enumerate() {
                    f.write_str(if i == 0 { " " } else { ", " })?;
                    write!(f, "`{b}`")?;
                }
                f.write_str(
                    " (a deny route overrides any allow route; otherwise the most specific route wins)",
                )
            }
        }
    }
}

/// How specific a rule is; greater wins. Compared in order: host (exact >
/// `*.suffix`, a longer suffix first > any), then the path segment by
/// segment (literal > `*`/`{param}` > `**`; a pattern that ends where
/// the other has `**` is the more specific), then methods (a list > any;
/// fewer > more).
fn specificity(r: &CompiledRule) -> (u8, usize, Vec<u8>, bool, std::cmp::Reverse<u32>) {
    let (host_kind, host_len) = match &r.host {
        HostMatch::Exact(h) => (2, h.len()),
        HostMatch::Suffix(s) => (1, s.len()),
        HostMatch::Any => (0, 0),
    };
    let mut path: Vec<u8> = r
        .segments
        .iter()
        .map(|s| match s {
            PatSeg::Literal(_) => 3,
            PatSeg::One(_) => 2,
            PatSeg::Rest => 1,
        })
        .collect();
    if !matches!(r.segments.last(), Some(PatSeg::Rest)) {
        path.push(4);
    }
    (
        host_kind,
        host_len,
        path,
        r.methods != ANY_METHOD,
        std::cmp::Reverse(r.methods.count_ones()),
    )
}

/// Whether some request matches both rules.
fn overlaps(a: &CompiledRule, b: &CompiledRule) -> bool {
    a.methods & b.methods != 0
        && hosts_overlap(&a.host, &b.host)
        && paths_overlap(&a.segments, &b.segments)
}

fn hosts_overlap(a: &HostMatch, b: &HostMatch) -> bool {
    match (a, b) {
        (HostMatch::Any, _) | (_, HostMatch::Any) => true,
        (HostMatch::Exact(x), HostMatch::Exact(y)) => x == y,
        (HostMatch::Exact(h), HostMatch::Suffix(s))
        | (HostMatch::Suffix(s), HostMatch::Exact(h)) => h.len() > s.len() && h.ends_with(&**s),
        (HostMatch::Suffix(x), HostMatch::Suffix(y)) => x.ends_with(&**y) || y.ends_with(&**x),
    }
}

/// Whether every host `inner` matches, `outer` matches.
fn host_covers(outer: &HostMatch, inner: &HostMatch) -> bool {
    match (outer, inner) {
        (HostMatch::Any, _) => true,
        (_, HostMatch::Any) => false,
        (HostMatch::Exact(o), HostMatch::Exact(i)) => o == i,
        (HostMatch::Exact(_), HostMatch::Suffix(_)) => false,
        (HostMatch::Suffix(s), HostMatch::Exact(h)) => h.len() > s.len() && h.ends_with(&**s),
        (HostMatch::Suffix(o), HostMatch::Suffix(i)) => i.ends_with(&**o),
    }
}

fn paths_overlap(a: &[PatSeg], b: &[PatSeg]) -> bool {
    for i in 0.. {
        match (a.get(i), b.get(i)) {
            (Some(PatSeg::Rest), _) | (_, Some(PatSeg::Rest)) | (None, None) => return true,
            (None, _) | (_, None) => return false,
            (Some(PatSeg::Literal(x)), Some(PatSeg::Literal(y))) if x != y => return false,
            _ => {}
        }
    }
    false
}

/// Whether every path `inner` matches, `outer` matches.
fn path_covers(outer: &[PatSeg], inner: &[PatSeg]) -> bool {
    for i in 0.. {
        match (outer.get(i), inner.get(i)) {
            (Some(PatSeg::Rest), _) | (None, None) => return true,
            (None, _) | (_, None) => return false,
            (Some(PatSeg::Literal(o)), Some(PatSeg::Literal(n))) if o == n => {}
            (Some(PatSeg::One(_)), Some(PatSeg::Literal(_) | PatSeg::One(_))) => {}
            _ => return false,
        }
    }
    false
}

impl AccessPolicy {
    /// Validates and compiles `config`; errors name the rule and field.
    pub fn new(config: &AuthzConfig) -> Result<Self, AuthzConfigError> {
        let roles = RoleTable::from_defs(&config.roles)?;
        let mut rules = Vec::with_capacity(config.rules.len());
        let mut nodes = vec![Node::default()];
        for (index, r) in config.rules.iter().enumerate() {
            let name = r.name.as_str();
            if name.is_empty() {
                return Err(rule_err(&format!("#{index}"), "name", "must not be empty"));
            }
            if config.rules[..index].iter().any(|o| o.name == r.name) {
                return Err(rule_err(name, "name", "is used by an earlier rule"));
            }
            let segments = compile_path(name, &r.path)?;
            let mut methods = 0u16;
            for m in &r.methods {
                if m == "*" {
                    methods = ANY_METHOD;
                    continue;
                }
                if !METHODS.contains(&m.as_str()) {
                    return Err(rule_err(
                        name,
                        "methods",
                        format!("`{m}` is not an upper-case HTTP method"),
                    ));
                }
                methods |= method_bit(m);
            }
            if methods == 0 {
                methods = ANY_METHOD;
            }
            let host = match r.host.as_deref() {
                None | Some("*") => HostMatch::Any,
                Some(h) if h.starts_with("*.") && h.len() > 2 => {
                    HostMatch::Suffix(h[1..].to_ascii_lowercase().into())
                }
                Some(h) if !h.is_empty() && !h.contains(['*', '/']) => {
                    HostMatch::Exact(h.to_ascii_lowercase().into())
                }
                Some(h) => {
                    return Err(rule_err(
                        name,
                        "host",
                        format!("`{h}` is not a host or `*.domain`"),
                    ));
                }
            };
            let q = &r.require;
            for p in q.permissions_all.iter().chain(&q.permissions_any) {
                permission::parse_required(p)
                    .map_err(|e| rule_err(name, "require.permissions", e.to_string()))?;
            }
            if let Some(param) = &q.tenant_param
                && !segments
                    .iter()
                    .any(|s| matches!(s, PatSeg::One(Some(n)) if **n == **param))
            {
                return Err(rule_err(
                    name,
                    "require.tenant_param",
                    format!("path `{}` has no `{{{param}}}` segment", r.path),
                ));
            }
            for role in q.roles_any.iter().chain(&q.roles_all) {
                if role.is_empty() {
                    return Err(rule_err(name, "require.roles", "a role name is empty"));
                }
            }
            if r.effect == Effect::Deny && *q != Requirements::default() {
                return Err(rule_err(
                    name,
                    "require",
                    "a deny rule denies unconditionally; move the requirements to an allow rule",
                ));
            }
            // Insert into the trie.
            let mut at = 0usize;
            let rule_id =
                u32::try_from(index).map_err(|_| rule_err(name, "rules", "too many rules"))?;
            for seg in &segments {
                at = match seg {
                    PatSeg::Rest => {
                        nodes[at].rest.push(rule_id);
                        usize::MAX
                    }
                    PatSeg::Literal(l) => match nodes[at].literal.get(l) {
                        Some(&n) => n as usize,
                        None => {
                            let n = nodes.len();
                            nodes.push(Node::default());
                            nodes[at].literal.insert(l.clone(), n as u32);
                            n
                        }
                    },
                    PatSeg::One(_) => match nodes[at].one {
                        Some(n) => n as usize,
                        None => {
                            let n = nodes.len();
                            nodes.push(Node::default());
                            nodes[at].one = Some(n as u32);
                            n
                        }
                    },
                };
            }
            if at != usize::MAX {
                nodes[at].end.push(rule_id);
            }
            rules.push(CompiledRule {
                name: name.into(),
                rank: 0,
                effect: r.effect,
                methods,
                host,
                segments: segments.into(),
                anonymous: q.anonymous,
                auth_methods: q.auth_methods.clone().into(),
                roles_any: boxed(&q.roles_any),
                roles_all: boxed(&q.roles_all),
                permissions_all: boxed(&q.permissions_all),
                permissions_any: boxed(&q.permissions_any),
                scopes: boxed(&q.scopes),
                tenant_param: q.tenant_param.as_deref().map(Into::into),
                policies: boxed(&q.policies),
                path_parameters: r.path_parameters,
            });
        }
        // Precedence: most specific first, declaration order among equals.
        let mut order: Vec<usize> = (0..rules.len()).collect();
        order.sort_by(|&a, &b| {
            specificity(&rules[b])
                .cmp(&specificity(&rules[a]))
                .then(a.cmp(&b))
        });
        for (rank, &i) in order.iter().enumerate() {
            // At most u32::MAX rules: checked when the ids were assigned.
            rules[i].rank = rank as u32;
        }
        Ok(Self {
            roles,
            rules,
            nodes,
            default: config.default,
        })
    }

    /// Rules that can never decide a request (shadowed) and pairs of rules
    /// whose precedence would be only their order in the file (ambiguous),
    /// in declaration order. The gateway refuses a configuration with any;
    /// a library user should too (an empty list is the norm).
    ///
    /// - Ambiguous: two rules of the same effect, the same specificity, and
    ///   at least one request both match (reported on the later rule).
    /// - Shadowed: every request an `allow` rule matches is also matched by
    ///   `deny` rules (deny overrides) or more specific `allow` rules; every
    ///   request a `deny` rule matches is matched by more specific `deny` rules.
    pub fn conflicts(&self) -> Vec<RouteConflict> {
        let mut out = Vec::new();
        for (i, a) in self.rules.iter().enumerate() {
            let key = specificity(a);
            if let Some(b) = self.rules[..i]
                .iter()
                .find(|b| b.effect == a.effect && specificity(b) == key && overlaps(a, b))
            {
                out.push(RouteConflict {
                    rule: a.name.to_string(),
                    index: i,
                    kind: ConflictKind::Ambiguous {
                        other: b.name.to_string(),
                    },
                });
                continue;
            }
            let mut covered = 0u16;
            let mut by = Vec::new();
            for b in &self.rules {
                let can_shadow = match (a.effect, b.effect) {
                    (Effect::Allow, Effect::Deny) => true,
                    (Effect::Deny, Effect::Allow) => false,
                    _ => specificity(b) > key,
                };
                if !std::ptr::eq(a, b)
                    && can_shadow
                    && a.methods & b.methods != 0
                    && host_covers(&b.host, &a.host)
                    && path_covers(&b.segments, &a.segments)
                {
                    covered |= b.methods;
                    by.push(b.name.to_string());
                }
            }
            if covered & a.methods == a.methods {
                out.push(RouteConflict {
                    rule: a.name.to_string(),
                    index: i,
                    kind: ConflictKind::Shadowed { by },
                });
            }
        }
        out
    }

    /// The role table.
    pub fn roles(&self) -> &RoleTable {
        &self.roles
    }

    /// Every policy name some rule refers to.
    pub fn policy_names(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rules
            .iter()
            .flat_map(|r| r.policies.iter().map(move |p| (&*r.name, &**p)))
    }

    /// The most specific matching deny rule and the most specific matching
    /// allow rule, as (rank, id).
    fn matching(&self, facts: &RequestFacts<'_>) -> (Option<u32>, Option<u32>) {
        // (rank, id) of the best deny and the best allow so far.
        type Best = Option<(u32, u32)>;
        let mut best: (Best, Best) = (None, None);
        let bit = method_bit(facts.method);
        let mut visit = |id: u32| {
            let r = &self.rules[id as usize];
            if !Self::applies(r, bit, facts.host) {
                return;
            }
            let slot = match r.effect {
                Effect::Deny => &mut best.0,
                Effect::Allow => &mut best.1,
            };
            if slot.is_none_or(|(rank, _)| r.rank < rank) {
                *slot = Some((r.rank, id));
            }
        };
        self.walk(0, facts.path, &mut visit);
        (best.0.map(|(_, id)| id), best.1.map(|(_, id)| id))
    }

    /// Whether rule `r` takes requests of method `bit` on `host` (its
    /// path already matched).
    fn applies(r: &CompiledRule, bit: u16, host: Option<&str>) -> bool {
        r.methods & bit != 0 && host_matches(&r.host, host)
    }

    fn walk(&self, node: usize, path: &str, visit: &mut impl FnMut(u32)) {
        let n = &self.nodes[node];
        for &id in &n.rest {
            visit(id);
        }
        match next_segment(path) {
            None => {
                for &id in &n.end {
                    visit(id);
                }
            }
            Some((seg, rest)) => {
                if let Some(&child) = n.literal.get(seg) {
                    self.walk(child as usize, rest, visit);
                }
                if let Some(child) = n.one {
                    self.walk(child as usize, rest, visit);
                }
            }
        }
    }

    /// The value of path parameter `name` of `rule` in `path`.
    fn param<'p>(rule: &CompiledRule, path: &'p str, name: &str) -> Option<&'p str> {
        let mut rest = path;
        for seg in rule.segments.iter() {
            let (value, tail) = next_segment(rest)?;
            if let PatSeg::One(Some(n)) = seg
                && **n == *name
            {
                return Some(value);
            }
            if matches!(seg, PatSeg::Rest) {
                return None;
            }
            rest = tail;
        }
        None
    }

    /// Whether the caller's own permissions or its roles' grant `required`.
    pub fn has_permission(&self, principal: &Principal, required: &str) -> bool {
        principal
            .permissions
            .iter()
            .any(|g| grant_str_matches(g, required))
            || principal.roles.iter().any(|r| {
                self.roles
                    .get(r)
                    .is_some_and(|e| e.permissions.allows(required))
            })
    }

    /// The caller's effective permissions compiled into one set: its own
    /// (malformed ones skipped) plus its roles'. For audit and introspection;
    /// [`Self::decide`] checks without building it.
    pub fn effective_permissions(&self, principal: &Principal) -> PermissionSet {
        let mut set = PermissionSet::new();
        for g in &principal.permissions {
            if let Ok(p) = Permission::parse(g) {
                set.insert(p);
            }
        }
        for r in &principal.roles {
            if let Some(e) = self.roles.get(r) {
                set.extend(&e.permissions);
            }
        }
        set
    }

    /// Whether the caller holds `role`, directly or through an including role.
    pub fn has_role(&self, principal: &Principal, role: &str) -> bool {
        principal.roles.iter().any(|h| self.roles.implies(h, role))
    }

    /// The index, in configuration order, of the rule whose settings apply
    /// to `facts`: the most specific matching `allow` rule, else the most
    /// specific matching `deny` rule; `None` when no rule matches or the
    /// path is malformed.
    pub fn route_index(&self, facts: &RequestFacts<'_>) -> Option<usize> {
        self.match_route(facts).route_index()
    }

    /// Which rules match `facts`, to decide with [`Self::decide_matched`]
    /// without walking the trie twice.
    pub fn match_route(&self, facts: &RequestFacts<'_>) -> RouteMatch {
        let Some((path, params)) = normalize_path(facts.path) else {
            return RouteMatch {
                malformed: true,
                params: false,
                deny: None,
                allow: None,
            };
        };
        let facts = &RequestFacts {
            path: &path,
            ..*facts
        };
        let (deny, allow) = self.matching(facts);
        RouteMatch {
            malformed: false,
            params,
            deny,
            allow,
        }
    }

    /// Decides for `principal` (`None` when no credentials were presented).
    pub fn decide<'s>(
        &'s self,
        principal: Option<&Principal>,
        facts: &RequestFacts<'_>,
    ) -> Decision<'s> {
        self.decide_matched(principal, facts, self.match_route(facts))
    }

    /// [`Self::decide`] with the rules [`Self::match_route`] found for the same `facts`.
    pub fn decide_matched<'s>(
        &'s self,
        principal: Option<&Principal>,
        facts: &RequestFacts<'_>,
        matched: RouteMatch,
    ) -> Decision<'s> {
        let deny = |rule: Option<&'s str>, reason| Decision {
            allowed: false,
            rule,
            reason,
            policies: &[],
        };
        if matched.malformed {
            return deny(None, Reason::MalformedPath);
        }
        let (deny_rule, allow_rule) = (matched.deny, matched.allow);
        if let Some(id) = deny_rule {
            return deny(Some(&self.rules[id as usize].name), Reason::DeniedByRule);
        }
        let Some(id) = allow_rule else {
            if matched.params {
                return deny(None, Reason::MalformedPath);
            }
            return match self.default {
                Effect::Allow => Decision {
                    allowed: true,
                    rule: None,
                    reason: Reason::DefaultAllow,
                    policies: &[],
                },
                Effect::Deny => deny(None, Reason::NoMatchingRule),
            };
        };
        let r = &self.rules[id as usize];
        let name = Some(&*r.name);
        if matched.params && !r.path_parameters {
            return deny(name, Reason::MalformedPath);
        }
        if r.anonymous {
            return Decision {
                allowed: true,
                rule: name,
                reason: Reason::AnonymousAllowed,
                policies: &r.policies,
            };
        }
        let p = match principal {
            Some(p) if p.auth_method != AuthMethod::Anonymous => p,
            _ => return deny(name, Reason::Unauthenticated),
        };
        if !r.auth_methods.is_empty() && !r.auth_methods.contains(&p.auth_method) {
            return deny(name, Reason::AuthMethodNotAllowed(p.auth_method));
        }
        if !r.roles_any.is_empty() && !r.roles_any.iter().any(|x| self.has_role(p, x)) {
            return deny(name, Reason::MissingAnyRole(&r.roles_any));
        }
        if let Some(missing) = r.roles_all.iter().find(|x| !self.has_role(p, x)) {
            return deny(name, Reason::MissingRole(missing));
        }
        if let Some(missing) = r.scopes.iter().find(|s| !p.has_scope(s)) {
            return deny(name, Reason::MissingScope(missing));
        }
        if let Some(missing) = r
            .permissions_all
            .iter()
            .find(|x| !self.has_permission(p, x))
        {
            return deny(name, Reason::MissingPermission(missing));
        }
        if !r.permissions_any.is_empty()
            && !r.permissions_any.iter().any(|x| self.has_permission(p, x))
        {
            return deny(name, Reason::MissingAnyPermission(&r.permissions_any));
        }
        if let Some(param) = &r.tenant_param {
            let Some((path, _)) = normalize_path(facts.path) else {
                return deny(name, Reason::MalformedPath);
            };
            let path_tenant = Self::param(r, &path, param);
            match (p.tenant.as_deref(), path_tenant) {
                (Some(mine), Some(theirs)) if mine == theirs => {}
                _ => return deny(name, Reason::TenantMismatch),
            }
        }
        Decision {
            allowed: true,
            rule: name,
            reason: Reason::Allowed,
            policies: &r.policies,
        }
    }
}

/// Why one matching rule takes precedence over another (see
/// [`AccessPolicy`] for the order). `as_str` is stable (explain output).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precedence {
    /// A `deny` rule overrides any `allow` rule.
    DenyOverridesAllow,
    /// Its host is more specific (exact > `*.suffix`, a longer suffix > any).
    Host,
    /// Its path is more specific at this segment (0-based; literal >
    /// `*`/`{param}` > `**`, and ending where the other has `**`).
    PathSegment(usize),
    /// It lists methods where the other takes any.
    MethodList,
    /// It lists fewer methods.
    FewerMethods,
    /// Equal on everything else: it comes first in the configuration (a
    /// checked configuration reports such pairs as ambiguous).
    DeclarationOrder,
}

impl Precedence {
    /// A stable short name, e.g. `deny_overrides_allow`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::DenyOverridesAllow => "deny_overrides_allow",
            Self::Host => "more_specific_host",
            Self::PathSegment(_) => "more_specific_path",
            Self::MethodList => "method_list",
            Self::FewerMethods => "fewer_methods",
            Self::DeclarationOrder => "declaration_order",
        }
    }
}

impl fmt::Display for Precedence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DenyOverridesAllow => f.write_str("a deny route overrides any allow route"),
            Self::Host => f.write_str("its host is more specific"),
            Self::PathSegment(i) => write!(
                f,
                "its path is more specific at segment {} (literal > `*`/`{{param}}` > `**`)",
                i + 1
            ),
            Self::MethodList => f.write_str("it lists methods, the other takes any method"),
            Self::FewerMethods => f.write_str("it lists fewer methods"),
            Self::DeclarationOrder => f.write_str("it comes first in the configuration"),
        }
    }
}

/// One rule matching a request, for [`AccessPolicy::trace`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRule {
    /// Its index in the configuration.
    pub index: usize,
    /// Its name.
    pub name: String,
    /// Allow or deny.
    pub effect: Effect,
}

/// Every rule matching one request and which decides, as the decision
/// itself sees them (the same normalisation and trie walk as
/// [`AccessPolicy::match_route`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTrace {
    /// The path the rules were matched against (canonical, path
    /// parameters removed); `None` when the path has no single meaning.
    pub path: Option<String>,
    /// Whether the path had parameters (`;`).
    pub path_parameters: bool,
    /// The matching rules, in precedence order: deny rules first, each
    /// group most specific first.
    pub matches: Vec<MatchedRule>,
    /// The rule whose settings apply (credentials, rate limits, mode,
    /// upstream): the first `allow` match, else the first `deny` match.
    pub settings: Option<usize>,
    /// The rule that decides: the first match (a `deny` if any).
    pub deciding: Option<usize>,
}

impl AccessPolicy {
    /// Every rule matching `facts`, in precedence order, and which one
    /// decides; [`Self::match_route`] picks the same rules.
    pub fn trace(&self, facts: &RequestFacts<'_>) -> RouteTrace {
        let Some((path, params)) = normalize_path(facts.path) else {
            return RouteTrace {
                path: None,
                path_parameters: false,
                matches: Vec::new(),
                settings: None,
                deciding: None,
            };
        };
        let bit = method_bit(facts.method);
        let mut ids = Vec::new();
        self.walk(0, &path, &mut |id: u32| {
            let r = &self.rules[id as usize];
            if Self::applies(r, bit, facts.host) && !ids.contains(&id) {
                ids.push(id);
            }
        });
        ids.sort_by_key(|&id| {
            let r = &self.rules[id as usize];
            (r.effect == Effect::Allow, r.rank)
        });
        let matches: Vec<MatchedRule> = ids
            .iter()
            .map(|&id| {
                let r = &self.rules[id as usize];
                MatchedRule {
                    index: id as usize,
                    name: r.name.to_string(),
                    effect: r.effect,
                }
            })
            .collect();
        let settings = matches
            .iter()
            .find(|m| m.effect == Effect::Allow)
            .or(matches.first())
            .map(|m| m.index);
        RouteTrace {
            path: Some(path.into_owned()),
            path_parameters: params,
            deciding: matches.first().map(|m| m.index),
            matches,
            settings,
        }
    }

    /// Why rule `winner` takes precedence over rule `other` (indices in
    /// the configuration), from the same specificity order the decision
    /// uses; `None` when it does not, or an index is out of range.
    pub fn precedence(&self, winner: usize, other: usize) -> Option<Precedence> {
        let (w, o) = (self.rules.get(winner)?, self.rules.get(other)?);
        if winner == other {
            return None;
        }
        match (w.effect, o.effect) {
            (Effect::Deny, Effect::Allow) => return Some(Precedence::DenyOverridesAllow),
            (Effect::Allow, Effect::Deny) => return None,
            _ => {}
        }
        if w.rank > o.rank {
            return None;
        }
        let (ws, os) = (specificity(w), specificity(o));
        if (ws.0, ws.1) != (os.0, os.1) {
            return Some(Precedence::Host);
        }
        if ws.2 != os.2 {
            let at =
                ws.2.iter()
                    .zip(os.2.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(ws.2.len().min(os.2.len()));
            return Some(Precedence::PathSegment(at));
        }
        if ws.3 != os.3 {
            return Some(Precedence::MethodList);
        }
        if ws.4 != os.4 {
            return Some(Precedence::FewerMethods);
        }
        Some(Precedence::DeclarationOrder)
    }
}

#[cfg(test)]
mod trace_tests {
    use super::*;

    fn policy(rules: Vec<RouteRule>) -> AccessPolicy {
        AccessPolicy::new(&AuthzConfig {
            roles: Vec::new(),
            rules,
            default: Effect::Deny,
        })
        .unwrap()
    }

    fn why(p: &AccessPolicy, facts: RequestFacts<'_>) -> (Vec<String>, Option<Precedence>) {
        let t = p.trace(&facts);
        let names = t.matches.iter().map(|m| m.name.clone()).collect();
        let reason = match t.matches.as_slice() {
            [first, second, ..] => p.precedence(first.index, second.index),
            _ => None,
        };
        // The trace picks what the decision picks.
        assert_eq!(t.settings, p.match_route(&facts).route_index());
        (names, reason)
    }

    #[test]
    fn each_precedence_rule_is_named() {
        let p = policy(vec![
            RouteRule::allow("any", "/docs/**"),
            RouteRule::allow("one", "/docs/*"),
            RouteRule::allow("lit", "/docs/readme"),
            RouteRule::allow("lit-get", "/docs/readme").methods(["GET"]),
            RouteRule::allow("lit-get-host", "/docs/readme")
                .methods(["GET"])
                .host("api.example.com"),
            RouteRule::deny("no-secret", "/docs/secret"),
        ]);
        let get = |path| RequestFacts::new("GET", path);
        assert_eq!(
            why(&p, get("/docs/readme").with_host("api.example.com")),
            (
                vec!["lit-get-host", "lit-get", "lit", "one", "any"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
                Some(Precedence::Host)
            )
        );
        assert_eq!(why(&p, get("/docs/readme")).1, Some(Precedence::MethodList));
        assert_eq!(
            why(&p, RequestFacts::new("POST", "/docs/readme")).1,
            Some(Precedence::PathSegment(1))
        );
        assert_eq!(why(&p, get("/docs/x")).1, Some(Precedence::PathSegment(1)));
        assert_eq!(
            why(&p, get("/docs/secret")),
            (
                vec!["no-secret".into(), "one".into(), "any".into()],
                Some(Precedence::DenyOverridesAllow)
            )
        );
        // A deny decides, but the allow rule's settings apply.
        let t = p.trace(&get("/docs/secret"));
        assert_eq!(t.deciding, Some(5));
        assert_eq!(t.settings, Some(1));
        // The loser never beats the winner.
        assert_eq!(p.precedence(1, 5), None);
        assert_eq!(p.precedence(0, 1), None);
    }

    #[test]
    fn fewer_methods_and_declaration_order() {
        let p = policy(vec![
            RouteRule::allow("two", "/a").methods(["GET", "POST"]),
            RouteRule::allow("one", "/a").methods(["GET"]),
        ]);
        assert_eq!(
            why(&p, RequestFacts::new("GET", "/a")),
            (
                vec!["one".into(), "two".into()],
                Some(Precedence::FewerMethods)
            )
        );
        let p = policy(vec![
            RouteRule::allow("first", "/a/{x}"),
            RouteRule::allow("second", "/a/*"),
        ]);
        assert_eq!(
            why(&p, RequestFacts::new("GET", "/a/b")).1,
            Some(Precedence::DeclarationOrder)
        );
    }

    #[test]
    fn grpc_method_paths_match_like_any_path() {
        // gRPC calls are POSTs to `/package.Service/Method`: dots inside a
        // segment are literal characters, not `.` segments.
        let p = policy(vec![
            RouteRule::allow("service", "/helloworld.Greeter/*"),
            RouteRule::allow("one", "/helloworld.Greeter/SayHello").methods(["POST"]),
            RouteRule::deny("admin", "/grpc.reflection.v1.ServerReflection/**"),
        ]);
        let post = |path| RequestFacts::new("POST", path);
        assert_eq!(
            why(&p, post("/helloworld.Greeter/SayHello")).0,
            ["one", "service"]
        );
        assert_eq!(why(&p, post("/helloworld.Greeter/SayBye")).0, ["service"]);
        assert!(why(&p, post("/helloworld.Greeterx/SayHello")).0.is_empty());
        assert!(why(&p, post("/other.Greeter/SayHello")).0.is_empty());
        assert_eq!(
            p.trace(&post(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
            ))
            .deciding,
            Some(2)
        );
    }

    #[test]
    fn malformed_paths_match_nothing() {
        let p = policy(vec![RouteRule::allow("any", "/**")]);
        let t = p.trace(&RequestFacts::new("GET", "/a/../b"));
        assert_eq!(t.path, None);
        assert!(t.matches.is_empty());
        let t = p.trace(&RequestFacts::new("GET", "/a;v=1/b"));
        assert_eq!(t.path.as_deref(), Some("/a/b"));
        assert!(t.path_parameters);
    }
}
