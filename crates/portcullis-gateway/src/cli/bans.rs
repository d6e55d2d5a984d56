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
use portcullis_core::ratelimit::{BanKeyError, ClientIpConfig};

use super::CliError;
use super::console;
use super::duration::parse_duration;

/// Where the shared bans live.
#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Redis server URL, e.g. redis://127.0.0.1:6379.
    #[arg(
        long,
        conflicts_with_all = ["redis_cluster", "admin"],
        required_unless_present_any = ["redis_cluster", "admin"]
    )]
    pub redis: Option<String>,
    /// Redis Cluster seed nodes, comma separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "admin")]
    pub redis_cluster: Option<Vec<String>>,
    /// Instead of Redis: a running gateway's admin API (its ops listener,
    /// e.g. http://127.0.0.1:9090), the key from --key-file or
    /// PORTCULLIS_ADMIN_KEY.
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// A file holding the admin API key (with --admin).
    #[arg(long, value_name = "FILE", requires = "admin")]
    pub key_file: Option<std::path::PathBuf>,
    /// Key prefix the gateways use.
    #[arg(long, default_value = "portcullis")]
    pub prefix: String,
}

/// Who a ban names.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// A client IP, or the IPv6 network the gateway groups clients by
    /// (e.g. 203.0.113.7, 2001:db8::/64; any address inside it names it).
    #[arg(long)]
    pub ip: Option<String>,
    /// A subject.
    #[arg(long)]
    pub subject: Option<String>,
}

impl TargetArgs {
    fn target(&self, ipv6_prefix: u8) -> Result<BanTarget, CliError> {
        match (&self.ip, &self.subject) {
            (Some(ip), None) => Ok(BanTarget::Ip(ip_target(ip, ipv6_prefix)?)),
            (None, Some(s)) if !s.trim().is_empty() => Ok(BanTarget::Subject(s.trim().to_owned())),
            _ => Err(CliError::Usage(
                "pass exactly one non-empty --ip or --subject".into(),
            )),
        }
    }
}

/// The form requests are checked against for `--ip`
/// ([`ClientIpConfig::ban_key`] with the gateway's `ipv6_prefix`).
fn ip_target(text: &str, ipv6_prefix: u8) -> Result<String, CliError> {
    let config = ClientIpConfig::new()
        .ipv6_prefix(ipv6_prefix)
        .map_err(|e| CliError::Usage(format!("--ipv6-prefix: {e}")))?;
    config.ban_key(text).map_err(|e| {
        let hint = match e {
            BanKeyError::WiderThanGroup { .. } => {
                " (set --ipv6-prefix to the gateway's client_ip.ipv6_prefix)"
            }
            _ => "",
        };
        CliError::Usage(format!("--ip `{}`: {e}{hint}", text.trim()))
    })
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
    /// The gateway's IPv6 grouping prefix (client_ip.ipv6_prefix), for --ip.
    #[arg(long, default_value_t = 64)]
    ipv6_prefix: u8,
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
    /// The gateway's IPv6 grouping prefix (client_ip.ipv6_prefix), for --ip.
    #[arg(long, default_value_t = 64)]
    ipv6_prefix: u8,
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
    // An operator's command may wait longer than a request's 100 ms.
    let backend = AnomalyBackend::Redis {
        counters: RedisCounters::new(conn.clone(), &args.prefix),
        bans: RedisBans::new(conn, &args.prefix).call_timeout(Duration::from_secs(5)),
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

/// The admin API `args` names, if it names one.
fn admin_api(args: &RedisArgs) -> Option<super::remote::Target> {
    args.admin.as_ref().map(|url| super::remote::Target {
        url: url.clone(),
        key_file: args.key_file.clone(),
        format: super::remote::Format::Json,
    })
}

/// Prints the active bans.
pub fn list(args: &ListArgs) -> Result<(), CliError> {
    if let Some(api) = admin_api(&args.redis) {
        let v = api.call("GET", "/admin/bans", None)?;
        let bans: Vec<Ban> = v["bans"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| {
                let target = match b["target"].as_str()?.split_once(':')? {
                    ("ip", ip) => BanTarget::Ip(ip.to_owned()),
                    ("subject", s) => BanTarget::Subject(s.to_owned()),
                    _ => return None,
                };
                Some(Ban {
                    target,
                    until_ms: b["until_ms"].as_u64()?,
                    reason: b["reason"].as_str()?.to_owned(),
                })
            })
            .collect();
        return print_bans(&bans, args.format);
    }
    runtime()?.block_on(async {
        let engine = engine(&args.redis).await?;
        let bans = engine.list_bans().await.map_err(backend_error)?;
        print_bans(&bans, args.format)
    })
}

/// Adds (or extends) a ban and prints it.
pub fn add(args: &AddArgs) -> Result<(), CliError> {
    let target = args.target.target(args.ipv6_prefix)?;
    if args.duration.is_zero() {
        return Err(CliError::Usage("--for must be positive".into()));
    }
    if let Some(api) = admin_api(&args.redis) {
        let body = serde_json::json!({
            "target": target.render(),
            "duration_seconds": u32::try_from(args.duration.as_secs().max(1)).unwrap_or(u32::MAX),
            "reason": args.reason,
        });
        let v = api.call("POST", "/admin/bans", Some(super::remote::Body::Json(body)))?;
        return console::print_json(&v);
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
    let target = args.target.target(args.ipv6_prefix)?;
    if let Some(api) = admin_api(&args.redis) {
        let path = format!("/admin/bans/{}", super::remote::seg(&target.render()));
        let lifted = match api.call("DELETE", &path, None) {
            Ok(_) => true,
            Err(CliError::Usage(m)) if m.starts_with("404") => false,
            Err(e) => return Err(e),
        };
        return console::print_json(
            &serde_json::json!({ "target": target.render(), "lifted": lifted }),
        );
    }
    runtime()?.block_on(async {
        let engine = engine(&args.redis).await?;
        let lifted = engine.lift_ban(&target).await.map_err(backend_error)?;
        console::print_json(&serde_json::json!({ "target": target.render(), "lifted": lifted }))
    })
}
