//! The canonical request: before any surface of the public listener sees a
//! request, its method, host, path and header names are brought to one
//! form, and that same form is what the guard decides on and what the
//! upstream receives (DESIGN: "one request, one meaning"). What has no
//! single meaning is refused with 400 and its reason; the rules
//! themselves are `portcullis_core::canonical`.
//!
//! - method: an upper-case token, or refused (`[request] lowercase_methods`);
//! - host: one value from the URI's authority, else `Host` (a trusted
//!   proxy's `X-Forwarded-Host` first), lower case, no trailing dot, no
//!   default port; an authority and a `Host` that differ are refused; the
//!   URI becomes origin-form and `Host` carries the host;
//! - path: unreserved escapes decoded, `//` collapsed, dot segments and
//!   encoded `/` refused (`;` is the route's call: `path_parameters`);
//! - headers: names with `_` dropped (`[request] drop_underscore_headers`),
//!   and any that folds (case, `_` for `-`) to an identity, credential,
//!   internal-token or gateway header always; a credential header sent
//!   twice refused; method-override headers stripped or refused.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use portcullis_core::canonical::{self as rules, NonCanonical};
use portcullis_core::ratelimit::ClientIpConfig;

use crate::config::{Config, LowercaseMethods, MethodOverride};

/// The header a `dry_run` route's would-be refusal reaches the upstream in.
pub const DRY_RUN_HEADER: HeaderName = HeaderName::from_static("x-portcullis-dry-run");

const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The canonical form of requests, as configured; cheap to share.
#[derive(Debug, Clone)]
pub struct Canonicalizer {
    lowercase_methods: LowercaseMethods,
    drop_underscore: bool,
    method_override: MethodOverride,
    /// Names only the gateway writes or that carry credentials, lower case
    /// with `-`: removed under any spelling with `_`.
    guarded: Vec<HeaderName>,
    /// Credential headers: more than one value has no single meaning.
    credentials: Vec<HeaderName>,
    trusted: ClientIpConfig,
}

/// A request refused for having no single meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub NonCanonical);

