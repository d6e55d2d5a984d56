//! Bytes into the canonical request form and the route matcher: method,
//! host and path are split from the input, canonicalised, and matched
//! against a small route table. Never a panic; canonicalising twice
//! changes nothing; a path the canonical form accepts is never refused by
//! the matcher as malformed unless it carries `;` parameters.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_core::authz::routes::{AccessPolicy, AuthzConfig, RequestFacts, RouteRule};
use portcullis_core::canonical;

fn policy() -> &'static AccessPolicy {
    static POLICY: OnceLock<AccessPolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let rules = vec![
            RouteRule::deny("items-delete", "/items/**").methods(["DELETE"]),
            RouteRule::allow("admin-host", "/**").host("admin.example"),
            RouteRule::allow("private", "/admin/**"),
            RouteRule::allow("matrix", "/matrix/**").anonymous().path_parameters(true),
            RouteRule::allow("public", "/**").anonymous(),
        ];
        match AccessPolicy::new(&AuthzConfig { rules, ..AuthzConfig::default() }) {
            Ok(p) => p,
            Err(e) => panic!("the fuzz policy must compile: {e}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\n');
    let (Some(method), Some(host), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let method_ok = canonical::method(method).is_ok();
    let host = canonical::host(host, method.len() % 2 == 0);
    if let Ok(h) = &host {
        let again = canonical::host(h, method.len() % 2 == 0);
        assert_eq!(again.as_deref().ok(), Some(&**h), "host not idempotent");
    }
    let Ok(path) = canonical::path(path) else { return };
    let again = canonical::path(&path);
    assert_eq!(again.as_deref().ok(), Some(&*path), "path not idempotent");
    let stripped = canonical::without_path_parameters(&path);
    assert!(!canonical::has_path_parameters(&stripped));
    if !method_ok {
        return;
    }
    let mut facts = RequestFacts::new(method, &path);
    if let Ok(h) = &host {
        facts = facts.with_host(h);
    }
    let decision = policy().decide(None, &facts);
    if decision.reason.as_str() == "malformed_path" {
        assert!(canonical::has_path_parameters(&path), "canonical path refused: {path:?}");
    }
});
