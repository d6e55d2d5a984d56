//! Authorization: permission matching against a naive reference, rule order,
//! deny-overrides, tenant isolation, role cycles, decision reasons.

use portcullis_core::authz::permission::grant_str_matches;
use portcullis_core::authz::{
    AccessPolicy, AuthzConfig, AuthzConfigError, Effect, PermissionSet, Reason, RequestFacts,
    RoleDef, RoleError, RouteRule,
};
use portcullis_core::{AuthMethod, ErrorCode, Principal};
use proptest::prelude::*;

/// The specification, written as plainly as possible.
fn reference(grant: &str, required: &str) -> bool {
    let req: Vec<&str> = required.split('.').collect();
    if required.is_empty() || req.iter().any(|s| s.is_empty()) {
        return false;
    }
    if grant == "*" {
        return true;
    }
    let g: Vec<&str> = grant.split('.').collect();
    let seg_ok = |g: &str, r: &str| g == "*" || g == r;
    if g.len() > 1 && g[g.len() - 1] == "*" {
        let prefix = &g[..g.len() - 1];
        req.len() > prefix.len() && prefix.iter().zip(&req).all(|(g, r)| seg_ok(g, r))
    } else {
        g.len() == req.len() && g.iter().zip(&req).all(|(g, r)| seg_ok(g, r))
    }
}

fn grant_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "*"]), 1..5)
        .prop_map(|v| v.join("."))
}

fn required_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c", ""]), 1..6)
        .prop_map(|v| v.join("."))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn set_matches_reference(grants in prop::collection::vec(grant_strategy(), 0..8), required in required_strategy()) {
        let set = PermissionSet::from_grants(&grants).unwrap();
        let expected = grants.iter().any(|g| reference(g, &required));
        prop_assert_eq!(set.allows(&required), expected, "grants {:?} required {:?}", grants, required);
        for g in &grants {
            prop_assert_eq!(grant_str_matches(g, &required), reference(g, &required), "grant {:?} required {:?}", g, required);
        }
    }
}

#[test]
fn permission_edge_cases() {
    // Empty segments never match, whatever is granted.
    let all = PermissionSet::from_grants(["*"]).unwrap();
    for bad in ["", ".", "a.", ".a", "a..b"] {
        assert!(!all.allows(bad), "{bad:?}");
    }
    // `*` in the middle is exactly one segment.
    let mid = PermissionSet::from_grants(["org.*.read"]).unwrap();
    assert!(mid.allows("org.acme.read"));
    assert!(!mid.allows("org.acme.eu.read"));
    assert!(!mid.allows("org..read"));
    // A granted permission longer than the required one does not grant it.
    let long = PermissionSet::from_grants(["billing.invoice.refund"]).unwrap();
    assert!(!long.allows("billing.invoice"));
    assert!(!long.allows("billing"));
    // `billing.*` grants everything below, not `billing` itself.
    let below = PermissionSet::from_grants(["billing.*"]).unwrap();
    assert!(below.allows("billing.invoice.refund"));
    assert!(!below.allows("billing"));
    assert!(!below.allows("billingx.y"));
}

fn user(roles: &[&str], perms: &[&str], tenant: Option<&str>) -> Principal {
    let mut p = Principal::new("u1", AuthMethod::Jwt);
    p.roles = roles.iter().map(|s| s.to_string()).collect();
    p.permissions = perms.iter().map(|s| s.to_string()).collect();
    p.tenant = tenant.map(str::to_owned);
    p
}

fn policy(rules: Vec<RouteRule>, roles: Vec<RoleDef>) -> AccessPolicy {
    AccessPolicy::new(&AuthzConfig {
        roles,
        rules,
        default: Effect::Deny,
    })
    .unwrap()
}

