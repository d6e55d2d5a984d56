//! The long-lived state handles `portcullis serve` builds once from
//! `[storage]`, `[anomaly]` and `[audit]`: the stores facade, the shared
//! Redis connection (one server or a Cluster), the anomaly engine, the
//! rate limiter's backend and the audit writer.
//!
//! Which store lives where:
//!
//! | state | without Redis | with `storage.redis` / `storage.redis_cluster` |
//! |---|---|---|
//! | users, sessions, API keys, app credentials, refresh-token families | `storage.url` | `storage.url` |
//! | the access-token (`jti`) denylist, the revocation log | `storage.url` | `storage.url` |
//! | rate-limit counters | this process | Redis |
//! | bans, detector windows | this process | Redis |
//! | signed-request nonces | this process | Redis |
//! | login regulation (failed attempts per IP and account) | this process (PostgreSQL when `storage.url` is one) | Redis |
//!
//! Revocation is read locally: every replica holds the live revocation set
//! (`[revocation]`), following the log that `storage.url` appends to in
//! the transaction of each revocation, so no revocation check waits on a
//! store; a store outage makes the set staler, and past
//! `revocation.max_stale` `revocation.on_stale` decides.
//!
//! Redis calls on the request path keep the library's time budgets (100 ms
//! for rate limits, bans and detectors), so a Redis that hangs costs a
//! request at most those; what a failure then means is each rate rule's
//! `on_backend_error`, bans and detectors fail open. Nonce lookups get
//! 250 ms and fail closed (a signed request whose nonce cannot be recorded
//! is refused with 503).

use std::sync::Arc;
use std::time::Duration;

use portcullis::anomaly::memory::MemoryDedup;
use portcullis::anomaly::redis::{RedisBans, RedisCounters, RedisDedup};
use portcullis::anomaly::webhook::{AlertDedup, AlertSender};
use portcullis::anomaly::{AnomalyBackend, AnomalyEngine};
use portcullis::audit::postgres::PostgresAudit;
use portcullis::audit::sqlite::SqliteAudit;
use portcullis::audit::{AuditSink, AuditStore, AuditWriter, AuditWriterConfig};
use portcullis::authz::{MemoryNonceStore, NonceStore, RedisNonceStore};
use portcullis::ratelimit::{RateLimiter, RateLimiterBuilder};
use portcullis::redis_conn::RedisConnection;
use portcullis::regulation::Regulator;
use portcullis::stores::{Backends, Stores, StoresConfig};
use portcullis_core::{SecretHasher, SystemClock};

use crate::config::{Config, StorageUrl};
use crate::serve::{ServeError, start};

/// How long the gateway waits for Redis or PostgreSQL at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The budget of one nonce call on the request path; a nonce that cannot
/// be recorded refuses the request (fail closed), like the denylist.
const NONCE_CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// Most live nonces kept in memory without Redis (a nonce is at most 128
/// bytes and an app id 128: some 40 MB at worst); beyond it signed requests
/// fail closed until nonces expire.
const MEMORY_NONCES: usize = 100_000;

/// What the gateway's parts share, built once per process.
pub struct Storage {
    /// The stores facade (users, sessions, keys, revocation).
    pub stores: Arc<Stores>,
    /// The pepper-keyed hasher the stores and the issuer use.
    pub hasher: SecretHasher,
    /// The shared Redis connection, when configured.
    pub redis: Option<RedisConnection>,
    /// Bans and detectors, unless `anomaly.enabled = false`.
    pub anomaly: Option<Arc<AnomalyEngine>>,
    /// The audit writer, when an audit database is configured.
    pub audit: Option<Arc<AuditWriter>>,
    /// The same audit database, for queries (the admin API).
    pub audit_store: Option<Arc<dyn AuditStore>>,
    redis_prefix: String,
    /// The PostgreSQL stores, when `storage.url` is one (the regulation's
    /// shared state without Redis).
    postgres: Option<portcullis::stores::postgres::PostgresStores>,
}

impl Storage {
    /// The signed-request nonce store: on the shared Redis when configured
    /// (nonces under `<redis_prefix>:nonce:`, so a nonce spent on one
    /// replica is refused by all), else in this process.
    pub fn nonce_store(&self) -> Arc<dyn NonceStore> {
        match &self.redis {
            Some(conn) => Arc::new(RedisNonceStore::new(
                conn.with_call_timeout(NONCE_CALL_TIMEOUT),
                &self.redis_prefix,
            )),
            None => Arc::new(MemoryNonceStore::new(MEMORY_NONCES)),
        }
    }

