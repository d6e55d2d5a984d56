//! The client IP a limit counts by, computed safely: forwarding headers are
//! believed only when the socket peer is a trusted proxy, only the one header
//! the configuration says those proxies write (`X-Forwarded-For` or RFC 7239
//! `Forwarded`), and then walked right to left to the first hop that is not
//! a trusted proxy. What a client wrote to the left of that hop is never
//! read, so it cannot change the result. IPv6 clients are grouped by prefix
//! (default /64) so that rotating addresses inside one allocation does not
//! escape a limit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bytes of a forwarding header considered, from its right end; what lies
/// further left (client-written padding) is never read.
pub const MAX_HEADER_LEN: usize = 8 * 1024;
/// Most hops walked from the right; a chain of more trusted proxies ends at
/// the last one walked.
pub const MAX_HOPS: usize = 64;

/// The forwarding header the trusted proxies write. A proxy that only
/// appends to one of them passes the other through from the client
/// unchanged, so only the configured one is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardingHeader {
    /// `X-Forwarded-For` (nginx `proxy_add_x_forwarded_for`, HAProxy
    /// `option forwardfor`, most load balancers). The default.
    #[default]
    #[serde(alias = "x-forwarded-for")]
    Xff,
    /// RFC 7239 `Forwarded` (`for=` of each element).
    Forwarded,
}

impl ForwardingHeader {
    /// The header's name in lower case.
    pub fn name(self) -> &'static str {
        match self {
            Self::Xff => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
}

/// An IP network in CIDR form (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(ip, self.prefix) == mask_v4(net, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(ip, self.prefix) == mask_v6(net, self.prefix)
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = ClientIpError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ClientIpError::BadCidr(s.chars().take(64).collect());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let parsed: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let addr = parsed.to_canonical();
        // An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is the IPv4
        // network with the prefix shortened by 96.
        let mapped = parsed.is_ipv6() && addr.is_ipv4();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => {
                let p = p.trim().parse::<u8>().map_err(|_| bad())?;
                if mapped {
                    p.checked_sub(96).ok_or_else(bad)?
                } else {
                    p
                }
            }
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

/// A configuration value that is not valid.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIpError {
    /// A trusted proxy entry is not an address or CIDR.
    #[error("trusted_proxies: `{0}` is not an IP address or CIDR (e.g. 10.0.0.0/8)")]
    BadCidr(String),
    /// The IPv6 grouping prefix is out of range.
    #[error("ipv6_prefix: {0} must be between 32 and 128")]
    BadPrefix(u8),
}

/// Why a ban target is not one client group ([`ClientIpConfig::ban_key`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BanKeyError {
    /// Not an address or `address/length`.
    #[error("not an IP address or network (e.g. 203.0.113.7, 2001:db8::/64)")]
    NotAnAddress,
    /// The length after `/` is not a number up to 128.
    #[error("`{0}` is not a prefix length")]
    BadLength(String),
    /// An IPv4 network: IPv4 clients are one address each.
    #[error("IPv4 clients are banned one address at a time (/32)")]
    Ipv4Network,
    /// An IPv6 network wider than one client group.
    #[error("clients are grouped by /{grouped}: a ban covers one /{grouped}, not a /{given}")]
    WiderThanGroup {
        /// The grouping prefix.
        grouped: u8,
        /// The prefix given.
        given: u8,
    },
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> u32 {
    let bits = u32::from(ip);
    if prefix == 0 {
        0
    } else {
        bits & (u32::MAX << (32 - u32::from(prefix.min(32))))
    }
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> u128 {
    let bits = u128::from(ip);
    if prefix == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(prefix.min(128))))
    }
}

/// How the client IP is found and grouped.
///
/// From configuration (unknown fields rejected, every field optional):
/// `{"trusted_proxies": ["10.0.0.0/8"], "header": "xff", "ipv6_prefix": 64}`.
/// The default trusts no proxy (the socket peer is the client), reads
/// `X-Forwarded-For` once proxies are trusted, and groups IPv6 by /64.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "ClientIpConfigFile")]
pub struct ClientIpConfig {
    trusted: Vec<IpNet>,
    ipv6_prefix: u8,
    header: ForwardingHeader,
}

impl Default for ClientIpConfig {
    fn default() -> Self {
        Self {
            trusted: Vec::new(),
            ipv6_prefix: 64,
            header: ForwardingHeader::Xff,
        }
    }
}

/// [`ClientIpConfig`] as written in configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientIpConfigFile {
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    header: ForwardingHeader,
    #[serde(default = "default_ipv6_prefix")]
    ipv6_prefix: u8,
}

fn default_ipv6_prefix() -> u8 {
    64
}