/// Deny overrides allow; among allow rules the most specific decides,
/// wherever it is declared. (Until issue 14 the first allow rule in
/// declaration order decided, and the anonymous `/admin/health` rule below
/// was dead; the new order is intended.)
#[test]
fn deny_overrides_allow_and_most_specific_allow_decides() {
    let p = policy(
        vec![
            RouteRule::allow("admin-area", "/admin/**").roles_any(["admin"]),
            RouteRule::allow("public-health", "/admin/health").anonymous(),
            RouteRule::deny("no-debug", "/admin/debug/**"),
            RouteRule::allow("everything-else", "/**"),
        ],
        vec![RoleDef::new("admin", ["*"])],
    );
    assert_eq!(p.conflicts(), vec![]);
    let admin = user(&["admin"], &[], None);
    let nobody = user(&[], &[], None);
    // The deny rule wins even though allow rules match.
    let d = p.decide(Some(&admin), &RequestFacts::new("GET", "/admin/debug/vars"));
    assert!(!d.allowed);
    assert_eq!(d.rule, Some("no-debug"));
    assert_eq!(d.reason, Reason::DeniedByRule);
    assert_eq!(d.code(), Some(ErrorCode::Denied));
    // The literal /admin/health is more specific than /admin/**, though declared later.
    let d = p.decide(None, &RequestFacts::new("GET", "/admin/health"));
    assert_eq!(d.rule, Some("public-health"));
    assert_eq!(d.reason, Reason::AnonymousAllowed);
    // /admin/** is more specific than /** for everything under /admin.
    let d = p.decide(None, &RequestFacts::new("GET", "/admin/users"));
    assert_eq!(d.rule, Some("admin-area"));
    assert_eq!(d.reason, Reason::Unauthenticated);
    assert_eq!(d.code(), Some(ErrorCode::MissingCredentials));
    let d = p.decide(Some(&nobody), &RequestFacts::new("GET", "/admin/users"));
    assert!(!d.allowed);
    assert_eq!(d.reason.as_str(), "missing_any_role");
    assert!(
        p.decide(Some(&admin), &RequestFacts::new("GET", "/admin"))
            .allowed
    );
    assert!(
        p.decide(Some(&nobody), &RequestFacts::new("GET", "/shop"))
            .allowed
    );
}

/// Each specificity criterion, with the less specific rule declared first
/// and then last: the winner never depends on the order.
#[test]
fn most_specific_rule_wins_regardless_of_order() {
    let cases: Vec<(RouteRule, RouteRule, RequestFacts<'static>)> = vec![
        // An exact host beats a suffix host, which beats any host.
        (
            RouteRule::allow("loose", "/x").host("*.example.com"),
            RouteRule::allow("tight", "/x").host("api.example.com"),
            RequestFacts::new("GET", "/x").with_host("api.example.com:8443"),
        ),
        (
            RouteRule::allow("loose", "/x"),
            RouteRule::allow("tight", "/x").host("*.example.com"),
            RequestFacts::new("GET", "/x").with_host("api.example.com"),
        ),
        // A longer suffix beats a shorter one.
        (
            RouteRule::allow("loose", "/x").host("*.example.com"),
            RouteRule::allow("tight", "/x").host("*.eu.example.com"),
            RequestFacts::new("GET", "/x").with_host("api.eu.example.com"),
        ),
        // The host outranks the path.
        (
            RouteRule::allow("loose", "/orders/42"),
            RouteRule::allow("tight", "/**").host("api.example.com"),
            RequestFacts::new("GET", "/orders/42").with_host("api.example.com"),
        ),
        // A literal segment beats a parameter, which beats `**`.
        (
            RouteRule::allow("loose", "/orders/{id}"),
            RouteRule::allow("tight", "/orders/summary"),
            RequestFacts::new("GET", "/orders/summary"),
        ),
        (
            RouteRule::allow("loose", "/orders/**"),
            RouteRule::allow("tight", "/orders/{id}"),
            RequestFacts::new("GET", "/orders/7"),
        ),
        // The longer literal prefix wins, even against a longer pattern.
        (
            RouteRule::allow("loose", "/api/{v}/orders/{id}"),
            RouteRule::allow("tight", "/api/v1/**"),
            RequestFacts::new("GET", "/api/v1/orders/7"),
        ),
        // A pattern that ends beats `**` matching nothing.
        (
            RouteRule::allow("loose", "/orders/**"),
            RouteRule::allow("tight", "/orders"),
            RequestFacts::new("GET", "/orders"),
        ),
        // A method list beats any method; a shorter list beats a longer one.
        (
            RouteRule::allow("loose", "/orders"),
            RouteRule::allow("tight", "/orders").methods(["GET", "POST"]),
            RequestFacts::new("POST", "/orders"),
        ),
        (
            RouteRule::allow("loose", "/orders").methods(["GET", "POST"]),
            RouteRule::allow("tight", "/orders").methods(["POST"]),
            RequestFacts::new("POST", "/orders"),
        ),
    ];
    for (loose, tight, facts) in cases {
        for rules in [
            vec![loose.clone().anonymous(), tight.clone().anonymous()],
            vec![tight.clone().anonymous(), loose.clone().anonymous()],
        ] {
            let p = policy(rules.clone(), vec![]);
            assert_eq!(p.conflicts(), vec![], "{loose:?} / {tight:?}");
            let d = p.decide(None, &facts);
            assert_eq!(d.rule, Some("tight"), "{loose:?} / {tight:?} for {facts:?}");
            let tight_index = usize::from(rules[1].name == "tight");
            assert_eq!(p.route_index(&facts), Some(tight_index));
        }
    }
}

