//! No grant exceeds its granter, on the admin API: every handler that
//! creates or widens a grant (users, their grants, imports, API keys, app
//! credentials) or hands the caller another principal's credential (a
//! user's password or reset token, an app's new secret) asks [`Granter`]
//! first. The rule itself is core's [`portcullis_core::authz::grant`]; this
//! module finds what the caller holds (its key's grants, its roles through
//! the public guard's live role table, the one users' tokens are judged
//! by) and turns a refusal into 403 `authz.escalation`, logged.

use std::sync::Arc;

use axum::http::StatusCode;
use portcullis::Guard;
use portcullis::service::Problem;
use portcullis_core::authz::RoleTable;
use portcullis_core::authz::grant::{Authority, ESCALATION_CODE, EscalationError, Grantee};

use crate::ops::admin::ADMIN_OWNER_PREFIX;

/// The guard whose role table gives roles their meaning (the public
/// listener's, as reloaded); none: no role is defined.
pub type RoleSource = Arc<dyn Fn() -> Guard + Send + Sync>;

/// Whether `owner` is an admin principal (`admin:<name>`): the only kind
/// the admin API and the console accept.
pub(crate) fn is_admin_owner(owner: &str) -> bool {
    owner.starts_with(ADMIN_OWNER_PREFIX)
}

/// What kind of grantee an API key of `owner` is.
pub(crate) fn grantee_of_owner(owner: &str) -> Grantee {
    if is_admin_owner(owner) {
        Grantee::Admin
    } else {
        Grantee::NonAdmin
    }
}

/// The caller of one admin request, with what it holds.
pub(crate) struct Granter {
    subject: String,
    authority: Authority,
    guard: Option<Guard>,
}

impl Granter {
    /// The caller `principal` (as the admin guard authenticated it), its
    /// roles expanded through `roles`.
    pub(crate) fn new(principal: &portcullis_core::Principal, roles: Option<&RoleSource>) -> Self {
        let guard = roles.map(|r| (**r)());
        let empty = RoleTable::new();
        let table = guard.as_ref().map_or(&empty, |g| g.access_policy().roles());
        Self {
            subject: principal.subject.clone(),
            authority: Authority::of(&principal.permissions, &principal.roles, table),
            guard,
        }
    }

    /// Refuses (403 `authz.escalation`) unless granting `roles` and
    /// `permissions` to `grantee` stays within what the caller holds.
    pub(crate) fn check(
        &self,
        grantee: Grantee,
        roles: &[String],
        permissions: &[String],
    ) -> Result<(), Problem> {
        self.verdict(grantee, roles, permissions)
            .map_err(|e| self.refuse(&e, ""))
    }

    /// The rule's answer, unrendered.
    pub(crate) fn verdict(
        &self,
        grantee: Grantee,
        roles: &[String],
        permissions: &[String],
    ) -> Result<(), EscalationError> {
        let empty = RoleTable::new();
        let table = self
            .guard
            .as_ref()
            .map_or(&empty, |g| g.access_policy().roles());
        self.authority.check(grantee, roles, permissions, table)
    }

    /// Refuses unless the caller holds everything a principal holding
    /// `roles` and `permissions` holds: before it is handed that
    /// principal's credential (a password, a reset token, an app secret).
    pub(crate) fn check_takeover(
        &self,
        roles: &[String],
        permissions: &[String],
    ) -> Result<(), Problem> {
        self.check(Grantee::Admin, roles, permissions)
    }

    /// 403 `authz.escalation` for `e` (`context` is prefixed), logged.
    pub(crate) fn refuse(&self, e: &EscalationError, context: &str) -> Problem {
        tracing::warn!(caller = %self.subject, refused = %e, "admin grant refused: escalation");
        Problem::new(
            StatusCode::FORBIDDEN,
            ESCALATION_CODE,
            format!("{context}{e}"),
        )
    }
}