    /// The rate limiter's backend for a guard: the shared Redis when
    /// configured (counters under `<redis_prefix>:ratelimit`), else `None`
    /// (this process's memory).
    pub fn rate_limiter(&self) -> Option<RateLimiterBuilder> {
        self.redis.as_ref().map(|conn| {
            RateLimiter::builder().redis(conn.clone(), &format!("{}:ratelimit", self.redis_prefix))
        })
    }
}

impl Storage {
    /// The login regulator of `[token_service.regulation]`: its state on
    /// the shared Redis when configured (under `<redis_prefix>:regulation:`),
    /// else in the shared PostgreSQL database when `storage.url` is one
    /// (table `regulation`), either behind its own breaker falling back to
    /// this process; else in this process. `None` when regulation is turned
    /// off.
    pub fn regulator(
        &self,
        config: &crate::config::RegulationConfig,
    ) -> Result<Option<Arc<Regulator>>, ServeError> {
        if !config.enabled {
            return Ok(None);
        }
        let regulator = Regulator::memory(config.policy(), Arc::new(SystemClock))
            .map_err(|e| start("token_service.regulation")(e.to_string()))?;
        let regulator = match (&self.redis, &self.postgres) {
            (Some(conn), _) => regulator.on_redis(conn.clone(), &self.redis_prefix),
            (None, Some(pg)) => regulator.on_postgres(pg.pool().clone()),
            (None, None) => regulator,
        };
        Ok(Some(Arc::new(regulator)))
    }
}

/// Opens everything `[storage]`, `[anomaly]` and `[audit]` name: fails,
/// naming the key, when a backend cannot be reached within 10 s.
pub async fn open(config: &Config) -> Result<Storage, ServeError> {
    let pepper = match &config.storage.pepper_file {
        Some(path) => std::fs::read(path)
            .map_err(|e| start("storage.pepper_file")(format!("{}: {e}", path.display())))?,
        None => {
            let mut random = vec![0u8; 32];
            portcullis_core::opaque::fill_random(&mut random)
                .map_err(|e| start("pepper")(e.to_string()))?;
            random
        }
    };
    let hasher =
        SecretHasher::new(&pepper).map_err(|e| start("storage.pepper_file")(e.to_string()))?;

    let redis = connect_redis(config).await?;
    let prefix = config.storage.redis_prefix.clone();

    let mut postgres = None;
    let backends = match StorageUrl::parse(&config.storage.url).map_err(start("storage.url"))? {
        StorageUrl::Memory => {
            Backends::all(Arc::new(portcullis::stores::memory::MemoryStores::new()))
        }
        StorageUrl::Sqlite(path) => Backends::all(Arc::new(
            portcullis::stores::sqlite::SqliteStores::open(&path)
                .await
                .map_err(|e| start("storage.url")(e.to_string()))?,
        )),
        StorageUrl::Postgres(url) => {
            let pg = tokio::time::timeout(
                CONNECT_TIMEOUT,
                portcullis::stores::postgres::PostgresStores::connect(&url, 16),
            )
            .await
            .map_err(|_| start("storage.url")("no answer within 10 s".into()))?
            .map_err(|e| start("storage.url")(e.to_string()))?;
            postgres = Some(pg.clone());
            Backends::all(Arc::new(pg))
        }
    };
    // The denylist stays with the sessions in `storage.url`: every
    // revocation and its log entry commit in one transaction there, and
    // each replica's local set follows that one log (no Redis call on the
    // revocation path).
    let mut stores_config = StoresConfig::new(hasher.clone());
    stores_config.revocation = config.revocation.policy();
    let stores = Arc::new(
        Stores::new(backends, stores_config).map_err(|e| start("storage")(e.to_string()))?,
    );
    // Following the log starts now; readiness waits for the initial load.
    stores.revocations().start_feed();

    let alerts = if config.anomaly.enabled {
        alert_sender(config, redis.as_ref(), &prefix)?
    } else {
        None
    };
    let anomaly = if config.anomaly.enabled {
        let backend = match &redis {
            // Bans under the prefix itself, where `portcullis bans
            // --prefix <redis_prefix>` reads and writes them.
            Some(conn) => AnomalyBackend::Redis {
                counters: RedisCounters::new(conn.clone(), &prefix),
                bans: RedisBans::new(conn.clone(), &prefix),
            },
            None => AnomalyBackend::memory(config.anomaly.max_keys),
        };
        Some(Arc::new(
            AnomalyEngine::new(
                config.anomaly.detectors.clone(),
                backend,
                alerts,
                Arc::new(SystemClock),
            )
            .map_err(|e| start("anomaly")(e.to_string()))?,
        ))
    } else {
        None
    };

    let (audit, audit_store) = open_audit(config).await?;
    Ok(Storage {
        stores,
        hasher,
        redis,
        anomaly,
        audit,
        audit_store,
        redis_prefix: prefix,
        postgres,
    })
}

