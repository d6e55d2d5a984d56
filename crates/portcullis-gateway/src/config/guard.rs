//! `[guard]`: the checks of the library's `GuardConfig` run at load
//! (route conflicts, the guard builder's own validation).

use portcullis::guard::GuardConfig;

/// Routes that can never match and routes whose precedence would be only
/// their order in the file (see `AccessPolicy::conflicts`), each located at
/// its `path`. Empty when the routes do not compile (the guard's own
/// validation then says why).
pub(super) fn route_conflicts(guard: &GuardConfig) -> Vec<(String, String)> {
    use portcullis_core::authz::routes::{AccessPolicy, AuthzConfig, RouteRule};
    let rules = guard
        .routes
        .iter()
        .map(|r| RouteRule {
            name: r.name.clone(),
            effect: r.effect,
            methods: r.methods.clone(),
            path: r.path.clone(),
            host: r.host.clone(),
            require: r.require.clone(),
            path_parameters: r.path_parameters,
        })
        .collect();
    let Ok(policy) = AccessPolicy::new(&AuthzConfig {
        roles: guard.roles.clone(),
        rules,
        default: guard.default,
    }) else {
        return Vec::new();
    };
    policy
        .conflicts()
        .into_iter()
        .map(|c| (format!("guard.routes[{}].path", c.index), c.to_string()))
        .collect()
}

/// The guard builder's own validation (patterns, credential sources,
/// rate-limit names, roles), run with stand-in handles; its error located
/// at the route and field it names.
pub(super) fn guard_error(guard: &GuardConfig, signed_requests: bool) -> Option<(String, String)> {
    use portcullis::guard::GuardConfigError;
    use std::sync::Arc;
    let stores = portcullis::stores::Stores::new(
        portcullis::stores::Backends::all(
            Arc::new(portcullis::stores::memory::MemoryStores::new()),
        ),
        portcullis::stores::StoresConfig::new(portcullis_core::SecretHasher::new(&[0; 32]).ok()?),
    )
    .ok()?;
    let verifier = portcullis_core::Verifier::new(
        portcullis_core::KeySet::new(),
        portcullis_core::Validation::new(),
    );
    let mut builder = portcullis::Guard::builder(guard.clone())
        .local_keys(verifier)
        .stores(Arc::new(stores));
    if signed_requests {
        builder = builder.signed_requests(portcullis::authz::SignedRequestAuthenticator::new(
            portcullis::authz::MemoryNonceStore::new(1),
        ));
    }
    let e = builder.build().err()?;
    let route_key = |name: &str, field: &str| match guard.routes.iter().position(|r| r.name == name)
    {
        Some(i) => format!("guard.routes[{i}].{field}"),
        None => "guard.routes".to_owned(),
    };
    Some(match &e {
        GuardConfigError::Route {
            route,
            field,
            message,
        } => (route_key(route, field), message.clone()),
        GuardConfigError::Missing { route, what, .. } if *what == "signed requests" => (
            route_key(route, "credentials"),
            format!(
                "route `{route}` accepts `signed` credentials, but there is no [signed_requests] section trusting any app; add one (with [[signed_requests.apps]]) or remove `signed` from the route"
            ),
        ),
        GuardConfigError::Missing { route, .. } => (route_key(route, "credentials"), e.to_string()),
        GuardConfigError::Field { field, message } => (format!("guard.{field}"), message.clone()),
        other => ("guard".to_owned(), other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse;

    #[test]
    fn guard_errors_are_located_at_the_route() {
        let text = "[keys]\ndir = \"/\"\nissuer = \"https://i.test\"\n\n[[guard.routes]]\nname = \"docs\"\npath = \"/docs\"\nrate_limits = [\"nope\"]\n\n[[upstreams]]\nname = \"app\"\nurl = \"http://127.0.0.1:1\"\ndefault = true\n";
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        let e = errs
            .iter()
            .find(|e| e.key.as_deref() == Some("guard.routes[0].rate_limits"))
            .unwrap_or_else(|| panic!("{errs:?}"));
        assert_eq!(e.line, Some(8));
    }

    #[test]
    fn route_conflicts_are_errors_at_the_route_path() {
        let text = "[keys]\ndir = \"/\"\nissuer = \"https://i.test\"\n\n[[guard.routes]]\nname = \"get\"\nmethods = [\"GET\"]\npath = \"/o\"\n\n[[guard.routes]]\nname = \"any\"\npath = \"/o\"\nmethods = [\"GET\"]\n\n[[upstreams]]\nname = \"app\"\nurl = \"http://127.0.0.1:1\"\ndefault = true\n";
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        let e = errs
            .iter()
            .find(|e| e.key.as_deref() == Some("guard.routes[1].path"))
            .unwrap_or_else(|| panic!("{errs:?}"));
        assert_eq!(e.line, Some(12));
        assert!(
            e.message.contains("ambiguous with route `get`"),
            "{}",
            e.message
        );
    }
}
