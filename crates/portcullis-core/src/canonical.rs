//! One request, one meaning: the canonical form of a request's method,
//! host, path and header names, decided once, so that the guard matches
//! and the upstream receives the same request. What has no single meaning
//! (a lower-case method, a `Host` that differs from the URI's authority, an
//! encoded `/` or a `..` segment) is refused with a [`NonCanonical`] reason
//! instead of being passed on for the next hop to read its own way.
//!
//! Every function is idempotent: the canonical form of a canonical value
//! is itself (property-tested and fuzzed).

use std::borrow::Cow;

/// Why a request has no single meaning. `code` is stable (problem `code`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NonCanonical {
    /// The method is not an upper-case token (`delete`, `Get`, `GE T`).
    #[error(
        "the method is not an upper-case token; methods are case-sensitive (send `GET`, not `get`)"
    )]
    Method,
    /// More than one `Host` header.
    #[error("the request has more than one Host header")]
    DuplicateHost,
    /// The URI's authority and the `Host` header name different hosts.
    #[error("the request target's authority and the Host header name different hosts")]
    HostMismatch,
    /// The host is not a valid host name, IP literal or port.
    #[error("the host is not a valid host name or address")]
    BadHost,
    /// The path has `.` / `..` segments, an encoded `/`, `\` or NUL, a raw
    /// `\`, a bad escape or a byte that is not a path character.
    #[error("the path has dot segments, an encoded slash, backslash or NUL, or a bad escape")]
    MalformedPath,
    /// A credential or identity header appears under several spellings or
    /// more than once.
    #[error("a credential or identity header appears more than once or under several spellings")]
    DuplicateHeader,
    /// A method-override header names another method than the request's.
    #[error("a method-override header names another method than the request's")]
    MethodOverride,
}

impl NonCanonical {
    /// Every reason, for listing (explain's cases check codes against it).
    pub const ALL: [Self; 7] = [
        Self::Method,
        Self::DuplicateHost,
        Self::HostMismatch,
        Self::BadHost,
        Self::MalformedPath,
        Self::DuplicateHeader,
        Self::MethodOverride,
    ];

    /// The stable problem code.
    pub const fn code(self) -> &'static str {
        match self {
            Self::Method => "request.non_canonical_method",
            Self::DuplicateHost => "request.duplicate_host",
            Self::HostMismatch => "request.host_mismatch",
            Self::BadHost => "request.bad_host",
            Self::MalformedPath => "request.malformed_path",
            Self::DuplicateHeader => "request.duplicate_header",
            Self::MethodOverride => "request.method_override",
        }
    }
}

