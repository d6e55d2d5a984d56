//! The gateway's one TOML file: typed with serde (unknown keys are errors),
//! validated at load, every error naming the file, line and key.
//!
//! Loading is in three passes: TOML syntax; the typed structure (every
//! unknown key is reported, each with a "did you mean"; the first other
//! type error ends the pass); then the cross-field checks (every one is
//! reported). The library's `GuardConfig` is `[guard]` as is.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis::guard::GuardConfig;
use portcullis_core::authz::routes::Effect;
use serde::{Deserialize, Deserializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

mod regulation;
pub use self::regulation::RegulationConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners, limits and timeouts.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where users, sessions, API keys and revocations live.
    #[serde(default)]
    pub storage: StorageConfig,
    /// How each replica's local revocation set follows the shared log.
    #[serde(default)]
    pub revocation: RevocationConfig,
    /// The signing keys and the issuer of local tokens.
    pub keys: KeysConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Bans and anomaly detection.
    #[serde(default)]
    pub anomaly: AnomalyConfig,
    /// The identity headers sent to upstreams and forward-auth callers.
    #[serde(default)]
    pub identity: IdentityHeaders,
    /// The signed internal identity token for upstreams that verify.
    #[serde(default)]
    pub internal_token: InternalTokenConfig,
    /// The token service (login, refresh, sessions, API keys, JWKS).
    #[serde(default)]
    pub token_service: TokenServiceConfig,
    /// The forward-auth endpoints for nginx, Traefik, Caddy and Envoy.
    #[serde(default)]
    pub forward_auth: ForwardAuthConfig,
    /// How requests that could mean two things are treated.
    #[serde(default)]
    pub request: RequestConfig,
    /// What the guard enforces: the library's `GuardConfig`.
    #[serde(default)]
    pub guard: GuardConfig,
    /// HMAC-signed service requests (`credentials = ["signed"]`): the
    /// apps trusted and their secrets. Absent: no route may accept them.
    #[serde(default)]
    pub signed_requests: Option<SignedRequestsConfig>,
    /// Where allowed requests go.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Logs on stderr.
    #[serde(default)]
    pub log: LogConfig,
    /// Pinned decisions run by `config check`, start-up and every reload.
    #[serde(default)]
    pub tests: TestsConfig,
}

/// `[tests]`: files of `[[case]]`s (see `portcullis test`) that this
/// configuration must pass; a configuration that fails one is refused like
/// a configuration error.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TestsConfig {
    /// Cases files, relative to the configuration file's directory.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

/// `[log]`: structured logs on stderr.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` (default, for people) or `json` (one object a line).
    #[serde(default)]
    pub format: LogFormat,
    /// The most verbose level written (default `info`).
    #[serde(default)]
    pub level: LogLevel,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Pretty,
    /// One JSON object a line.
    Json,
}

/// The most verbose level written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Lifecycle events, warnings, errors.
    #[default]
    Info,
    /// Per-request decisions too.
    Debug,
    /// Everything.
    Trace,
}

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

/// A duration written `250ms`, `5s`, `2m`, `1h` (the core's one syntax,
/// shared with the commands).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    portcullis_core::duration::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// `[storage]`. `url` and `redis` may carry passwords: each can come from a
/// file instead (`url_file`, `redis_file`, see [`SECRET_KEYS`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `memory`, `sqlite://PATH` or `postgres://…` (default `memory`).
    #[serde(default = "default_storage_url")]
    pub url: String,
    /// One Redis server shared by every replica (`redis://…`): the hot
    /// shared state (rate-limit counters, bans and detector windows, the
    /// jti denylist) lives there. Optional.
    #[serde(default)]
    pub redis: Option<String>,
    /// A Redis Cluster instead of one server: its seed nodes
    /// (`["redis://host:7000", …]`). Excludes `redis`.
    #[serde(default)]
    pub redis_cluster: Vec<String>,
    /// Prefix of the gateway's Redis keys (default `portcullis`); replicas
    /// of one deployment share it, other deployments on the same Redis must not.
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// File holding the pepper (at least 32 bytes) that keys the stored
    /// hashes of refresh tokens and API keys. Required unless `url = "memory"`.
    #[serde(default)]
    pub pepper_file: Option<PathBuf>,
}

fn default_storage_url() -> String {
    "memory".into()
}
fn default_redis_prefix() -> String {
    "portcullis".into()
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: default_storage_url(),
            redis: None,
            redis_cluster: Vec::new(),
            redis_prefix: default_redis_prefix(),
            pepper_file: None,
        }
    }
}

/// `[revocation]`: each replica holds the live revocations (denied `jti`s,
/// revoked sessions) in memory, following the log in `storage.url`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// Longest the feed may be behind while the local set answers alone
    /// (default `30s`).
    #[serde(default = "default_max_stale", deserialize_with = "duration")]
    pub max_stale: Duration,
    /// Past `max_stale`: `deny` (default: tokens refused, 503
    /// `backend.unavailable`) or `allow` (the set answers as it is).
    #[serde(default)]
    pub on_stale: OnStaleConfig,
    /// Time between two reads of the log (default `100ms`; 10 ms to 1 s).
    #[serde(default = "default_poll_interval", deserialize_with = "duration")]
    pub poll_interval: Duration,
}

/// `revocation.on_stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStaleConfig {
    /// Refuse tokens with 503 `backend.unavailable`.
    #[default]
    Deny,
    /// Answer from the local set as it is.
    Allow,
}

fn default_max_stale() -> Duration {
    Duration::from_secs(30)
}
fn default_poll_interval() -> Duration {
    Duration::from_millis(100)
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self {
            max_stale: default_max_stale(),
            on_stale: OnStaleConfig::Deny,
            poll_interval: default_poll_interval(),
        }
    }
}

impl RevocationConfig {
    /// The library's policy.
    pub fn policy(&self) -> portcullis::stores::RevocationPolicy {
        portcullis::stores::RevocationPolicy {
            max_stale: self.max_stale,
            on_stale: match self.on_stale {
                OnStaleConfig::Deny => portcullis::stores::OnStale::Deny,
                OnStaleConfig::Allow => portcullis::stores::OnStale::Allow,
            },
            poll_interval: self.poll_interval,
        }
    }
}

/// The storage backend a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// In process; nothing persists.
    Memory,
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL server.
    Postgres(String),
}

impl StorageUrl {
    /// Parses `memory`, `sqlite://PATH` or `postgres://…`.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url == "memory" {
            Ok(Self::Memory)
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                Err(
                    "`sqlite://` needs a file path, e.g. sqlite:///var/lib/portcullis/stores.db"
                        .into(),
                )
            } else {
                Ok(Self::Sqlite(PathBuf::from(path)))
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_owned()))
        } else {
            Err(format!(
                "`{url}` is not a storage URL; use \"memory\", \"sqlite://PATH\" or \"postgres://USER@HOST/DB\""
            ))
        }
    }
}

/// `[keys]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Directory of `*.pem` / `*.jwk.json` keys as `portcullis keys generate` writes them.
    pub dir: PathBuf,
    /// The kid that signs new tokens (default: the first private key by file name).
    #[serde(default)]
    pub active_kid: Option<String>,
    /// `iss` of the tokens the gateway issues and accepts, an absolute URL.
    pub issuer: String,
    /// `aud` of issued tokens, required of accepted ones.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Verified-token cache: most tokens kept (default 10 000); `0` turns
    /// it off, so every request's signature is checked.
    #[serde(default = "default_token_cache_entries")]
    pub token_cache_entries: u64,
    /// Lifetime of the access tokens the token service issues (default
    /// `15m`, 5s to 24h); a rotated-out key verifies this long (plus
    /// leeway) after its successor activates.
    #[serde(default = "default_access_ttl", deserialize_with = "duration")]
    pub access_ttl: Duration,
    /// `[keys.rotation]`: signing-key rotation through the admin API.
    #[serde(default)]
    pub rotation: RotationConfig,
    /// `[[keys.trusted_issuers]]`: outside identity providers (Auth0,
    /// Keycloak, Entra ID, another Portcullis) whose JWTs the `jwt`
    /// credential also accepts, verified against their published JWKS.
    #[serde(default)]
    pub trusted_issuers: Vec<TrustedIssuerConfig>,
}

/// One `[[keys.trusted_issuers]]` entry: an identity provider whose access
/// tokens are accepted, checked against the keys it publishes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerConfig {
    /// The exact `iss` of its tokens (for discovery also the base URL).
    pub issuer: String,
    /// Its JWKS URL; when unset, `<issuer>/.well-known/openid-configuration`
    /// names it (OIDC discovery).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// `aud` values accepted (at least one: without it any token of the
    /// issuer would pass, one meant for another API or an ID token).
    #[serde(default)]
    pub audience: Vec<String>,
    /// Require `typ: at+jwt` (RFC 9068), for issuers that type access tokens.
    #[serde(default)]
    pub require_typ: bool,
    /// How long a fetched key set is fresh (default `10m`).
    #[serde(default = "default_issuer_ttl", deserialize_with = "duration")]
    pub ttl: Duration,
    /// Least time between fetches caused by an unknown `kid` or a failed
    /// refresh (default `30s`): a flood of made-up kids cannot flood the issuer.
    #[serde(default = "default_issuer_refetch", deserialize_with = "duration")]
    pub refetch_interval: Duration,
    /// How long past `ttl` the last good key set still serves while the
    /// issuer is unreachable (default `5m`).
    #[serde(default = "default_issuer_max_stale", deserialize_with = "duration")]
    pub max_stale: Duration,
    /// Extra CA certificates (PEM) trusted for its HTTPS besides the
    /// Mozilla roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Hosts other than the issuer's own that a discovered `jwks_uri` may name.
    #[serde(default)]
    pub jwks_hosts: Vec<String>,
    /// Plain `http://` to a loopback host (local development and tests only).
    #[serde(default)]
    pub allow_http: bool,
}

fn default_issuer_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_issuer_refetch() -> Duration {
    Duration::from_secs(30)
}
fn default_issuer_max_stale() -> Duration {
    Duration::from_secs(300)
}

