//! Explaining a decision: the guard's own steps run with a probe that
//! records what each step found and changes nothing (no rate-limit counter
//! consumed, no anomaly signal, no audit event, no decision metric; a
//! verified API key's last-used time may be refreshed, as on any
//! verification). The outcome is the one [`Guard::check`] takes for the
//! same request, because it is the same code. A signed request is not
//! verified (that would spend its nonce): it is reported undetermined.

use std::net::IpAddr;
use std::sync::Arc;

use http::request::Parts;
use portcullis_core::authz::routes::RouteTrace;
use portcullis_core::{ErrorCode, Principal};

use super::credentials::{self, Presented};
use super::{CredentialSource, Guard, Refused};

/// How [`Guard::explain`] runs.
#[derive(Debug, Clone, Default)]
pub struct ExplainOptions {
    /// Decide for this caller instead of authenticating the request's
    /// credentials (what `--as` says the caller is).
    pub assume: Option<Principal>,
    /// The guard has no live stores behind it (the configuration alone):
    /// API keys and app credentials cannot be looked up, revocation and
    /// bans are not read; each is reported as not checked.
    pub offline: bool,
}

/// Whether a step looked at live state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Checked {
    /// The step did not apply (no credential, an assumed caller).
    NotApplicable,
    /// Offline: there is no state to read.
    NotCheckedOffline,
    /// Read, and it passed.
    Passed,
    /// Read, and it refused.
    Failed,
}

impl Checked {
    /// `not_applicable`, `not_checked_offline`, `passed`, `failed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotApplicable => "not_applicable",
            Self::NotCheckedOffline => "not_checked_offline",
            Self::Passed => "passed",
            Self::Failed => "failed",
        }
    }
}

/// One credential source of the route and whether the request carries a
/// credential of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTrace {
    /// The source (`jwt`, `api_key`, …).
    pub source: CredentialSource,
    /// Whether the request presents a credential of this kind.
    pub present: bool,
}

/// What authentication found and decided.
#[derive(Debug, Clone, Default)]
pub struct CredentialTrace {
    /// The route's sources in the order they are tried.
    pub sources: Vec<SourceTrace>,
    /// The credential that decides (`a bearer JWT`, `an API key`, …), or
    /// the kind the route does not accept; `None` when nothing is presented.
    pub presented: Option<&'static str>,
    /// The caller was assumed (`--as`), not authenticated.
    pub assumed: bool,
    /// The stable code when authentication refused.
    pub refused: Option<ErrorCode>,
    /// Revocation of the credential (jti, session, key).
    pub revocation: Option<Checked>,
}

/// A ban check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanTrace {
    /// `ip` or `subject`.
    pub on: &'static str,
    /// Whether it was checked and refused.
    pub result: Checked,
}

/// One rate rule of the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateTrace {
    /// The rule's name.
    pub rule: String,
    /// The key the request counts under; `None` when the request lacks a
    /// part of the rule's key (then the rule does not count it).
    pub key: Option<String>,
    /// The rule's quota, when the counters were read.
    pub limit: Option<u64>,
    /// Requests still admitted, read (not consumed) from the counters.
    pub remaining: Option<u64>,
    /// Whether the current counters refuse it.
    pub limited: bool,
}

/// The authorization step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzTrace {
    /// The rule that decided (`None`: the default).
    pub rule: Option<String>,
    /// Whether it allows.
    pub allowed: bool,
    /// The stable reason (`missing_permission`, `allowed`, …).
    pub reason: &'static str,
    /// The reason in words, naming the missing grant.
    pub detail: String,
}

/// The final outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Conclusion {
    /// Let through (`reason`: the stable allow reason).
    Allowed {
        /// e.g. `allowed`, `anonymous_allowed`.
        reason: &'static str,
    },
    /// Refused.
    Refused {
        /// The stable code.
        code: ErrorCode,
        /// The HTTP status.
        status: u16,
        /// The stable reason.
        reason: &'static str,
        /// What the caller is told.
        detail: String,
    },
    /// Cannot be decided from what the guard has (offline: an API key or
    /// app credential would be looked up in the stores).
    Undetermined {
        /// Why.
        why: String,
    },
}

/// Everything [`Guard::explain`] found, step by step.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The client address the guard keys on.
    pub client_ip: Option<IpAddr>,
    /// The matching routes, in precedence order.
    pub route: RouteTrace,
    /// The name of the route whose settings apply (`None`: the default).
    pub route_name: Option<String>,
    /// Authentication.
    pub credentials: CredentialTrace,
    /// The caller, once known.
    pub principal: Option<Arc<Principal>>,
    /// The caller's effective permissions (its own and its roles').
    pub effective_permissions: Vec<String>,
    /// Ban checks.
    pub bans: Vec<BanTrace>,
    /// The route's rate rules.
    pub rate_limits: Vec<RateTrace>,
    /// Authorization, when reached.
    pub authorization: Option<AuthzTrace>,
    /// The route runs in dry-run mode: a refusal is only reported.
    pub dry_run: bool,
    /// What the guard decides, before dry-run: a refusal here is let
    /// through when `dry_run`.
    pub conclusion: Conclusion,
}

impl Explanation {
    /// Whether the request is let through (a dry-run refusal is).
    pub fn let_through(&self) -> bool {
        match self.conclusion {
            Conclusion::Allowed { .. } => true,
            Conclusion::Refused { .. } => self.dry_run,
            Conclusion::Undetermined { .. } => false,
        }
    }
}