/// Headers that frameworks read as the "real" method (Rails, Express's
/// `method-override`, Symfony, Laravel, ASP.NET, Google APIs).
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether `method` is canonical: a non-empty RFC 9110 token with no
/// lower-case letter.
pub fn method(method: &str) -> Result<(), NonCanonical> {
    let ok = !method.is_empty()
        && method.len() <= 32
        && method
            .bytes()
            .all(|b| is_tchar(b) && !b.is_ascii_lowercase());
    if ok {
        Ok(())
    } else {
        Err(NonCanonical::Method)
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The canonical host of an authority or `Host` value: lower case, one
/// trailing dot removed, the scheme's default port removed (`https` says
/// which: 443, else 80). IPv6 literals keep their brackets. Refused: an
/// empty host, userinfo, characters outside a host name, a bad port.
pub fn host(raw: &str, https: bool) -> Result<Cow<'_, str>, NonCanonical> {
    let raw = raw.trim_matches([' ', '\t']);
    let (name, port) = split_port(raw)?;
    let bracketed = name.starts_with('[');
    let name_ok = if bracketed {
        name.len() > 2
            && name.ends_with(']')
            && name[1..name.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            && !name.starts_with('.')
            && !name.contains("..")
    };
    if !name_ok {
        return Err(NonCanonical::BadHost);
    }
    let name = if bracketed {
        name
    } else {
        name.strip_suffix('.').unwrap_or(name)
    };
    if name.is_empty() {
        return Err(NonCanonical::BadHost);
    }
    let default_port = if https { 443 } else { 80 };
    let port = match port {
        Some(p) if p == default_port => None,
        p => p,
    };
    let changed = name.len() != raw.len() || name.bytes().any(|b| b.is_ascii_uppercase());
    if !changed && port.is_none() {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = name.to_ascii_lowercase();
    if let Some(p) = port {
        out.push(':');
        out.push_str(&p.to_string());
    }
    if out == raw {
        Ok(Cow::Borrowed(raw))
    } else {
        Ok(Cow::Owned(out))
    }
}

/// Splits `host[:port]` (IPv6: `[addr][:port]`); the port is parsed.
fn split_port(raw: &str) -> Result<(&str, Option<u16>), NonCanonical> {
    let (name, port) = if raw.starts_with('[') {
        match raw.find(']') {
            Some(i) if i + 1 == raw.len() => (raw, None),
            Some(i) if raw.as_bytes().get(i + 1) == Some(&b':') => {
                (&raw[..=i], Some(&raw[i + 2..]))
            }
            _ => return Err(NonCanonical::BadHost),
        }
    } else {
        match raw.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (raw, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| NonCanonical::BadHost)?)
        }
        Some(_) => return Err(NonCanonical::BadHost),
    };
    Ok((name, port))
}

/// The canonical path: escapes of unreserved characters decoded (`%61` is
/// `a`), other escapes with upper-case hex, runs of `/` collapsed to one.
/// Refused ([`NonCanonical::MalformedPath`]): a path not starting with
/// `/`, a `.` or `..` segment (raw or encoded), an encoded `/`, `\` or
/// NUL, a raw `\`, a bad escape, a byte outside printable ASCII. `;` is
/// kept: whether a route accepts path parameters is the route's call.
pub fn path(raw: &str) -> Result<Cow<'_, str>, NonCanonical> {
    if !raw.starts_with('/') {
        return Err(NonCanonical::MalformedPath);
    }
    let b = raw.as_bytes();
    let needs_work = b.contains(&b'%') || raw.contains("//");
    if b.iter().any(|&c| c == b'\\' || !(0x21..0x7f).contains(&c)) {
        return Err(NonCanonical::MalformedPath);
    }
    let path: Cow<'_, str> = if needs_work {
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c == b'/' && out.last() == Some(&b'/') {
                i += 1;
                continue;
            }
            if c != b'%' {
                out.push(c);
                i += 1;
                continue;
            }
            let hex = b.get(i + 1..i + 3).ok_or(NonCanonical::MalformedPath)?;
            let digit = |c: u8| {
                char::from(c)
                    .to_digit(16)
                    .ok_or(NonCanonical::MalformedPath)
            };
            let v = u8::try_from(digit(hex[0])? * 16 + digit(hex[1])?)
                .map_err(|_| NonCanonical::MalformedPath)?;
            match v {
                b'/' | b'\\' | 0 => return Err(NonCanonical::MalformedPath),
                v if is_unreserved(v) => out.push(v),
                _ => {
                    out.push(b'%');
                    out.extend(hex.iter().map(u8::to_ascii_uppercase));
                }
            }
            i += 3;
        }
        Cow::Owned(String::from_utf8(out).map_err(|_| NonCanonical::MalformedPath)?)
    } else {
        Cow::Borrowed(raw)
    };
    // A dot segment needs a dot: most API paths have none and skip the walk.
    if path.as_bytes().contains(&b'.')
        && path
            .split('/')
            .map(|s| s.split(';').next().unwrap_or(s))
            .any(|s| s == "." || s == "..")
    {
        return Err(NonCanonical::MalformedPath);
    }
    Ok(path)
}

fn is_unreserved(v: u8) -> bool {
    v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~')
}

/// Whether a canonical path carries path parameters (`;` in a segment,
/// raw or encoded as `%3B`), which servlet containers strip before routing.
pub fn has_path_parameters(path: &str) -> bool {
    path.contains(';') || path.contains("%3B")
}

/// `path` with every segment's parameters removed (`/a;x=1/b;` is
/// `/a/b`): the path a servlet container routes.
pub fn without_path_parameters(path: &str) -> Cow<'_, str> {
    if !has_path_parameters(path) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let cut = [seg.find(';'), seg.find("%3B")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(seg.len());
        out.push_str(&seg[..cut]);
    }
    Cow::Owned(out)
}

/// Whether the header `name` is `target` as a server reading headers
/// loosely sees it: case ignored and `_` taken for `-` (WSGI's
/// `HTTP_X_FOO`, Traefik, Envoy). `target` is lower case with `-`.
pub fn header_name_folds_to(name: &str, target: &str) -> bool {
    name.len() == target.len() && name.bytes().zip(target.bytes()).all(|(a, b)| fold(a) == b)
}

