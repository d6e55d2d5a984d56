//! Who may grant what: a grant never exceeds its granter, and the `admin.`
//! namespace belongs to admin principals alone.
//!
//! A caller may give a key, user or app credential a permission (wildcards
//! included) only when one grant the caller holds covers it, with the same
//! wildcard semantics the guard uses ([`super::permission`]): a held
//! `admin.*` or `admin.users.*` covers a granted `admin.users.*`, a held
//! `admin.users.read` does not. A role granted counts as every permission
//! the role table gives it; a role the table does not define could mean
//! anything after a reload, so only a caller holding `*` may grant one.
//!
//! Grants to users, their keys and app credentials may not name the
//! `admin.` namespace at all (nor roles that carry it), and a grant a user
//! holds never covers an `admin.` permission, whatever its wildcards
//! ([`user_grant_covers`]).

use super::permission::{Permission, Segment};
use super::roles::RoleTable;

/// The problem code of a refused grant (403).
pub const ESCALATION_CODE: &str = "authz.escalation";

/// The first segment of the permissions of the admin API.
pub const ADMIN_NAMESPACE: &str = "admin";

/// Whether the permission or grant `text` names the admin namespace
/// (`admin`, `admin.users.read`, `admin.*`).
pub fn names_admin_namespace(text: &str) -> bool {
    text.split('.').next() == Some(ADMIN_NAMESPACE)
}

/// Whether the held grant `held` covers every permission the grant
/// `granted` covers (wildcards on both sides). Conservative: when unsure,
/// `false`. Malformed text on either side covers nothing.
pub fn grant_covers(held: &str, granted: &str) -> bool {
    match (Permission::parse(held), Permission::parse(granted)) {
        (Ok(h), Ok(g)) => covers(&h, &g),
        _ => false,
    }
}

/// Like [`grant_covers`] for a grant a user holds: it never covers a grant
/// in the `admin.` namespace, whatever its wildcards (`*` covers `*` and
/// `docs.*`, never `admin.*` nor `admin.keys.read`).
pub fn user_grant_covers(held: &str, granted: &str) -> bool {
    !names_admin_namespace(granted) && grant_covers(held, granted)
}

fn covers(held: &Permission, granted: &Permission) -> bool {
    let (hs, gs) = (held.segments(), granted.segments());
    if hs.len() > gs.len() {
        // The granted grant stops (or opens up) before the held one does.
        return false;
    }
    for (h, g) in hs.iter().zip(gs) {
        match (h, g) {
            (Segment::Any, _) => {}
            (Segment::Literal(a), Segment::Literal(b)) if a == b => {}
            _ => return false,
        }
    }
    if held.is_below() {
        // Everything strictly below the held prefix: the granted grant must
        // name at least one more segment, or open everything below itself.
        gs.len() > hs.len() || granted.is_below()
    } else {
        gs.len() == hs.len() && !granted.is_below()
    }
}

/// What a grant goes to: an admin key (owner `admin:…`) may hold `admin.`
/// permissions; users, their keys and app credentials may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grantee {
    /// An admin key.
    Admin,
    /// A user, a user's key, or an app credential.
    NonAdmin,
}

/// Why a grant was refused; each names the permission or role.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscalationError {
    /// The caller does not hold a permission it tried to grant.
    #[error("you do not hold `{permission}`{} and cannot grant it", via(.role))]
    NotHeld {
        /// The permission granted.
        permission: String,
        /// The role that carries it, when granted through a role.
        role: Option<String>,
    },
    /// An `admin.` permission was granted to a user, user key or app.
    #[error(
        "`{permission}`{} belongs to the admin namespace, which only admin keys (owner `admin:…`) may hold",
        via(.role)
    )]
    AdminNamespace {
        /// The permission granted.
        permission: String,
        /// The role that carries it, when granted through a role.
        role: Option<String>,
    },
    /// A role the role table does not define was granted by a caller that
    /// does not hold `*`.
    #[error(
        "role `{0}` is not defined, so what it grants cannot be checked; define it in [[guard.roles]] first"
    )]
    UnknownRole(String),
}

fn via(role: &Option<String>) -> String {
    role.as_ref()
        .map(|r| format!(" (through role `{r}`)"))
        .unwrap_or_default()
}