/// What [`Guard::decide`] records when it runs for [`Guard::explain`].
pub(super) struct Probe {
    pub(super) assume: Option<Arc<Principal>>,
    pub(super) credentials: CredentialTrace,
    pub(super) bans: Vec<BanTrace>,
    pub(super) rate_limits: Vec<RateTrace>,
    pub(super) authorization: Option<AuthzTrace>,
}

impl Probe {
    pub(super) fn ban(&mut self, on: &'static str, refused: bool) {
        self.bans.push(BanTrace {
            on,
            result: if refused {
                Checked::Failed
            } else {
                Checked::Passed
            },
        });
    }
}

impl Guard {
    /// Explains the decision on `parts` (already in canonical form) from
    /// `peer`: the same steps as [`Self::check`], recording what each
    /// found, with no side effect. See [`ExplainOptions`].
    pub async fn explain(
        &self,
        parts: &Parts,
        peer: Option<IpAddr>,
        options: ExplainOptions,
    ) -> Explanation {
        let inner = &*self.inner;
        let client_ip = peer.map(|p| self.client_ip(parts, p));
        let facts = super::authz_facts(parts);
        let trace = inner.authorizer.access().trace(&facts);
        let (matched, route) = self.route_for(&facts);
        let presented = credentials::find(&parts.headers, &inner.headers, &route.sources);
        let mut probe = Probe {
            assume: options.assume.map(Arc::new),
            credentials: CredentialTrace {
                sources: route
                    .sources
                    .iter()
                    .map(|s| SourceTrace {
                        source: *s,
                        present: credentials::presents(&parts.headers, &inner.headers, *s),
                    })
                    .collect(),
                presented: credentials::kind(&presented),
                ..CredentialTrace::default()
            },
            bans: Vec::new(),
            rate_limits: Vec::new(),
            authorization: None,
        };
        probe.credentials.assumed = probe.assume.is_some();
        let mut explanation = Explanation {
            client_ip,
            route: trace,
            route_name: route.name.as_deref().map(str::to_owned),
            credentials: CredentialTrace::default(),
            principal: None,
            effective_permissions: Vec::new(),
            bans: Vec::new(),
            rate_limits: Vec::new(),
            authorization: None,
            dry_run: route.dry_run,
            conclusion: Conclusion::Undetermined { why: String::new() },
        };
        let store_backed = matches!(presented, Presented::ApiKey(_) | Presented::App { .. });
        let undetermined = match presented {
            _ if probe.assume.is_some() => None,
            _ if options.offline && store_backed => Some(
                "the credential is looked up in the key store, which is not read offline \
                 (explain it against the running gateway, or give the caller with --as)",
            ),
            // Verifying would spend the request's nonce (the real request
            // would then be refused as a replay), and explain carries no body.
            Presented::Signed => Some(
                "a signed request is not verified by explain: it would spend its nonce and \
                 explain carries no body (give the app with --as)",
            ),
            _ => None,
        };
        if let Some(why) = undetermined {
            explanation.credentials = probe.credentials;
            explanation.conclusion = Conclusion::Undetermined { why: why.into() };
            return explanation;
        }
        if options.offline {
            explanation.bans.push(BanTrace {
                on: "ip",
                result: Checked::NotCheckedOffline,
            });
        }
        let ip_text = client_ip
            .filter(|_| inner.anomaly.is_some())
            .map(|ip| ip.to_string());
        let mut principal = None;
        let mut headers = Vec::new();
        let outcome = self
            .decide(
                parts,
                None,
                route,
                client_ip,
                ip_text.as_deref(),
                (&facts, matched),
                &mut principal,
                &mut headers,
                None,
                Some(&mut probe),
            )
            .await;
        if probe.credentials.revocation.is_none() {
            probe.credentials.revocation = Some(
                if probe.assume.is_some() || probe.credentials.presented.is_none() {
                    Checked::NotApplicable
                } else if options.offline {
                    Checked::NotCheckedOffline
                } else if probe.credentials.refused.is_some_and(|c| {
                    matches!(c, ErrorCode::TokenRevoked | ErrorCode::SessionRevoked)
                }) {
                    Checked::Failed
                } else if probe.credentials.refused.is_some() {
                    Checked::NotApplicable
                } else {
                    Checked::Passed
                },
            );
        }
        if let Some(p) = principal.as_deref() {
            let mut perms: Vec<String> = inner
                .authorizer
                .access()
                .effective_permissions(p)
                .grants()
                .map(str::to_owned)
                .collect();
            perms.sort();
            perms.dedup();
            explanation.effective_permissions = perms;
            if options.offline {
                explanation.bans.push(BanTrace {
                    on: "subject",
                    result: Checked::NotCheckedOffline,
                });
            }
        }
        explanation.principal = principal;
        explanation.credentials = probe.credentials;
        explanation.bans.extend(probe.bans);
        explanation.rate_limits = probe.rate_limits;
        explanation.authorization = probe.authorization;
        explanation.conclusion = match outcome {
            Ok(reason) => Conclusion::Allowed { reason },
            Err(Refused { refusal, reason }) => Conclusion::Refused {
                code: refusal.code,
                status: refusal.status.as_u16(),
                reason,
                detail: refusal.detail,
            },
        };
        explanation
    }
}
