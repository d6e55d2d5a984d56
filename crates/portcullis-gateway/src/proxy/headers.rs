//! The headers an upstream receives: hop-by-hop headers out (RFC 9110
//! §7.6.1), the identity headers replaced by the guard's view of the
//! caller, and `Forwarded` / `X-Forwarded-*` set from the connection.

use super::*;

/// [`HOP_BY_HOP`] as header names, so removing them parses nothing.
pub(crate) const HOP_BY_HOP_NAMES: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Marks a request that came over TLS (`[server.tls]`): the upstream is
/// told `X-Forwarded-Proto: https`.
#[derive(Debug, Clone, Copy)]
pub struct ClientTls;

/// The identity header names, parsed.
#[derive(Debug, Clone)]
pub struct IdentityNames {
    subject: HeaderName,
    roles: HeaderName,
    permissions: HeaderName,
    tenant: HeaderName,
    session: HeaderName,
    auth_method: HeaderName,
}

impl IdentityNames {
    /// Parses the configured names (validated at load).
    pub fn new(c: &IdentityHeaders) -> Result<Self, http::header::InvalidHeaderName> {
        let p = |s: &str| HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes());
        Ok(Self {
            subject: p(&c.subject)?,
            roles: p(&c.roles)?,
            permissions: p(&c.permissions)?,
            tenant: p(&c.tenant)?,
            session: p(&c.session)?,
            auth_method: p(&c.auth_method)?,
        })
    }

    /// Every identity header name.
    pub fn all(&self) -> [&HeaderName; 6] {
        [
            &self.subject,
            &self.roles,
            &self.permissions,
            &self.tenant,
            &self.session,
            &self.auth_method,
        ]
    }

    /// Sets every identity header to the empty value (an Envoy
    /// `ext_authz` answer overrides the client's copies only with headers
    /// it carries); [`Self::write`] then fills those it knows.
    pub fn blank(&self, headers: &mut HeaderMap) {
        for name in self.all() {
            headers.insert(name.clone(), HeaderValue::from_static(""));
        }
    }

    /// Removes every identity header, whatever the client sent.
    pub fn strip(&self, headers: &mut HeaderMap) {
        remove_names(headers, self.all());
    }

    /// Writes `principal`'s identity (after [`Self::strip`]). Values that
    /// cannot be header values are left out, never passed raw.
    pub fn write(&self, principal: &portcullis_core::Principal, headers: &mut HeaderMap) {
        let mut set = |name: &HeaderName, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name.clone(), v);
            }
        };
        set(&self.subject, &principal.subject);
        if !principal.roles.is_empty() {
            set(&self.roles, &principal.roles.join(","));
        }
        if !principal.permissions.is_empty() {
            set(&self.permissions, &principal.permissions.join(","));
        }
        if let Some(t) = &principal.tenant {
            set(&self.tenant, t);
        }
        if let Some(s) = &principal.session_id {
            set(&self.session, s);
        }
        set(&self.auth_method, principal.auth_method.as_str());
    }
}

/// What decides the headers an upstream receives for one request.
pub(crate) struct Outgoing<'a> {
    /// The upstream's name.
    pub(crate) upstream: &'a str,
    /// The protocol of a WebSocket handshake.
    pub(crate) websocket: Option<&'a HeaderValue>,
    /// The caller (`None`: anonymous).
    pub(crate) principal: Option<&'a portcullis_core::Principal>,
    /// The request id.
    pub(crate) request_id: Option<&'a str>,
    /// The code a dry-run route would have refused with.
    pub(crate) dry_run: Option<portcullis_core::ErrorCode>,
    /// The socket peer.
    pub(crate) peer: Option<std::net::IpAddr>,
    /// The client address the guard keyed on (when there is no peer).
    pub(crate) client_ip: Option<std::net::IpAddr>,
    /// Whether the gateway terminated TLS.
    pub(crate) tls: bool,
    /// The `Host` (or HTTP/2 authority) the client sent.
    pub(crate) original_host: Option<HeaderValue>,
}

impl<'a> Outgoing<'a> {
    /// The view of a request as the guard left it (its extensions).
    pub(crate) fn of(
        parts: &'a http::request::Parts,
        headers: &HeaderMap,
        upstream: &'a str,
        websocket: Option<&'a HeaderValue>,
        request_id: Option<&'a str>,
    ) -> Self {
        // HTTP/2 carries the host in the URI (`:authority`), not in `Host`.
        let original_host = headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        Self {
            upstream,
            websocket,
            principal: parts.extensions.get::<Principal>().map(|p| &**p),
            request_id,
            dry_run: parts
                .extensions
                .get::<DryRunRefusal>()
                .map(|DryRunRefusal(code)| *code),
            peer: parts
                .extensions
                .get::<PeerAddr>()
                .map(|p| p.0.ip().to_canonical()),
            client_ip: parts.extensions.get::<ClientIp>().map(|c| c.0),
            tls: parts.extensions.get::<ClientTls>().is_some(),
            original_host,
        }
    }
}

/// Whether the `TE` header lists `trailers` (RFC 9110 §10.1.4).
pub(crate) fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// Removes every header in `names` that `headers` holds. A request or
/// response carries a handful of headers: one pass comparing them with the
/// names costs less than a hashed lookup per name (which `remove` is, found
/// or not), and most of the names are absent. A large map is looked up.
pub fn remove_names<'n>(headers: &mut HeaderMap, names: impl IntoIterator<Item = &'n HeaderName>) {
    const SCAN_UP_TO: usize = 16;
    if headers.is_empty() {
        return;
    }
    if headers.keys_len() > SCAN_UP_TO {
        for name in names {
            headers.remove(name);
        }
        return;
    }
    for name in names {
        if headers.keys().any(|k| k == name) {
            headers.remove(name);
        }
    }
}

/// Removes the hop-by-hop headers and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    remove_names(headers, &HOP_BY_HOP_NAMES);
}

/// `X-Forwarded-For`, `-Proto`, `-Host` from the trusted-proxy view. The
/// peer is appended to a trusted proxy's `X-Forwarded-For` chain; anyone
/// else's chain is replaced by the peer alone. A trusted proxy's own
/// `X-Forwarded-Proto` / `-Host` (it terminated TLS, it saw the public
/// host) are kept; anyone else's are replaced (`-Proto`: `https` when the
/// gateway terminated TLS). `Forwarded` is removed.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    peer: Option<std::net::IpAddr>,
    host: Option<&HeaderValue>,
    from_trusted_proxy: bool,
    tls: bool,
) {
    use std::fmt::Write as _;
    // The chain as one string: a trusted proxy's hops, then the peer.
    let mut chain = String::new();
    if from_trusted_proxy {
        let hops = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|hop| !hop.is_empty());
        for hop in hops {
            if !chain.is_empty() {
                chain.push_str(", ");
            }
            chain.push_str(hop);
        }
    }
    headers.remove(&X_FORWARDED_FOR);
    headers.remove(header::FORWARDED);
    if let Some(ip) = peer {
        if !chain.is_empty() {
            chain.push_str(", ");
        }
        let _ = write!(chain, "{ip}");
    }
    if !chain.is_empty()
        && let Ok(v) = HeaderValue::from_str(&chain)
    {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !(from_trusted_proxy && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(from_trusted_proxy && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST, h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}
