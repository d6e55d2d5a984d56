//! Authorization cost: route matching against 200 rules, permission checks
//! against 100 grants.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_core::authz::{
    AccessPolicy, AuthzConfig, Effect, PermissionSet, RequestFacts, RoleDef, RouteRule,
};
use portcullis_core::{AuthMethod, Principal};

fn rules_200() -> AuthzConfig {
    let mut rules = Vec::new();
    rules.push(RouteRule::deny("no-debug", "/internal/debug/**"));
    rules.push(RouteRule::allow("health", "/health").anonymous());
    for i in 0..196 {
        let rule = match i % 4 {
            0 => RouteRule::allow(format!("r{i}"), format!("/api/v1/svc{i}/items/{{id}}"))
                .methods(["GET"])
                .permissions_all([format!("svc{i}.items.read")]),
            1 => RouteRule::allow(
                format!("r{i}"),
                format!("/tenants/{{tenant}}/svc{i}/orders/*"),
            )
            .permissions_any([format!("svc{i}.orders.read"), "orders.admin".into()])
            .tenant_param("tenant"),
            2 => RouteRule::allow(format!("r{i}"), format!("/api/v2/svc{i}/**"))
                .roles_any(["staff"])
                .host("*.example.com"),
            _ => RouteRule::allow(format!("r{i}"), format!("/api/v1/svc{i}/items"))
                .methods(["POST", "PUT"])
                .scopes(["items:write"]),
        };
        rules.push(rule);
    }
    rules.push(RouteRule::deny("no-admin-v1", "/api/v1/admin/**"));
    rules.push(RouteRule::allow("fallback", "/**").roles_any(["admin"]));
    AuthzConfig {
        roles: vec![
            RoleDef::new("staff", ["svc1.*", "reports.read"]),
            RoleDef::new("clerk", ["svc193.orders.read", "org.*.read"]),
            RoleDef::new("admin", ["*"]).including("staff"),
        ],
        rules,
        default: Effect::Deny,
    }
}

fn grants_100() -> Vec<String> {
    let mut g: Vec<String> = (0..80).map(|i| format!("svc{i}.items.read")).collect();
    g.extend((0..15).map(|i| format!("area{i}.*")));
    g.extend((0..5).map(|i| format!("org.*.team{i}.read")));
    g
}

fn bench(c: &mut Criterion) {
    let policy = AccessPolicy::new(&rules_200()).unwrap();
    let mut user = Principal::new("u1", AuthMethod::Jwt);
    user.tenant = Some("acme".into());
    user.roles = vec!["clerk".into()];
    user.permissions = vec!["svc192.items.read".into()];

    let deep =
        RequestFacts::new("GET", "/tenants/acme/svc193/orders/42").with_host("api.example.com");
    assert!(policy.decide(Some(&user), &deep).allowed);
    c.bench_function("route_decide_200_rules_tenant_rule", |b| {
        b.iter(|| black_box(policy.decide(Some(black_box(&user)), black_box(&deep))))
    });
    let item = RequestFacts::new("GET", "/api/v1/svc192/items/7");
    assert!(policy.decide(Some(&user), &item).allowed);
    c.bench_function("route_decide_200_rules_item_rule", |b| {
        b.iter(|| black_box(policy.decide(Some(black_box(&user)), black_box(&item))))
    });
    let miss = RequestFacts::new("GET", "/nothing/here/at/all");
    assert!(!policy.decide(Some(&user), &miss).allowed);
    c.bench_function("route_decide_200_rules_fallback_denied", |b| {
        b.iter(|| black_box(policy.decide(Some(black_box(&user)), black_box(&miss))))
    });

    let set = PermissionSet::from_grants(grants_100()).unwrap();
    assert_eq!(set.len(), 100);
    for (name, required, expected) in [
        (
            "permission_check_100_grants_exact_hit",
            "svc79.items.read",
            true,
        ),
        (
            "permission_check_100_grants_prefix_hit",
            "area14.reports.monthly.export",
            true,
        ),
        (
            "permission_check_100_grants_inner_wildcard_hit",
            "org.acme.team4.read",
            true,
        ),
        (
            "permission_check_100_grants_miss",
            "billing.invoice.refund.partial",
            false,
        ),
    ] {
        assert_eq!(set.allows(required), expected, "{required}");
        c.bench_function(name, |b| {
            b.iter(|| black_box(set.allows(black_box(required))))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
