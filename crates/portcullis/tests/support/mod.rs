//! Shared test support: where the real backends are, whether a test may skip
//! when one is unreachable, and per-run isolation (key prefixes, databases).
//!
//! Use from an integration test with `mod support;`.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `PORTCULLIS_REQUIRE_BACKENDS` set (as `.ci/run` does): an unreachable
/// server is a failure, not a skip.
pub fn require_backends() -> bool {
    std::env::var_os("PORTCULLIS_REQUIRE_BACKENDS").is_some_and(|v| !v.is_empty() && v != "0")
}

fn reachable(host_port: &str) -> bool {
    let addrs: Vec<SocketAddr> = match host_port.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(_) => return false,
    };
    addrs
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_millis(500)).is_ok())
}

/// `host:port` of a `scheme://[user@]host:port[/...]` URL.
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// Skip (returning `None`) or fail, per [`require_backends`].
fn unreachable_backend(what: &str, url: &str) -> Option<String> {
    assert!(
        !require_backends(),
        "{what} at {url} is unreachable and PORTCULLIS_REQUIRE_BACKENDS is set"
    );
    eprintln!("skipping: {what} at {url} is unreachable");
    None
}

/// The single Redis server (`PORTCULLIS_REDIS_URL`, default `redis://127.0.0.1:6379`).
pub fn redis_url() -> Option<String> {
    let url = std::env::var("PORTCULLIS_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    if reachable(host_port(&url)) {
        Some(url)
    } else {
        unreachable_backend("Redis", &url)
    }
}

/// The local Redis Cluster's seed nodes (`PORTCULLIS_REDIS_CLUSTER`, comma
/// separated, set by `scripts/test.sh` after `scripts/redis-cluster.sh start`).
pub fn redis_cluster_urls() -> Option<Vec<String>> {
    let Ok(list) = std::env::var("PORTCULLIS_REDIS_CLUSTER") else {
        assert!(
            !require_backends(),
            "PORTCULLIS_REDIS_CLUSTER is unset and PORTCULLIS_REQUIRE_BACKENDS is set: run scripts/test.sh"
        );
        eprintln!("skipping: PORTCULLIS_REDIS_CLUSTER is unset (scripts/test.sh sets it)");
        return None;
    };
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    match urls.iter().find(|u| !reachable(host_port(u))) {
        Some(down) => unreachable_backend("Redis Cluster node", down).map(|_| Vec::new()),
        None => Some(urls),
    }
}

/// The PostgreSQL server used to create per-run databases
/// (`PORTCULLIS_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
pub fn postgres_admin_url() -> Option<String> {
    let url = std::env::var("PORTCULLIS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    if reachable(host_port(&url)) {
        Some(url)
    } else {
        unreachable_backend("PostgreSQL", &url)
    }
}

/// A name unique to this process and call: `<label>_<pid>_<nanos>_<n>`,
/// made of `[a-z0-9_]` so it is a valid key prefix and database name.
pub fn unique_name(label: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{label}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Redis key prefix unique to one test, e.g. `pcx_test_<label>_...:`.
pub fn unique_prefix(label: &str) -> String {
    format!("pcx_test_{}:", unique_name(label))
}

/// A fresh PostgreSQL database for one test run, dropped (with `FORCE`) when
/// this guard is dropped, even after a panic.
#[cfg(feature = "postgres")]
pub struct FreshDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

#[cfg(feature = "postgres")]
impl FreshDatabase {
    /// Creates the database, or returns `None` when PostgreSQL is unreachable
    /// and skipping is allowed.
    pub async fn create(label: &str) -> Option<Self> {
        use sqlx::Connection;
        let admin_url = postgres_admin_url()?;
        let name = unique_name(&format!("pcx_{label}"));
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Some(Self {
            admin_url,
            name,
            url,
        })
    }
}

#[cfg(feature = "postgres")]
impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime: do the cleanup on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Deletes every key under `prefix` on one Redis server (SCAN + UNLINK).
#[cfg(feature = "redis")]
pub async fn redis_cleanup(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let res: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await;
        let Ok((next, keys)) = res else { return };
        // One key per UNLINK: on a Cluster node a multi-key UNLINK across
        // slots fails with CROSSSLOT.
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("UNLINK").arg(key).ignore();
            }
            let _: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// [`redis_cleanup`] on every node of the local cluster.
#[cfg(feature = "redis")]
pub async fn redis_cluster_cleanup(urls: &[String], prefix: &str) {
    for url in urls {
        redis_cleanup(url, prefix).await;
    }
}

// --- TLS (webhook and remote-issuer tests) ---------------------------------

/// A file of the test-only TLS material in `tests/data/tls`.
pub fn tls_data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tls")
        .join(name)
}

/// The test CA as an extra root for `portcullis::http_client`.
pub fn test_ca_trust() -> portcullis::http_client::TlsTrust {
    portcullis::http_client::TlsTrust {
        extra_roots_pem: std::fs::read(tls_data("ca.pem")).expect("tests/data/tls/ca.pem"),
        only_extra_roots: false,
    }
}

/// A TLS acceptor serving the test certificate for 127.0.0.1 and localhost.
pub fn test_tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(tls_data("server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("server certificate");
    let key = PrivateKeyDer::from_pem_file(tls_data("server.key")).expect("server.key");
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}
