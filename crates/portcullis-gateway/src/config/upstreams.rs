//! `[[upstreams]]`: where allowed requests go, and the checks of each
//! upstream's URL, protocol and TLS keys.

use std::path::PathBuf;

use serde::Deserialize;

use super::InternalTokenConfig;

/// `[[upstreams]]`: an upstream and the guard routes it serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// A name for logs.
    pub name: String,
    /// `http://host:port` with an optional path prefix.
    pub url: String,
    /// What the gateway speaks to this upstream (default HTTP/1.1).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Names of the `[[guard.routes]]` proxied here.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Serves every allowed request whose route no upstream lists (at most one).
    #[serde(default)]
    pub default: bool,
    /// Overrides `internal_token.enabled` for this upstream.
    #[serde(default)]
    pub internal_token: Option<bool>,
    /// `aud` of the internal tokens sent here (default: the upstream's name).
    #[serde(default)]
    pub internal_token_audience: Option<String>,
    /// Overrides `identity.strip_credentials` for this upstream.
    #[serde(default)]
    pub strip_credentials: Option<bool>,
    /// PEM CA certificates that alone are trusted for an `https://`
    /// upstream (default: the Mozilla root set).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The name sent as SNI and checked against the certificate (default:
    /// the URL's host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM certificate chain presented to an upstream that asks for one (mTLS).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Accept any certificate from this upstream (no chain, name or date
    /// check): for a test bench only; warned about at start, on reload and
    /// by `config check`.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `upstreams[].protocol`: the HTTP version spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, over TCP (`http://`) or TLS (`https://`).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP (`http://` only).
    H2c,
    /// HTTP/2 over TLS, negotiated by ALPN (`https://` only).
    H2,
}

impl UpstreamProtocol {
    /// Whether this is HTTP/2 (`h2c` or `h2`).
    pub const fn is_http2(self) -> bool {
        matches!(self, Self::H2c | Self::H2)
    }
}

impl UpstreamConfig {
    /// Whether internal tokens are sent here.
    pub fn sends_internal_token(&self, global: &InternalTokenConfig) -> bool {
        self.internal_token.unwrap_or(global.enabled)
    }

    /// The `aud` of the internal tokens sent here.
    pub fn internal_audience(&self) -> &str {
        self.internal_token_audience
            .as_deref()
            .unwrap_or(&self.name)
    }

    /// Whether the URL is `https://` (TLS to this upstream).
    pub fn is_tls(&self) -> bool {
        self.url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    }

    /// The TLS keys set on this upstream, by name (for errors on a
    /// plain `http://` upstream).
    fn tls_keys_set(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        if self.ca_file.is_some() {
            set.push("ca_file");
        }
        if self.server_name.is_some() {
            set.push("server_name");
        }
        if self.client_cert_file.is_some() {
            set.push("client_cert_file");
        }
        if self.client_key_file.is_some() {
            set.push("client_key_file");
        }
        if self.insecure_skip_verify {
            set.push("insecure_skip_verify");
        }
        set
    }
}

pub(super) fn upstream_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "`{url}`: an upstream is http://HOST:PORT or https://HOST:PORT"
        ));
    }
    if uri.authority().is_none() || uri.query().is_some() {
        return Err(format!(
            "`{url}` must be http(s)://HOST:PORT[/PREFIX] without query"
        ));
    }
    Ok(uri)
}