fn default_token_cache_entries() -> u64 {
    10_000
}
fn default_access_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

/// `[keys.rotation]`: how rotated-in signing keys (`POST /admin/keys/rotate`,
/// `portcullis keys rotate`) reach every replica before they sign.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RotationConfig {
    /// Between publishing a new key (JWKS, every replica's verifier) and
    /// signing with it (default `10m`, at least twice `poll_interval`):
    /// longer than outside verifiers cache the JWKS (5 minutes).
    #[serde(default = "default_propagation_delay", deserialize_with = "duration")]
    pub propagation_delay: Duration,
    /// How often each replica reads the stored keys (default `5s`, 100ms to 5m).
    #[serde(default = "default_rotation_poll", deserialize_with = "duration")]
    pub poll_interval: Duration,
}

fn default_propagation_delay() -> Duration {
    Duration::from_secs(600)
}
fn default_rotation_poll() -> Duration {
    Duration::from_secs(5)
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            propagation_delay: default_propagation_delay(),
            poll_interval: default_rotation_poll(),
        }
    }
}

/// `[audit]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// SQLite audit database; absent (and no `postgres`): no audit log.
    #[serde(default)]
    pub sqlite: Option<PathBuf>,
    /// PostgreSQL audit database (`postgres://…`); excludes `sqlite`.
    #[serde(default)]
    pub postgres: Option<String>,
    /// Spool directory for events while the database is unavailable
    /// (default: `<sqlite>.spool`; required with `postgres`).
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// Write a batch once this many events wait (default 200, 1 to 10 000).
    /// Smaller batches are shorter writes: on a gateway sharing its core
    /// with the database writer, 1000-event batches added 3.8 ms to the
    /// p99 at half the peak rate, 200-event ones 1.7 ms, at the same
    /// throughput (`bench/gateway.sh`).
    #[serde(default = "default_audit_batch")]
    pub batch_size: usize,
    /// Write at least this often (default `20ms`, 1ms to 10s).
    #[serde(default = "default_audit_flush", deserialize_with = "duration")]
    pub flush_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sqlite: None,
            postgres: None,
            spool_dir: None,
            batch_size: default_audit_batch(),
            flush_interval: default_audit_flush(),
        }
    }
}

fn default_audit_batch() -> usize {
    200
}
fn default_audit_flush() -> Duration {
    Duration::from_millis(20)
}

/// `[anomaly]`: bans (checked on every request) and the detectors that
/// feed them. On Redis when `storage.redis` / `storage.redis_cluster` is
/// set (every replica sees every ban and counts into the same windows),
/// else in this process.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Whether bans are enforced and detectors run (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The detectors (default: the five documented ones, each tagging the
    /// audit event of a request that trips it). A list given here replaces
    /// the defaults.
    #[serde(default = "default_detectors")]
    pub detectors: Vec<portcullis_core::anomaly::DetectorConfig>,
    /// Most detector windows kept in memory (default 100 000; memory only).
    #[serde(default = "default_anomaly_max_keys")]
    pub max_keys: usize,
    /// Where the detectors' `alert` action posts (none by default).
    #[serde(default)]
    pub webhooks: Vec<WebhookEntry>,
    /// How deliveries are made, for every webhook.
    #[serde(default)]
    pub webhook_delivery: WebhookDelivery,
}

/// `[[anomaly.webhooks]]`: one receiver of alerts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookEntry {
    /// `https://…` (plain `http://` only to a loopback host).
    pub url: String,
    /// File holding the Standard Webhooks secret (`whsec_…`) the deliveries
    /// are signed with; required for `format = "standard"`. Never inline.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// `standard` (Standard Webhooks JSON, signed) or `slack` (a Slack
    /// incoming-webhook message; the URL is the secret).
    #[serde(default)]
    pub format: portcullis_core::anomaly::webhook::PayloadFormat,
    /// The detectors whose alerts it receives (default: all of them; `[]`:
    /// none, for a webhook of security events only).
    #[serde(default)]
    pub detectors: Option<Vec<portcullis_core::anomaly::DetectorKind>>,
    /// The security events it receives, each opt-in (default: none):
    /// `signing_key.rotated`, `admin_key.created`, `token.reuse_detected`,
    /// `login.throttled`.
    #[serde(default)]
    pub events: Vec<portcullis_core::anomaly::webhook::SecurityEventKind>,
}

/// `[anomaly.webhook_delivery]`: one queue and one retry policy for every
/// webhook.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookDelivery {
    /// Longest one attempt may take (default 5 s).
    #[serde(default = "default_webhook_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Attempts per delivery, the first included (default 6; exponential
    /// back-off from 500 ms with full jitter, at most 60 s apart).
    #[serde(default = "default_webhook_attempts")]
    pub max_attempts: u32,
    /// Alerts waiting to be sent; beyond it alerts are dropped and counted
    /// (default 1024).
    #[serde(default = "default_webhook_queue")]
    pub queue: usize,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_webhook_attempts() -> u32 {
    6
}
fn default_webhook_queue() -> usize {
    1024
}

impl Default for WebhookDelivery {
    fn default() -> Self {
        Self {
            timeout: default_webhook_timeout(),
            max_attempts: default_webhook_attempts(),
            queue: default_webhook_queue(),
        }
    }
}

impl AnomalyConfig {
    /// The sender settings of `[[anomaly.webhooks]]` (secrets read from
    /// their files), or `None` when there is none; the error names the key.
    pub fn webhook_config(
        &self,
    ) -> Result<Option<portcullis::anomaly::webhook::WebhookConfig>, (String, String)> {
        use portcullis::anomaly::webhook::{WebhookConfig, WebhookEndpoint};
        use portcullis_core::anomaly::webhook::{PayloadFormat, WebhookSecret};
        if self.webhooks.is_empty() {
            return Ok(None);
        }
        let mut endpoints = Vec::with_capacity(self.webhooks.len());
        for (i, w) in self.webhooks.iter().enumerate() {
            let key = |field: &str| format!("anomaly.webhooks[{i}].{field}");
            portcullis::jwks::check_url(&w.url, true).map_err(|e| (key("url"), e.to_string()))?;
            let url = w
                .url
                .parse::<http::Uri>()
                .map_err(|e| (key("url"), e.to_string()))?;
            let secret = match (&w.secret_file, w.format) {
                (Some(path), _) => {
                    let text = read_secret(path).map_err(|m| (key("secret_file"), m))?;
                    WebhookSecret::parse(text.trim()).map_err(|e| {
                        (
                            key("secret_file"),
                            format!("`{}`: {e} (a `whsec_…` secret)", path.display()),
                        )
                    })?
                }
                (None, PayloadFormat::Slack) => {
                    // Slack does not check signatures: a random key signs.
                    WebhookSecret::generate()
                        .map_err(|e| (key("secret_file"), e.to_string()))?
                        .0
                }
                (None, _) => {
                    return Err((
                        key("secret_file"),
                        "required for format \"standard\": the `whsec_…` secret the receiver verifies each delivery with".into(),
                    ));
                }
            };
            endpoints.push(WebhookEndpoint {
                url,
                secret,
                format: w.format,
                detectors: w.detectors.clone(),
                events: w.events.clone(),
            });
        }
        let d = self.webhook_delivery;
        let config = WebhookConfig {
            endpoints,
            timeout: d.timeout,
            max_attempts: d.max_attempts,
            queue_capacity: d.queue,
            // Plain http passed `check_url` only for loopback hosts.
            allow_http: true,
            ..WebhookConfig::default()
        };
        config
            .validate()
            .map_err(|e| ("anomaly.webhook_delivery".to_owned(), e.to_string()))?;
        Ok(Some(config))
    }
}

fn default_detectors() -> Vec<portcullis_core::anomaly::DetectorConfig> {
    portcullis_core::anomaly::DetectorKind::ALL
        .into_iter()
        .map(portcullis_core::anomaly::DetectorConfig::default_for)
        .collect()
}
fn default_anomaly_max_keys() -> usize {
    100_000
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            detectors: default_detectors(),
            max_keys: default_anomaly_max_keys(),
            webhooks: Vec::new(),
            webhook_delivery: WebhookDelivery::default(),
        }
    }
}

/// `[identity]`: names of the identity headers. Inbound copies are always
/// stripped before the guard's principal is written into them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeaders {
    /// Default `x-portcullis-subject`.
    #[serde(default = "h_subject")]
    pub subject: String,
    /// Default `x-portcullis-roles` (comma separated).
    #[serde(default = "h_roles")]
    pub roles: String,
    /// Default `x-portcullis-permissions` (comma separated).
    #[serde(default = "h_permissions")]
    pub permissions: String,
    /// Default `x-portcullis-tenant`.
    #[serde(default = "h_tenant")]
    pub tenant: String,
    /// Default `x-portcullis-session`.
    #[serde(default = "h_session")]
    pub session: String,
    /// Default `x-portcullis-auth-method`.
    #[serde(default = "h_auth_method")]
    pub auth_method: String,
    /// Whether the credential the caller presented (`Authorization`, the
    /// API-key header, the app id and secret headers) is removed before
    /// proxying (default true); an upstream may override it.
    #[serde(default = "yes")]
    pub strip_credentials: bool,
}

fn h_subject() -> String {
    "x-portcullis-subject".into()
}
fn h_roles() -> String {
    "x-portcullis-roles".into()
}
fn h_permissions() -> String {
    "x-portcullis-permissions".into()
}
fn h_tenant() -> String {
    "x-portcullis-tenant".into()
}
fn h_session() -> String {
    "x-portcullis-session".into()
}
fn h_auth_method() -> String {
    "x-portcullis-auth-method".into()
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            subject: h_subject(),
            roles: h_roles(),
            permissions: h_permissions(),
            tenant: h_tenant(),
            session: h_session(),
            auth_method: h_auth_method(),
            strip_credentials: true,
        }
    }
}

