//! Rate-limit math: rules, the GCRA / sliding-log / fixed-window
//! algorithms over stored state, client-IP resolution, keys and the
//! response fields. Pure: state and time in, decision out.

pub mod algorithm;
pub mod client_ip;
pub mod headers;
pub mod key;
pub mod rule;

pub use algorithm::{Decision, GcraParams, State, apply, most_restrictive};
pub use client_ip::{BanKeyError, ClientIpConfig, ClientIpError, ForwardingHeader, IpNet};
pub use headers::{RuleReport, problem_body, response_headers};
pub use key::{HeaderLookup, KeyPart, KeySpec, RequestFacts};
pub use rule::{
    Algorithm, MAX_LEASE, MAX_RULES, OnBackendError, Rule, RuleConfig, RuleError, validate_rules,
};