#[test]
fn ambiguous_and_shadowed_rules_are_reported() {
    use portcullis_core::authz::{ConflictKind, RouteConflict};
    let conflicts = |rules: Vec<RouteRule>| policy(rules, vec![]).conflicts();
    // The same requests, the same specificity: ambiguous (reported on the later one).
    let c = conflicts(vec![
        RouteRule::allow("a", "/orders/{id}"),
        RouteRule::allow("b", "/orders/*").roles_any(["x"]),
    ]);
    assert_eq!(
        c,
        vec![RouteConflict {
            rule: "b".into(),
            index: 1,
            kind: ConflictKind::Ambiguous { other: "a".into() },
        }]
    );
    assert!(c[0].to_string().contains("ambiguous with route `a`"), "{}", c[0]);
    // A partial overlap at the same specificity is ambiguous too (POST).
    let c = conflicts(vec![
        RouteRule::allow("a", "/o").methods(["GET", "POST"]),
        RouteRule::allow("b", "/o").methods(["POST", "PUT"]),
    ]);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].rule, "b");
    // Same shape, different literals or methods: no overlap, no conflict.
    assert_eq!(
        conflicts(vec![
            RouteRule::allow("a", "/o/{id}").methods(["GET"]),
            RouteRule::allow("b", "/o/{id}").methods(["POST"]),
            RouteRule::allow("c", "/p/{id}").methods(["GET"]),
        ]),
        vec![]
    );
    // Covered by the union of more specific allow rules.
    let c = conflicts(vec![
        RouteRule::allow("both", "/o").methods(["GET", "POST"]),
        RouteRule::allow("get", "/o").methods(["GET"]),
        RouteRule::allow("post", "/o").methods(["POST"]),
    ]);
    assert_eq!(
        c,
        vec![RouteConflict {
            rule: "both".into(),
            index: 0,
            kind: ConflictKind::Shadowed {
                by: vec!["get".into(), "post".into()]
            },
        }]
    );
    assert!(
        c[0].to_string()
            .contains("shadowed by routes `get`, `post`"),
        "{}",
        c[0]
    );
    // An allow rule under a deny rule can never allow, whatever their specificity.
    let c = conflicts(vec![
        RouteRule::deny("no-admin", "/admin/**"),
        RouteRule::allow("admin-users", "/admin/users"),
    ]);
    assert_eq!(c.len(), 1);
    assert_eq!(
        c[0].kind,
        ConflictKind::Shadowed {
            by: vec!["no-admin".into()]
        }
    );
    // A deny rule whose requests more specific deny rules all take never
    // names the decision; a narrower deny under a broader one is fine.
    let c = conflicts(vec![
        RouteRule::deny("both", "/x").methods(["GET", "POST"]),
        RouteRule::deny("get", "/x").methods(["GET"]),
        RouteRule::deny("post", "/x").methods(["POST"]),
        RouteRule::deny("broad", "/admin/**"),
        RouteRule::deny("narrow", "/admin/debug/**"),
    ]);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].rule, "both");
    // A deny rule covered by allow rules still denies: no conflict; nor is a
    // partial overlap resolved by specificity, nor a host-restricted rule
    // under an any-host rule.
    assert_eq!(
        conflicts(vec![
            RouteRule::allow("all", "/**"),
            RouteRule::deny("debug", "/debug"),
            RouteRule::allow("orders", "/orders/{id}"),
            RouteRule::allow("summary", "/orders/summary").host("api.example.com"),
            RouteRule::allow("summary-any", "/orders/summary"),
        ]),
        vec![]
    );
    // A host-wide rule is not covered by rules for one host.
    assert_eq!(
        conflicts(vec![
            RouteRule::allow("one-host", "/x").host("a.example.com"),
            RouteRule::allow("any-host", "/x"),
        ]),
        vec![]
    );
    // But a rule for one host under a suffix deny is shadowed.
    let c = conflicts(vec![
        RouteRule::deny("internal", "/**").host("*.internal.example.com"),
        RouteRule::allow("metrics", "/metrics").host("m.internal.example.com"),
    ]);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].rule, "metrics");
}