/// `[internal_token]`: a short-lived JWT signed with the gateway's active
/// key, sent to upstreams that verify the caller instead of trusting
/// headers (the library's `InternalTokenLayer`, PyJWT against the JWKS).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InternalTokenConfig {
    /// Sent to every upstream (default false); an upstream may override it.
    #[serde(default)]
    pub enabled: bool,
    /// The request header carrying it (default `x-portcullis-identity`).
    #[serde(default = "default_internal_header")]
    pub header: String,
    /// Its lifetime (default `60s`, at most `1h`).
    #[serde(default = "default_internal_ttl", deserialize_with = "duration")]
    pub ttl: Duration,
    /// Its `iss` (default: `keys.issuer` followed by `/internal`); never
    /// `keys.issuer` itself, so an internal token is never accepted as a
    /// caller's access token by the gateway.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Where the public listener serves the gateway's JWKS (default
    /// `/.well-known/portcullis/jwks.json`), whether or not the token
    /// service is enabled.
    #[serde(default = "default_internal_jwks_path")]
    pub jwks_path: String,
}

fn default_internal_header() -> String {
    portcullis::http::INTERNAL_TOKEN_HEADER.as_str().to_owned()
}
fn default_internal_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_internal_jwks_path() -> String {
    "/.well-known/portcullis/jwks.json".into()
}

impl Default for InternalTokenConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            header: default_internal_header(),
            ttl: default_internal_ttl(),
            issuer: None,
            jwks_path: default_internal_jwks_path(),
        }
    }
}

impl InternalTokenConfig {
    /// The `iss` of internal tokens.
    pub fn issuer(&self, keys: &KeysConfig) -> String {
        self.issuer
            .clone()
            .unwrap_or_else(|| format!("{}/internal", keys.issuer.trim_end_matches('/')))
    }
}

impl IdentityHeaders {
    /// Every configured name with its key, for validation.
    pub fn named(&self) -> [(&'static str, &str); 6] {
        [
            ("subject", &self.subject),
            ("roles", &self.roles),
            ("permissions", &self.permissions),
            ("tenant", &self.tenant),
            ("session", &self.session),
            ("auth_method", &self.auth_method),
        ]
    }
}

/// `[signed_requests]`: the apps that may send HMAC-signed service
/// requests (`x-portcullis-app`, `-timestamp`, `-nonce`, `-signature`).
/// Nonces live on Redis when `storage.redis` / `storage.redis_cluster` is
/// set (a nonce spent on one replica is refused by every other), else in
/// this process. Reloadable: apps, secrets and the window.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignedRequestsConfig {
    /// How far a request's timestamp may be from now, either side (default
    /// `5m`, between `1s` and `1h`); each nonce is remembered twice as long.
    #[serde(default = "default_signed_window", deserialize_with = "duration")]
    pub window: Duration,
    /// The apps trusted to sign.
    #[serde(default)]
    pub apps: Vec<SignedAppConfig>,
}

/// `[[signed_requests.apps]]`: one app, its secret and its grants.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignedAppConfig {
    /// The app id it sends in `x-portcullis-app`: 1-128 of `[A-Za-z0-9._-]`;
    /// the principal's subject.
    pub id: String,
    /// File holding the app's HMAC secret: at least 32 bytes once one
    /// trailing newline is trimmed. Never inline: a secret stays out of
    /// the configuration file.
    pub secret_file: PathBuf,
    /// Roles the app's principal holds.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Permissions the app's principal holds directly.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// The app's tenant.
    #[serde(default)]
    pub tenant: Option<String>,
}

fn default_signed_window() -> Duration {
    portcullis_core::authz::signed_request::DEFAULT_WINDOW
}

impl SignedAppConfig {
    /// The app's secret: the file's bytes, one trailing newline (`\n` or
    /// `\r\n`) trimmed, at least
    /// [`MIN_SECRET_BYTES`](portcullis_core::authz::signed_request::MIN_SECRET_BYTES)
    /// and at most [`MAX_SECRET_FILE_BYTES`].
    pub fn read_secret(&self) -> Result<Vec<u8>, String> {
        use std::io::Read;
        let path = &self.secret_file;
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let mut bytes = Vec::new();
        file.take(MAX_SECRET_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
            return Err(format!(
                "`{}` is larger than {MAX_SECRET_FILE_BYTES} bytes; a secret file holds one value",
                path.display()
            ));
        }
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        let min = portcullis_core::authz::signed_request::MIN_SECRET_BYTES;
        if bytes.len() < min {
            return Err(format!(
                "`{}` holds {} bytes; an app secret needs at least {min} (e.g. `openssl rand -hex 32 > {}`)",
                path.display(),
                bytes.len(),
                path.display()
            ));
        }
        Ok(bytes)
    }
}

/// `[token_service]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenServiceConfig {
    /// Whether the token service is mounted (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where it is mounted on the public listener (default `/auth`).
    #[serde(default = "default_auth_prefix")]
    pub prefix: String,
    /// Where it is reachable from outside, for discovery (default: issuer + prefix).
    #[serde(default)]
    pub public_url: Option<String>,
    /// `[token_service.regulation]`: failed logins, resets and console
    /// sign-ins per client IP and account (on by default).
    #[serde(default)]
    pub regulation: RegulationConfig,
}

fn yes() -> bool {
    true
}
fn default_auth_prefix() -> String {
    "/auth".into()
}

impl Default for TokenServiceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prefix: default_auth_prefix(),
            public_url: None,
            regulation: RegulationConfig::default(),
        }
    }
}

/// `[request]`: the canonical form every request is brought to before the
/// guard sees it, and what is refused for having no single meaning
/// (docs/config.md "Canonical requests").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    /// Methods with lower-case letters (`delete`): `refuse` (default, 400
    /// `request.non_canonical_method`) or `uppercase` (decided and
    /// forwarded upper-cased).
    #[serde(default)]
    pub lowercase_methods: LowercaseMethods,
    /// Drop every inbound header whose name contains `_` (default true),
    /// as nginx's `underscores_in_headers off`: WSGI servers, Traefik and
    /// Envoy read `X_Foo` as `X-Foo`. Headers that fold to an identity,
    /// credential or internal-token header are removed whatever this says.
    #[serde(default = "yes")]
    pub drop_underscore_headers: bool,
    /// `X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`:
    /// `strip` (default: removed, counted) or `refuse` (400 when one names
    /// another method than the request's).
    #[serde(default)]
    pub method_override: MethodOverride,
}

impl Default for RequestConfig {
    fn default() -> Self {
        Self {
            lowercase_methods: LowercaseMethods::default(),
            drop_underscore_headers: true,
            method_override: MethodOverride::default(),
        }
    }
}

/// What a lower-case method gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LowercaseMethods {
    /// 400 `request.non_canonical_method`.
    #[default]
    Refuse,
    /// Upper-cased, then decided and forwarded so.
    Uppercase,
}

/// What a method-override header gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodOverride {
    /// Removed before the guard and the upstream see the request.
    #[default]
    Strip,
    /// 400 `request.method_override` when it names another method.
    Refuse,
}

/// `[forward_auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthConfig {
    /// Whether the endpoints answer (default false: a client that reaches
    /// them through a load balancer could ask the guard about any request
    /// it forges; turn them on when nginx, Traefik, Caddy or Envoy in
    /// front asks, and list that proxy in `guard.client_ip.trusted_proxies`).
    #[serde(default)]
    pub enabled: bool,
    /// Their prefix on the public listener (default `/_portcullis/auth`).
    #[serde(default = "default_forward_auth_prefix")]
    pub prefix: String,
}

fn default_forward_auth_prefix() -> String {
    "/_portcullis/auth".into()
}

impl Default for ForwardAuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            prefix: default_forward_auth_prefix(),
        }
    }
}

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

/// One thing wrong with a configuration file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The dotted key, when known (`guard.routes[2].path`).
    pub key: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": `{key}`")?;
        }
        // A value quoted back may be a URL with a password in it.
        write!(f, ": {}", crate::redact::redact(&self.message))
    }
}

/// Every error of a file that did not load.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, parses and validates `path` for the gateway.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_for(Host::Gateway, path)
}

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "PORTCULLIS_";

/// The keys whose value may instead be read from a file named by the same
/// key with `_file` appended (`storage.url_file`): a secret then stays out
/// of the configuration file and the environment. (`storage.pepper_file`
/// is a file only: the pepper is binary.)
pub const SECRET_KEYS: &[&str] = &["storage.url", "storage.redis"];

/// The largest secret file read (64 KiB): a secret is a line, not a dump.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// The `PORTCULLIS_SECTION__KEY[__KEY…]=VALUE` variables of `vars`, sorted:
/// `__` separates the path's segments; a variable without `__` (such as
/// `PORTCULLIS_REDIS_URL`) is not a configuration override.
pub fn env_overrides(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vars
        .filter(|(k, _)| {
            k.strip_prefix(ENV_PREFIX)
                .is_some_and(|rest| rest.contains("__"))
        })
        .collect();
    out.sort();
    out
}

/// Parses and validates `text`, the contents of `file`, without overrides.
#[cfg(test)]
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    parse_with(file, text, &[])
}

/// Like [`parse`], with environment `overrides` (see [`env_overrides`])
/// applied over the file: each replaces (or adds) one key.
pub fn parse_with(
    file: &Path,
    text: &str,
    overrides: &[(String, String)],
) -> Result<Config, ConfigErrors> {
    parse_for(Host::Gateway, file, text, overrides)
}

/// Who runs the configuration: what is required depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// `portcullis serve`: every allowed route needs an upstream to serve it.
    Gateway,
    /// The engine inside the application's own process (the Python
    /// package): the application serves every route, `[[upstreams]]` are
    /// not used.
    InProcess,
}

/// Reads, parses and validates `path` for `host`, with the environment's
/// `PORTCULLIS_…` overrides (what [`load`] does for the gateway).
pub fn load_for(host: Host, path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read the configuration file: {e}"),
        }])
    })?;
    let overrides = env_overrides(std::env::vars());
    parse_for(host, path, &text, &overrides)
}