/// The webhook sender of `[[anomaly.webhooks]]`, when there is one: alerts
/// de-duplicated per (detector, key) and cooldown across replicas on the
/// shared Redis (`<redis_prefix>:{alerts}:…`), else in this process.
fn alert_sender(
    config: &Config,
    redis: Option<&RedisConnection>,
    prefix: &str,
) -> Result<Option<AlertSender>, ServeError> {
    let Some(webhooks) = config
        .anomaly
        .webhook_config()
        .map_err(|(key, message)| start("anomaly.webhooks")(format!("{key}: {message}")))?
    else {
        return Ok(None);
    };
    let dedup = match redis {
        Some(conn) => AlertDedup::Redis(RedisDedup::new(conn.clone(), prefix)),
        None => AlertDedup::Memory(Arc::new(MemoryDedup::default())),
    };
    // The worker ends once the engine (the sender's last holder) is gone.
    let (sender, _worker) = AlertSender::start(webhooks, dedup, Arc::new(SystemClock))
        .map_err(|e| start("anomaly.webhooks")(e.to_string()))?;
    Ok(Some(sender))
}

async fn connect_redis(config: &Config) -> Result<Option<RedisConnection>, ServeError> {
    let storage = &config.storage;
    let (key, shown, connected) = if let Some(url) = &storage.redis {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, RedisConnection::single(url)).await;
        ("storage.redis", url.clone(), connected)
    } else if !storage.redis_cluster.is_empty() {
        let connected = tokio::time::timeout(
            CONNECT_TIMEOUT,
            RedisConnection::cluster(&storage.redis_cluster),
        )
        .await;
        (
            "storage.redis_cluster",
            storage.redis_cluster.join(", "),
            connected,
        )
    } else {
        return Ok(None);
    };
    connected
        .map_err(|_| start(key)(format!("{shown}: no answer within 10 s")))?
        .map_err(|e| start(key)(format!("{shown}: {e}")))
        .map(Some)
}

async fn open_audit(
    config: &Config,
) -> Result<(Option<Arc<AuditWriter>>, Option<Arc<dyn AuditStore>>), ServeError> {
    let (sink, store, spool): (Arc<dyn AuditSink>, Arc<dyn AuditStore>, _) =
        match (&config.audit.sqlite, &config.audit.postgres) {
            (Some(path), _) => {
                let db = Arc::new(
                    SqliteAudit::open(path, Duration::from_secs(5))
                        .await
                        .map_err(|e| start("audit.sqlite")(e.to_string()))?,
                );
                let spool = config
                    .audit
                    .spool_dir
                    .clone()
                    .unwrap_or_else(|| path.with_extension("spool"));
                (db.clone(), db, spool)
            }
            (None, Some(url)) => {
                // The tables are created (or checked) at start; once running,
                // an unreachable server only sends events to the spool.
                let db = Arc::new(
                    tokio::time::timeout(CONNECT_TIMEOUT, PostgresAudit::open(url))
                        .await
                        .map_err(|_| start("audit.postgres")("no answer within 10 s".into()))?
                        .map_err(|e| start("audit.postgres")(e.to_string()))?,
                );
                let spool = config.audit.spool_dir.clone().ok_or_else(|| {
                    start("audit.spool_dir")("required with audit.postgres".into())
                })?;
                (db.clone(), db, spool)
            }
            (None, None) => return Ok((None, None)),
        };
    let mut writer_config = AuditWriterConfig::new(spool);
    writer_config.batch_size = config.audit.batch_size;
    writer_config.flush_interval = config.audit.flush_interval;
    let writer = AuditWriter::start(sink, writer_config, Arc::new(SystemClock))
        .map_err(|e| start("audit")(e.to_string()))?;
    Ok((Some(Arc::new(writer)), Some(store)))
}