impl TryFrom<ClientIpConfigFile> for ClientIpConfig {
    type Error = ClientIpError;
    fn try_from(f: ClientIpConfigFile) -> Result<Self, ClientIpError> {
        Ok(ClientIpConfig::new()
            .trusted_proxies(&f.trusted_proxies)?
            .ipv6_prefix(f.ipv6_prefix)?
            .forwarding_header(f.header))
    }
}

impl ClientIpConfig {
    /// Trusts no proxy; groups IPv6 by /64.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the proxies in these CIDRs (e.g. `["10.0.0.0/8", "::1"]`).
    pub fn trusted_proxies<S: AsRef<str>>(
        mut self,
        cidrs: impl IntoIterator<Item = S>,
    ) -> Result<Self, ClientIpError> {
        for c in cidrs {
            self.trusted.push(c.as_ref().parse()?);
        }
        Ok(self)
    }

    /// Groups IPv6 clients by this prefix length (32-128; default 64).
    pub fn ipv6_prefix(mut self, prefix: u8) -> Result<Self, ClientIpError> {
        if !(32..=128).contains(&prefix) {
            return Err(ClientIpError::BadPrefix(prefix));
        }
        self.ipv6_prefix = prefix;
        Ok(self)
    }

    /// Which forwarding header the trusted proxies write (default
    /// [`ForwardingHeader::Xff`]); the other one is never read.
    pub fn forwarding_header(mut self, header: ForwardingHeader) -> Self {
        self.header = header;
        self
    }

    /// The configured forwarding header.
    pub fn header(&self) -> ForwardingHeader {
        self.header
    }

    /// Whether `ip` is one of the trusted proxies (IPv4-mapped counts as IPv4).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|n| n.contains(ip))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy, in
    /// which case the configured header (`forwarded` or `xff`; the other is
    /// ignored) is walked from the right over trusted proxies. The walk
    /// stops at the first hop that is not a trusted proxy (the client), or
    /// at the first element that does not parse (`unknown`, an obfuscated
    /// `_id`, garbage), then answering the last trusted hop walked (the peer
    /// when none was). Only the rightmost [`MAX_HEADER_LEN`] bytes and
    /// [`MAX_HOPS`] elements are read; a chain of trusted proxies only ends at
    /// its leftmost walked hop. Whatever lies left of where the walk stops is
    /// never read, so a client cannot steer the result by what it sends.
    pub fn client_ip(&self, peer: IpAddr, forwarded: Option<&str>, xff: Option<&str>) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let walked = match self.header {
            ForwardingHeader::Forwarded => {
                forwarded.and_then(|f| self.walk(f, parse_forwarded_element))
            }
            ForwardingHeader::Xff => xff.and_then(|x| self.walk(x, |e| e.trim().parse().ok())),
        };
        walked.unwrap_or(peer)
    }

    fn walk(&self, header: &str, parse: impl Fn(&str) -> Option<IpAddr>) -> Option<IpAddr> {
        let header = rightmost(header, MAX_HEADER_LEN);
        let mut last_trusted = None;
        // Empty list elements are allowed by the list syntax and skipped.
        for element in header
            .rsplit(',')
            .filter(|e| !e.trim().is_empty())
            .take(MAX_HOPS)
        {
            let Some(hop) = parse(element) else {
                break;
            };
            let hop = hop.to_canonical();
            if !self.is_trusted(hop) {
                return Some(hop);
            }
            last_trusted = Some(hop);
        }
        last_trusted
    }

    /// The address a limit counts by: IPv4 as is, IPv6 masked to the prefix.
    pub fn group(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(mask_v6(v6, self.ipv6_prefix))),
        }
    }

    /// The key a ban on `text` (an address, or a network inside one client
    /// group) is stored under: the group requests are checked against
    /// (IPv4 as is, IPv4-mapped IPv6 as IPv4, IPv6 masked to the prefix),
    /// in canonical text. A wider network is refused rather than stored as
    /// text no request would ever match.
    pub fn ban_key(&self, text: &str) -> Result<String, BanKeyError> {
        let text = text.trim();
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let parsed: IpAddr = addr.parse().map_err(|_| BanKeyError::NotAnAddress)?;
        let ip = parsed.to_canonical();
        let len = match len {
            None => None,
            Some(l) => Some(
                l.parse::<u8>()
                    .ok()
                    .filter(|&n| n <= 128)
                    .ok_or_else(|| BanKeyError::BadLength(l.to_owned()))?,
            ),
        };
        // IPv4-mapped IPv6 (`::ffff:192.0.2.1/128`) counts as IPv4.
        let len = len.map(|l| {
            if parsed.is_ipv6() && ip.is_ipv4() {
                l.saturating_sub(96)
            } else {
                l
            }
        });
        match (ip, len) {
            (IpAddr::V4(_), Some(l)) if l != 32 => Err(BanKeyError::Ipv4Network),
            (IpAddr::V6(_), Some(l)) if l < self.ipv6_prefix => Err(BanKeyError::WiderThanGroup {
                grouped: self.ipv6_prefix,
                given: l,
            }),
            _ => Ok(self.group(ip).to_string()),
        }
    }

    /// [`Self::client_ip`] then [`Self::group`].
    pub fn client_key(&self, peer: IpAddr, forwarded: Option<&str>, xff: Option<&str>) -> IpAddr {
        self.group(self.client_ip(peer, forwarded, xff))
    }
}