impl Canonicalizer {
    /// The canonical form of `config` (validated: the header names parse).
    pub fn new(config: &Config) -> Result<Self, http::header::InvalidHeaderName> {
        let name = |s: &str| HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes());
        let h = &config.guard.headers;
        let mut credentials = vec![header::AUTHORIZATION];
        for n in [&h.api_key, &h.app_id, &h.app_secret] {
            let n = name(n)?;
            if !credentials.contains(&n) {
                credentials.push(n);
            }
        }
        let i = &config.identity;
        let mut guarded = credentials.clone();
        for n in [
            &i.subject,
            &i.roles,
            &i.permissions,
            &i.tenant,
            &i.session,
            &i.auth_method,
            &config.internal_token.header,
        ] {
            guarded.push(name(n)?);
        }
        guarded.push(portcullis::http::REQUEST_ID);
        guarded.push(DRY_RUN_HEADER);
        guarded.push(X_FORWARDED_HOST);
        guarded.push(HeaderName::from_static("x-forwarded-for"));
        guarded.push(HeaderName::from_static("x-forwarded-proto"));
        guarded.push(HeaderName::from_static("x-real-ip"));
        guarded.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        guarded.dedup();
        Ok(Self {
            lowercase_methods: config.request.lowercase_methods,
            drop_underscore: config.request.drop_underscore_headers,
            method_override: config.request.method_override,
            guarded,
            credentials,
            trusted: config.guard.client_ip.clone(),
        })
    }

    /// Brings a request on the public listener to its canonical form, in
    /// place: `peer` is the connection's address, `tls` whether it came
    /// over TLS (the default port).
    pub fn apply(&self, parts: &mut Parts, peer: IpAddr, tls: bool) -> Result<(), Refused> {
        self.method(parts)?;
        self.headers(&mut parts.headers, true)?;
        self.method_override(parts, true)?;
        let from_trusted = self.trusted.is_trusted(peer.to_canonical());
        let host = host_of(parts, tls, from_trusted)?;
        let path = rules::path(parts.uri.path()).map_err(Refused)?;
        let target = match parts.uri.query() {
            Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
            None if path.len() == parts.uri.path().len() && parts.uri.authority().is_none() => {
                Ok(parts
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")))
            }
            None => PathAndQuery::try_from(&*path),
        }
        .map_err(|_| Refused(NonCanonical::MalformedPath))?;
        if parts.uri.authority().is_some() || parts.uri.path_and_query() != Some(&target) {
            parts.uri = Uri::from(target);
        }
        if let Some(host) = host {
            let value = HeaderValue::from_str(&host).map_err(|_| Refused(NonCanonical::BadHost))?;
            parts.headers.insert(header::HOST, value.clone());
            if from_trusted && parts.headers.contains_key(&X_FORWARDED_HOST) {
                parts.headers.insert(X_FORWARDED_HOST, value);
            }
        }
        Ok(())
    }

    /// Checks the original request a forward-auth caller describes (its
    /// method, path and host already rebuilt into `parts`): the proxy in
    /// front forwards the client's headers itself, so what the gateway
    /// would remove is refused here instead.
    pub fn check_original(&self, parts: &mut Parts) -> Result<(), Refused> {
        self.method(parts)?;
        self.headers(&mut parts.headers, false)?;
        self.method_override(parts, false)?;
        let path = rules::path(parts.uri.path()).map_err(Refused)?;
        if path.len() != parts.uri.path().len() || parts.uri.path() != path {
            let target = match parts.uri.query() {
                Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
                None => PathAndQuery::try_from(&*path),
            }
            .map_err(|_| Refused(NonCanonical::MalformedPath))?;
            parts.uri = Uri::from(target);
        }
        let hosts = parts.headers.get_all(header::HOST).iter().count();
        if hosts > 1 {
            return Err(Refused(NonCanonical::DuplicateHost));
        }
        if let Some(raw) = parts.headers.get(header::HOST) {
            let raw = raw.to_str().map_err(|_| Refused(NonCanonical::BadHost))?;
            let host = rules::host(raw, false).map_err(Refused)?.into_owned();
            let value = HeaderValue::from_str(&host).map_err(|_| Refused(NonCanonical::BadHost))?;
            parts.headers.insert(header::HOST, value);
        }
        Ok(())
    }

    fn method(&self, parts: &mut Parts) -> Result<(), Refused> {
        let m = parts.method.as_str();
        if rules::method(m).is_ok() {
            return Ok(());
        }
        let upper = m.to_ascii_uppercase();
        if self.lowercase_methods == LowercaseMethods::Uppercase && rules::method(&upper).is_ok() {
            parts.method = http::Method::from_bytes(upper.as_bytes())
                .map_err(|_| Refused(NonCanonical::Method))?;
            return Ok(());
        }
        Err(Refused(NonCanonical::Method))
    }

    /// Header names: `_` spellings of guarded names removed (or, when
    /// `strip` is false, refused), every `_` name dropped when configured,
    /// a credential sent twice refused.
    fn headers(&self, headers: &mut HeaderMap, strip: bool) -> Result<(), Refused> {
        let underscored: Vec<HeaderName> = headers
            .keys()
            .filter(|n| n.as_str().contains('_'))
            .cloned()
            .collect();
        for name in underscored {
            let guarded = self
                .guarded
                .iter()
                .any(|g| rules::header_name_folds_to(name.as_str(), g.as_str()));
            if guarded && !strip {
                return Err(Refused(NonCanonical::DuplicateHeader));
            }
            if guarded || (strip && self.drop_underscore) {
                headers.remove(&name);
                metrics::counter!("portcullis_gateway_underscore_headers_dropped_total")
                    .increment(1);
            }
        }
        for name in &self.credentials {
            if headers.get_all(name).iter().nth(1).is_some() {
                return Err(Refused(NonCanonical::DuplicateHeader));
            }
        }
        Ok(())
    }

    fn method_override(&self, parts: &mut Parts, strip: bool) -> Result<(), Refused> {
        for name in rules::METHOD_OVERRIDE_HEADERS {
            if !parts.headers.contains_key(name) {
                continue;
            }
            if strip && self.method_override == MethodOverride::Strip {
                parts.headers.remove(name);
                metrics::counter!("portcullis_gateway_method_override_stripped_total").increment(1);
                continue;
            }
            let method = parts.method.as_str();
            let other = parts
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().map_or(true, |v| v.trim() != method));
            if other {
                return Err(Refused(NonCanonical::MethodOverride));
            }
        }
        Ok(())
    }
}