/// Parses and validates `text`, the contents of `file`, for `host`, with
/// environment `overrides` applied over it.
pub fn parse_for(
    host: Host,
    file: &Path,
    text: &str,
    overrides: &[(String, String)],
) -> Result<Config, ConfigErrors> {
    let locate = Locator {
        file,
        text,
        overrides,
    };
    let mut doc = DeTable::parse(text)
        .map_err(|e| ConfigErrors(vec![locate.error(e.span(), None, e.message().to_owned())]))?;
    let mut errors = Vec::new();
    for (i, (name, value)) in overrides.iter().enumerate() {
        // Keys and values from the environment get spans past the end of
        // the file, one per variable, so errors name the variable.
        let span = text.len() + i..text.len() + i + 1;
        if let Err(message) = apply_override(doc.get_mut(), name, value, span.clone()) {
            errors.push(locate.error(Some(span), None, message));
        }
    }
    for key in SECRET_KEYS {
        if let Err((span, key, message)) = read_secret_file(doc.get_mut(), key) {
            errors.push(locate.error(span, Some(key), message));
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
        return Err(ConfigErrors(errors));
    }
    // Every unknown key is reported: each is removed and the document read again.
    let config = loop {
        match Config::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(config) => break Some(config),
            Err(e) => {
                let span = e.span();
                let key = span.as_ref().and_then(|s| key_path(doc.get_ref(), s.start));
                let unknown = parse_unknown_field(e.message());
                let message = match &unknown {
                    Some((field, expected)) => unknown_key_message(field, expected),
                    None => e.message().to_owned(),
                };
                errors.push(locate.error(span.clone(), key.clone(), message));
                let removed = unknown.is_some()
                    && span.is_some_and(|s| remove_key_at(doc.get_mut(), s.start));
                if !removed || errors.len() >= 50 {
                    break None;
                }
            }
        }
    };
    let Some(config) = config else {
        errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
        return Err(ConfigErrors(errors));
    };
    for (key, message) in validate(&config, host) {
        let span = key_span(doc.get_ref(), &key);
        errors.push(locate.error(span, Some(key), message));
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
        Err(ConfigErrors(errors))
    }
}

/// Replaces `SECTION.NAME_file = "PATH"` with `SECTION.NAME = <the file's
/// contents>` (one trailing newline trimmed, at most
/// [`MAX_SECRET_FILE_BYTES`]); setting both is an error.
fn read_secret_file(
    doc: &mut DeTable<'_>,
    key: &str,
) -> Result<(), (Option<Range<usize>>, String, String)> {
    let Some((section, name)) = key.split_once('.') else {
        return Ok(());
    };
    let Some(DeValue::Table(table)) = doc.get_mut(section).map(Spanned::get_mut) else {
        return Ok(());
    };
    let file_key = format!("{name}_file");
    let Some(file_value) = table.get(file_key.as_str()) else {
        return Ok(());
    };
    let span = file_value.span();
    let dotted = format!("{section}.{file_key}");
    if table.get(name).is_some() {
        return Err((
            Some(span),
            dotted,
            format!("set either `{key}` or `{key}_file`, not both"),
        ));
    }
    let DeValue::String(path) = file_value.get_ref() else {
        return Err((Some(span), dotted, "must be a file path (a string)".into()));
    };
    let path = PathBuf::from(path.as_ref());
    let secret = read_secret(&path).map_err(|m| (Some(span.clone()), dotted.clone(), m))?;
    table.remove(file_key.as_str());
    table.insert(
        Spanned::new(span.clone(), std::borrow::Cow::Owned(name.to_owned())),
        Spanned::new(span, DeValue::String(std::borrow::Cow::Owned(secret))),
    );
    Ok(())
}

/// The contents of a secret file: UTF-8, bounded, one trailing newline trimmed.
fn read_secret(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "`{}` is larger than {MAX_SECRET_FILE_BYTES} bytes; a secret file holds one value",
            path.display()
        ));
    }
    let mut text =
        String::from_utf8(bytes).map_err(|_| format!("`{}` is not UTF-8 text", path.display()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("`{}` is empty", path.display()));
    }
    Ok(text)
}

struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
    overrides: &'a [(String, String)],
}

/// Sets the key `name` (`PORTCULLIS_A__B__C`) names to `value`: a TOML
/// value when it parses as one (`8080`, `true`, `["a", "b"]`), else a string.
fn apply_override<'i>(
    doc: &mut DeTable<'i>,
    name: &'i str,
    value: &'i str,
    span: Range<usize>,
) -> Result<(), String> {
    let path: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("`{name}` has an empty segment"));
    }
    let parsed = match DeValue::parse(value) {
        Ok(v) => respan(v.into_inner(), &span),
        Err(_) => DeValue::String(std::borrow::Cow::Borrowed(value)),
    };
    let (last, parents) = path.split_last().ok_or("empty")?;
    if last.parse::<usize>().is_ok() {
        return Err(format!(
            "`{name}` ends with an index; set one key of the entry, e.g. {name}__MODE"
        ));
    }
    let mut table = doc;
    let mut depth = 0;
    while depth < parents.len() {
        let segment = &parents[depth];
        if table.get(segment.as_str()).is_none() {
            let key = Spanned::new(span.clone(), std::borrow::Cow::Owned(segment.clone()));
            table.insert(
                key,
                Spanned::new(span.clone(), DeValue::Table(DeTable::new())),
            );
        }
        let mut value = table.get_mut(segment.as_str()).map(Spanned::get_mut);
        // An array of tables (`[[guard.routes]]`) is entered by index:
        // PORTCULLIS_GUARD__ROUTES__0__MODE.
        while let Some(DeValue::Array(items)) = value {
            let here = path[..=depth].join(".");
            let Some(index) = parents.get(depth + 1).and_then(|s| s.parse::<usize>().ok()) else {
                return Err(format!(
                    "`{here}` is an array of tables, so {name} must name an entry by its index, as in PORTCULLIS_GUARD__ROUTES__0__MODE"
                ));
            };
            let len = items.len();
            value = items.get_mut(index).map(Spanned::get_mut);
            if value.is_none() {
                return Err(format!(
                    "`{here}` has {len} entries, so {name} cannot set entry {index}; overrides change entries of the file, they do not add any"
                ));
            }
            depth += 1;
        }
        match value {
            Some(DeValue::Table(t)) => table = t,
            _ => {
                return Err(format!(
                    "`{}` is not a table, so {name} cannot set a key under it",
                    path[..=depth].join(".")
                ));
            }
        }
        depth += 1;
    }
    table.remove(last.as_str());
    table.insert(
        Spanned::new(span.clone(), std::borrow::Cow::Owned(last.clone())),
        Spanned::new(span.clone(), parsed),
    );
    Ok(())
}

/// `value` with every nested span replaced by `span`.
fn respan<'i>(mut value: DeValue<'i>, span: &Range<usize>) -> DeValue<'i> {
    match &mut value {
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                let inner = std::mem::replace(item.get_mut(), DeValue::Boolean(false));
                *item = Spanned::new(span.clone(), respan(inner, span));
            }
        }
        DeValue::Table(t) => {
            for (_, v) in t.iter_mut() {
                let inner = std::mem::replace(v.get_mut(), DeValue::Boolean(false));
                *v = Spanned::new(span.clone(), respan(inner, span));
            }
        }
        _ => {}
    }
    value
}

impl Locator<'_> {
    fn error(
        &self,
        span: Option<Range<usize>>,
        key: Option<String>,
        message: String,
    ) -> ConfigError {
        if let Some((name, _)) = span
            .as_ref()
            .and_then(|s| s.start.checked_sub(self.text.len()))
            .and_then(|i| self.overrides.get(i))
        {
            return ConfigError {
                file: self.file.to_path_buf(),
                line: None,
                column: None,
                key,
                message: format!("{message} (set by the environment variable {name})"),
            };
        }
        let (line, column) = match span {
            Some(s) => {
                let (l, c) = line_col(self.text, s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key,
            message,
        }
    }
}

/// 1-based line and column of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// serde's "unknown field `x`, expected one of `a`, `b`" → (`x`, [a, b]).
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field.to_owned(), expected))
}

fn unknown_key_message(field: &str, expected: &[String]) -> String {
    let mut message = format!("unknown key `{field}`");
    match suggest(field, expected) {
        Some(s) => message.push_str(&format!("; did you mean `{s}`?")),
        None if expected.is_empty() => message.push_str("; this table takes no keys"),
        None => message.push_str(&format!("; known keys here: {}", expected.join(", "))),
    }
    message
}

/// The known key closest to `unknown`, when close enough to be a typo.
pub fn suggest<'a>(unknown: &str, known: &'a [String]) -> Option<&'a str> {
    let unknown_l = unknown.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&unknown_l, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d <= (k.len().max(unknown.len()) / 3).max(1) + 1 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Levenshtein distance, with adjacent transpositions counting one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// The dotted path of the deepest key whose key or value contains `offset`.
fn key_path(table: &DeTable<'_>, offset: usize) -> Option<String> {
    fn walk_value(v: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) {
        match v.get_ref() {
            DeValue::Table(t) => {
                if let Some(p) = walk_table(t, offset) {
                    path.push('.');
                    path.push_str(&p);
                }
            }
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if item.span().contains(&offset) || table_contains(item, offset) {
                        path.push_str(&format!("[{i}]"));
                        walk_value(item, offset, path);
                        return;
                    }
                }
            }
            _ => {}
        }
    }
    fn table_contains(v: &Spanned<DeValue<'_>>, offset: usize) -> bool {
        match v.get_ref() {
            DeValue::Table(t) => t.iter().any(|(k, v)| {
                k.span().contains(&offset)
                    || v.span().contains(&offset)
                    || table_contains(v, offset)
            }),
            DeValue::Array(items) => items
                .iter()
                .any(|i| i.span().contains(&offset) || table_contains(i, offset)),
            _ => false,
        }
    }
    fn walk_table(t: &DeTable<'_>, offset: usize) -> Option<String> {
        for (k, v) in t.iter() {
            if k.span().contains(&offset) {
                return Some(k.get_ref().to_string());
            }
            if v.span().contains(&offset) || table_contains(v, offset) {
                let mut path = k.get_ref().to_string();
                walk_value(v, offset, &mut path);
                return Some(path);
            }
        }
        None
    }
    walk_table(table, offset)
}

