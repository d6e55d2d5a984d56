//! `portcullis snippets nginx|caddy|traefik|envoy [--config FILE]`: the
//! configuration that puts a proxy the team already runs in front of the
//! app, asking this gateway's forward-auth endpoint, with the identity
//! headers of the configuration copied to the app (and every inbound copy
//! of them dropped first).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::{CliError, console};
use crate::config::{Config, ForwardAuthConfig, IdentityHeaders};

/// The proxies a snippet is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyKind {
    /// nginx `auth_request` (a `server { }` block for the `http { }` context).
    Nginx,
    /// A Caddyfile site with `forward_auth`.
    Caddy,
    /// Traefik's dynamic configuration (file provider, YAML) with `forwardAuth`.
    Traefik,
    /// An Envoy bootstrap (YAML) with the `ext_authz` HTTP service.
    Envoy,
}

/// Arguments of `snippets`.
#[derive(Debug, Args)]
pub struct SnippetsArgs {
    /// Which proxy.
    #[arg(value_enum)]
    pub proxy: ProxyKind,
    /// The gateway's configuration file (default: the built-in defaults).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The gateway as the proxy reaches it (default: `server.listen`,
    /// with a wildcard address replaced by loopback).
    #[arg(long, value_name = "URL")]
    pub gateway: Option<String>,
    /// The app the proxy sends allowed requests to (default: the
    /// configuration's default upstream, else its first, else http://127.0.0.1:8000).
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// The port the proxy listens on.
    #[arg(long, value_name = "PORT", default_value_t = 80)]
    pub listen: u16,
}

/// What a snippet is made of.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// `http://HOST:PORT` of the gateway.
    pub gateway: String,
    /// The forward-auth prefix (`/_portcullis/auth`).
    pub prefix: String,
    /// The identity header names, lowercase.
    pub identity: Vec<String>,
    /// The credential headers besides `Authorization` (API key, app id, app secret).
    pub credentials: Vec<String>,
    /// `http://HOST:PORT` of the app.
    pub upstream: String,
    /// The proxy's port.
    pub listen: u16,
}

impl Inputs {
    /// The inputs of `config` (or of the defaults), with the command line's overrides.
    pub fn new(config: Option<&Config>, args: &SnippetsArgs) -> Result<Self, CliError> {
        let defaults = (
            SocketAddr::from(([0, 0, 0, 0], 8080)),
            // A snippet without a configuration is for a gateway that will
            // turn forward-auth on.
            ForwardAuthConfig {
                enabled: true,
                ..ForwardAuthConfig::default()
            },
            IdentityHeaders::default(),
            portcullis::guard::CredentialHeaders::default(),
        );
        let (listen, fa, identity, creds) = match config {
            Some(c) => (
                c.server.listen,
                c.forward_auth.clone(),
                c.identity.clone(),
                c.guard.headers.clone(),
            ),
            None => defaults,
        };
        if !fa.enabled {
            return Err(CliError::Usage(
                "forward_auth.enabled is false in this configuration (the default): a proxy in front would have no endpoint to ask; set `[forward_auth] enabled = true`".into(),
            ));
        }
        let gateway = match &args.gateway {
            Some(url) => checked_url("--gateway", url)?,
            None => {
                let ip = match listen.ip() {
                    IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    ip => ip,
                };
                format!("http://{}", SocketAddr::new(ip, listen.port()))
            }
        };
        let upstream = match (&args.upstream, config) {
            (Some(url), _) => checked_url("--upstream", url)?,
            (None, Some(c)) => c
                .upstreams
                .iter()
                .find(|u| u.default)
                .or_else(|| c.upstreams.first())
                .map_or_else(|| "http://127.0.0.1:8000".to_owned(), |u| origin(&u.url)),
            (None, None) => "http://127.0.0.1:8000".to_owned(),
        };
        let identity: Vec<String> = identity
            .named()
            .iter()
            .map(|(_, n)| n.to_ascii_lowercase())
            .collect();
        for name in &identity {
            if !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(CliError::Usage(format!(
                    "identity header `{name}`: proxies map only letters, digits and `-` to variables; rename it"
                )));
            }
        }
        let credentials = [creds.api_key, creds.app_id, creds.app_secret]
            .into_iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        Ok(Self {
            gateway,
            prefix: fa.prefix,
            identity,
            credentials,
            upstream,
            listen: args.listen,
        })
    }

    fn endpoint(&self, dialect: &str) -> String {
        format!("{}{}/{dialect}", self.gateway, self.prefix)
    }

    /// `host:port` of `url`.
    fn host_port(url: &str) -> String {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or(url);
        rest.split('/').next().unwrap_or(rest).to_owned()
    }
}