#[test]
fn default_deny_and_configured_default_allow() {
    let rules = vec![RouteRule::allow("orders", "/orders")];
    let p = policy(rules.clone(), vec![]);
    let d = p.decide(
        Some(&user(&[], &[], None)),
        &RequestFacts::new("GET", "/other"),
    );
    assert!(!d.allowed);
    assert_eq!((d.rule, d.reason), (None, Reason::NoMatchingRule));
    let open = AccessPolicy::new(&AuthzConfig {
        roles: vec![],
        rules,
        default: Effect::Allow,
    })
    .unwrap();
    assert!(
        open.decide(None, &RequestFacts::new("GET", "/other"))
            .allowed
    );
}

#[test]
fn tenant_isolation() {
    let p = policy(
        vec![
            RouteRule::allow("tenant-orders", "/tenants/{tenant}/orders/*")
                .permissions_all(["orders.read"])
                .tenant_param("tenant"),
        ],
        vec![RoleDef::new("clerk", ["orders.*"])],
    );
    let a = user(&["clerk"], &[], Some("acme"));
    let facts = RequestFacts::new("GET", "/tenants/acme/orders/42");
    assert!(p.decide(Some(&a), &facts).allowed);
    let d = p.decide(
        Some(&a),
        &RequestFacts::new("GET", "/tenants/globex/orders/42"),
    );
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::TenantMismatch);
    let no_tenant = user(&["clerk"], &[], None);
    assert_eq!(
        p.decide(Some(&no_tenant), &facts).reason,
        Reason::TenantMismatch
    );
    let no_perm = user(&[], &["orders.write"], Some("acme"));
    let d = p.decide(Some(&no_perm), &facts);
    assert_eq!(d.reason, Reason::MissingPermission("orders.read"));
    assert_eq!(
        serde_json::to_value(d).unwrap(),
        serde_json::json!({"allowed": false, "rule": "tenant-orders", "reason": "missing_permission",
                           "detail": "missing permission `orders.read`", "code": "authz.denied"})
    );
}