/// Removes the key whose name starts at `offset`; whether one was found.
fn remove_key_at(table: &mut DeTable<'_>, offset: usize) -> bool {
    let found = table
        .iter()
        .find(|(k, _)| k.span().contains(&offset))
        .map(|(k, _)| k.clone());
    if let Some(k) = found {
        table.remove(&k);
        return true;
    }
    for (_, v) in table.iter_mut() {
        if remove_in_value(v.get_mut(), offset) {
            return true;
        }
    }
    false
}

fn remove_in_value(v: &mut DeValue<'_>, offset: usize) -> bool {
    match v {
        DeValue::Table(t) => remove_key_at(t, offset),
        DeValue::Array(items) => items
            .iter_mut()
            .any(|i| remove_in_value(i.get_mut(), offset)),
        _ => false,
    }
}

/// An error about the dotted `key` of `file` (whose contents are `text`),
/// located at the key when the file holds it: for checks made after
/// loading (`config check` reading the files a key names).
pub fn error_at_key(file: &Path, text: &str, key: String, message: String) -> ConfigError {
    let span = DeTable::parse(text)
        .ok()
        .and_then(|doc| key_span(doc.get_ref(), &key));
    let locate = Locator {
        file,
        text,
        overrides: &[],
    };
    locate.error(span, Some(key), message)
}

/// The span of the dotted `key` (`a.b[1].c`), or of its nearest existing parent.
fn key_span(table: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    let mut best = None;
    let mut current: Option<&DeTable<'_>> = Some(table);
    let mut value: Option<&Spanned<DeValue<'_>>>;
    for part in key.split('.') {
        let (name, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let Some(t) = current else { break };
        let Some((k, v)) = t.iter().find(|(k, _)| k.get_ref().as_ref() == name) else {
            break;
        };
        best = Some(k.span());
        value = Some(v);
        for idx in indexes
            .split(['[', ']'])
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse::<usize>().ok())
        {
            match value.map(Spanned::get_ref) {
                Some(DeValue::Array(items)) => {
                    value = items.get(idx);
                    if let Some(item) = value {
                        best = Some(item.span());
                    }
                }
                _ => value = None,
            }
        }
        current = match value.map(Spanned::get_ref) {
            Some(DeValue::Table(t)) => Some(t),
            _ => None,
        };
    }
    best
}

/// Cross-field checks: (dotted key, message) for each problem.
fn validate(config: &Config, host: Host) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let mut err = |key: String, message: String| errors.push((key, message));

    if config.server.listen == config.server.ops_listen {
        err(
            "server.ops_listen".into(),
            "must differ from `server.listen`".into(),
        );
    }
    if !(1..=10_000).contains(&config.server.admin_streams) {
        err("server.admin_streams".into(), "must be 1 to 10000".into());
    }
    if config.server.admin_streams_per_key == 0
        || config.server.admin_streams_per_key > config.server.admin_streams
    {
        err(
            "server.admin_streams_per_key".into(),
            "must be at least 1 and at most `server.admin_streams`".into(),
        );
    }
    for (i, host) in config.server.ops_hosts.iter().enumerate() {
        if let Err(reason) = crate::ops_guard::valid_host_pattern(host) {
            err(format!("server.ops_hosts[{i}]"), reason.into());
        }
    }
    if config.server.max_body_bytes == 0 {
        err("server.max_body_bytes".into(), "must be at least 1".into());
    }
    if !(Duration::from_millis(10)..=Duration::from_secs(1))
        .contains(&config.revocation.poll_interval)
    {
        err(
            "revocation.poll_interval".into(),
            "must be 10ms to 1s (the revocation bound)".into(),
        );
    }
    if config.revocation.max_stale < Duration::from_secs(1) {
        err("revocation.max_stale".into(), "must be at least 1s".into());
    }
    if let Some(n) = config.server.worker_threads
        && !(1..=1024).contains(&n)
    {
        err(
            "server.worker_threads".into(),
            "must be between 1 and 1024".into(),
        );
    }
    for (key, d) in [
        (
            "server.upstream_connect_timeout",
            config.server.upstream_connect_timeout,
        ),
        (
            "server.upstream_read_timeout",
            config.server.upstream_read_timeout,
        ),
    ] {
        if d.is_zero() {
            err(key.into(), "must be longer than zero".into());
        }
    }
    for (key, message) in crate::limits::validate(&config.server) {
        err(key.into(), message);
    }
    if let Some(tls) = &config.server.tls {
        if tls.handshake_timeout.is_zero() {
            err(
                "server.tls.handshake_timeout".into(),
                "must be longer than zero".into(),
            );
        }
        if tls.max_handshakes == 0 {
            err(
                "server.tls.max_handshakes".into(),
                "must be at least 1".into(),
            );
        }
    }

    match StorageUrl::parse(&config.storage.url) {
        Err(message) => err("storage.url".into(), message),
        Ok(StorageUrl::Memory) => {}
        Ok(_) if config.storage.pepper_file.is_none() => err(
            "storage.pepper_file".into(),
            "durable storage needs a pepper file (32+ random bytes, e.g. `head -c 32 /dev/urandom > pepper`); without the same pepper stored API keys and refresh tokens stop verifying".into(),
        ),
        Ok(_) => {}
    }
    if config.storage.redis_prefix.is_empty()
        || config.storage.redis_prefix.len() > 64
        || !config
            .storage
            .redis_prefix
            .bytes()
            .all(|b| b.is_ascii_graphic())
    {
        err(
            "storage.redis_prefix".into(),
            "must be 1-64 visible ASCII characters".into(),
        );
    }
    if config.storage.redis_prefix.contains(['{', '}']) {
        err(
            "storage.redis_prefix".into(),
            "must not contain `{` or `}` (Redis Cluster hash-tag characters)".into(),
        );
    }
    let redis_url = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
    if let Some(redis) = &config.storage.redis
        && !redis_url(redis)
    {
        err(
            "storage.redis".into(),
            format!("`{redis}` is not a Redis URL; use redis://HOST:PORT"),
        );
    }
    for (i, url) in config.storage.redis_cluster.iter().enumerate() {
        if !redis_url(url) {
            err(
                format!("storage.redis_cluster[{i}]"),
                format!("`{url}` is not a Redis URL; use redis://HOST:PORT"),
            );
        }
    }
    if config.storage.redis.is_some() && !config.storage.redis_cluster.is_empty() {
        err(
            "storage.redis_cluster".into(),
            "set either `redis` (one server) or `redis_cluster` (seed nodes), not both".into(),
        );
    }
    if let Some(url) = &config.audit.postgres {
        if config.audit.sqlite.is_some() {
            err(
                "audit.postgres".into(),
                "set either `sqlite` or `postgres`, not both".into(),
            );
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            err(
                "audit.postgres".into(),
                format!("`{url}` is not a PostgreSQL URL; use postgres://USER@HOST/DB"),
            );
        }
        if config.audit.spool_dir.is_none() {
            err(
                "audit.spool_dir".into(),
                "audit to PostgreSQL needs a local spool directory for events written while the database is down (e.g. /var/lib/portcullis/audit.spool)".into(),
            );
        }
    }
    if config.anomaly.max_keys == 0 {
        err("anomaly.max_keys".into(), "must be at least 1".into());
    }
    if let Err((key, message)) = config.anomaly.webhook_config() {
        err(key, message);
    }
    if let Err(e) = portcullis_core::anomaly::validate_detectors(&config.anomaly.detectors) {
        err("anomaly.detectors".into(), e.to_string());
    }
    if let Some(pepper) = &config.storage.pepper_file {
        match std::fs::metadata(pepper) {
            Ok(m) if m.len() < 32 => err(
                "storage.pepper_file".into(),
                format!(
                    "`{}` holds {} bytes; a pepper needs at least 32",
                    pepper.display(),
                    m.len()
                ),
            ),
            Ok(_) => {}
            Err(e) => err(
                "storage.pepper_file".into(),
                format!("cannot read `{}`: {e}", pepper.display()),
            ),
        }
    }

    if !config.keys.dir.is_dir() {
        err(
            "keys.dir".into(),
            format!(
                "`{}` is not a directory; create keys with `portcullis keys generate --alg ES256 --out DIR`",
                config.keys.dir.display()
            ),
        );
    }
    if config.keys.dir.is_dir()
        && let Err(e) =
            crate::cli::load_key_dir(&config.keys.dir, config.keys.active_kid.as_deref())
    {
        err("keys.dir".into(), e.to_string());
    }
    if let Err(message) = absolute_url(&config.keys.issuer) {
        err("keys.issuer".into(), message);
    }
    if !(1..=10_000).contains(&config.audit.batch_size) {
        err(
            "audit.batch_size".into(),
            "must be between 1 and 10000".into(),
        );
    }
    if !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&config.audit.flush_interval)
    {
        err(
            "audit.flush_interval".into(),
            "must be between 1ms and 10s".into(),
        );
    }
    if !(Duration::from_secs(5)..=Duration::from_secs(86_400)).contains(&config.keys.access_ttl) {
        err(
            "keys.access_ttl".into(),
            "must be between 5s and 24h".into(),
        );
    }
    let rotation = &config.keys.rotation;
    if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&rotation.poll_interval) {
        err(
            "keys.rotation.poll_interval".into(),
            "must be between 100ms and 5m".into(),
        );
    }
    if rotation.propagation_delay < 2 * rotation.poll_interval {
        err(
            "keys.rotation.propagation_delay".into(),
            "must be at least twice keys.rotation.poll_interval: every replica must read a new key before any signs with it".into(),
        );
    }

    for (i, issuer) in config.keys.trusted_issuers.iter().enumerate() {
        let key = |field: &str| format!("keys.trusted_issuers[{i}].{field}");
        if issuer.issuer == config.keys.issuer {
            err(
                key("issuer"),
                "is the gateway's own keys.issuer; its tokens are verified with keys.dir".into(),
            );
        } else if config.keys.trusted_issuers[..i]
            .iter()
            .any(|other| other.issuer == issuer.issuer)
        {
            err(
                key("issuer"),
                format!("`{}` is trusted twice", issuer.issuer),
            );
        }
        if let Err((field, message)) = crate::serve::remote_issuer(issuer) {
            err(key(field), message);
        }
    }

    let ids = config.identity.named();
    for (i, (key, name)) in ids.iter().enumerate() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
            err(
                format!("identity.{key}"),
                format!("`{name}` is not a header name"),
            );
        } else if ids[..i].iter().any(|(_, n)| n.eq_ignore_ascii_case(name)) {
            err(format!("identity.{key}"), format!("`{name}` is used twice"));
        } else if is_hop_or_credential(name) {
            err(
                format!("identity.{key}"),
                format!("`{name}` is a standard or credential header; pick an x-… name"),
            );
        }
    }

    let it = &config.internal_token;
    if http::HeaderName::from_bytes(it.header.as_bytes()).is_err() {
        err(
            "internal_token.header".into(),
            format!("`{}` is not a header name", it.header),
        );
    } else if is_hop_or_credential(&it.header)
        || ids.iter().any(|(_, n)| n.eq_ignore_ascii_case(&it.header))
    {
        err(
            "internal_token.header".into(),
            format!(
                "`{}` is a standard, credential or identity header; pick its own x-… name",
                it.header
            ),
        );
    }
    if it.ttl < Duration::from_secs(1) || it.ttl > Duration::from_secs(3600) {
        err(
            "internal_token.ttl".into(),
            "must be between 1s and 1h; internal tokens are meant to be short-lived".into(),
        );
    }
    if let Some(issuer) = &it.issuer {
        if issuer.is_empty() {
            err("internal_token.issuer".into(), "must not be empty".into());
        } else if issuer == &config.keys.issuer {
            err(
                "internal_token.issuer".into(),
                "must differ from keys.issuer, or the gateway would accept its internal tokens as callers' access tokens".into(),
            );
        }
    }
    for (i, up) in config.upstreams.iter().enumerate() {
        if up.internal_token_audience.as_deref() == Some("") {
            err(
                format!("upstreams[{i}].internal_token_audience"),
                "must not be empty".into(),
            );
        }
    }

    for (key, prefix) in [
        ("token_service.prefix", &config.token_service.prefix),
        ("forward_auth.prefix", &config.forward_auth.prefix),
        ("internal_token.jwks_path", &config.internal_token.jwks_path),
    ] {
        if !prefix.starts_with('/')
            || prefix.len() < 2
            || prefix.ends_with('/')
            || prefix.contains(['?', '#', '*', '{'])
        {
            err(
                key.into(),
                format!(
                    "`{prefix}` must be a path like /auth: a leading slash, no trailing slash, no pattern"
                ),
            );
        }
    }
    if let Some(url) = &config.token_service.public_url
        && let Err(message) = absolute_url(url)
    {
        err("token_service.public_url".into(), message);
    }
    if let Err((key, message)) = config.token_service.regulation.check() {
        err(key, message);
    }

    if let Some(signed) = &config.signed_requests {
        validate_signed_requests(signed, &config.guard, &mut err);
    }

    let conflicts = route_conflicts(&config.guard);
    if conflicts.is_empty() {
        if let Some((key, message)) = guard_error(&config.guard, config.signed_requests.is_some()) {
            err(key, message);
        }
    } else {
        for (key, message) in conflicts {
            err(key, message);
        }
    }

    // Upstreams: valid URLs, each route served by exactly one.
    let route_names: Vec<String> = config.guard.routes.iter().map(|r| r.name.clone()).collect();
    let mut seen_names: Vec<&str> = Vec::new();
    let mut defaults = 0;
    for (i, up) in config.upstreams.iter().enumerate() {
        if seen_names.contains(&up.name.as_str()) {
            err(
                format!("upstreams[{i}].name"),
                format!("`{}` names two upstreams", up.name),
            );
        }
        seen_names.push(&up.name);
        if let Err(message) = upstream_url(&up.url) {
            err(format!("upstreams[{i}].url"), message);
        }
        for (key, message) in upstream_tls_errors(up) {
            err(format!("upstreams[{i}].{key}"), message);
        }
        if up.default {
            defaults += 1;
            if defaults > 1 {
                err(
                    format!("upstreams[{i}].default"),
                    "only one upstream may be the default".into(),
                );
            }
        }
        for (j, r) in up.routes.iter().enumerate() {
            let key = format!("upstreams[{i}].routes[{j}]");
            if !route_names.contains(r) {
                let hint = suggest(r, &route_names)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| "; name one of the [[guard.routes]]".into());
                err(key, format!("no guard route is named `{r}`{hint}"));
            } else if config.upstreams[..i].iter().any(|u| u.routes.contains(r))
                || up.routes[..j].contains(r)
            {
                err(
                    key,
                    format!("route `{r}` is already served by another upstream"),
                );
            }
        }
    }
    if defaults == 0 && host == Host::Gateway {
        for (i, route) in config.guard.routes.iter().enumerate() {
            if route.effect == Effect::Allow
                && !config
                    .upstreams
                    .iter()
                    .any(|u| u.routes.contains(&route.name))
            {
                err(
                    format!("guard.routes[{i}].name"),
                    format!(
                        "route `{}` is served by no upstream; list it in an upstream's `routes` or mark one upstream `default = true`",
                        route.name
                    ),
                );
            }
        }
        if config.guard.default == Effect::Allow {
            err(
                "guard.default".into(),
                "unmatched requests are allowed but no upstream is `default = true` to serve them"
                    .into(),
            );
        }
    }
    errors
}

