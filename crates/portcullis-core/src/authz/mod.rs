//! Authorization: wildcard permissions, roles, route rules and signed
//! service requests, all sans-I/O.

pub mod grant;
pub mod permission;
pub mod roles;
pub mod routes;
pub mod signed_request;

pub use permission::{Permission, PermissionError, PermissionSet};
pub use roles::{RoleDef, RoleError, RoleTable};
pub use routes::{
    AccessPolicy, AuthzConfig, AuthzConfigError, ConflictKind, Decision, Effect, MatchedRule,
    Precedence, Reason, RequestFacts, Requirements, RouteConflict, RouteRule, RouteTrace,
};
