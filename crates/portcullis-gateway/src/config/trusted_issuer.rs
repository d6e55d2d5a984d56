//! A `[[keys.trusted_issuers]]` entry as the library's remote issuer: built
//! at start by the gateway, and by validation to check the entry's settings
//! (no I/O but reading its `ca_file`).

use portcullis::jwks::{FetchError, IssuerError, KeySource, RemoteIssuer, RemoteIssuerConfig};

use super::TrustedIssuerConfig;

/// The issuer of one `[[keys.trusted_issuers]]` entry (no I/O but reading
/// its `ca_file`); an error names the entry's field and says why.
pub fn remote_issuer(c: &TrustedIssuerConfig) -> Result<RemoteIssuer, (&'static str, String)> {
    let source = match &c.jwks_url {
        Some(url) => KeySource::Jwks(url.clone()),
        None => KeySource::Discovery,
    };
    let mut settings = RemoteIssuerConfig::new(c.issuer.clone(), source);
    settings.validation.audiences = c.audience.clone();
    settings.validation.require_typ = c.require_typ;
    settings.ttl = c.ttl;
    settings.refetch_interval = c.refetch_interval;
    settings.max_stale = c.max_stale;
    settings.allow_http = c.allow_http;
    settings.jwks_hosts = c.jwks_hosts.clone();
    if let Some(path) = &c.ca_file {
        settings.tls.extra_roots_pem =
            std::fs::read(path).map_err(|e| ("ca_file", format!("{}: {e}", path.display())))?;
    }
    let url_field = if c.jwks_url.is_some() {
        "jwks_url"
    } else {
        "issuer"
    };
    RemoteIssuer::new(settings).map_err(|e| match e {
        IssuerError::Setting { field, reason } => {
            let field = match field {
                "validation.audiences" => "audience",
                "ttl" => "ttl",
                "refetch_interval" => "refetch_interval",
                "max_stale" => "max_stale",
                _ => url_field,
            };
            (field, reason.to_owned())
        }
        IssuerError::Config(FetchError::Tls(detail)) => ("ca_file", detail),
        other => (url_field, other.to_string()),
    })
}