/// `[signed_requests]`: the window, and each app's id, secret file and grants.
fn validate_signed_requests(
    signed: &SignedRequestsConfig,
    guard: &GuardConfig,
    err: &mut impl FnMut(String, String),
) {
    if signed.window < Duration::from_secs(1) || signed.window > Duration::from_secs(3600) {
        err(
            "signed_requests.window".into(),
            "must be between 1s and 1h; it bounds how long a captured request stays replayable elsewhere and how long nonces are kept".into(),
        );
    }
    if signed.apps.is_empty() {
        err(
            "signed_requests.apps".into(),
            "no app is trusted; add a [[signed_requests.apps]] entry with `id` and `secret_file`, or remove [signed_requests]".into(),
        );
    }
    for (i, app) in signed.apps.iter().enumerate() {
        let key = |field: &str| format!("signed_requests.apps[{i}].{field}");
        let id_ok = !app.id.is_empty()
            && app.id.len() <= 128
            && app
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !id_ok {
            err(
                key("id"),
                format!(
                    "`{}` is not an app id: 1-128 of [A-Za-z0-9._-], as sent in x-portcullis-app",
                    app.id
                ),
            );
        } else if signed.apps[..i].iter().any(|a| a.id == app.id) {
            err(key("id"), format!("`{}` names two apps", app.id));
        }
        if let Err(message) = app.read_secret() {
            err(key("secret_file"), message);
        }
        for (j, role) in app.roles.iter().enumerate() {
            if !guard.roles.iter().any(|r| &r.name == role) {
                let known: Vec<String> = guard.roles.iter().map(|r| r.name.clone()).collect();
                let hint = suggest(role, &known)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| "; define it under [[guard.roles]]".into());
                err(
                    format!("signed_requests.apps[{i}].roles[{j}]"),
                    format!("no role is named `{role}`{hint}"),
                );
            }
        }
        for (j, permission) in app.permissions.iter().enumerate() {
            if permission.is_empty() || permission.chars().any(char::is_whitespace) {
                err(
                    format!("signed_requests.apps[{i}].permissions[{j}]"),
                    format!("`{permission}` is not a permission (e.g. `orders.read`)"),
                );
            }
        }
        if app.tenant.as_deref() == Some("") {
            err(key("tenant"), "must not be empty".into());
        }
    }
}

/// Routes that can never match and routes whose precedence would be only
/// their order in the file (see `AccessPolicy::conflicts`), each located at
/// its `path`. Empty when the routes do not compile (the guard's own
/// validation then says why).
fn route_conflicts(guard: &GuardConfig) -> Vec<(String, String)> {
    use portcullis_core::authz::routes::{AccessPolicy, AuthzConfig, RouteRule};
    let rules = guard
        .routes
        .iter()
        .map(|r| RouteRule {
            name: r.name.clone(),
            effect: r.effect,
            methods: r.methods.clone(),
            path: r.path.clone(),
            host: r.host.clone(),
            require: r.require.clone(),
            path_parameters: r.path_parameters,
        })
        .collect();
    let Ok(policy) = AccessPolicy::new(&AuthzConfig {
        roles: guard.roles.clone(),
        rules,
        default: guard.default,
    }) else {
        return Vec::new();
    };
    policy
        .conflicts()
        .into_iter()
        .map(|c| (format!("guard.routes[{}].path", c.index), c.to_string()))
        .collect()
}

