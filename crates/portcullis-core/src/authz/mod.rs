//! Authorization: wildcard permissions, roles, route rules and signed
//! service requests, all sans-I/O.

pub mod permission;
pub mod roles;
pub mod routes;
pub mod signed_request;

pub use permission::{Permission, PermissionError, PermissionSet};
pub use roles::{RoleDef, RoleError, RoleTable};
pub use routes::{
    AccessPolicy, AuthzConfig, AuthzConfigError, Decision, Effect, Reason, RequestFacts,
    Requirements, RouteRule,
    ConflictKind, RouteConflict,
};