#[test]
fn methods_hosts_scopes_and_auth_methods() {
    let p = policy(
        vec![
            RouteRule::allow("write", "/items/{id}")
                .methods(["PUT", "DELETE"])
                .host("*.example.com")
                .scopes(["items:write"])
                .auth_methods([AuthMethod::Jwt]),
            RouteRule::allow("read", "/items/*")
                .methods(["GET"])
                .anonymous(),
            RouteRule::allow("svc", "/internal/**")
                .auth_methods([AuthMethod::SignedRequest, AuthMethod::App])
                .permissions_any(["internal.call", "internal.admin"]),
        ],
        vec![],
    );
    let mut u = user(&[], &[], None);
    let put = RequestFacts::new("PUT", "/items/7").with_host("API.example.com:8443");
    assert_eq!(
        p.decide(Some(&u), &put).reason,
        Reason::MissingScope("items:write")
    );
    u.scopes = vec!["items:write".into()];
    assert!(p.decide(Some(&u), &put).allowed);
    // Wrong host: no rule matches.
    let d = p.decide(
        Some(&u),
        &RequestFacts::new("PUT", "/items/7").with_host("evil.com"),
    );
    assert_eq!(d.reason, Reason::NoMatchingRule);
    assert!(
        p.decide(None, &RequestFacts::new("GET", "/items/7"))
            .allowed
    );
    assert!(
        !p.decide(None, &RequestFacts::new("POST", "/items/7"))
            .allowed
    );
    let d = p.decide(Some(&u), &RequestFacts::new("GET", "/internal/x"));
    assert_eq!(d.reason, Reason::AuthMethodNotAllowed(AuthMethod::Jwt));
    let mut svc = Principal::new("billing", AuthMethod::SignedRequest);
    assert!(matches!(
        p.decide(Some(&svc), &RequestFacts::new("GET", "/internal/x"))
            .reason,
        Reason::MissingAnyPermission(_)
    ));
    svc.permissions = vec!["internal.*".into()];
    assert!(
        p.decide(Some(&svc), &RequestFacts::new("GET", "/internal/x"))
            .allowed
    );
}

#[test]
fn included_roles_count_for_role_and_permission_requirements() {
    let p = policy(
        vec![
            RouteRule::allow("edit", "/docs/**").roles_all(["editor"]),
            RouteRule::allow("bill", "/billing/**").permissions_all(["billing.invoice.refund"]),
        ],
        vec![
            RoleDef::new("editor", ["docs.*"]),
            RoleDef::new("admin", ["billing.*"]).including("editor"),
        ],
    );
    let admin = user(&["admin"], &[], None);
    assert!(
        p.decide(Some(&admin), &RequestFacts::new("POST", "/docs/1"))
            .allowed
    );
    assert!(
        p.decide(Some(&admin), &RequestFacts::new("POST", "/billing/r"))
            .allowed
    );
    let editor = user(&["editor"], &[], None);
    let d = p.decide(Some(&editor), &RequestFacts::new("POST", "/billing/r"));
    assert_eq!(
        d.reason,
        Reason::MissingPermission("billing.invoice.refund")
    );
    assert_eq!(
        d.reason.to_string(),
        "missing permission `billing.invoice.refund`"
    );
}

#[test]
fn malformed_paths_are_denied() {
    let p = policy(vec![RouteRule::allow("all", "/**").anonymous()], vec![]);
    for path in [
        "/a/../admin",
        "/./x",
        "/a/%2e%2e/b",
        "/a/%2E./b",
        "/admin%2fx",
        "/admin%5Cx",
        "/a\\b",
        "/a%zz",
        "/a%4",
        "/a%00",
    ] {
        let d = p.decide(None, &RequestFacts::new("GET", path));
        assert_eq!(d.reason, Reason::MalformedPath, "{path}");
    }
    // Empty segments are ignored, so `//admin` is `/admin`.
    let p = policy(
        vec![
            RouteRule::deny("admin", "/admin/**"),
            RouteRule::allow("all", "/**").anonymous(),
        ],
        vec![],
    );
    assert!(
        !p.decide(None, &RequestFacts::new("GET", "//admin//x"))
            .allowed
    );
}