/// The guard builder's own validation (patterns, credential sources,
/// rate-limit names, roles), run with stand-in handles; its error located
/// at the route and field it names.
fn guard_error(guard: &GuardConfig, signed_requests: bool) -> Option<(String, String)> {
    use portcullis::guard::GuardConfigError;
    use std::sync::Arc;
    let stores = portcullis::stores::Stores::new(
        portcullis::stores::Backends::all(
            Arc::new(portcullis::stores::memory::MemoryStores::new()),
        ),
        portcullis::stores::StoresConfig::new(portcullis_core::SecretHasher::new(&[0; 32]).ok()?),
    )
    .ok()?;
    let verifier = portcullis_core::Verifier::new(
        portcullis_core::KeySet::new(),
        portcullis_core::Validation::new(),
    );
    let mut builder = portcullis::Guard::builder(guard.clone())
        .local_keys(verifier)
        .stores(Arc::new(stores));
    if signed_requests {
        builder = builder.signed_requests(portcullis::authz::SignedRequestAuthenticator::new(
            portcullis::authz::MemoryNonceStore::new(1),
        ));
    }
    let e = builder.build().err()?;
    let route_key = |name: &str, field: &str| match guard.routes.iter().position(|r| r.name == name)
    {
        Some(i) => format!("guard.routes[{i}].{field}"),
        None => "guard.routes".to_owned(),
    };
    Some(match &e {
        GuardConfigError::Route {
            route,
            field,
            message,
        } => (route_key(route, field), message.clone()),
        GuardConfigError::Missing { route, what, .. } if *what == "signed requests" => (
            route_key(route, "credentials"),
            format!(
                "route `{route}` accepts `signed` credentials, but there is no [signed_requests] section trusting any app; add one (with [[signed_requests.apps]]) or remove `signed` from the route"
            ),
        ),
        GuardConfigError::Missing { route, .. } => (route_key(route, "credentials"), e.to_string()),
        GuardConfigError::Field { field, message } => (format!("guard.{field}"), message.clone()),
        other => ("guard".to_owned(), other.to_string()),
    })
}

fn is_hop_or_credential(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    crate::proxy::HOP_BY_HOP.contains(&n.as_str())
        || matches!(
            n.as_str(),
            "authorization"
                | "cookie"
                | "host"
                | "content-length"
                | "content-type"
                | "x-forwarded-for"
                | "x-request-id"
        )
}

fn absolute_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    if matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.authority().is_some()
        && uri.query().is_none()
    {
        Ok(())
    } else {
        Err(format!(
            "`{url}` must be an absolute http(s) URL without query"
        ))
    }
}