fn fold(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn methods_must_be_upper_case_tokens() {
        for ok in ["GET", "DELETE", "PROPFIND", "M-SEARCH"] {
            assert_eq!(method(ok), Ok(()), "{ok}");
        }
        for bad in ["get", "Delete", "", "GE T", "GET\r", "pAtCh"] {
            assert_eq!(method(bad), Err(NonCanonical::Method), "{bad:?}");
        }
    }

    #[test]
    fn hosts_are_lower_case_without_trailing_dot_or_default_port() {
        let h = |raw, https| host(raw, https).map(Cow::into_owned);
        assert_eq!(h("Admin.Example.", false).as_deref(), Ok("admin.example"));
        assert_eq!(h("admin.example:80", false).as_deref(), Ok("admin.example"));
        assert_eq!(h("admin.example:443", true).as_deref(), Ok("admin.example"));
        assert_eq!(
            h("admin.example:443", false).as_deref(),
            Ok("admin.example:443")
        );
        assert_eq!(
            h("admin.example.:8080", false).as_deref(),
            Ok("admin.example:8080")
        );
        assert_eq!(h("[::1]:80", false).as_deref(), Ok("[::1]"));
        assert_eq!(h("127.0.0.1:8080", false).as_deref(), Ok("127.0.0.1:8080"));
        for bad in [
            "",
            ".",
            "a..b",
            "user@host",
            "a b",
            "host:",
            "host:99999",
            "host:8x",
            "[::1",
            ".a",
        ] {
            assert_eq!(h(bad, false), Err(NonCanonical::BadHost), "{bad:?}");
        }
    }

    #[test]
    fn paths_decode_unreserved_collapse_slashes_and_refuse_ambiguity() {
        let p = |raw| path(raw).map(Cow::into_owned);
        assert_eq!(p("/%61dmin//users").as_deref(), Ok("/admin/users"));
        assert_eq!(p("/a%2fb"), Err(NonCanonical::MalformedPath));
        assert_eq!(p("/a%3bb").as_deref(), Ok("/a%3Bb"));
        assert_eq!(p("/admin;x=1/users").as_deref(), Ok("/admin;x=1/users"));
        for bad in [
            "/a/../admin",
            "/a/%2e%2e/admin",
            "/./admin",
            "/..;/admin",
            "/a%5cb",
            "/a\\b",
            "/a%00",
            "/a%zz",
            "/a%4",
            "admin",
        ] {
            assert_eq!(p(bad), Err(NonCanonical::MalformedPath), "{bad:?}");
        }
    }

    #[test]
    fn path_parameters_are_found_raw_and_encoded_and_removed() {
        assert!(has_path_parameters("/admin;jsessionid=x/users"));
        assert!(has_path_parameters("/admin%3B/users"));
        assert!(!has_path_parameters("/admin/users"));
        assert_eq!(
            without_path_parameters("/admin;jsessionid=x/users"),
            "/admin/users"
        );
        assert_eq!(without_path_parameters("/admin;/users;v=1"), "/admin/users");
        assert_eq!(without_path_parameters("/admin%3Bx/users"), "/admin/users");
    }

    #[test]
    fn header_names_fold_case_and_underscores() {
        assert!(header_name_folds_to(
            "X_Portcullis_Roles",
            "x-portcullis-roles"
        ));
        assert!(header_name_folds_to(
            "x-portcullis-roles",
            "x-portcullis-roles"
        ));
        assert!(!header_name_folds_to(
            "x-portcullis-role",
            "x-portcullis-roles"
        ));
    }

    proptest! {
        #[test]
        fn canonical_forms_are_fixed_points(
            raw in "/[a-zA-Z0-9%._~;/=-]{0,40}",
            h in "[a-zA-Z0-9.-]{1,20}(:[0-9]{1,5})?",
            https: bool,
        ) {
            if let Ok(once) = path(&raw) {
                let twice = path(&once).map(Cow::into_owned);
                prop_assert_eq!(twice.as_deref(), Ok(&*once));
            }
            if let Ok(once) = host(&h, https) {
                let twice = host(&once, https).map(Cow::into_owned);
                prop_assert_eq!(twice.as_deref(), Ok(&*once));
            }
        }
    }
}
