//! `[server]` and `[server.tls]`: listeners, limits and timeouts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The public listener (default `0.0.0.0:8080`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The operations listener: health (default `127.0.0.1:9090`).
    #[serde(default = "default_ops_listen")]
    pub ops_listen: SocketAddr,
    /// Largest request body forwarded (default 10 MiB); larger is 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Time to connect to an upstream (default `5s`).
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub upstream_connect_timeout: Duration,
    /// Time for an upstream to answer with its response head (default `30s`).
    #[serde(default = "default_read_timeout", deserialize_with = "duration")]
    pub upstream_read_timeout: Duration,
    /// How long in-flight requests may drain after SIGTERM (default `30s`).
    #[serde(default = "default_shutdown_timeout", deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Threads serving requests (default: the CPUs this process may run
    /// on). With 1 the single-threaded scheduler serves everything, which
    /// measured 19–22 % more requests per CPU than the work-stealing one
    /// with one worker.
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// Where `serve` writes its process id (removed at exit), for
    /// `portcullis reload`; absent: no pid file.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// TLS termination on the public listener; absent: plaintext
    /// (HTTP/1.1 and h2c prior knowledge).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Time a client gets to send a whole request body, from its request
    /// head (default `60s`); later is 408 `gateway.request_timeout`.
    #[serde(
        default = "default_request_body_timeout",
        deserialize_with = "duration"
    )]
    pub request_body_timeout: Duration,
    /// A public connection with no request in progress for this long is
    /// closed (HTTP/2: GOAWAY; pings do not count) (default `75s`).
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Longest wait for the next bytes of an upstream's response body
    /// (default `60s`); then the client's response is cut.
    #[serde(
        default = "default_upstream_body_timeout",
        deserialize_with = "duration"
    )]
    pub upstream_body_timeout: Duration,
    /// Connections open at once on the public listener (default 4096);
    /// past it a new connection is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once on the ops listener (default 256).
    #[serde(default = "default_ops_max_connections")]
    pub ops_max_connections: usize,
    /// A WebSocket tunnel with no byte either way for this long is closed
    /// (default `5m`).
    #[serde(
        default = "default_websocket_idle_timeout",
        deserialize_with = "duration"
    )]
    pub websocket_idle_timeout: Duration,
    /// WebSocket tunnels open at once (default 1024); past it a handshake
    /// is 503 `gateway.too_many_websockets`.
    #[serde(default = "default_max_websockets")]
    pub max_websockets: usize,
    /// More `Host` names the ops listener answers to, besides the loopback
    /// names and its listen address (DNS rebinding protection: any other
    /// `Host` is 421). `*.example.com` matches one or more labels.
    #[serde(default)]
    pub ops_hosts: Vec<String>,
    /// Live audit streams (`/admin/audit/stream`, the console's) open at
    /// once on this replica (default 32); past it, 429.
    #[serde(default = "default_admin_streams")]
    pub admin_streams: usize,
    /// Live audit streams one admin key may hold open (default 4); past
    /// it, 429.
    #[serde(default = "default_admin_streams_per_key")]
    pub admin_streams_per_key: usize,
}

fn default_request_body_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(75)
}
fn default_upstream_body_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    4096
}
fn default_ops_max_connections() -> usize {
    256
}
fn default_websocket_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_websockets() -> usize {
    1024
}
fn default_admin_streams() -> usize {
    32
}
fn default_admin_streams_per_key() -> usize {
    4
}

/// `[server.tls]`: the public listener terminates TLS (HTTP/2 and
/// HTTP/1.1 by ALPN). SIGHUP re-reads both files.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: PathBuf,
    /// Time a client gets to complete the TLS handshake (default `10s`).
    #[serde(default = "default_handshake_timeout", deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once (default 1024); connections beyond
    /// it are closed at once.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_handshakes() -> usize {
    1024
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_ops_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_max_body() -> u64 {
    10 * 1024 * 1024
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            ops_listen: default_ops_listen(),
            max_body_bytes: default_max_body(),
            upstream_connect_timeout: default_connect_timeout(),
            upstream_read_timeout: default_read_timeout(),
            shutdown_timeout: default_shutdown_timeout(),
            worker_threads: None,
            pid_file: None,
            tls: None,
            request_body_timeout: default_request_body_timeout(),
            idle_timeout: default_idle_timeout(),
            upstream_body_timeout: default_upstream_body_timeout(),
            max_connections: default_max_connections(),
            ops_max_connections: default_ops_max_connections(),
            websocket_idle_timeout: default_websocket_idle_timeout(),
            max_websockets: default_max_websockets(),
            ops_hosts: Vec::new(),
            admin_streams: default_admin_streams(),
            admin_streams_per_key: default_admin_streams_per_key(),
        }
    }
}