/// The 400 answer to a request with no single meaning: problem+json with
/// the reason's stable code (`request.host_mismatch`...).
pub fn refusal(why: NonCanonical, request_id: &str) -> http::Response<crate::proxy::ResponseBody> {
    crate::proxy::problem(
        http::StatusCode::BAD_REQUEST,
        why.code(),
        &why.to_string(),
        Some(request_id),
    )
}

/// The one host of a request: a trusted proxy's `X-Forwarded-Host`, else
/// the URI's authority, else `Host`; an authority and a `Host` that
/// disagree, or more than one of either, have no single meaning.
fn host_of(parts: &Parts, tls: bool, from_trusted: bool) -> Result<Option<String>, Refused> {
    let single = |name: &HeaderName| -> Result<Option<&str>, Refused> {
        let mut values = parts.headers.get_all(name).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(Refused(NonCanonical::DuplicateHost));
        }
        first
            .map(|v| v.to_str().map_err(|_| Refused(NonCanonical::BadHost)))
            .transpose()
    };
    let canon = |raw: &str| {
        rules::host(raw, tls)
            .map(|h| h.into_owned())
            .map_err(Refused)
    };
    let host_header = single(&header::HOST)?.map(canon).transpose()?;
    let authority = match parts.uri.authority() {
        Some(a) if a.as_str().contains('@') => return Err(Refused(NonCanonical::BadHost)),
        Some(a) => Some(canon(a.as_str())?),
        None => None,
    };
    let host = match (authority, host_header) {
        (Some(a), Some(h)) if a != h => return Err(Refused(NonCanonical::HostMismatch)),
        (Some(a), _) => Some(a),
        (None, h) => h,
    };
    if from_trusted && let Some(forwarded) = single(&X_FORWARDED_HOST)? {
        if forwarded.contains(',') {
            return Err(Refused(NonCanonical::DuplicateHost));
        }
        return Ok(Some(canon(forwarded)?));
    }
    Ok(host)
}

