//! Cross-field checks of a typed configuration, each problem a (dotted
//! key, message) pair.

use std::time::Duration;

use portcullis_core::authz::routes::Effect;

use super::guard::{guard_error, route_conflicts};
use super::signed::validate_signed_requests;
use super::upstreams::{upstream_tls_errors, upstream_url};
use super::{Config, Host, StorageUrl, suggest};

/// Cross-field checks: (dotted key, message) for each problem.
pub(super) fn validate(config: &Config, host: Host) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let mut err = |key: String, message: String| errors.push((key, message));

    if config.server.listen == config.server.ops_listen {
        err(
            "server.ops_listen".into(),
            "must differ from `server.listen`".into(),
        );
    }
    if !(1..=10_000).contains(&config.server.admin_streams) {
        err("server.admin_streams".into(), "must be 1 to 10000".into());
    }
    if config.server.admin_streams_per_key == 0
        || config.server.admin_streams_per_key > config.server.admin_streams
    {
        err(
            "server.admin_streams_per_key".into(),
            "must be at least 1 and at most `server.admin_streams`".into(),
        );
    }
    for (i, host) in config.server.ops_hosts.iter().enumerate() {
        if let Err(reason) = super::valid_host_pattern(host) {
            err(format!("server.ops_hosts[{i}]"), reason.into());
        }
    }
    if config.server.max_body_bytes == 0 {
        err("server.max_body_bytes".into(), "must be at least 1".into());
    }
    if !(Duration::from_millis(10)..=Duration::from_secs(1))
        .contains(&config.revocation.poll_interval)
    {
        err(
            "revocation.poll_interval".into(),
            "must be 10ms to 1s (the revocation bound)".into(),
        );
    }
    if config.revocation.max_stale < Duration::from_secs(1) {
        err("revocation.max_stale".into(), "must be at least 1s".into());
    }
    if let Some(n) = config.server.worker_threads
        && !(1..=1024).contains(&n)
    {
        err(
            "server.worker_threads".into(),
            "must be between 1 and 1024".into(),
        );
    }
    for (key, d) in [
        (
            "server.upstream_connect_timeout",
            config.server.upstream_connect_timeout,
        ),
        (
            "server.upstream_read_timeout",
            config.server.upstream_read_timeout,
        ),
    ] {
        if d.is_zero() {
            err(key.into(), "must be longer than zero".into());
        }
    }
    for (key, message) in super::checks::server_limits(&config.server) {
        err(key.into(), message);
    }
    if let Some(tls) = &config.server.tls {
        if tls.handshake_timeout.is_zero() {
            err(
                "server.tls.handshake_timeout".into(),
                "must be longer than zero".into(),
            );
        }
        if tls.max_handshakes == 0 {
            err(
                "server.tls.max_handshakes".into(),
                "must be at least 1".into(),
            );
        }
    }

    match StorageUrl::parse(&config.storage.url) {
        Err(message) => err("storage.url".into(), message),
        Ok(StorageUrl::Memory) => {}
        Ok(_) if config.storage.pepper_file.is_none() => err(
            "storage.pepper_file".into(),
            "durable storage needs a pepper file (32+ random bytes, e.g. `head -c 32 /dev/urandom > pepper`); without the same pepper stored API keys and refresh tokens stop verifying".into(),
        ),
        Ok(_) => {}
    }
    if config.storage.redis_prefix.is_empty()
        || config.storage.redis_prefix.len() > 64
        || !config
            .storage
            .redis_prefix
            .bytes()
            .all(|b| b.is_ascii_graphic())
    {
        err(
            "storage.redis_prefix".into(),
            "must be 1-64 visible ASCII characters".into(),
        );
    }
    if config.storage.redis_prefix.contains(['{', '}']) {
        err(
            "storage.redis_prefix".into(),
            "must not contain `{` or `}` (Redis Cluster hash-tag characters)".into(),
        );
    }
    let redis_url = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
    if let Some(redis) = &config.storage.redis
        && !redis_url(redis)
    {
        err(
            "storage.redis".into(),
            format!("`{redis}` is not a Redis URL; use redis://HOST:PORT"),
        );
    }
    for (i, url) in config.storage.redis_cluster.iter().enumerate() {
        if !redis_url(url) {
            err(
                format!("storage.redis_cluster[{i}]"),
                format!("`{url}` is not a Redis URL; use redis://HOST:PORT"),
            );
        }
    }
    if config.storage.redis.is_some() && !config.storage.redis_cluster.is_empty() {
        err(
            "storage.redis_cluster".into(),
            "set either `redis` (one server) or `redis_cluster` (seed nodes), not both".into(),
        );
    }
    if let Some(url) = &config.audit.postgres {
        if config.audit.sqlite.is_some() {
            err(
                "audit.postgres".into(),
                "set either `sqlite` or `postgres`, not both".into(),
            );
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            err(
                "audit.postgres".into(),
                format!("`{url}` is not a PostgreSQL URL; use postgres://USER@HOST/DB"),
            );
        }
        if config.audit.spool_dir.is_none() {
            err(
                "audit.spool_dir".into(),
                "audit to PostgreSQL needs a local spool directory for events written while the database is down (e.g. /var/lib/portcullis/audit.spool)".into(),
            );
        }
    }
    if config.anomaly.max_keys == 0 {
        err("anomaly.max_keys".into(), "must be at least 1".into());
    }
    if let Err((key, message)) = config.anomaly.webhook_config() {
        err(key, message);
    }
    if let Err(e) = portcullis_core::anomaly::validate_detectors(&config.anomaly.detectors) {
        err("anomaly.detectors".into(), e.to_string());
    }
    if let Some(pepper) = &config.storage.pepper_file {
        match std::fs::metadata(pepper) {
            Ok(m) if m.len() < 32 => err(
                "storage.pepper_file".into(),
                format!(
                    "`{}` holds {} bytes; a pepper needs at least 32",
                    pepper.display(),
                    m.len()
                ),
            ),
            Ok(_) => {}
            Err(e) => err(
                "storage.pepper_file".into(),
                format!("cannot read `{}`: {e}", pepper.display()),
            ),
        }
    }

    if !config.keys.dir.is_dir() {
        err(
            "keys.dir".into(),
            format!(
                "`{}` is not a directory; create keys with `portcullis keys generate --alg ES256 --out DIR`",
                config.keys.dir.display()
            ),
        );
    }
    if config.keys.dir.is_dir()
        && let Err(e) =
            crate::keys::load_key_dir(&config.keys.dir, config.keys.active_kid.as_deref())
    {
        err("keys.dir".into(), e.to_string());
    }
    if let Err(message) = absolute_url(&config.keys.issuer) {
        err("keys.issuer".into(), message);
    }
    if !(1..=10_000).contains(&config.audit.batch_size) {
        err(
            "audit.batch_size".into(),
            "must be between 1 and 10000".into(),
        );
    }
    if !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&config.audit.flush_interval)
    {
        err(
            "audit.flush_interval".into(),
            "must be between 1ms and 10s".into(),
        );
    }
    if !(Duration::from_secs(5)..=Duration::from_secs(86_400)).contains(&config.keys.access_ttl) {
        err(
            "keys.access_ttl".into(),
            "must be between 5s and 24h".into(),
        );
    }
    let rotation = &config.keys.rotation;
    if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&rotation.poll_interval) {
        err(
            "keys.rotation.poll_interval".into(),
            "must be between 100ms and 5m".into(),
        );
    }
    if rotation.propagation_delay < 2 * rotation.poll_interval {
        err(
            "keys.rotation.propagation_delay".into(),
            "must be at least twice keys.rotation.poll_interval: every replica must read a new key before any signs with it".into(),
        );
    }

    for (i, issuer) in config.keys.trusted_issuers.iter().enumerate() {
        let key = |field: &str| format!("keys.trusted_issuers[{i}].{field}");
        if issuer.issuer == config.keys.issuer {
            err(
                key("issuer"),
                "is the gateway's own keys.issuer; its tokens are verified with keys.dir".into(),
            );
        } else if config.keys.trusted_issuers[..i]
            .iter()
            .any(|other| other.issuer == issuer.issuer)
        {
            err(
                key("issuer"),
                format!("`{}` is trusted twice", issuer.issuer),
            );
        }
        if let Err((field, message)) = super::remote_issuer(issuer) {
            err(key(field), message);
        }
    }

    let ids = config.identity.named();
    for (i, (key, name)) in ids.iter().enumerate() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
            err(
                format!("identity.{key}"),
                format!("`{name}` is not a header name"),
            );
        } else if ids[..i].iter().any(|(_, n)| n.eq_ignore_ascii_case(name)) {
            err(format!("identity.{key}"), format!("`{name}` is used twice"));
        } else if is_hop_or_credential(name) {
            err(
                format!("identity.{key}"),
                format!("`{name}` is a standard or credential header; pick an x-… name"),
            );
        }
    }

    let it = &config.internal_token;
    if http::HeaderName::from_bytes(it.header.as_bytes()).is_err() {
        err(
            "internal_token.header".into(),
            format!("`{}` is not a header name", it.header),
        );
    } else if is_hop_or_credential(&it.header)
        || ids.iter().any(|(_, n)| n.eq_ignore_ascii_case(&it.header))
    {
        err(
            "internal_token.header".into(),
            format!(
                "`{}` is a standard, credential or identity header; pick its own x-… name",
                it.header
            ),
        );
    }
    if it.ttl < Duration::from_secs(1) || it.ttl > Duration::from_secs(3600) {
        err(
            "internal_token.ttl".into(),
            "must be between 1s and 1h; internal tokens are meant to be short-lived".into(),
        );
    }
    if let Some(issuer) = &it.issuer {
        if issuer.is_empty() {
            err("internal_token.issuer".into(), "must not be empty".into());
        } else if issuer == &config.keys.issuer {
            err(
                "internal_token.issuer".into(),
                "must differ from keys.issuer, or the gateway would accept its internal tokens as callers' access tokens".into(),
            );
        }
    }
    for (i, up) in config.upstreams.iter().enumerate() {
        if up.internal_token_audience.as_deref() == Some("") {
            err(
                format!("upstreams[{i}].internal_token_audience"),
                "must not be empty".into(),
            );
        }
    }

    for (key, prefix) in [
        ("token_service.prefix", &config.token_service.prefix),
        ("forward_auth.prefix", &config.forward_auth.prefix),
        ("internal_token.jwks_path", &config.internal_token.jwks_path),
    ] {
        if !prefix.starts_with('/')
            || prefix.len() < 2
            || prefix.ends_with('/')
            || prefix.contains(['?', '#', '*', '{'])
        {
            err(
                key.into(),
                format!(
                    "`{prefix}` must be a path like /auth: a leading slash, no trailing slash, no pattern"
                ),
            );
        }
    }
    if let Some(url) = &config.token_service.public_url
        && let Err(message) = absolute_url(url)
    {
        err("token_service.public_url".into(), message);
    }
    if let Err((key, message)) = config.token_service.regulation.check() {
        err(key, message);
    }

    if let Some(signed) = &config.signed_requests {
        validate_signed_requests(signed, &config.guard, &mut err);
    }

    let conflicts = route_conflicts(&config.guard);
    if conflicts.is_empty() {
        if let Some((key, message)) = guard_error(&config.guard, config.signed_requests.is_some()) {
            err(key, message);
        }
    } else {
        for (key, message) in conflicts {
            err(key, message);
        }
    }

    // Upstreams: valid URLs, each route served by exactly one.
    let route_names: Vec<String> = config.guard.routes.iter().map(|r| r.name.clone()).collect();
    let mut seen_names: Vec<&str> = Vec::new();
    let mut defaults = 0;
    for (i, up) in config.upstreams.iter().enumerate() {
        if seen_names.contains(&up.name.as_str()) {
            err(
                format!("upstreams[{i}].name"),
                format!("`{}` names two upstreams", up.name),
            );
        }
        seen_names.push(&up.name);
        if let Err(message) = upstream_url(&up.url) {
            err(format!("upstreams[{i}].url"), message);
        }
        for (key, message) in upstream_tls_errors(up) {
            err(format!("upstreams[{i}].{key}"), message);
        }
        if up.default {
            defaults += 1;
            if defaults > 1 {
                err(
                    format!("upstreams[{i}].default"),
                    "only one upstream may be the default".into(),
                );
            }
        }
        for (j, r) in up.routes.iter().enumerate() {
            let key = format!("upstreams[{i}].routes[{j}]");
            if !route_names.contains(r) {
                let hint = suggest(r, &route_names)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| "; name one of the [[guard.routes]]".into());
                err(key, format!("no guard route is named `{r}`{hint}"));
            } else if config.upstreams[..i].iter().any(|u| u.routes.contains(r))
                || up.routes[..j].contains(r)
            {
                err(
                    key,
                    format!("route `{r}` is already served by another upstream"),
                );
            }
        }
    }
    if defaults == 0 && host == Host::Gateway {
        for (i, route) in config.guard.routes.iter().enumerate() {
            if route.effect == Effect::Allow
                && !config
                    .upstreams
                    .iter()
                    .any(|u| u.routes.contains(&route.name))
            {
                err(
                    format!("guard.routes[{i}].name"),
                    format!(
                        "route `{}` is served by no upstream; list it in an upstream's `routes` or mark one upstream `default = true`",
                        route.name
                    ),
                );
            }
        }
        if config.guard.default == Effect::Allow {
            err(
                "guard.default".into(),
                "unmatched requests are allowed but no upstream is `default = true` to serve them"
                    .into(),
            );
        }
    }
    errors
}

