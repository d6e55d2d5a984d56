//! What the ops listener checks before anything else: the `Host` names
//! it answers to (DNS rebinding: a page on `evil.example` that resolves
//! to this address must not read `/metrics` or drive the admin API; 421
//! otherwise), and that no state change comes from another site
//! (`Sec-Fetch-Site`, `Origin`: 403).

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, Method, StatusCode, header};

#[cfg(test)]
use crate::config::valid_host_pattern;

/// Stable code: the `Host` is not one of the ops listener's names (421).
pub const MISDIRECTED: &str = "request.misdirected";
/// Stable code: a state change from another site (403).
pub const CROSS_SITE: &str = "request.cross_site";

/// The names the ops listener answers to.
#[derive(Debug, Clone)]
pub struct OpsHosts {
    listen: SocketAddr,
    extra: Vec<String>,
}

/// The host part of a `Host` value (`name`, `name:port`, `[v6]:port`),
/// lower-cased; `None` when it does not parse.
fn host_part(value: &str) -> Option<String> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let host = if let Some(rest) = value.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        inner
    } else {
        match value.rsplit_once(':') {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return None,
            None => value,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

impl OpsHosts {
    /// The loopback names, `listen`'s address (every IP literal when it
    /// listens on all addresses), and `extra` (`server.ops_hosts`).
    pub fn new(listen: SocketAddr, extra: &[String]) -> Self {
        Self {
            listen,
            extra: extra.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether the host part of a `Host` value is one of ours.
    pub fn allows(&self, value: &str) -> bool {
        let Some(host) = host_part(value) else {
            return false;
        };
        if host == "localhost" || host.ends_with(".localhost") {
            return true;
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            // An IP literal is never a rebinding (no name to re-resolve):
            // loopback, the listen address, or any when it listens on all.
            return ip.is_loopback() || ip == self.listen.ip() || self.listen.ip().is_unspecified();
        }
        self.extra
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                None => *pattern == host,
            })
    }

    /// Refuses a request the ops listener must not serve: a `Host` (or
    /// HTTP/2 `:authority`) that is not ours (421), or a state change whose
    /// `Sec-Fetch-Site` is cross-site or whose `Origin` is not this
    /// listener (403). A request without `Host` is no browser's: allowed.
    pub fn check(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<(), (StatusCode, &'static str, String)> {
        let host = match headers.get(header::HOST) {
            Some(v) => Some(v.to_str().unwrap_or("\u{0}").to_owned()),
            None => uri.authority().map(|a| a.as_str().to_owned()),
        };
        if let Some(host) = &host
            && !self.allows(host)
        {
            return Err((
                StatusCode::MISDIRECTED_REQUEST,
                MISDIRECTED,
                "this Host is not one of the ops listener's names (loopback, its listen address, server.ops_hosts)".into(),
            ));
        }
        let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if safe {
            return Ok(());
        }
        if let Some(site) = headers.get("sec-fetch-site")
            && !matches!(site.as_bytes(), b"same-origin" | b"none")
        {
            return Err((
                StatusCode::FORBIDDEN,
                CROSS_SITE,
                "a state change from another site is refused (Sec-Fetch-Site)".into(),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin_host = origin.to_str().ok().and_then(|o| {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
            });
            let same = match (origin_host, &host) {
                (Some(o), Some(h)) => o.eq_ignore_ascii_case(h),
                _ => false,
            };
            if !same {
                return Err((
                    StatusCode::FORBIDDEN,
                    CROSS_SITE,
                    "a state change from another origin is refused (Origin)".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(listen: &str, extra: &[&str]) -> OpsHosts {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        OpsHosts::new(listen.parse().unwrap(), &extra)
    }

    #[test]
    fn loopback_names_the_listen_address_and_configured_names_pass() {
        let h = hosts("10.0.0.5:9090", &["ops.internal", "*.example.com"]);
        for ok in [
            "127.0.0.1:9090",
            "localhost",
            "LOCALHOST:1",
            "[::1]:9090",
            "10.0.0.5:9090",
            "ops.internal",
            "a.example.com:9090",
            "a.b.example.com",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "10.0.0.6:9090",
            "example.com",
            "xexample.com",
            "ops.internal.evil",
            "",
            "a:b:c",
            "[::1]x",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
        assert!(hosts("0.0.0.0:9090", &[]).allows("192.168.1.2:9090"));
        assert!(!hosts("0.0.0.0:9090", &[]).allows("evil.example:9090"));
    }

    #[test]
    fn cross_site_state_changes_are_refused() {
        let h = hosts("127.0.0.1:9090", &[]);
        let uri: http::Uri = "/reload".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:9090".parse().unwrap());
        assert!(h.check(&Method::POST, &uri, &headers).is_ok());
        headers.insert(header::ORIGIN, "http://127.0.0.1:9090".parse().unwrap());
        assert!(h.check(&Method::POST, &uri, &headers).is_ok());
        headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert_eq!(
            h.check(&Method::POST, &uri, &headers).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        // Reads are not state changes.
        assert!(h.check(&Method::GET, &uri, &headers).is_ok());
        headers.remove(header::ORIGIN);
        headers.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert_eq!(
            h.check(&Method::POST, &uri, &headers).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        headers.insert(header::HOST, "evil.example:9090".parse().unwrap());
        assert_eq!(
            h.check(&Method::GET, &uri, &headers).unwrap_err().0,
            StatusCode::MISDIRECTED_REQUEST
        );
    }

    #[test]
    fn patterns_are_validated() {
        assert!(valid_host_pattern("ops.internal").is_ok());
        assert!(valid_host_pattern("*.example.com").is_ok());
        assert!(valid_host_pattern("10.1.2.3").is_ok());
        assert!(valid_host_pattern("http://x").is_err());
        assert!(valid_host_pattern("x:9090").is_err());
        assert!(valid_host_pattern("").is_err());
    }
}