/// The TLS keys of one upstream that do not fit together: (key, message).
/// Whether the files exist and parse is checked where they are read
/// (`config check`, the start and each reload).
pub(super) fn upstream_tls_errors(up: &UpstreamConfig) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    match (up.protocol, up.is_tls()) {
        (UpstreamProtocol::H2, false) => errors.push((
            "protocol",
            format!(
                "`h2` is HTTP/2 over TLS and needs an https:// URL; `{}` is plain http (use `h2c` for HTTP/2 without TLS)",
                up.url
            ),
        )),
        (UpstreamProtocol::H2c, true) => errors.push((
            "protocol",
            format!(
                "`h2c` is HTTP/2 without TLS and needs an http:// URL; `{}` is https (use `h2` for HTTP/2 over TLS)",
                up.url
            ),
        )),
        _ => {}
    }
    if !up.is_tls() {
        for key in up.tls_keys_set() {
            errors.push((
                key,
                format!(
                    "applies only to an https:// upstream; `{}` is plain http",
                    up.url
                ),
            ));
        }
        return errors;
    }
    match (&up.client_cert_file, &up.client_key_file) {
        (Some(_), None) => errors.push((
            "client_key_file",
            "`client_cert_file` is set: give its private key too".into(),
        )),
        (None, Some(_)) => errors.push((
            "client_cert_file",
            "`client_key_file` is set: give its certificate too".into(),
        )),
        _ => {}
    }
    if up.insecure_skip_verify && up.ca_file.is_some() {
        errors.push((
            "ca_file",
            "has no effect with `insecure_skip_verify = true` (nothing is verified); remove one of them".into(),
        ));
    }
    if let Some(name) = &up.server_name
        && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        errors.push((
            "server_name",
            format!("`{name}` is not a DNS name or an IP address"),
        ));
    }
    for (key, path) in [
        ("ca_file", &up.ca_file),
        ("client_cert_file", &up.client_cert_file),
        ("client_key_file", &up.client_key_file),
    ] {
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            errors.push((key, "must not be empty".into()));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse;

    #[test]
    fn upstream_tls_keys_must_fit_together() {
        let base = "[keys]\ndir = \"/\"\nissuer = \"https://i.test\"\n\n[[guard.routes]]\nname = \"docs\"\npath = \"/docs\"\n\n[[upstreams]]\nname = \"app\"\ndefault = true\n";
        let errors = |extra: &str| -> Vec<(String, String)> {
            match parse(Path::new("t.toml"), &format!("{base}{extra}")) {
                Ok(_) => Vec::new(),
                Err(e) => {
                    e.0.into_iter()
                        .map(|e| (e.key.unwrap_or_default(), e.message))
                        // `/` holds no signing key; only the upstreams matter here.
                        .filter(|(k, _)| k.starts_with("upstreams"))
                        .collect()
                }
            }
        };
        // An https:// upstream with every key: valid (files are read later).
        let full = "url = \"https://10.0.0.1:8443/p\"\nca_file = \"/ca.pem\"\nserver_name = \"app.internal\"\nclient_cert_file = \"/c.pem\"\nclient_key_file = \"/c.key\"\n";
        assert_eq!(errors(full), Vec::new());
        assert_eq!(errors("url = \"https://a.test\"\n"), Vec::new());

        let e = errors(
            "url = \"http://10.0.0.1:80\"\nca_file = \"/ca.pem\"\ninsecure_skip_verify = true\n",
        );
        let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["upstreams[0].ca_file", "upstreams[0].insecure_skip_verify"],
            "{e:?}"
        );
        assert!(e[0].1.contains("only to an https:// upstream"), "{e:?}");

        let e = errors("url = \"https://a.test\"\nclient_cert_file = \"/c.pem\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "upstreams[0].client_key_file");
        let e = errors("url = \"https://a.test\"\nclient_key_file = \"/c.key\"\n");
        assert_eq!(e[0].0, "upstreams[0].client_cert_file", "{e:?}");

        let e = errors(
            "url = \"https://a.test\"\nca_file = \"/ca.pem\"\ninsecure_skip_verify = true\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "upstreams[0].ca_file");

        let e = errors("url = \"https://a.test\"\nserver_name = \"not a name\"\n");
        assert_eq!(e[0].0, "upstreams[0].server_name", "{e:?}");

        let e = errors("url = \"ftp://a.test\"\n");
        assert_eq!(e[0].0, "upstreams[0].url", "{e:?}");
    }

    #[test]
    fn the_upstream_protocol_must_fit_the_url_scheme() {
        let base = "[keys]\ndir = \"/\"\nissuer = \"https://i.test\"\n\n[[guard.routes]]\nname = \"docs\"\npath = \"/docs\"\n\n[[upstreams]]\nname = \"app\"\ndefault = true\n";
        let errors = |extra: &str| -> Vec<(String, Option<usize>, String)> {
            match parse(Path::new("t.toml"), &format!("{base}{extra}")) {
                Ok(_) => Vec::new(),
                Err(e) => {
                    e.0.into_iter()
                        .filter(|e| e.key.as_deref().is_some_and(|k| k.starts_with("upstreams")))
                        .map(|e| (e.key.unwrap_or_default(), e.line, e.message))
                        .collect()
                }
            }
        };
        for ok in [
            "url = \"http://10.0.0.1:80\"\n",
            "url = \"http://10.0.0.1:80\"\nprotocol = \"http1\"\n",
            "url = \"https://a.test\"\nprotocol = \"http1\"\n",
            "url = \"http://10.0.0.1:80\"\nprotocol = \"h2c\"\n",
            "url = \"https://a.test\"\nprotocol = \"h2\"\n",
        ] {
            assert_eq!(errors(ok), Vec::new(), "{ok}");
        }
        // The error points at the `protocol` line (line 13 of the file).
        let e = errors("url = \"http://10.0.0.1:80\"\nprotocol = \"h2\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            (e[0].0.as_str(), e[0].1),
            ("upstreams[0].protocol", Some(13))
        );
        assert!(e[0].2.contains("needs an https:// URL"), "{e:?}");
        let e = errors("url = \"https://a.test\"\nprotocol = \"h2c\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            (e[0].0.as_str(), e[0].1),
            ("upstreams[0].protocol", Some(13))
        );
        assert!(e[0].2.contains("needs an http:// URL"), "{e:?}");
        let e = errors("url = \"https://a.test\"\nprotocol = \"h3\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].2.contains("h3"), "{e:?}");
    }
}