fn is_hop_or_credential(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    super::HOP_BY_HOP.contains(&n.as_str())
        || matches!(
            n.as_str(),
            "authorization"
                | "cookie"
                | "host"
                | "content-length"
                | "content-type"
                | "x-forwarded-for"
                | "x-request-id"
        )
}

fn absolute_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    if matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.authority().is_some()
        && uri.query().is_none()
    {
        Ok(())
    } else {
        Err(format!(
            "`{url}` must be an absolute http(s) URL without query"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde::Deserialize;
    use toml::de::DeTable;

    use super::*;
    use crate::config::{RevocationConfig, parse};

    #[test]
    fn revocation_bounds_are_checked_and_name_the_key() {
        let text = "[keys]\ndir = \"/nonexistent\"\nissuer = \"https://i.test\"\n\n[revocation]\nmax_stale = \"500ms\"\npoll_interval = \"2s\"\non_stale = \"allow\"\n";
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        for key in ["revocation.max_stale", "revocation.poll_interval"] {
            let e = errs
                .iter()
                .find(|e| e.key.as_deref() == Some(key))
                .unwrap_or_else(|| panic!("{key} not reported: {errs:?}"));
            assert!(e.line.is_some(), "{e:?}");
        }
        let text = "[keys]\ndir = \"/nonexistent\"\nissuer = \"https://i.test\"\n\n[revocation]\non_stale = \"maybe\"\n";
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        assert!(errs.iter().any(|e| e.message.contains("maybe")), "{errs:?}");
        let defaults = RevocationConfig::default().policy();
        assert_eq!(defaults, portcullis::stores::RevocationPolicy::default());
    }

    #[test]
    fn semantic_errors_name_the_key_and_line() {
        let text = "[keys]\ndir = \"/nonexistent\"\nissuer = \"https://i.test\"\n\n[storage]\nurl = \"mysql://x\"\n";
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        let storage = errs
            .iter()
            .find(|e| e.key.as_deref() == Some("storage.url"))
            .unwrap();
        assert_eq!(storage.line, Some(6));
        let keys = errs
            .iter()
            .find(|e| e.key.as_deref() == Some("keys.dir"))
            .unwrap();
        assert_eq!(keys.line, Some(2));
    }

    #[test]
    fn worker_threads_are_bounded() {
        let base = "[keys]\ndir = \"/nonexistent\"\nissuer = \"https://i.test\"\n\n[server]\n";
        for (n, ok) in [(0, false), (1, true), (1024, true), (1025, false)] {
            let text = format!("{base}worker_threads = {n}\n");
            let errs = parse(Path::new("p.toml"), &text).unwrap_err().0;
            let found = errs
                .iter()
                .find(|e| e.key.as_deref() == Some("server.worker_threads"));
            assert_eq!(found.is_none(), ok, "{n}: {errs:?}");
            if let Some(e) = found {
                assert_eq!(e.line, Some(6), "{n}");
            }
        }
    }

    #[test]
    fn redis_audit_and_anomaly_keys_are_checked() {
        let base = "[keys]\ndir = \"/nonexistent\"\nissuer = \"https://i.test\"\n\n";
        let keys_of = |extra: &str| -> Vec<String> {
            match parse(Path::new("p.toml"), &format!("{base}{extra}")) {
                Ok(_) => Vec::new(),
                Err(e) => e.0.into_iter().filter_map(|e| e.key).collect(),
            }
        };
        let both = keys_of(
            "[storage]\nredis = \"redis://a:1\"\nredis_cluster = [\"redis://b:1\", \"http://c:1\"]\nredis_prefix = \"a{b}\"\n",
        );
        assert!(
            both.contains(&"storage.redis_cluster".to_owned()),
            "{both:?}"
        );
        assert!(
            both.contains(&"storage.redis_cluster[1]".to_owned()),
            "{both:?}"
        );
        assert!(
            both.contains(&"storage.redis_prefix".to_owned()),
            "{both:?}"
        );
        let audit = keys_of("[audit]\npostgres = \"mysql://x\"\nsqlite = \"/tmp/a.db\"\n");
        assert!(audit.contains(&"audit.postgres".to_owned()), "{audit:?}");
        assert!(audit.contains(&"audit.spool_dir".to_owned()), "{audit:?}");
        let anomaly = keys_of(
            "[anomaly]\nmax_keys = 0\n[[anomaly.detectors]]\nkind = \"burst\"\nthreshold = 0\nwindow = 10\nactions = [\"tag\"]\n",
        );
        assert!(
            anomaly.contains(&"anomaly.max_keys".to_owned()),
            "{anomaly:?}"
        );
        assert!(
            anomaly.contains(&"anomaly.detectors".to_owned()),
            "{anomaly:?}"
        );
        // A good cluster, PostgreSQL audit and detector list: only the missing key dir.
        let good = keys_of(
            "[storage]\nredis_cluster = [\"redis://b:1\"]\n[audit]\npostgres = \"postgres://u@h/db\"\nspool_dir = \"/tmp/s\"\n[anomaly]\n[[anomaly.detectors]]\nkind = \"auth_failures\"\nthreshold = 3\nwindow = 60\nactions = [\"ban\"]\n",
        );
        assert_eq!(good, ["keys.dir"]);
    }

    #[test]
    fn upstream_routes_must_exist() {
        let text = "[keys]\ndir = \"/\"\nissuer = \"https://i.test\"\n\n[[guard.routes]]\nname = \"docs\"\npath = \"/docs\"\n\n[[upstreams]]\nname = \"app\"\nurl = \"http://127.0.0.1:1\"\nroutes = [\"dcos\"]\n";
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        let e = errs
            .iter()
            .find(|e| e.key.as_deref() == Some("upstreams[0].routes[0]"))
            .unwrap();
        assert!(e.message.contains("did you mean `docs`"), "{}", e.message);
        assert_eq!(e.line, Some(12));
    }

    /// The annotated example in docs/config.md is a configuration this
    /// loader reads, its guard builds, and its upstreams cover its routes.
    #[test]
    fn the_documented_example_loads() {
        let doc = include_str!("../../../../docs/config.md");
        let start = doc.find("```toml\n").expect("example block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("end of block");
        let example = &doc[start..end];
        let doc = DeTable::parse(example).expect("TOML");
        let config = Config::deserialize(toml::de::Deserializer::from(doc)).expect("typed");
        let problems: Vec<_> = validate(&config, Host::Gateway)
            .into_iter()
            // The example's paths do not exist on the test machine.
            .filter(|(k, _)| {
                k != "keys.dir"
                    && k != "storage.pepper_file"
                    && !(k.starts_with("signed_requests.apps[") && k.ends_with("].secret_file"))
            })
            .collect();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.guard.routes.len(), 3);
        let signed = config.signed_requests.as_ref().expect("[signed_requests]");
        assert_eq!(signed.window, Duration::from_secs(300));
        assert_eq!(signed.apps[0].id, "billing");
        portcullis::Guard::builder(config.guard)
            .without_revocation()
            .local_keys(portcullis_core::Verifier::new(
                portcullis_core::KeySet::new(),
                portcullis_core::Validation::new(),
            ))
            .stores(std::sync::Arc::new(
                portcullis::stores::Stores::new(
                    portcullis::stores::Backends::all(std::sync::Arc::new(
                        portcullis::stores::memory::MemoryStores::new(),
                    )),
                    portcullis::stores::StoresConfig::new(
                        portcullis_core::SecretHasher::new(&[1; 32]).unwrap(),
                    ),
                )
                .unwrap(),
            ))
            .build()
            .expect("the example's guard builds");
    }
}