#[test]
fn configuration_errors_name_the_rule_and_field() {
    let err = |rules: Vec<RouteRule>| {
        AccessPolicy::new(&AuthzConfig {
            roles: vec![],
            rules,
            default: Effect::Deny,
        })
        .unwrap_err()
    };
    let e = err(vec![RouteRule::allow("x", "/a/**/b")]);
    assert!(matches!(e, AuthzConfigError::Rule { ref rule, field: "path", .. } if rule == "x"));
    let e = err(vec![
        RouteRule::allow("t", "/orders/{id}").tenant_param("tenant"),
    ]);
    assert!(matches!(
        e,
        AuthzConfigError::Rule {
            field: "require.tenant_param",
            ..
        }
    ));
    let e = err(vec![RouteRule::allow("p", "/x").permissions_all(["a.*"])]);
    assert!(matches!(
        e,
        AuthzConfigError::Rule {
            field: "require.permissions",
            ..
        }
    ));
    let e = err(vec![RouteRule::allow("m", "/x").methods(["get"])]);
    assert!(matches!(
        e,
        AuthzConfigError::Rule {
            field: "methods",
            ..
        }
    ));
    let e = err(vec![
        RouteRule::allow("d", "/x"),
        RouteRule::allow("d", "/y"),
    ]);
    assert!(matches!(e, AuthzConfigError::Rule { field: "name", .. }));
    let cycle = AccessPolicy::new(&AuthzConfig {
        roles: vec![
            RoleDef::new("a", ["x"]).including("b"),
            RoleDef::new("b", ["y"]).including("a"),
        ],
        rules: vec![],
        default: Effect::Deny,
    })
    .unwrap_err();
    assert_eq!(
        cycle,
        AuthzConfigError::Roles(RoleError::Cycle("a -> b -> a".into()))
    );
    assert_eq!(
        cycle.to_string(),
        "roles: roles include each other in a cycle: a -> b -> a; break the cycle"
    );
}

