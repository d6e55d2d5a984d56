//! TLS termination on the public listener (`[server.tls]`): rustls on the
//! aws-lc-rs provider, ALPN `h2` then `http/1.1`, the certificate re-read
//! on SIGHUP, handshakes bounded in time and in number.
//!
//! The current `ServerConfig` sits behind a lock that each handshake reads
//! once; a reload builds a whole new config from the files and swaps it in
//! only if both files parse and the key matches the certificate. A bad file
//! keeps the old certificate in service, says why in the log and counts
//! `portcullis_tls_reloads_total{result="error"}`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// Largest certificate or key file read (a chain of a few certificates is
/// a few KiB; anything near this is not a PEM file meant for us).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The ALPN protocols offered, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate and key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is larger than any certificate or key file should be.
    #[error("{path}: larger than {MAX_PEM_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A file holds no usable PEM section of the expected kind.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused a configuration that involves no file.
    #[error("TLS configuration: {0}")]
    Rustls(String),
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("{cert} / {key}: {message}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        message: String,
    },
}

/// Why a TLS connection was not established.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not complete the handshake in time.
    #[error("the TLS handshake did not complete within {0:?}")]
    Timeout(Duration),
    /// The handshake failed (protocol error, no shared cipher, reset ...).
    #[error("TLS handshake failed: {0}")]
    Failed(io::Error),
}

/// The TLS side of the public listener; shared by every connection.
pub struct Tls {
    current: RwLock<Arc<ServerConfig>>,
    cert_file: PathBuf,
    key_file: PathBuf,
    handshake_timeout: Duration,
    handshakes: Arc<Semaphore>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the certificate and key of `config`; an error here stops the start.
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let server = server_config(&config.cert_file, &config.key_file)?;
        Ok(Arc::new(Self {
            current: RwLock::new(server),
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            handshake_timeout: config.handshake_timeout,
            handshakes: Arc::new(Semaphore::new(config.max_handshakes)),
        }))
    }

    /// The config new handshakes use.
    fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads both files; on success new handshakes use them, on failure
    /// the old certificate stays. Logged and counted either way.
    pub fn reload(&self) -> Result<(), TlsError> {
        match server_config(&self.cert_file, &self.key_file) {
            Ok(server) => {
                match self.current.write() {
                    Ok(mut c) => *c = server,
                    Err(poisoned) => *poisoned.into_inner() = server,
                }
                metrics::counter!("portcullis_tls_reloads_total", "result" => "ok").increment(1);
                tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                metrics::counter!("portcullis_tls_reloads_total", "result" => "error").increment(1);
                tracing::error!(error = %e, "TLS certificate reload failed; the previous certificate stays in use");
                Err(e)
            }
        }
    }

    /// Reloads on every SIGHUP, for the life of the process. Installs its
    /// own signal stream (tokio delivers a signal to every stream).
    pub fn reload_on_sighup(self: &Arc<Self>) -> io::Result<()> {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let this = Arc::clone(&this);
                // File reads and PEM parsing off the reactor threads.
                let _ = tokio::task::spawn_blocking(move || this.reload()).await;
            }
        });
        Ok(())
    }

    /// A handshake slot, or `None` when `max_handshakes` are in progress
    /// (the caller closes the connection: a flood of silent clients must
    /// not pile up sockets and tasks).
    pub fn slot(&self) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.handshakes).try_acquire_owned().ok();
        if permit.is_none() {
            handshake_failure("busy");
        }
        permit
    }

    /// The handshake, within `handshake_timeout`; `_slot` is held until it ends.
    pub async fn accept(
        &self,
        stream: TcpStream,
        _slot: OwnedSemaphorePermit,
    ) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
        match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => {
                handshake_failure("error");
                Err(HandshakeError::Failed(e))
            }
            Err(_) => {
                handshake_failure("timeout");
                Err(HandshakeError::Timeout(self.handshake_timeout))
            }
        }
    }
}

fn handshake_failure(reason: &'static str) {
    metrics::counter!("portcullis_tls_handshake_failures_total", "reason" => reason).increment(1);
}

/// A file's bytes, bounded.
pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let read = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// The PEM certificates of `path`, in order; at least one.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |message: String| TlsError::Pem {
        path: path.to_path_buf(),
        message,
    };
    let bytes = read_bounded(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(pem("no `BEGIN CERTIFICATE` section found".into()));
    }
    Ok(certs)
}

/// The PEM private key of `path` (PKCS#8, PKCS#1 or SEC1). The error
/// names the file, never its contents.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_bounded(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        message: format!("no PEM private key: {e}"),
    })
}

/// A rustls server config from the two PEM files.
fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs(cert_file)?;
    let key = read_key(key_file)?;
    let config_error = |message: String| TlsError::Config {
        cert: cert_file.to_path_buf(),
        key: key_file.to_path_buf(),
        message,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| config_error(e.to_string()))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
