//! `portcullis bans list|add|lift`: the anomaly bans every replica shares
//! through Redis (single server or Cluster).

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use portcullis::anomaly::redis::{RedisBans, RedisConnection, RedisCounters};
use portcullis::anomaly::{AnomalyBackend, AnomalyEngine};
use portcullis_core::SystemClock;
use portcullis_core::anomaly::webhook::rfc3339_millis;
use portcullis_core::anomaly::{Ban, BanTarget};

use super::CliError;
use super::console;
use super::duration::parse_duration;

/// Where the shared bans live.
#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Redis server URL, e.g. redis://127.0.0.1:6379.
    #[arg(
        long,
        conflicts_with = "redis_cluster",
        required_unless_present = "redis_cluster"
    )]
    pub redis: Option<String>,
    /// Redis Cluster seed nodes, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub redis_cluster: Option<Vec<String>>,
    /// Key prefix the gateways use.
    #[arg(long, default_value = "portcullis")]
    pub prefix: String,
}

/// Who a ban names.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// A client IP (IPv6 as the rate limiter groups it, e.g. 2001:db8::/64).
    #[arg(long)]
    pub ip: Option<String>,
    /// A subject.
    #[arg(long)]
    pub subject: Option<String>,
}

impl TargetArgs {
    fn target(&self) -> Result<BanTarget, CliError> {
        match (&self.ip, &self.subject) {
            (Some(ip), None) if !ip.trim().is_empty() => Ok(BanTarget::Ip(ip.trim().to_owned())),
            (None, Some(s)) if !s.trim().is_empty() => Ok(BanTarget::Subject(s.trim().to_owned())),
            _ => Err(CliError::Usage(
                "pass exactly one non-empty --ip or --subject".into(),
            )),
        }
    }
}

/// Output format of `bans list`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// One JSON array.
    Json,
}

/// `bans list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// `bans add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// How long, e.g. 15m, 2h, 1d.
    #[arg(long = "for", value_parser = parse_duration)]
    duration: Duration,
    /// Why (shown in listings and the audit log).
    #[arg(long, default_value = "manual")]
    reason: String,
}

/// `bans lift`.
#[derive(Debug, Args)]
pub struct LiftArgs {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    target: TargetArgs,
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)
}

async fn engine(args: &RedisArgs) -> Result<AnomalyEngine, CliError> {
    if args.prefix.is_empty() || args.prefix.contains(['{', '}']) {
        return Err(CliError::Usage(
            "--prefix must be non-empty and contain no braces".into(),
        ));
    }
    let conn = match (&args.redis, &args.redis_cluster) {
        (Some(url), _) => RedisConnection::single(url).await,
        (None, Some(urls)) => RedisConnection::cluster(urls).await,
        (None, None) => return Err(CliError::Usage("pass --redis or --redis-cluster".into())),
    }
    .map_err(|e| {
        CliError::Usage(format!(
            "cannot connect to Redis: {e}; check --redis / --redis-cluster"
        ))
    })?;
    let backend = AnomalyBackend::Redis {
        counters: RedisCounters::new(conn.clone(), &args.prefix),
        bans: RedisBans::new(conn, &args.prefix),
    };
    AnomalyEngine::new(Vec::new(), backend, None, Arc::new(SystemClock))
        .map_err(|e| CliError::Usage(e.to_string()))
}

fn backend_error(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("Redis request failed: {e}"))
}

fn print_bans(bans: &[Ban], format: Format) -> Result<(), CliError> {
    match format {
        Format::Json => console::print_json(bans),
        Format::Table => {
            let mut out = format!("{:<40} {:<25} {}\n", "TARGET", "UNTIL", "REASON");
            for b in bans {
                out.push_str(&format!(
                    "{:<40} {:<25} {}\n",
                    b.target.render(),
                    rfc3339_millis(b.until_ms),
                    b.reason
                ));
            }
            console::print(out.trim_end())
        }
    }
}

/// Prints the active bans.
pub fn list(args: &ListArgs) -> Result<(), CliError> {
    runtime()?.block_on(async {
        let engine = engine(&args.redis).await?;
        let bans = engine.list_bans().await.map_err(backend_error)?;
        print_bans(&bans, args.format)
    })
}

/// Adds (or extends) a ban and prints it.
pub fn add(args: &AddArgs) -> Result<(), CliError> {
    let target = args.target.target()?;
    if args.duration.is_zero() {
        return Err(CliError::Usage("--for must be positive".into()));
    }
    runtime()?.block_on(async {
        let engine = engine(&args.redis).await?;
        let ban = engine
            .ban(target, args.duration, &args.reason)
            .await
            .map_err(backend_error)?;
        console::print_json(&ban)
    })
}

/// Lifts a ban on every replica.
pub fn lift(args: &LiftArgs) -> Result<(), CliError> {
    let target = args.target.target()?;
    runtime()?.block_on(async {
        let engine = engine(&args.redis).await?;
        let lifted = engine.lift_ban(&target).await.map_err(backend_error)?;
        console::print_json(&serde_json::json!({ "target": target.render(), "lifted": lifted }))
    })
}