#[test]
fn config_loads_from_json() {
    let config: AuthzConfig = serde_json::from_str(
        r#"{
          "roles": [{"name": "clerk", "permissions": ["orders.*"]}],
          "rules": [
            {"name": "orders", "methods": ["GET"], "path": "/tenants/{tenant}/orders/**",
             "require": {"permissions_all": ["orders.read"], "tenant_param": "tenant",
                         "auth_methods": ["jwt", "api_key"]}}
          ]
        }"#,
    )
    .unwrap();
    assert_eq!(config.default, Effect::Deny);
    let p = AccessPolicy::new(&config).unwrap();
    let u = user(&["clerk"], &[], Some("acme"));
    assert!(
        p.decide(
            Some(&u),
            &RequestFacts::new("GET", "/tenants/acme/orders/1/lines")
        )
        .allowed
    );
    assert!(serde_json::from_str::<AuthzConfig>(r#"{"rules": [], "typo": 1}"#).is_err());
}

/// The rule matcher, written naively: every rule in order, segment by segment.
fn naive_matches(pattern: &str, method_ok: bool, path: &str) -> bool {
    if !method_ok {
        return false;
    }
    let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    fn go(pat: &[&str], segs: &[&str]) -> bool {
        match (pat.first(), segs.first()) {
            (Some(&"**"), _) => true,
            (None, None) => true,
            (None, Some(_)) | (Some(_), None) => false,
            (Some(p), Some(s)) => {
                (*p == "*" || p.starts_with('{') || p == s) && go(&pat[1..], &segs[1..])
            }
        }
    }
    go(&pat, &segs)
}

fn pattern_strategy() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b", "*", "{p}"]), 0..4),
        any::<bool>(),
    )
        .prop_map(|(segs, rest)| {
            let mut s = String::new();
            for seg in segs {
                s.push('/');
                s.push_str(seg);
            }
            if rest || s.is_empty() {
                s.push_str("/**");
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn trie_matches_naive_rule_scan(
        rules in prop::collection::vec((pattern_strategy(), any::<bool>(), any::<bool>()), 1..12),
        path in prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 0..5),
        post in any::<bool>(),
    ) {
        let path = format!("/{}", path.join("/"));
        let method = if post { "POST" } else { "GET" };
        let config_rules: Vec<RouteRule> = rules
            .iter()
            .enumerate()
            .map(|(i, (pat, deny, get_only))| {
                let r = if *deny {
                    RouteRule::deny(format!("r{i}"), pat.clone())
                } else {
                    RouteRule::allow(format!("r{i}"), pat.clone()).anonymous()
                };
                if *get_only { r.methods(["GET"]) } else { r }
            })
            .collect();
        let p = policy(config_rules.clone(), vec![]);
        let d = p.decide(None, &RequestFacts::new(method, &path));
        // The most specific matching rule of an effect, the earliest among equals.
        let matching = |deny: bool| {
            rules.iter().enumerate().filter(|(_, (pat, d, get_only))| {
                *d == deny && naive_matches(pat, !*get_only || method == "GET", &path)
            })
            .min_by(|(i, (pa, _, ga)), (j, (pb, _, gb))| {
                naive_specificity(pb, *gb).cmp(&naive_specificity(pa, *ga)).then(i.cmp(j))
            })
            .map(|(i, _)| format!("r{i}"))
        };
        let expected = matching(true).or_else(|| matching(false));
        prop_assert_eq!(d.rule.map(str::to_owned), expected.clone(), "path {} rules {:?}", path, rules);
        let expected_allowed = expected.is_some() && matching(true).is_none();
        prop_assert_eq!(d.allowed, expected_allowed);

        // Without conflicts the order of the rules never matters, and a
        // rule reported as shadowed never decides.
        let conflicts = p.conflicts();
        let mut reversed = config_rules.clone();
        reversed.reverse();
        let r = policy(reversed, vec![]);
        let dr = r.decide(None, &RequestFacts::new(method, &path));
        if conflicts.is_empty() {
            prop_assert_eq!(dr.rule, d.rule);
        }
        for c in &conflicts {
            if matches!(c.kind, portcullis_core::authz::ConflictKind::Shadowed { .. }) {
                prop_assert_ne!(d.rule, Some(c.rule.as_str()), "{}", c);
            }
        }
    }
}

/// The reference's specificity: literal 3 > `*`/`{p}` 2 > `**` 1, an end 4;
/// then a method list before any method.
fn naive_specificity(pattern: &str, get_only: bool) -> (Vec<u8>, bool) {
    let mut key: Vec<u8> = pattern
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "**" => 1,
            "*" => 2,
            s if s.starts_with('{') => 2,
            _ => 3,
        })
        .collect();
    if !pattern.ends_with("**") {
        key.push(4);
    }
    (key, get_only)
}

#[test]
fn effective_permissions_join_own_and_role_grants() {
    let p = policy(
        vec![],
        vec![
            RoleDef::new("viewer", ["docs.read"]),
            RoleDef::new("editor", ["docs.*"]).including("viewer"),
        ],
    );
    let u = user(&["editor", "ghost"], &["billing.view", "bad..grant"], None);
    let set = p.effective_permissions(&u);
    assert!(set.allows("billing.view"));
    assert!(set.allows("docs.write"));
    assert!(set.allows("docs.read"));
    assert!(!set.allows("billing.refund"));
    assert!(p.has_permission(&u, "docs.write"));
}
