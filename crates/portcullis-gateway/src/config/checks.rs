//! Checks of single values the configuration shares with the part that
//! uses them: the server's deadlines and connection caps, the ops
//! listener's host patterns, and the hop-by-hop header names the proxy
//! never forwards (an identity header may not be one).

use std::net::IpAddr;
use std::time::Duration;

use super::ServerConfig;

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded either way.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Longest any of the connection deadlines may be set to.
const LONGEST_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// The problems of `server`'s deadlines and caps: (dotted key, message).
pub fn server_limits(server: &ServerConfig) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    for (key, d) in [
        ("server.request_body_timeout", server.request_body_timeout),
        ("server.idle_timeout", server.idle_timeout),
        ("server.upstream_body_timeout", server.upstream_body_timeout),
        (
            "server.websocket_idle_timeout",
            server.websocket_idle_timeout,
        ),
    ] {
        if d.is_zero() {
            errors.push((key, "must be longer than zero".to_owned()));
        } else if d > LONGEST_DEADLINE {
            errors.push((key, "must be at most 24h".to_owned()));
        }
    }
    for (key, n) in [
        ("server.max_connections", server.max_connections),
        ("server.ops_max_connections", server.ops_max_connections),
        ("server.max_websockets", server.max_websockets),
    ] {
        if !(1..=1_000_000).contains(&n) {
            errors.push((key, "must be between 1 and 1000000".to_owned()));
        }
    }
    errors
}

/// Checks a `server.ops_hosts` entry: a DNS name or IP, optionally
/// `*.` followed by a name; no port, no scheme.
pub fn valid_host_pattern(pattern: &str) -> Result<(), &'static str> {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    if name.is_empty() || name.len() > 253 {
        return Err("must be a host name (1 to 253 characters)");
    }
    if name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if ok {
        Ok(())
    } else {
        Err("must be a host name such as `ops.internal` or `*.example.com`, without port or scheme")
    }
}
