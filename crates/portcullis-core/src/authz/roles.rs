//! Roles: named bundles of permissions that may include other roles. The
//! closure of each role is computed once at load; a cycle is refused with
//! an error that names it.

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState;
use serde::Deserialize;

use super::permission::{Permission, PermissionError, PermissionSet};

/// One role as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleDef {
    /// The role's name, as it appears in tokens.
    pub name: String,
    /// Permissions granted (wildcards allowed).
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Roles whose permissions this role also grants.
    #[serde(default)]
    pub includes: Vec<String>,
}

impl RoleDef {
    /// A role named `name` with `permissions`.
    pub fn new<I, S>(name: impl Into<String>, permissions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            name: name.into(),
            permissions: permissions.into_iter().map(Into::into).collect(),
            includes: Vec::new(),
        }
    }

    /// Also grants everything `role` grants.
    #[must_use]
    pub fn including(mut self, role: impl Into<String>) -> Self {
        self.includes.push(role.into());
        self
    }
}

/// Why a role configuration was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// Two roles share a name.
    #[error("role `{0}` is defined twice; merge the definitions")]
    Duplicate(String),
    /// A role includes a role that is not defined.
    #[error("role `{role}` includes unknown role `{included}`; define it or remove the include")]
    UnknownInclude {
        /// The including role.
        role: String,
        /// The missing role.
        included: String,
    },
    /// Roles include each other in a cycle.
    #[error("roles include each other in a cycle: {0}; break the cycle")]
    Cycle(String),
    /// A role's permission is malformed.
    #[error("role `{role}`: {error}")]
    Permission {
        /// The role.
        role: String,
        /// What is wrong with the permission.
        error: PermissionError,
    },
}

/// A role's effective grants: its own plus every included role's.
#[derive(Debug, Clone, Default)]
pub struct EffectiveRole {
    /// Every permission the role grants, compiled.
    pub permissions: PermissionSet,
    /// The role itself and every role it includes, directly or not.
    pub implied_roles: HashSet<Box<str>, RandomState>,
}

/// Every role's effective permissions, precomputed.
#[derive(Debug, Clone, Default)]
pub struct RoleTable {
    roles: HashMap<Box<str>, EffectiveRole, RandomState>,
}

impl RoleTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates `defs` (unique names, known includes, no cycle, valid
    /// permissions) and precomputes each role's closure.
    pub fn from_defs(defs: &[RoleDef]) -> Result<Self, RoleError> {
        let mut by_name: HashMap<&str, &RoleDef> = HashMap::new();
        for d in defs {
            if by_name.insert(d.name.as_str(), d).is_some() {
                return Err(RoleError::Duplicate(d.name.clone()));
            }
        }
        for d in defs {
            for inc in &d.includes {
                if !by_name.contains_key(inc.as_str()) {
                    return Err(RoleError::UnknownInclude {
                        role: d.name.clone(),
                        included: inc.clone(),
                    });
                }
            }
        }
        // Depth-first search with colours; the grey path names the cycle.
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Grey,
            Black,
        }
        fn visit<'a>(
            name: &'a str,
            by_name: &HashMap<&'a str, &'a RoleDef>,
            marks: &mut HashMap<&'a str, Mark>,
            path: &mut Vec<&'a str>,
        ) -> Result<(), RoleError> {
            match marks.get(name) {
                Some(Mark::Black) => return Ok(()),
                Some(Mark::Grey) => {
                    let start = path.iter().position(|n| *n == name).unwrap_or(0);
                    let mut cycle: Vec<&str> = path[start..].to_vec();
                    cycle.push(name);
                    return Err(RoleError::Cycle(cycle.join(" -> ")));
                }
                None => {}
            }
            marks.insert(name, Mark::Grey);
            path.push(name);
            if let Some(def) = by_name.get(name) {
                for inc in &def.includes {
                    visit(inc.as_str(), by_name, marks, path)?;
                }
            }
            path.pop();
            marks.insert(name, Mark::Black);
            Ok(())
        }
        let mut marks = HashMap::new();
        for d in defs {
            visit(d.name.as_str(), &by_name, &mut marks, &mut Vec::new())?;
        }
        let mut roles = HashMap::with_hasher(RandomState::default());
        for d in defs {
            let mut eff = EffectiveRole::default();
            let mut stack = vec![d.name.as_str()];
            while let Some(n) = stack.pop() {
                if !eff.implied_roles.insert(n.into()) {
                    continue;
                }
                let Some(def) = by_name.get(n) else { continue };
                for p in &def.permissions {
                    let parsed = Permission::parse(p).map_err(|error| RoleError::Permission {
                        role: def.name.clone(),
                        error,
                    })?;
                    eff.permissions.insert(parsed);
                }
                stack.extend(def.includes.iter().map(String::as_str));
            }
            roles.insert(d.name.as_str().into(), eff);
        }
        Ok(Self { roles })
    }

    /// The effective grants of `role`, if defined.
    pub fn get(&self, role: &str) -> Option<&EffectiveRole> {
        self.roles.get(role)
    }

    /// Whether holding `held` implies holding `required` (same role, or included).
    pub fn implies(&self, held: &str, required: &str) -> bool {
        held == required
            || self
                .roles
                .get(held)
                .is_some_and(|r| r.implied_roles.contains(required))
    }

    /// The number of roles.
    pub fn len(&self) -> usize {
        self.roles.len()
    }

    /// Whether no role is defined.
    pub fn is_empty(&self) -> bool {
        self.roles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_and_cycles() {
        let t = RoleTable::from_defs(&[
            RoleDef::new("viewer", ["docs.read"]),
            RoleDef::new("editor", ["docs.write"]).including("viewer"),
            RoleDef::new("admin", ["billing.*"]).including("editor"),
        ])
        .unwrap();
        let admin = t.get("admin").unwrap();
        assert!(admin.permissions.allows("docs.read"));
        assert!(admin.permissions.allows("billing.refund"));
        assert!(!t.get("viewer").unwrap().permissions.allows("docs.write"));
        assert!(t.implies("admin", "viewer"));
        assert!(!t.implies("viewer", "admin"));

        let err = RoleTable::from_defs(&[
            RoleDef::new("a", ["x"]).including("b"),
            RoleDef::new("b", ["y"]).including("c"),
            RoleDef::new("c", ["z"]).including("a"),
        ])
        .unwrap_err();
        assert_eq!(err, RoleError::Cycle("a -> b -> c -> a".into()));
        let self_loop = RoleTable::from_defs(&[RoleDef::new("a", ["x"]).including("a")]);
        assert_eq!(self_loop.unwrap_err(), RoleError::Cycle("a -> a".into()));
        assert!(matches!(
            RoleTable::from_defs(&[RoleDef::new("a", ["x"]).including("nope")]),
            Err(RoleError::UnknownInclude { .. })
        ));
    }
}