/// `scheme://authority` of an upstream URL (its path prefix dropped).
fn origin(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => match (u.scheme_str(), u.authority()) {
            (Some(s), Some(a)) => format!("{s}://{a}"),
            _ => url.to_owned(),
        },
        Err(_) => url.to_owned(),
    }
}

fn checked_url(flag: &str, url: &str) -> Result<String, CliError> {
    let u: http::Uri = url
        .parse()
        .map_err(|_| CliError::Usage(format!("{flag}: `{url}` is not a URL")))?;
    match (u.scheme_str(), u.authority()) {
        (Some("http"), Some(a)) if u.path() == "/" || u.path().is_empty() => {
            Ok(format!("http://{a}"))
        }
        _ => Err(CliError::Usage(format!(
            "{flag}: `{url}` must be http://HOST:PORT"
        ))),
    }
}

/// Title-Case of a lowercase header name, for configuration readers.
fn title(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Prints the snippet.
pub fn run(args: &SnippetsArgs) -> Result<(), CliError> {
    let config = match &args.config {
        Some(path) => Some(crate::config::load(path).map_err(CliError::Config)?),
        None => None,
    };
    let inputs = Inputs::new(config.as_ref(), args)?;
    console::print(&render(args.proxy, &inputs))
}

/// The snippet for `proxy`.
pub fn render(proxy: ProxyKind, i: &Inputs) -> String {
    match proxy {
        ProxyKind::Nginx => nginx(i),
        ProxyKind::Caddy => caddy(i),
        ProxyKind::Traefik => traefik(i),
        ProxyKind::Envoy => envoy(i),
    }
}

const TRUST_NOTE: &str = "The gateway answers forward-auth only from guard.client_ip.trusted_proxies: list this proxy's address there.";

fn nginx(i: &Inputs) -> String {
    let var = |n: &str| n.replace('-', "_");
    let mut s = format!(
        "# nginx auth_request in front of {up}, deciding with the Portcullis gateway at {gw}.\n\
         # Include in the http {{ }} context. {TRUST_NOTE}\n\
         server {{\n    listen {listen};\n\n\
         \x20   location = /_portcullis_auth {{\n\
         \x20       internal;\n\
         \x20       proxy_pass {endpoint};\n\
         \x20       proxy_pass_request_body off;\n\
         \x20       proxy_set_header Content-Length \"\";\n\
         \x20       proxy_set_header X-Original-URI $request_uri;\n\
         \x20       proxy_set_header X-Original-Method $request_method;\n\
         \x20       proxy_set_header X-Forwarded-Host $host;\n\
         \x20       proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20       proxy_set_header X-Request-Id $request_id;\n\
         \x20   }}\n\n\
         \x20   location / {{\n\
         \x20       auth_request /_portcullis_auth;\n",
        up = i.upstream,
        gw = i.gateway,
        listen = i.listen,
        endpoint = i.endpoint("nginx"),
    );
    // Each identity header from the auth answer; an empty variable (an
    // anonymous caller) makes nginx drop the client's copy of that header.
    for n in &i.identity {
        s += &format!(
            "        auth_request_set $portcullis_{v} $upstream_http_{v};\n",
            v = var(n)
        );
    }
    for n in &i.identity {
        s += &format!(
            "        proxy_set_header {} $portcullis_{};\n",
            title(n),
            var(n)
        );
    }
    s += &format!(
        "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20       proxy_set_header X-Forwarded-Proto $scheme;\n\
         \x20       proxy_set_header X-Request-Id $request_id;\n\
         \x20       proxy_pass {};\n\
         \x20   }}\n}}\n",
        i.upstream
    );
    s
}

fn caddy(i: &Inputs) -> String {
    let names: Vec<String> = i.identity.iter().map(|n| title(n)).collect();
    let mut s = format!(
        "# Caddy forward_auth in front of {up}, deciding with the Portcullis gateway at {gw}.\n\
         # {TRUST_NOTE}\n\
         http://:{listen} {{\n\
         \x20   route {{\n\
         \x20       # No client-sent identity header survives: only the gateway's answer sets them.\n",
        up = i.upstream,
        gw = i.gateway,
        listen = i.listen,
    );
    for n in &names {
        // The `_` spelling too: Caddy passes `X_Portcullis_Roles` on, WSGI
        // servers read it as `X-Portcullis-Roles`, and the gateway refuses a
        // forward-auth request that still carries one.
        s += &format!(
            "        request_header -{n}\n        request_header -{}\n",
            n.replace('-', "_")
        );
    }
    s += &format!(
        "        forward_auth {gw} {{\n\
         \x20           uri {uri}/caddy\n\
         \x20           copy_headers {copy}\n\
         \x20       }}\n\
         \x20       reverse_proxy {up}\n\
         \x20   }}\n}}\n",
        gw = Inputs::host_port(&i.gateway),
        uri = i.prefix,
        copy = names.join(" "),
        up = Inputs::host_port(&i.upstream),
    );
    s
}

fn traefik(i: &Inputs) -> String {
    let mut s = format!(
        "# Traefik dynamic configuration (file provider): forwardAuth in front of {up},\n\
         # deciding with the Portcullis gateway at {gw}. {TRUST_NOTE}\n\
         # Traefik removes every client copy of the authResponseHeaders before copying the gateway's.\n\
         http:\n\
         \x20 middlewares:\n\
         \x20   portcullis:\n\
         \x20     forwardAuth:\n\
         \x20       address: \"{endpoint}\"\n\
         \x20       trustForwardHeader: false\n\
         \x20       authResponseHeaders:\n",
        up = i.upstream,
        gw = i.gateway,
        endpoint = i.endpoint("traefik"),
    );
    for n in &i.identity {
        s += &format!("          - \"{}\"\n", title(n));
    }
    s += &format!(
        "  routers:\n\
         \x20   app:\n\
         \x20     rule: \"PathPrefix(`/`)\"\n\
         \x20     entryPoints: [\"web\"]\n\
         \x20     middlewares: [\"portcullis\"]\n\
         \x20     service: app\n\
         \x20 services:\n\
         \x20   app:\n\
         \x20     loadBalancer:\n\
         \x20       servers:\n\
         \x20         - url: \"{}\"\n\
         # Static configuration: an entry point `web` on :{}.\n",
        i.upstream, i.listen
    );
    s
}

fn envoy(i: &Inputs) -> String {
    let (gw_host, gw_port) = split_host_port(&Inputs::host_port(&i.gateway));
    let (up_host, up_port) = split_host_port(&Inputs::host_port(&i.upstream));
    let patterns = |names: &[String], indent: &str| -> String {
        names
            .iter()
            .map(|n| format!("{indent}- exact: {n}\n"))
            .collect()
    };
    let mut to_gateway = vec![
        "authorization".to_owned(),
        "x-request-id".to_owned(),
        "x-forwarded-for".to_owned(),
    ];
    to_gateway.extend(i.credentials.iter().cloned());
    let to_client: Vec<String> = [
        "www-authenticate",
        "retry-after",
        "ratelimit",
        "ratelimit-policy",
        "x-portcullis-code",
        "x-request-id",
        "content-type",
    ]
    .map(String::from)
    .to_vec();
    let ind = "                      ";
    format!(
        "# Envoy bootstrap: ext_authz (HTTP service) in front of {up}, deciding with the\n\
         # Portcullis gateway at {gw}; exactly 200 allows. {TRUST_NOTE}\n\
         # The gateway answers every identity header (empty for an anonymous caller), and\n\
         # allowed_upstream_headers overrides the client's copies with them.\n\
         static_resources:\n\
         \x20 listeners:\n\
         \x20 - name: portcullis_front\n\
         \x20   address:\n\
         \x20     socket_address: {{ address: 0.0.0.0, port_value: {listen} }}\n\
         \x20   filter_chains:\n\
         \x20   - filters:\n\
         \x20     - name: envoy.filters.network.http_connection_manager\n\
         \x20       typed_config:\n\
         \x20         \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n\
         \x20         stat_prefix: ingress\n\
         \x20         use_remote_address: true\n\
         \x20         route_config:\n\
         \x20           virtual_hosts:\n\
         \x20           - name: app\n\
         \x20             domains: [\"*\"]\n\
         \x20             routes:\n\
         \x20             - match: {{ prefix: \"/\" }}\n\
         \x20               route: {{ cluster: app }}\n\
         \x20         http_filters:\n\
         \x20         - name: envoy.filters.http.ext_authz\n\
         \x20           typed_config:\n\
         \x20             \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz\n\
         \x20             transport_api_version: V3\n\
         \x20             failure_mode_allow: false\n\
         \x20             http_service:\n\
         \x20               server_uri:\n\
         \x20                 uri: {gw}\n\
         \x20                 cluster: portcullis\n\
         \x20                 timeout: 2s\n\
         \x20               path_prefix: {prefix}/envoy\n\
         \x20               authorization_request:\n\
         \x20                 allowed_headers:\n\
         \x20                   patterns:\n{req}\
         \x20               authorization_response:\n\
         \x20                 allowed_upstream_headers:\n\
         \x20                   patterns:\n{upstream_h}\
         \x20                 allowed_client_headers:\n\
         \x20                   patterns:\n{client_h}\
         \x20         - name: envoy.filters.http.router\n\
         \x20           typed_config:\n\
         \x20             \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n\
         \x20 clusters:\n\
         \x20 - name: portcullis\n\
         \x20   type: STRICT_DNS\n\
         \x20   connect_timeout: 1s\n\
         \x20   load_assignment:\n\
         \x20     cluster_name: portcullis\n\
         \x20     endpoints:\n\
         \x20     - lb_endpoints:\n\
         \x20       - endpoint:\n\
         \x20           address:\n\
         \x20             socket_address: {{ address: {gw_host}, port_value: {gw_port} }}\n\
         \x20 - name: app\n\
         \x20   type: STRICT_DNS\n\
         \x20   connect_timeout: 1s\n\
         \x20   load_assignment:\n\
         \x20     cluster_name: app\n\
         \x20     endpoints:\n\
         \x20     - lb_endpoints:\n\
         \x20       - endpoint:\n\
         \x20           address:\n\
         \x20             socket_address: {{ address: {up_host}, port_value: {up_port} }}\n",
        up = i.upstream,
        gw = i.gateway,
        listen = i.listen,
        prefix = i.prefix,
        req = patterns(&to_gateway, ind),
        upstream_h = patterns(&i.identity, ind),
        client_h = patterns(&to_client, ind),
    )
}

/// `host` and `port` of `host:port` (`[v6]:port` too); port 80 when absent.
fn split_host_port(hp: &str) -> (String, u16) {
    if let Ok(addr) = hp.parse::<SocketAddr>() {
        return (addr.ip().to_string(), addr.port());
    }
    match hp.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().unwrap_or(80)),
        None => (hp.to_owned(), 80),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        let identity = IdentityHeaders {
            subject: "x-user-id".into(),
            roles: "X-User-Roles".into(),
            ..IdentityHeaders::default()
        };
        let args = SnippetsArgs {
            proxy: ProxyKind::Nginx,
            config: None,
            gateway: Some("http://10.0.0.5:9000".into()),
            upstream: Some("http://127.0.0.1:5000".into()),
            listen: 8088,
        };
        let mut i = Inputs::new(None, &args).unwrap();
        i.identity = identity
            .named()
            .iter()
            .map(|(_, n)| n.to_ascii_lowercase())
            .collect();
        i.prefix = "/_auth_gw".into();
        i
    }

    #[test]
    fn nginx_sets_and_forwards_every_configured_identity_header() {
        let s = render(ProxyKind::Nginx, &inputs());
        assert!(
            s.contains("proxy_pass http://10.0.0.5:9000/_auth_gw/nginx;"),
            "{s}"
        );
        assert!(s.contains("listen 8088;"));
        for (var, header) in [
            ("x_user_id", "X-User-Id"),
            ("x_user_roles", "X-User-Roles"),
            ("x_portcullis_tenant", "X-Portcullis-Tenant"),
            ("x_portcullis_auth_method", "X-Portcullis-Auth-Method"),
        ] {
            assert!(
                s.contains(&format!(
                    "auth_request_set $portcullis_{var} $upstream_http_{var};"
                )),
                "{var}: {s}"
            );
            assert!(
                s.contains(&format!("proxy_set_header {header} $portcullis_{var};")),
                "{header}: {s}"
            );
        }
        assert!(
            !s.contains("x_portcullis_subject"),
            "the default name leaked: {s}"
        );
        assert!(s.contains("proxy_pass http://127.0.0.1:5000;"));
    }

    #[test]
    fn caddy_strips_then_copies_every_configured_identity_header() {
        let s = render(ProxyKind::Caddy, &inputs());
        assert!(s.contains("forward_auth 10.0.0.5:9000 {"), "{s}");
        assert!(s.contains("uri /_auth_gw/caddy"), "{s}");
        assert!(s.contains(
            "copy_headers X-User-Id X-User-Roles X-Portcullis-Permissions X-Portcullis-Tenant X-Portcullis-Session X-Portcullis-Auth-Method"
        ), "{s}");
        assert!(s.contains("request_header -X-User-Id"), "{s}");
        let strip = s.find("request_header -X-User-Id").unwrap();
        assert!(strip < s.find("forward_auth 10.0.0.5").unwrap());
        assert!(s.contains("reverse_proxy 127.0.0.1:5000"));
    }

    #[test]
    fn traefik_and_envoy_name_the_endpoint_and_headers() {
        let i = inputs();
        let t = render(ProxyKind::Traefik, &i);
        assert!(
            t.contains("address: \"http://10.0.0.5:9000/_auth_gw/traefik\""),
            "{t}"
        );
        assert!(t.contains("- \"X-User-Id\""), "{t}");
        assert!(t.contains("- \"X-Portcullis-Session\""), "{t}");
        let e = render(ProxyKind::Envoy, &i);
        assert!(e.contains("path_prefix: /_auth_gw/envoy"), "{e}");
        assert!(
            e.contains("socket_address: { address: 10.0.0.5, port_value: 9000 }"),
            "{e}"
        );
        assert!(e.contains("- exact: x-user-roles"), "{e}");
        assert!(e.contains("- exact: x-api-key"), "{e}");
    }

    #[test]
    fn wildcard_listen_becomes_loopback_and_bad_urls_are_refused() {
        let args = SnippetsArgs {
            proxy: ProxyKind::Caddy,
            config: None,
            gateway: None,
            upstream: None,
            listen: 80,
        };
        let i = Inputs::new(None, &args).unwrap();
        assert_eq!(i.gateway, "http://127.0.0.1:8080");
        assert_eq!(i.prefix, "/_portcullis/auth");
        assert_eq!(i.upstream, "http://127.0.0.1:8000");
        let bad = SnippetsArgs {
            gateway: Some("ftp://x".into()),
            ..args
        };
        assert!(Inputs::new(None, &bad).is_err());
    }
}