fn upstream_url(url: &str) -> Result<http::Uri, String> {
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
fn upstream_tls_errors(up: &UpstreamConfig) -> Vec<(&'static str, String)> {
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
    use super::*;

    #[test]
    fn suggestions_catch_typos_not_strangers() {
        let known: Vec<String> = ["listen", "ops_listen", "max_body_bytes"]
            .map(String::from)
            .to_vec();
        assert_eq!(suggest("lisen", &known), Some("listen"));
        assert_eq!(suggest("ops_lsiten", &known), Some("ops_listen"));
        assert_eq!(suggest("max_bdoy_bytes", &known), Some("max_body_bytes"));
        assert_eq!(suggest("completely_else", &known), None);
    }

    #[test]
    fn unknown_field_messages_parse() {
        let (f, e) =
            parse_unknown_field("unknown field `lisen`, expected one of `listen`, `ops_listen`")
                .unwrap();
        assert_eq!(f, "lisen");
        assert_eq!(e, ["listen", "ops_listen"]);
        let (_, e) = parse_unknown_field("unknown field `x`, expected `a` or `b`").unwrap();
        assert_eq!(e, ["a", "b"]);
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_line() {
        let text = "[server]\nlisen = \"127.0.0.1:1\"\n\n[keys]\ndir = \"/nonexistent\"\nissuer = \"https://i.test\"\nisuer2 = 1\n";
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        // Both unknown keys, then (the structure being sound) the missing key directory.
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert_eq!(errs[0].line, Some(2));
        assert!(
            errs[0].message.contains("did you mean `listen`"),
            "{}",
            errs[0].message
        );
        assert_eq!(errs[0].key.as_deref(), Some("server.lisen"));
        assert_eq!(errs[1].key.as_deref(), Some("keys.dir"));
        assert_eq!(errs[2].line, Some(7));
        assert!(errs[2].message.contains("did you mean `issuer`"));
    }

    #[test]
    fn revocation_bounds_are_checked_and_name_the_key() {
        let text = "[keys]\ndir = \"/nonexistent\"\nissuer = \"https://i.test\"\n\n[revocation]\nmax_stale = \"500ms\"\npoll_interval = \"2s\"\non_stale = \"allow\"\n";
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        for key in ["revocation.max_stale", "revocation.poll_interval"] {
            let e = errs
                .iter()
                .find(|e| e.key.as_deref() == Some(key))
                .unwrap_or_else(|| panic!("{key} not reported: {errs:?}"));
            assert!(e.line.is_some(), "{e:?}");
        }
        let text = "[keys]\ndir = \"/nonexistent\"\nissuer = \"https://i.test\"\n\n[revocation]\non_stale = \"maybe\"\n";
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        assert!(errs.iter().any(|e| e.message.contains("maybe")), "{errs:?}");
        let defaults = RevocationConfig::default().policy();
        assert_eq!(defaults, portcullis::stores::RevocationPolicy::default());
    }

    #[test]
    fn semantic_errors_name_the_key_and_line() {
        let text = "[keys]\ndir = \"/nonexistent\"\nissuer = \"https://i.test\"\n\n[storage]\nurl = \"mysql://x\"\n";
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        let storage = errs
            .iter()
            .find(|e| e.key.as_deref() == Some("storage.url"))
            .unwrap();
        assert_eq!(storage.line, Some(6));
        let keys = errs
            .iter()
            .find(|e| e.key.as_deref() == Some("keys.dir"))
            .unwrap();
        assert_eq!(keys.line, Some(2));
    }

    #[test]
    fn worker_threads_are_bounded() {
        let base = "[keys]\ndir = \"/nonexistent\"\nissuer = \"https://i.test\"\n\n[server]\n";
        for (n, ok) in [(0, false), (1, true), (1024, true), (1025, false)] {
            let text = format!("{base}worker_threads = {n}\n");
            let errs = parse(Path::new("p.toml"), &text).unwrap_err().0;
            let found = errs
                .iter()
                .find(|e| e.key.as_deref() == Some("server.worker_threads"));
            assert_eq!(found.is_none(), ok, "{n}: {errs:?}");
            if let Some(e) = found {
                assert_eq!(e.line, Some(6), "{n}");
            }
        }
    }

    #[test]
    fn redis_audit_and_anomaly_keys_are_checked() {
        let base = "[keys]\ndir = \"/nonexistent\"\nissuer = \"https://i.test\"\n\n";
        let keys_of = |extra: &str| -> Vec<String> {
            match parse(Path::new("p.toml"), &format!("{base}{extra}")) {
                Ok(_) => Vec::new(),
                Err(e) => e.0.into_iter().filter_map(|e| e.key).collect(),
            }
        };
        let both = keys_of(
            "[storage]\nredis = \"redis://a:1\"\nredis_cluster = [\"redis://b:1\", \"http://c:1\"]\nredis_prefix = \"a{b}\"\n",
        );
        assert!(
            both.contains(&"storage.redis_cluster".to_owned()),
            "{both:?}"
        );
        assert!(
            both.contains(&"storage.redis_cluster[1]".to_owned()),
            "{both:?}"
        );
        assert!(
            both.contains(&"storage.redis_prefix".to_owned()),
            "{both:?}"
        );
        let audit = keys_of("[audit]\npostgres = \"mysql://x\"\nsqlite = \"/tmp/a.db\"\n");
        assert!(audit.contains(&"audit.postgres".to_owned()), "{audit:?}");
        assert!(audit.contains(&"audit.spool_dir".to_owned()), "{audit:?}");
        let anomaly = keys_of(
            "[anomaly]\nmax_keys = 0\n[[anomaly.detectors]]\nkind = \"burst\"\nthreshold = 0\nwindow = 10\nactions = [\"tag\"]\n",
        );
        assert!(
            anomaly.contains(&"anomaly.max_keys".to_owned()),
            "{anomaly:?}"
        );
        assert!(
            anomaly.contains(&"anomaly.detectors".to_owned()),
            "{anomaly:?}"
        );
        // A good cluster, PostgreSQL audit and detector list: only the missing key dir.
        let good = keys_of(
            "[storage]\nredis_cluster = [\"redis://b:1\"]\n[audit]\npostgres = \"postgres://u@h/db\"\nspool_dir = \"/tmp/s\"\n[anomaly]\n[[anomaly.detectors]]\nkind = \"auth_failures\"\nthreshold = 3\nwindow = 60\nactions = [\"ban\"]\n",
        );
        assert_eq!(good, ["keys.dir"]);
    }

    #[test]
    fn upstream_routes_must_exist() {
        let text = "[keys]\ndir = \"/\"\nissuer = \"https://i.test\"\n\n[[guard.routes]]\nname = \"docs\"\npath = \"/docs\"\n\n[[upstreams]]\nname = \"app\"\nurl = \"http://127.0.0.1:1\"\nroutes = [\"dcos\"]\n";
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        let e = errs
            .iter()
            .find(|e| e.key.as_deref() == Some("upstreams[0].routes[0]"))
            .unwrap();
        assert!(e.message.contains("did you mean `docs`"), "{}", e.message);
        assert_eq!(e.line, Some(12));
    }

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

    /// The annotated example in docs/config.md is a configuration this
    /// loader reads, its guard builds, and its upstreams cover its routes.
    #[test]
    fn the_documented_example_loads() {
        let doc = include_str!("../../../docs/config.md");
        let start = doc.find("```toml\n").expect("example block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("end of block");
        let example = &doc[start..end];
        let doc = DeTable::parse(example).expect("TOML");
        let config = Config::deserialize(toml::de::Deserializer::from(doc)).expect("typed");
        let problems: Vec<_> = validate(&config, Host::Gateway)
            .into_iter()
            // The example's paths do not exist on the test machine.
            .filter(|(k, _)| {
                k != "keys.dir"
                    && k != "storage.pepper_file"
                    && !(k.starts_with("signed_requests.apps[") && k.ends_with("].secret_file"))
            })
            .collect();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.guard.routes.len(), 3);
        let signed = config.signed_requests.as_ref().expect("[signed_requests]");
        assert_eq!(signed.window, Duration::from_secs(300));
        assert_eq!(signed.apps[0].id, "billing");
        portcullis::Guard::builder(config.guard)
            .without_revocation()
            .local_keys(portcullis_core::Verifier::new(
                portcullis_core::KeySet::new(),
                portcullis_core::Validation::new(),
            ))
            .stores(std::sync::Arc::new(
                portcullis::stores::Stores::new(
                    portcullis::stores::Backends::all(std::sync::Arc::new(
                        portcullis::stores::memory::MemoryStores::new(),
                    )),
                    portcullis::stores::StoresConfig::new(
                        portcullis_core::SecretHasher::new(&[1; 32]).unwrap(),
                    ),
                )
                .unwrap(),
            ))
            .build()
            .expect("the example's guard builds");
    }

    #[test]
    fn guard_errors_are_located_at_the_route() {
        let text = "[keys]\ndir = \"/\"\nissuer = \"https://i.test\"\n\n[[guard.routes]]\nname = \"docs\"\npath = \"/docs\"\nrate_limits = [\"nope\"]\n\n[[upstreams]]\nname = \"app\"\nurl = \"http://127.0.0.1:1\"\ndefault = true\n";
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        let e = errs
            .iter()
            .find(|e| e.key.as_deref() == Some("guard.routes[0].rate_limits"))
            .unwrap_or_else(|| panic!("{errs:?}"));
        assert_eq!(e.line, Some(8));
    }

    #[test]
    fn environment_overrides_replace_keys_and_errors_name_the_variable() {
        let dir =
            std::env::temp_dir().join(format!("portcullis-config-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = portcullis_core::Key::generate(portcullis_core::Algorithm::ES256).unwrap();
        std::fs::write(dir.join("k1.pem"), key.private_pkcs8_pem().unwrap()).unwrap();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n\n[keys]\ndir = \"{}\"\nissuer = \"https://i.test\"\n",
            dir.display()
        );
        let text = text.as_str();
        let vars = [
            ("PORTCULLIS_SERVER__LISTEN", "127.0.0.1:7777"),
            ("PORTCULLIS_SERVER__MAX_BODY_BYTES", "2048"),
            (
                "PORTCULLIS_GUARD__CLIENT_IP__TRUSTED_PROXIES",
                "[\"10.0.0.0/8\"]",
            ),
            ("PORTCULLIS_REDIS_URL", "redis://not-a-config-key"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let overrides = env_overrides(vars.into_iter());
        assert_eq!(overrides.len(), 3);
        let config = parse_with(Path::new("p.toml"), text, &overrides).unwrap();
        assert_eq!(config.server.listen.port(), 7777);
        assert_eq!(config.server.max_body_bytes, 2048);
        assert!(
            config
                .guard
                .client_ip
                .is_trusted("10.1.2.3".parse().unwrap())
        );

        let bad =
            env_overrides([("PORTCULLIS_SERVER__LISEN".to_owned(), "x".to_owned())].into_iter());
        let errs = parse_with(Path::new("p.toml"), text, &bad).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].line, None);
        assert!(
            errs[0].message.contains("did you mean `listen`"),
            "{}",
            errs[0].message
        );
        assert!(
            errs[0].message.contains("PORTCULLIS_SERVER__LISEN"),
            "{}",
            errs[0].message
        );
    }
    fn key_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portcullis-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = portcullis_core::Key::generate(portcullis_core::Algorithm::ES256).unwrap();
        std::fs::write(dir.join("k1.pem"), key.private_pkcs8_pem().unwrap()).unwrap();
        dir
    }

    #[test]
    fn secrets_come_from_files_bounded_and_never_twice() {
        let dir = key_dir("secrets");
        let url = dir.join("url");
        std::fs::write(&url, "sqlite:///tmp/portcullis-secret-test.db\r\n").unwrap();
        let redis = dir.join("redis");
        std::fs::write(&redis, "redis://:s3cret@127.0.0.1:6379\n").unwrap();
        let pepper = dir.join("pepper");
        std::fs::write(&pepper, [7u8; 32]).unwrap();
        let head = format!(
            "[keys]\ndir = \"{}\"\nissuer = \"https://i.test\"\n\n[storage]\npepper_file = \"{}\"\n",
            dir.display(),
            pepper.display()
        );
        let text = format!(
            "{head}url_file = \"{}\"\nredis_file = \"{}\"\n",
            url.display(),
            redis.display()
        );
        let config = parse(Path::new("p.toml"), &text).unwrap();
        // One trailing newline trimmed; the value checked like the key's own.
        assert_eq!(
            config.storage.url,
            "sqlite:///tmp/portcullis-secret-test.db"
        );
        assert_eq!(
            config.storage.redis.as_deref(),
            Some("redis://:s3cret@127.0.0.1:6379")
        );

        // Both the key and its file: an error at the `_file` line.
        let both = format!("{head}url = \"memory\"\nurl_file = \"{}\"\n", url.display());
        let errs = parse(Path::new("p.toml"), &both).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key.as_deref(), Some("storage.url_file"));
        assert_eq!(errs[0].line, Some(8));
        assert!(errs[0].message.contains("not both"), "{}", errs[0].message);

        // A missing file names the key and the path.
        let missing = dir.join("nope");
        let text = format!("{head}redis_file = \"{}\"\n", missing.display());
        let errs = parse(Path::new("p.toml"), &text).unwrap_err().0;
        assert_eq!(errs[0].key.as_deref(), Some("storage.redis_file"));
        assert!(
            errs[0].message.contains(&missing.display().to_string()),
            "{}",
            errs[0].message
        );

        // Too large, or empty: refused.
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
        let text = format!("{head}url_file = \"{}\"\n", big.display());
        let errs = parse(Path::new("p.toml"), &text).unwrap_err().0;
        assert!(
            errs[0].message.contains("larger than"),
            "{}",
            errs[0].message
        );
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let text = format!("{head}url_file = \"{}\"\n", empty.display());
        let errs = parse(Path::new("p.toml"), &text).unwrap_err().0;
        assert!(errs[0].message.contains("is empty"), "{}", errs[0].message);

        // A file holding a bad value is refused like the value itself.
        std::fs::write(&url, "mysql://x\n").unwrap();
        let text = format!("{head}url_file = \"{}\"\n", url.display());
        let errs = parse(Path::new("p.toml"), &text).unwrap_err().0;
        assert_eq!(errs[0].key.as_deref(), Some("storage.url"), "{errs:?}");

        // The `_file` key can come from the environment too.
        std::fs::write(&url, "memory\n").unwrap();
        let vars = [(
            "PORTCULLIS_STORAGE__URL_FILE".to_owned(),
            url.display().to_string(),
        )];
        let config =
            parse_with(Path::new("p.toml"), &head, &env_overrides(vars.into_iter())).unwrap();
        assert_eq!(config.storage.url, "memory");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn environment_overrides_reach_entries_of_arrays_of_tables() {
        let dir = key_dir("env-array");
        let text = format!(
            "[keys]\ndir = \"{}\"\nissuer = \"https://i.test\"\n\n[[guard.routes]]\nname = \"a\"\npath = \"/a\"\n\n[[guard.routes]]\nname = \"b\"\npath = \"/b\"\n\n[[upstreams]]\nname = \"app\"\nurl = \"http://127.0.0.1:1\"\ndefault = true\n",
            dir.display()
        );
        let vars = |pairs: &[(&str, &str)]| {
            env_overrides(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>()
                    .into_iter(),
            )
        };
        let config = parse_with(
            Path::new("p.toml"),
            &text,
            &vars(&[
                ("PORTCULLIS_GUARD__ROUTES__1__MODE", "dry_run"),
                ("PORTCULLIS_GUARD__ROUTES__0__PATH", "/z"),
                ("PORTCULLIS_UPSTREAMS__0__URL", "http://127.0.0.1:2"),
            ]),
        )
        .unwrap();
        assert_eq!(config.guard.routes[0].path, "/z");
        assert_eq!(
            config.guard.routes[0].mode,
            portcullis::guard::Mode::Enforce
        );
        assert_eq!(config.guard.routes[1].mode, portcullis::guard::Mode::DryRun);
        assert_eq!(config.upstreams[0].url, "http://127.0.0.1:2");

        for (var, says) in [
            ("PORTCULLIS_GUARD__ROUTES__2__MODE", "has 2 entries"),
            ("PORTCULLIS_GUARD__ROUTES__MODE", "by its index"),
            ("PORTCULLIS_GUARD__ROUTES__0", "ends with an index"),
        ] {
            let errs = parse_with(Path::new("p.toml"), &text, &vars(&[(var, "x")]))
                .unwrap_err()
                .0;
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].message.contains(says), "{var}: {}", errs[0].message);
            assert!(errs[0].message.contains(var), "{}", errs[0].message);
        }
        // A bad value in an entry is located at the variable.
        let errs = parse_with(
            Path::new("p.toml"),
            &text,
            &vars(&[("PORTCULLIS_GUARD__ROUTES__0__MODE", "sometimes")]),
        )
        .unwrap_err()
        .0;
        assert!(
            errs[0]
                .message
                .contains("PORTCULLIS_GUARD__ROUTES__0__MODE"),
            "{}",
            errs[0].message
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn route_conflicts_are_errors_at_the_route_path() {
        let text = "[keys]\ndir = \"/\"\nissuer = \"https://i.test\"\n\n[[guard.routes]]\nname = \"get\"\nmethods = [\"GET\"]\npath = \"/o\"\n\n[[guard.routes]]\nname = \"any\"\npath = \"/o\"\nmethods = [\"GET\"]\n\n[[upstreams]]\nname = \"app\"\nurl = \"http://127.0.0.1:1\"\ndefault = true\n";
        let errs = parse(Path::new("p.toml"), text).unwrap_err().0;
        let e = errs
            .iter()
            .find(|e| e.key.as_deref() == Some("guard.routes[1].path"))
            .unwrap_or_else(|| panic!("{errs:?}"));
        assert_eq!(e.line, Some(12));
        assert!(
            e.message.contains("ambiguous with route `get`"),
            "{}",
            e.message
        );
    }
}