/// What a caller holds: its own grants plus its roles' (expanded through
/// the role table the guard uses).
#[derive(Debug, Clone, Default)]
pub struct Authority {
    grants: Vec<Permission>,
}

impl Authority {
    /// The authority of a principal holding `permissions` and `roles`
    /// (malformed grants and undefined roles give nothing).
    pub fn of(permissions: &[String], roles: &[String], table: &RoleTable) -> Self {
        let mut grants: Vec<Permission> = permissions
            .iter()
            .filter_map(|p| Permission::parse(p).ok())
            .collect();
        for r in roles {
            if let Some(e) = table.get(r) {
                grants.extend(
                    e.permissions
                        .grants()
                        .filter_map(|p| Permission::parse(p).ok()),
                );
            }
        }
        Self { grants }
    }

    /// Whether one held grant covers `granted`.
    pub fn covers(&self, granted: &str) -> bool {
        match Permission::parse(granted) {
            Ok(g) => self.grants.iter().any(|h| covers(h, &g)),
            Err(_) => false,
        }
    }

    /// Whether the caller holds `*`.
    fn holds_everything(&self) -> bool {
        self.grants
            .iter()
            .any(|g| g.is_below() && g.segments().is_empty())
    }

    /// Checks that granting `permissions` and `roles` to `grantee` stays
    /// within this authority (and, for a non-admin grantee, outside the
    /// `admin.` namespace). A malformed permission is left to the store's
    /// own validation.
    pub fn check(
        &self,
        grantee: Grantee,
        roles: &[String],
        permissions: &[String],
        table: &RoleTable,
    ) -> Result<(), EscalationError> {
        for p in permissions {
            self.check_one(grantee, p, None)?;
        }
        for r in roles {
            let Some(e) = table.get(r) else {
                // Whatever it comes to mean, `*` covers it.
                if self.holds_everything() {
                    continue;
                }
                return Err(EscalationError::UnknownRole(r.clone()));
            };
            for p in e.permissions.grants() {
                self.check_one(grantee, p, Some(r))?;
            }
        }
        Ok(())
    }