/// The whole elements within the last `max` bytes of a list header: when it
/// is longer, the element cut at the boundary is dropped too.
pub fn rightmost(header: &str, max: usize) -> &str {
    if header.len() <= max {
        return header;
    }
    let start = header.len() - max;
    match header.as_bytes()[start..].iter().position(|&b| b == b',') {
        // A comma is ASCII, so the byte after it starts a character.
        Some(i) => &header[start + i + 1..],
        None => "",
    }
}

/// The `for=` address of one `Forwarded` element, or `None` when it is
/// missing, obfuscated, `unknown` or malformed.
fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
    let mut found = None;
    for pair in element.split(';') {
        let (name, value) = pair.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            continue;
        }
        if found.is_some() {
            return None;
        }
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(v) => v.strip_suffix('"')?,
            None => value,
        };
        let ip = if let Some(rest) = value.strip_prefix('[') {
            let (addr, after) = rest.split_once(']')?;
            if !(after.is_empty() || after.starts_with(':')) {
                return None;
            }
            IpAddr::V6(addr.parse().ok()?)
        } else {
            match value.split_once(':') {
                Some((v4, _port)) => IpAddr::V4(v4.parse().ok()?),
                None => value.parse().ok()?,
            }
        };
        found = Some(ip);
    }
    found
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_ban_key_is_the_client_group_requests_are_checked_against() {
        let config = ClientIpConfig::new();
        assert_eq!(config.ban_key(" 203.0.113.7 ").unwrap(), "203.0.113.7");
        assert_eq!(config.ban_key("::ffff:192.0.2.1/128").unwrap(), "192.0.2.1");
        assert_eq!(config.ban_key("2001:db8::1").unwrap(), "2001:db8::");
        assert_eq!(config.ban_key("2001:db8::/64").unwrap(), "2001:db8::");
        assert_eq!(config.ban_key("10.0.0.0/8"), Err(BanKeyError::Ipv4Network));
        assert_eq!(
            config.ban_key("2001:db8::/48"),
            Err(BanKeyError::WiderThanGroup {
                grouped: 64,
                given: 48
            })
        );
        assert_eq!(
            config.ban_key("2001:db8::/200"),
            Err(BanKeyError::BadLength("200".into()))
        );
        assert_eq!(
            config.ban_key("example.com"),
            Err(BanKeyError::NotAnAddress)
        );
    }

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cfg() -> ClientIpConfig {
        ClientIpConfig::new()
            .trusted_proxies(["10.0.0.0/8", "2001:db8:ffff::/48"])
            .unwrap()
    }

    #[test]
    fn spoofed_xff_from_untrusted_peer_is_ignored() {
        let c = cfg();
        assert_eq!(
            c.client_ip(ip("198.51.100.7"), None, Some("1.2.3.4")),
            ip("198.51.100.7")
        );
        assert_eq!(
            c.client_ip(ip("198.51.100.7"), Some("for=1.2.3.4"), None),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn two_trusted_proxies_resolve_to_the_real_client() {
        let c = cfg();
        // client 203.0.113.9 -> proxy 10.0.0.5 -> proxy 10.1.1.1 -> us
        let xff = "6.6.6.6, 203.0.113.9, 10.0.0.5";
        assert_eq!(
            c.client_ip(ip("10.1.1.1"), None, Some(xff)),
            ip("203.0.113.9")
        );
        let fc = cfg().forwarding_header(ForwardingHeader::Forwarded);
        let fwd = r#"for=6.6.6.6, for="203.0.113.9:4711";proto=https, for=10.0.0.5;by=10.1.1.1"#;
        assert_eq!(
            fc.client_ip(ip("10.1.1.1"), Some(fwd), Some("9.9.9.9")),
            ip("203.0.113.9")
        );
        let fwd6 = r#"for="[2001:db8:cafe::17]:4711", for="[2001:db8:ffff::1]""#;
        assert_eq!(
            fc.client_ip(ip("10.1.1.1"), Some(fwd6), None),
            ip("2001:db8:cafe::17")
        );
    }

    #[test]
    fn an_unparsable_hop_next_to_us_yields_the_last_trusted_hop() {
        let c = cfg();
        let fc = cfg().forwarding_header(ForwardingHeader::Forwarded);
        let peer = ip("10.0.0.1");
        assert_eq!(c.client_ip(peer, None, Some("1.2.3.4, garbage")), peer);
        assert_eq!(fc.client_ip(peer, Some("for=unknown"), None), peer);
        assert_eq!(fc.client_ip(peer, Some("for=_hidden"), None), peer);
        assert_eq!(fc.client_ip(peer, Some("for=\"[::1\""), None), peer);
        assert_eq!(
            c.client_ip(peer, None, Some("203.0.113.9, garbage, 10.0.0.5")),
            ip("10.0.0.5")
        );
        // The trusted chain is longer than MAX_HOPS: its last walked hop.
        let long = "10.0.0.2, ".repeat(1000);
        assert_eq!(c.client_ip(peer, None, Some(&long)), ip("10.0.0.2"));
    }

    #[test]
    fn only_the_configured_forwarding_header_is_read() {
        let peer = ip("10.0.0.1");
        let xff = cfg();
        assert_eq!(xff.header(), ForwardingHeader::Xff);
        assert_eq!(
            xff.client_ip(peer, Some("for=6.6.6.6"), Some("203.0.113.9")),
            ip("203.0.113.9")
        );
        assert_eq!(xff.client_ip(peer, Some("for=6.6.6.6"), None), peer);
        let fwd = cfg().forwarding_header(ForwardingHeader::Forwarded);
        assert_eq!(
            fwd.client_ip(peer, Some("for=203.0.113.9"), Some("6.6.6.6")),
            ip("203.0.113.9")
        );
        assert_eq!(fwd.client_ip(peer, None, Some("6.6.6.6")), peer);
    }

    #[test]
    fn config_deserializes_with_safe_defaults_and_named_errors() {
        let c: ClientIpConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, ClientIpConfig::default());
        assert_eq!(c.header(), ForwardingHeader::Xff);
        let c: ClientIpConfig = serde_json::from_str(
            r#"{"trusted_proxies": ["10.0.0.0/8"], "header": "forwarded", "ipv6_prefix": 56}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            cfg_with(&["10.0.0.0/8"])
                .ipv6_prefix(56)
                .unwrap()
                .forwarding_header(ForwardingHeader::Forwarded)
        );
        let c: ClientIpConfig = serde_json::from_str(r#"{"header": "x-forwarded-for"}"#).unwrap();
        assert_eq!(c.header(), ForwardingHeader::Xff);
        let e = serde_json::from_str::<ClientIpConfig>(r#"{"trusted_proxies": ["nope"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trusted_proxies"), "{e}");
        assert!(serde_json::from_str::<ClientIpConfig>(r#"{"header": "x-real-ip"}"#).is_err());
        assert!(serde_json::from_str::<ClientIpConfig>(r#"{"ipv6_prefix": 8}"#).is_err());
        assert!(serde_json::from_str::<ClientIpConfig>(r#"{"trusted": []}"#).is_err());
    }

    fn cfg_with(cidrs: &[&str]) -> ClientIpConfig {
        ClientIpConfig::new().trusted_proxies(cidrs).unwrap()
    }

    #[test]
    fn all_trusted_chain_yields_the_leftmost() {
        let c = cfg();
        assert_eq!(
            c.client_ip(ip("10.0.0.1"), None, Some("10.0.0.3, 10.0.0.2")),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn ipv6_is_grouped_by_prefix() {
        let c = cfg();
        assert_eq!(c.group(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            c.group(ip("2001:db8:1:2:ffff::9")),
            c.group(ip("2001:db8:1:2::5"))
        );
        assert_ne!(
            c.group(ip("2001:db8:1:3::1")),
            c.group(ip("2001:db8:1:2::1"))
        );
        let c56 = cfg().ipv6_prefix(56).unwrap();
        assert_eq!(c56.group(ip("2001:db8:1:2ff::1")), ip("2001:db8:1:200::"));
        assert_eq!(c.group(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(c.group(ip("192.0.2.1")), ip("192.0.2.1"));
        assert!(ClientIpConfig::new().ipv6_prefix(8).is_err());
    }

    #[test]
    fn cidr_parsing() {
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nope".parse::<IpNet>().is_err());
        let n: IpNet = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(n.contains(ip("10.9.9.9")));
        assert!(n.contains(ip("::ffff:10.1.2.3")));
        assert!(!n.contains(ip("11.0.0.1")));
    }
}
