//! TLS to `https://` upstreams: the rustls client config of one upstream
//! (aws-lc-rs; the Mozilla roots, or only the CAs of its `ca_file`; its
//! client certificate for mTLS; verification always on unless the upstream
//! says `insecure_skip_verify`), and why a handshake failed, as a metric
//! label; the deadline on the whole connect, handshake included. The files
//! are read each time the request path is built: at the start and on every
//! reload.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::config::UpstreamConfig;
use crate::listen::tls::{TlsError, read_certs, read_key};

/// The TLS side of one `https://` upstream.
#[derive(Clone)]
pub struct UpstreamTls {
    /// What every connection to the upstream uses.
    pub config: ClientConfig,
    /// The SNI name and the name the certificate must hold, when it is not
    /// the URL's host (`server_name`).
    pub server_name: Option<ServerName<'static>>,
    /// `insecure_skip_verify`: any certificate is accepted.
    pub insecure: bool,
}

// Not derived: the config holds the client key; nothing of it is printed.
impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field(
                "client_certificate",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// The TLS config of `up`, reading its files; `None` for a plain
    /// `http://` upstream. An error names the file and the upstream.
    pub fn load(up: &UpstreamConfig) -> Result<Option<Self>, UpstreamTlsError> {
        if !up.is_tls() {
            return Ok(None);
        }
        let fail = |key: &'static str| {
            move |source: TlsError| UpstreamTlsError {
                upstream: up.name.clone(),
                key,
                source,
            }
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| fail("url")(TlsError::Rustls(e.to_string())))?;
        let builder = if up.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                    provider.signature_verification_algorithms,
                )))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match &up.ca_file {
                // A private CA replaces the public roots: a public
                // certificate for the upstream's name is not enough.
                Some(ca_file) => {
                    for cert in read_certs(ca_file).map_err(fail("ca_file"))? {
                        roots.add(cert).map_err(|e| {
                            fail("ca_file")(TlsError::Pem {
                                path: ca_file.clone(),
                                message: format!("not a usable CA certificate: {e}"),
                            })
                        })?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots)
        };
        let config = match (&up.client_cert_file, &up.client_key_file) {
            (Some(cert_file), Some(key_file)) => {
                let chain = read_certs(cert_file).map_err(fail("client_cert_file"))?;
                let key = read_key(key_file).map_err(fail("client_key_file"))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    fail("client_key_file")(TlsError::Config {
                        cert: cert_file.clone(),
                        key: key_file.clone(),
                        message: e.to_string(),
                    })
                })?
            }
            // Validation refuses one without the other.
            _ => builder.with_no_client_auth(),
        };
        // No ALPN here: the proxy's hyper-rustls connector sets it (`h2`
        // alone for `protocol = "h2"`, none for HTTP/1.1, a TLS server's
        // default) and panics on a config that already has some.
        let server_name = match &up.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|e| {
                fail("server_name")(TlsError::Rustls(format!(
                    "server_name `{name}` is not a DNS name or an IP address: {e}"
                )))
            })?),
            None => None,
        };
        Ok(Some(Self {
            config,
            server_name,
            insecure: up.insecure_skip_verify,
        }))
    }
}

/// An upstream's TLS files could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("upstream `{upstream}`: {source}")]
pub struct UpstreamTlsError {
    /// The upstream's name.
    pub upstream: String,
    /// The key of `[[upstreams]]` whose file (or value) is wrong.
    pub key: &'static str,
    /// What is wrong with which file.
    #[source]
    pub source: TlsError,
}

/// Why a connection to an upstream failed in TLS, as the `reason` label
/// of `portcullis_gateway_upstream_tls_failures_total`, with rustls's
/// error; `None` when the failure was not TLS (refused, reset, timeout).
pub fn failure<'a>(e: &'a (dyn StdError + 'static)) -> Option<(&'static str, &'a rustls::Error)> {
    let tls = find_rustls(e)?;
    let reason = match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "name_mismatch"
            }
            _ => "bad_certificate",
        },
        // The upstream refused us (our client certificate, our protocol
        // versions ...).
        rustls::Error::AlertReceived(_) => "alert_received",
        _ => "handshake",
    };
    Some((reason, tls))
}

/// The rustls error in `e`'s chain. `io::Error` hides the error it wraps
/// from `source()`, so each one is opened with `get_ref`.
fn find_rustls<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(e);
    // A chain longer than this is not one hyper and tokio-rustls build.
    for _ in 0..16 {
        let err = current?;
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            let inner: &(dyn StdError + 'static) = inner;
            current = Some(inner);
            continue;
        }
        current = err.source();
    }
    None
}

/// A connector whose whole connect, TCP and TLS handshake together, is
/// due within `limit` (`server.upstream_connect_timeout`): an upstream
/// that accepts the connection and never answers the handshake fails as
/// fast as one that does not accept it.
#[derive(Debug, Clone)]
pub struct ConnectDeadline<C> {
    inner: C,
    limit: Duration,
}

impl<C> ConnectDeadline<C> {
    /// `inner`, bounded by `limit`.
    pub fn new(inner: C, limit: Duration) -> Self {
        Self { inner, limit }
    }
}

/// The connect, handshake included, did not complete in time.
#[derive(Debug, thiserror::Error)]
#[error("connecting to the upstream (TCP and TLS handshake) took longer than {0:?}")]
pub struct ConnectTimedOut(pub Duration);

type BoxError = Box<dyn StdError + Send + Sync>;

impl<C> tower_service::Service<http::Uri> for ConnectDeadline<C>
where
    C: tower_service::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimedOut(limit)) as BoxError),
            }
        })
    }
}

/// `insecure_skip_verify`: every certificate chain and name is accepted.
/// The handshake signatures are still checked (the peer holds the key of
/// the certificate it sent), which keeps TLS itself sound but proves
/// nothing about who the peer is.
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rustls_error_is_found_inside_nested_io_errors() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer = std::io::Error::other(inner);
        let found = failure(&outer);
        assert_eq!(found.map(|(r, _)| r), Some("unknown_issuer"));

        let expired =
            std::io::Error::other(rustls::Error::InvalidCertificate(CertificateError::Expired));
        assert_eq!(failure(&expired).map(|(r, _)| r), Some("expired"));
        let name = std::io::Error::other(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ));
        assert_eq!(failure(&name).map(|(r, _)| r), Some("name_mismatch"));
    }

    #[test]
    fn a_plain_connection_failure_is_not_tls() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(failure(&refused).is_none());
        let wrapped = std::io::Error::other(refused);
        assert!(failure(&wrapped).is_none());
    }
}