    fn check_one(
        &self,
        grantee: Grantee,
        permission: &str,
        role: Option<&String>,
    ) -> Result<(), EscalationError> {
        let Ok(parsed) = Permission::parse(permission) else {
            return Ok(());
        };
        if grantee == Grantee::NonAdmin && names_admin_namespace(permission) {
            return Err(EscalationError::AdminNamespace {
                permission: permission.to_owned(),
                role: role.cloned(),
            });
        }
        if !self.grants.iter().any(|h| covers(h, &parsed)) {
            return Err(EscalationError::NotHeld {
                permission: permission.to_owned(),
                role: role.cloned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::roles::RoleDef;
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn wildcards_on_both_sides() {
        let yes = [
            ("*", "*"),
            ("*", "admin.*"),
            ("*", "a"),
            ("admin.*", "admin.users.*"),
            ("admin.*", "admin.users.read"),
            ("admin.users.*", "admin.users.*"),
            ("admin.users.*", "admin.users.read"),
            ("admin.users.read", "admin.users.read"),
            ("org.*.read", "org.acme.read"),
            ("org.*.read", "org.*.read"),
            ("*.*", "x.*"),
            ("billing.*", "billing.*.*"),
        ];
        for (held, granted) in yes {
            assert!(grant_covers(held, granted), "{held} covers {granted}");
        }
        let no = [
            ("admin.users.read", "admin.users.*"),
            ("admin.users.read", "admin.*"),
            ("admin.users.*", "admin.*"),
            ("admin.users.*", "admin.users"),
            ("admin.*", "*"),
            ("admin.*", "admin"),
            ("org.acme.read", "org.*.read"),
            ("org.*.read", "org.*.read.x"),
            ("org.*.read", "org.*"),
            ("a.*.*", "a.*"),
            ("*.*", "*"),
            ("a.b", "a.b.c"),
            ("a.b.c", "a.b"),
            ("bad..grant", "a"),
            ("*", "bad..grant"),
        ];
        for (held, granted) in no {
            assert!(
                !grant_covers(held, granted),
                "{held} must not cover {granted}"
            );
        }
    }

    #[test]
    fn a_users_wildcard_never_reaches_the_admin_namespace() {
        assert!(user_grant_covers("*", "docs.read"));
        assert!(user_grant_covers("*", "docs.*"));
        assert!(!user_grant_covers("*", "admin.users.read"));
        assert!(!user_grant_covers("*", "admin.*"));
        assert!(user_grant_covers("*", "*"));
        assert!(user_grant_covers("*.read", "*.read"));
        assert!(!user_grant_covers("admin.*", "admin.keys.read"));
        assert!(names_admin_namespace("admin.x"));
        assert!(names_admin_namespace("admin.*"));
        assert!(!names_admin_namespace("administrator.x"));
    }

    #[test]
    fn the_subset_rule_names_what_is_refused() {
        let table = RoleTable::new();
        let key = Authority::of(&strings(&["admin.api_keys.write"]), &[], &table);
        assert_eq!(
            key.check(Grantee::Admin, &[], &strings(&["admin.*"]), &table),
            Err(EscalationError::NotHeld {
                permission: "admin.*".into(),
                role: None
            })
        );
        let two = Authority::of(
            &strings(&["admin.api_keys.write", "admin.users.read"]),
            &[],
            &table,
        );
        assert_eq!(
            two.check(Grantee::Admin, &[], &strings(&["admin.users.read"]), &table),
            Ok(())
        );
        let root = Authority::of(&strings(&["admin.*"]), &[], &table);
        assert_eq!(
            root.check(Grantee::Admin, &[], &strings(&["admin.users.read"]), &table),
            Ok(())
        );
        // An admin key holding `admin.*` holds nothing outside it.
        assert!(matches!(
            root.check(Grantee::NonAdmin, &[], &strings(&["docs.read"]), &table),
            Err(EscalationError::NotHeld { .. })
        ));
        // Even `*` may not give a user the admin namespace.
        let all = Authority::of(&strings(&["*"]), &[], &table);
        assert_eq!(
            all.check(
                Grantee::NonAdmin,
                &[],
                &strings(&["docs.read", "*"]),
                &table
            ),
            Ok(())
        );
        assert_eq!(
            all.check(Grantee::NonAdmin, &[], &strings(&["admin.x"]), &table),
            Err(EscalationError::AdminNamespace {
                permission: "admin.x".into(),
                role: None
            })
        );
        let e = all
            .check(Grantee::NonAdmin, &[], &strings(&["admin.*"]), &table)
            .unwrap_err();
        assert!(e.to_string().contains("`admin.*`"), "{e}");
    }

    #[test]
    fn roles_expand_on_both_sides() {
        let table = RoleTable::from_defs(&[
            RoleDef::new("viewer", ["docs.read"]),
            RoleDef::new("editor", ["docs.write"]).including("viewer"),
            RoleDef::new("operator", ["admin.users.read"]),
            RoleDef::new("docs-admin", ["docs.*"]),
        ])
        .unwrap();
        // Holding `docs.*` through a role covers the editor role (and what it includes).
        let holder = Authority::of(&[], &strings(&["docs-admin"]), &table);
        assert_eq!(
            holder.check(Grantee::NonAdmin, &strings(&["editor"]), &[], &table),
            Ok(())
        );
        // Holding only `docs.read` does not cover the editor role's `docs.write`.
        let viewer = Authority::of(&strings(&["docs.read"]), &[], &table);
        assert_eq!(
            viewer.check(Grantee::NonAdmin, &strings(&["editor"]), &[], &table),
            Err(EscalationError::NotHeld {
                permission: "docs.write".into(),
                role: Some("editor".into())
            })
        );
        assert_eq!(
            viewer.check(Grantee::NonAdmin, &strings(&["viewer"]), &[], &table),
            Ok(())
        );
        // A role carrying an admin permission is refused for a user, even from `*`.
        let all = Authority::of(&strings(&["*"]), &[], &table);
        assert!(matches!(
            all.check(Grantee::NonAdmin, &strings(&["operator"]), &[], &table),
            Err(EscalationError::AdminNamespace { role: Some(_), .. })
        ));
        // An undefined role: only a `*` holder may grant it.
        assert_eq!(
            viewer.check(Grantee::NonAdmin, &strings(&["ghost"]), &[], &table),
            Err(EscalationError::UnknownRole("ghost".into()))
        );
        assert_eq!(
            all.check(Grantee::NonAdmin, &strings(&["ghost"]), &[], &table),
            Ok(())
        );
    }
}
