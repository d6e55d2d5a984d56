//! The outbound HTTP(S) client shared by everything that calls out (webhook
//! alerts, remote JWKS and OIDC discovery): hyper over rustls on the
//! aws-lc-rs provider, trusting the Mozilla root set (webpki-roots) plus any
//! CA certificates the operator adds (a private CA, or a test's own).
//!
//! Plain `http://` is a transport this client can speak, but callers decide
//! whether a URL may use it: every caller refuses it unless configured.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The client type: HTTP/1.1 over TCP, TLS for `https://`.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Which servers the client trusts.
#[derive(Debug, Clone, Default)]
pub struct TlsTrust {
    /// Extra CA certificates (PEM) trusted besides the Mozilla roots.
    pub extra_roots_pem: Vec<u8>,
    /// Trust only `extra_roots_pem`, not the Mozilla roots (a closed network).
    pub only_extra_roots: bool,
}

/// Why the client could not be built.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpClientError {
    /// The extra CA bundle is not PEM certificates.
    #[error("extra CA bundle: {0}; give one or more PEM `CERTIFICATE` blocks")]
    Roots(String),
    /// `only_extra_roots` with an empty bundle would trust nobody.
    #[error("only_extra_roots is set but no extra CA certificate was given")]
    NoRoots,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Builds a client; `connect_timeout` bounds the TCP connect (callers bound
/// the whole exchange themselves).
pub fn build(trust: &TlsTrust, connect_timeout: Duration) -> Result<HttpClient, HttpClientError> {
    let mut roots = rustls::RootCertStore::empty();
    if !trust.only_extra_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if !trust.extra_roots_pem.is_empty() {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&trust.extra_roots_pem) {
            let cert = cert.map_err(|e| HttpClientError::Roots(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| HttpClientError::Roots(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(HttpClientError::Roots("no certificate found".into()));
        }
    }
    if roots.is_empty() {
        return Err(HttpClientError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    // `https://` URIs need the scheme passed through to the TLS layer.
    http.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}