/// Whether `path` is `prefix` or under it.
pub(crate) fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonicalizer(extra: &str) -> Canonicalizer {
        let toml = format!(
            "[storage]\nurl = \"memory\"\n[keys]\ndir = \"/nonexistent\"\nissuer = \"https://i\"\naudience = [\"a\"]\n{extra}"
        );
        let config: Config = toml::from_str(&toml).unwrap_or_else(|e| panic!("{e}: {toml}"));
        Canonicalizer::new(&config).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap_or_default().into_parts().0
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));

    #[test]
    fn lower_case_methods_are_refused_or_upper_cased_as_configured() {
        let mut p = parts("delete", "/items/1", &[("host", "a")]);
        assert_eq!(
            canonicalizer("").apply(&mut p, PEER, false),
            Err(Refused(NonCanonical::Method))
        );
        let up = canonicalizer("[request]\nlowercase_methods = \"uppercase\"\n");
        assert_eq!(up.apply(&mut p, PEER, false), Ok(()));
        assert_eq!(p.method, http::Method::DELETE);
    }

    #[test]
    fn one_host_from_authority_or_host_and_disagreement_refused() {
        let c = canonicalizer("");
        let mut p = parts(
            "GET",
            "http://public.example/x",
            &[("host", "admin.example")],
        );
        assert_eq!(
            c.apply(&mut p, PEER, false),
            Err(Refused(NonCanonical::HostMismatch))
        );
        let mut p = parts(
            "GET",
            "http://Admin.Example.:80/x?q=1",
            &[("host", "admin.example")],
        );
        assert_eq!(c.apply(&mut p, PEER, false), Ok(()));
        assert_eq!(p.headers["host"], "admin.example");
        assert_eq!(p.uri, "/x?q=1");
        let mut p = parts("GET", "/x", &[("host", "admin.example.")]);
        assert_eq!(c.apply(&mut p, PEER, false), Ok(()));
        assert_eq!(p.headers["host"], "admin.example");
        let mut p = parts("GET", "/x", &[("host", "a.example"), ("host", "b.example")]);
        assert_eq!(
            c.apply(&mut p, PEER, false),
            Err(Refused(NonCanonical::DuplicateHost))
        );
    }

    #[test]
    fn underscore_spellings_of_guarded_headers_never_pass() {
        let keep = canonicalizer("[request]\ndrop_underscore_headers = false\n");
        let mut p = parts(
            "GET",
            "/x",
            &[
                ("host", "a"),
                ("x_portcullis_roles", "admin"),
                ("X_Portcullis_Subject", "admin"),
                ("x_portcullis_identity", "jwt"),
                ("x_custom", "kept"),
            ],
        );
        assert_eq!(keep.apply(&mut p, PEER, false), Ok(()));
        let left: Vec<&str> = p.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["host", "x_custom"]);
        let drop = canonicalizer("");
        let mut p = parts("GET", "/x", &[("host", "a"), ("x_custom", "gone")]);
        assert_eq!(drop.apply(&mut p, PEER, false), Ok(()));
        assert!(!p.headers.contains_key("x_custom"));
        // Forward-auth cannot remove them: refused.
        let mut p = parts("GET", "/x", &[("x_portcullis_roles", "admin")]);
        assert_eq!(
            drop.check_original(&mut p),
            Err(Refused(NonCanonical::DuplicateHeader))
        );
    }

    #[test]
    fn credentials_sent_twice_and_method_overrides() {
        let c = canonicalizer("");
        let mut p = parts(
            "GET",
            "/x",
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
        );
        assert_eq!(
            c.apply(&mut p, PEER, false),
            Err(Refused(NonCanonical::DuplicateHeader))
        );
        let mut p = parts("POST", "/x", &[("x-http-method-override", "DELETE")]);
        assert_eq!(c.apply(&mut p, PEER, false), Ok(()));
        assert!(!p.headers.contains_key("x-http-method-override"));
        let refuse = canonicalizer("[request]\nmethod_override = \"refuse\"\n");
        let mut p = parts("POST", "/x", &[("x-http-method-override", "DELETE")]);
        assert_eq!(
            refuse.apply(&mut p, PEER, false),
            Err(Refused(NonCanonical::MethodOverride))
        );
        let mut p = parts("POST", "/x", &[("x-http-method", "DELETE")]);
        assert_eq!(
            c.check_original(&mut p),
            Err(Refused(NonCanonical::MethodOverride))
        );
    }

    #[test]
    fn paths_are_canonical_and_ambiguous_ones_refused() {
        let c = canonicalizer("");
        let mut p = parts("GET", "//%61dmin//users?x=%2F", &[("host", "a")]);
        // `//x` is an authority in a URI; hyper hands the server `/` paths.
        let _ = c.apply(&mut p, PEER, false);
        let mut p = parts("GET", "/%61dmin//users?x=%2F", &[("host", "a")]);
        assert_eq!(c.apply(&mut p, PEER, false), Ok(()));
        assert_eq!(p.uri, "/admin/users?x=%2F");
        let mut p = parts("GET", "/a/%2e%2e/admin", &[("host", "a")]);
        assert_eq!(
            c.apply(&mut p, PEER, false),
            Err(Refused(NonCanonical::MalformedPath))
        );
    }

    /// How a lenient upstream reads a request: the method upper-cased,
    /// the host lower-cased without trailing dot or default port, the path
    /// fully percent-decoded (WSGI's `PATH_INFO`), `//` collapsed, dot
    /// segments resolved (as nginx or a browser would) and `;` parameters
    /// removed (as servlet containers do).
    fn upstream_view(method: &str, host: &str, path: &str) -> (String, String, String) {
        let host = host.to_ascii_lowercase();
        let host = host.strip_suffix(":80").unwrap_or(&host);
        let host = host.strip_suffix('.').unwrap_or(host).to_owned();
        let mut decoded = Vec::new();
        let b = path.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'%', Some(v)) => {
                    decoded.push(v);
                    i += 3;
                }
                (c, _) => {
                    decoded.push(c);
                    i += 1;
                }
            }
        }
        let decoded = String::from_utf8_lossy(&decoded).into_owned();
        let mut segments: Vec<&str> = Vec::new();
        for seg in decoded.split('/') {
            let seg = seg.split(';').next().unwrap_or_default();
            match seg {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                s => segments.push(s),
            }
        }
        // Back to a path the matcher takes: what is not a path character
        // (a decoded space, `%`) escaped again.
        let mut path = String::new();
        for b in format!("/{}", segments.join("/")).bytes() {
            if (0x21..0x7f).contains(&b) && b != b'%' {
                path.push(char::from(b));
            } else {
                path.push_str(&format!("%{b:02X}"));
            }
        }
        (method.to_ascii_uppercase(), host, path)
    }

    fn policy() -> portcullis_core::authz::routes::AccessPolicy {
        use portcullis_core::authz::routes::{AccessPolicy, AuthzConfig, RouteRule};
        let rules = vec![
            RouteRule::deny("items-delete", "/items/**").methods(["DELETE"]),
            RouteRule::allow("admin-host", "/**").host("admin.example"),
            RouteRule::allow("private", "/admin/**"),
            RouteRule::allow("matrix", "/matrix/**")
                .anonymous()
                .path_parameters(true),
            RouteRule::allow("public", "/**").anonymous(),
        ];
        AccessPolicy::new(&AuthzConfig {
            rules,
            ..AuthzConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "admin",
            "items",
            "x",
            "matrix",
            "%61dmin",
            "ADMIN",
            "..",
            ".",
            "%2e",
            "%2e%2e",
            "admin;v=1",
            "admin;",
            "%3B",
            "admin%3Bx",
            "%2F",
            "%5C",
            "",
            "%41",
            "a%20b",
        ])
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever the guard allows on the canonical form, a lenient
        /// upstream reading the same bytes routes to the same rule; and
        /// canonicalising twice changes nothing.
        #[test]
        fn what_the_guard_allows_is_what_the_upstream_reads(
            method in prop::sample::select(vec!["GET", "get", "Delete", "DELETE", "POST", "pOST"]),
            host in prop::sample::select(vec![
                "app.test", "admin.example", "Admin.Example.", "admin.example:80",
                "ADMIN.EXAMPLE.:80", "admin.example:8080", "app.test.",
            ]),
            absolute in prop::option::of(prop::sample::select(vec!["app.test", "admin.example", "Admin.example."])),
            segments in prop::collection::vec(segment(), 1..5),
            doubled in any::<bool>(),
            uppercase in any::<bool>(),
        ) {
            let sep = if doubled { "//" } else { "/" };
            let path = format!("/{}", segments.join(sep));
            let uri = match absolute {
                Some(a) => format!("http://{a}{path}"),
                None => path.clone(),
            };
            let Ok(uri) = uri.parse::<Uri>() else { return Ok(()) };
            let mut p = parts("GET", "/", &[("host", host)]);
            let Ok(m) = http::Method::from_bytes(method.as_bytes()) else { return Ok(()) };
            p.method = m;
            p.uri = uri;
            let c = if uppercase {
                canonicalizer("[request]\nlowercase_methods = \"uppercase\"\n")
            } else {
                canonicalizer("")
            };
            if c.apply(&mut p, PEER, false).is_err() {
                return Ok(());
            }
            let canon_host = p.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
            let facts = portcullis_core::authz::routes::RequestFacts::new(p.method.as_str(), p.uri.path())
                .with_host(&canon_host);
            let policy = policy();
            let decided = policy.decide(None, &facts);

            // Idempotent.
            let mut again = p.clone();
            prop_assert!(c.apply(&mut again, PEER, false).is_ok());
            prop_assert_eq!(&again.method, &p.method);
            prop_assert_eq!(&again.uri, &p.uri);
            prop_assert_eq!(again.headers.get("host"), p.headers.get("host"));

            if decided.allowed {
                let original_host = absolute.unwrap_or(host);
                let (um, uh, up) = upstream_view(method, original_host, &path);
                let seen = portcullis_core::authz::routes::RequestFacts::new(&um, &up).with_host(&uh);
                let upstream = policy.decide(None, &seen);
                prop_assert!(
                    upstream.allowed && upstream.rule == decided.rule,
                    "guard allowed {:?} as {:?} but the upstream reads {} {} {} as {:?}",
                    p.uri, decided.rule, um, uh, up, upstream
                );
            }
        }
    }
}
