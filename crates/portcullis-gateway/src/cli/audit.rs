//! `portcullis audit query|tail|prune`: read and trim the audit log in
//! SQLite or PostgreSQL.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use portcullis::audit::postgres::PostgresAudit;
use portcullis::audit::sqlite::SqliteAudit;
use portcullis::audit::{AuditEvent, AuditPage, AuditQuery, AuditStore, Cursor, Decision};
use portcullis_core::audit::query::MAX_PAGE_SIZE;
use portcullis_core::audit::time::{format_rfc3339_micros, micros, parse_rfc3339};
use portcullis_core::{Clock, SystemClock};

use super::CliError;
use super::console;
use super::duration::parse_duration;

/// Which audit store to read (exactly one of them).
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// SQLite audit database file.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["postgres", "admin"], required_unless_present_any = ["postgres", "admin"])]
    pub sqlite: Option<PathBuf>,
    /// PostgreSQL URL, e.g. postgres://user@127.0.0.1:5432/portcullis.
    #[arg(long, value_name = "URL", conflicts_with = "admin")]
    pub postgres: Option<String>,
    /// Instead: a running gateway's admin API (its ops listener, e.g.
    /// http://127.0.0.1:9090; the key from --key-file or PORTCULLIS_ADMIN_KEY).
    /// Reads only: `prune` needs the database.
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// A file holding the admin API key (with --admin).
    #[arg(long, value_name = "FILE", requires = "admin")]
    pub key_file: Option<PathBuf>,
}

/// A point in time: RFC 3339, or a duration meaning "that long ago".
#[derive(Debug, Clone, Copy)]
pub enum TimeArg {
    /// An absolute time, µs since the epoch.
    At(i64),
    /// So long before now.
    Ago(Duration),
}

impl TimeArg {
    pub(crate) fn resolve(self, now_us: i64) -> i64 {
        match self {
            Self::At(t) => t,
            Self::Ago(d) => now_us.saturating_sub(micros(d)),
        }
    }
}

pub(crate) fn parse_time(text: &str) -> Result<TimeArg, String> {
    parse_rfc3339(text)
        .map(TimeArg::At)
        .or_else(|| parse_duration(text).ok().map(TimeArg::Ago))
        .ok_or_else(|| {
            format!("`{text}` is neither an RFC 3339 time (2026-11-29T00:00:00Z) nor a duration (15m, 2h, 7d, 2w)")
        })
}

fn parse_decision(text: &str) -> Result<Decision, String> {
    Decision::parse(text).ok_or_else(|| format!("`{text}` is not a decision; use allow or deny"))
}

/// Filters shared by `query` and `tail`.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only this subject.
    #[arg(long)]
    subject: Option<String>,
    /// Only this client IP.
    #[arg(long)]
    ip: Option<String>,
    /// Only paths starting with this.
    #[arg(long, value_name = "PREFIX")]
    path_prefix: Option<String>,
    /// From this time on: RFC 3339, or a duration ago (e.g. 1h).
    #[arg(long, value_parser = parse_time)]
    since: Option<TimeArg>,
    /// Before this time: RFC 3339, or a duration ago.
    #[arg(long, value_parser = parse_time)]
    until: Option<TimeArg>,
    /// Only this HTTP status.
    #[arg(long)]
    status: Option<u16>,
    /// Only allow or deny.
    #[arg(long, value_parser = parse_decision)]
    decision: Option<Decision>,
    /// Only this reason code, e.g. auth.token_expired.
    #[arg(long)]
    code: Option<String>,
    /// Only events an anomaly detector flagged.
    #[arg(long)]
    anomalies: bool,
    /// Only events a rate limit rejected.
    #[arg(long)]
    rate_limited: bool,
}

impl FilterArgs {
    fn query(&self, now_us: i64) -> AuditQuery {
        AuditQuery {
            subject: self.subject.clone(),
            client_ip: self.ip.clone(),
            path_prefix: self.path_prefix.clone(),
            since_us: self.since.map(|t| t.resolve(now_us)),
            until_us: self.until.map(|t| t.resolve(now_us)),
            status: self.status,
            decision: self.decision,
            code: self.code.clone(),
            anomalies_only: self.anomalies,
            rate_limited_only: self.rate_limited,
            ..AuditQuery::default()
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON (`query`: one document with `events` and `next`; `tail`: one event per line).
    Json,
}

/// `audit query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    filters: FilterArgs,
    /// Events per page (1 to 1000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Continue after a previous page (its `next` value).
    #[arg(long)]
    cursor: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// `audit tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    filters: FilterArgs,
    /// How often to poll, e.g. 1s, 5s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Events from the past printed first.
    #[arg(long, default_value_t = 10)]
    last: usize,
    /// Exit after printing this many new events (default: follow forever).
    #[arg(long)]
    max_events: Option<usize>,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
}

/// `audit prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Delete events older than this, e.g. 30d.
    #[arg(long, value_parser = parse_duration)]
    older_than: Duration,
}

pub(crate) enum Store {
    Sqlite(SqliteAudit),
    Postgres(PostgresAudit),
    Admin(AdminAudit),
}

impl Store {
    pub(crate) fn as_store(&self) -> &dyn AuditStore {
        match self {
            Self::Sqlite(s) => s,
            Self::Postgres(p) => p,
            Self::Admin(a) => a,
        }
    }

    async fn prune(&self, before_us: i64) -> Result<u64, CliError> {
        match self {
            Self::Sqlite(s) => s.prune_before_with(before_us, prune_progress).await,
            Self::Postgres(p) => p.prune_before_with(before_us, prune_progress).await,
            Self::Admin(_) => {
                return Err(CliError::Usage(
                    "prune needs the audit database: pass --sqlite or --postgres".into(),
                ));
            }
        }
        .map_err(backend_error)
    }
}

/// A long prune's progress on stderr (stdout keeps the one JSON answer).
fn prune_progress(deleted: u64) {
    eprintln!("audit prune: {deleted} events deleted so far");
}

/// The audit log read through a gateway's admin API (`GET /admin/audit`).
pub(crate) struct AdminAudit {
    authority: String,
    key: String,
}

impl AdminAudit {
    fn path(query: &AuditQuery) -> String {
        let mut params = vec![format!("limit={}", query.limit)];
        let mut text = |name: &str, v: &Option<String>| {
            if let Some(v) = v {
                params.push(format!("{name}={}", super::remote::seg(v)));
            }
        };
        text("subject", &query.subject);
        text("ip", &query.client_ip);
        text("path_prefix", &query.path_prefix);
        text("code", &query.code);
        text("since", &query.since_us.map(format_rfc3339_micros));
        text("until", &query.until_us.map(format_rfc3339_micros));
        text("decision", &query.decision.map(|d| d.as_str().to_owned()));
        text("cursor", &query.cursor.as_ref().map(Cursor::encode));
        if let Some(status) = query.status {
            params.push(format!("status={status}"));
        }
        if query.anomalies_only {
            params.push("anomalies=true".into());
        }
        if query.rate_limited_only {
            params.push("rate_limited=true".into());
        }
        format!("/admin/audit?{}", params.join("&"))
    }
}

impl AuditStore for AdminAudit {
    fn query<'a>(
        &'a self,
        query: &'a AuditQuery,
    ) -> portcullis::audit::BoxFuture<'a, Result<AuditPage, portcullis::audit::AuditError>> {
        Box::pin(async move {
            let failed = |e: String| portcullis::audit::AuditError::Config(e);
            let (status, body) = super::remote::exchange(
                "the admin API",
                &self.authority,
                Some(&self.key),
                "GET",
                &Self::path(query),
                None,
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
            if !status.is_success() {
                return Err(failed(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
            serde_json::from_slice::<AuditPage>(&body).map_err(|e| failed(format!("answer: {e}")))
        })
    }
}

pub(crate) fn backend_error(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("audit store request failed: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)
}

pub(crate) async fn open(args: &StoreArgs) -> Result<Store, CliError> {
    if let Some(url) = &args.admin {
        let target = super::remote::Target {
            url: url.clone(),
            key_file: args.key_file.clone(),
            format: super::remote::Format::Json,
        };
        return Ok(Store::Admin(AdminAudit {
            authority: target.authority()?,
            key: target.key()?,
        }));
    }
    match (&args.sqlite, &args.postgres) {
        (Some(path), None) => {
            if !path.is_file() {
                return Err(CliError::Usage(format!(
                    "no audit database at `{}`; pass --sqlite the file the gateway writes",
                    path.display()
                )));
            }
            SqliteAudit::open(path, Duration::from_secs(5))
                .await
                .map(Store::Sqlite)
                .map_err(|e| CliError::Usage(format!("cannot open `{}`: {e}", path.display())))
        }
        (None, Some(url)) => PostgresAudit::connect(url)
            .await
            .map(Store::Postgres)
            .map_err(|e| CliError::Usage(format!("cannot use --postgres: {e}"))),
        _ => Err(CliError::Usage(
            "pass exactly one of --sqlite, --postgres or --admin".into(),
        )),
    }
}

pub(crate) fn now_us() -> i64 {
    micros(SystemClock.now())
}

fn opt(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

fn table_header() -> String {
    format!(
        "{:<27} {:<6} {:<6} {:<7} {:<20} {:<16} {:<28} {}",
        "TIME", "RESULT", "STATUS", "METHOD", "SUBJECT", "CLIENT IP", "CODE", "PATH"
    )
}

fn table_row(e: &AuditEvent) -> String {
    let path = match (&e.path, e.kind.as_str()) {
        (Some(p), _) => p.clone(),
        (None, kind) => format!("[{kind}]"),
    };
    format!(
        "{:<27} {:<6} {:<6} {:<7} {:<20} {:<16} {:<28} {}",
        format_rfc3339_micros(e.ts_us),
        e.decision.as_str(),
        e.status.map_or_else(|| "-".to_owned(), |s| s.to_string()),
        opt(e.method.as_deref()),
        opt(e.subject.as_deref()),
        opt(e.client_ip.as_deref()),
        opt(e.code.as_deref()),
        path
    )
}

fn print_page(page: &AuditPage, format: Format) -> Result<(), CliError> {
    match format {
        Format::Json => console::print_json(page),
        Format::Table => {
            let mut out = table_header();
            for e in &page.events {
                out.push('\n');
                out.push_str(&table_row(e));
            }
            if let Some(next) = &page.next {
                out.push_str(&format!("\nmore: --cursor {next}"));
            }
            console::print(&out)
        }
    }
}

/// Prints one page of matching events, newest first.
pub fn query(args: &QueryArgs) -> Result<(), CliError> {
    let mut q = args.filters.query(now_us());
    q.limit = args.limit;
    if let Some(c) = &args.cursor {
        q.cursor = Some(Cursor::decode(c).map_err(|e| CliError::Usage(e.to_string()))?);
    }
    q.validate().map_err(|e| CliError::Usage(e.to_string()))?;
    runtime()?.block_on(async {
        let store = open(&args.store).await?;
        let page = store.as_store().query(&q).await.map_err(backend_error)?;
        print_page(&page, args.format)
    })
}

/// How far back each poll looks for late-arriving events (batching, spool replay).
const TAIL_LOOKBACK_US: i64 = 30_000_000;
/// Pages read per poll at most.
const TAIL_MAX_PAGES: usize = 20;

fn print_tail(events: &[AuditEvent], format: Format) -> Result<(), CliError> {
    for e in events {
        let line = match format {
            Format::Json => serde_json::to_string(e)
                .map_err(|err| CliError::Output(std::io::Error::other(err)))?,
            Format::Table => table_row(e),
        };
        console::print(&line)?;
    }
    Ok(())
}

/// Prints the latest events, then follows new ones (polling).
pub fn tail(args: &TailArgs) -> Result<(), CliError> {
    if args.last > MAX_PAGE_SIZE {
        return Err(CliError::Usage(format!(
            "--last must be at most {MAX_PAGE_SIZE}"
        )));
    }
    let base = args.filters.query(now_us());
    base.validate()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    runtime()?.block_on(async {
        let store = open(&args.store).await?;
        let store = store.as_store();
        if args.format == Format::Table {
            console::print(&table_header())?;
        }
        // id -> ts of events already printed or already stored at start,
        // within the lookback window (late arrivals are caught, none repeated).
        let mut seen: HashMap<String, i64> = HashMap::new();
        let mut newest = now_us();
        let mut q = AuditQuery {
            since_us: Some(newest.saturating_sub(TAIL_LOOKBACK_US)),
            limit: MAX_PAGE_SIZE,
            ..base.clone()
        };
        for _ in 0..TAIL_MAX_PAGES {
            let page = store.query(&q).await.map_err(backend_error)?;
            for e in page.events {
                newest = newest.max(e.ts_us);
                seen.insert(e.id, e.ts_us);
            }
            match page.next.as_deref().map(Cursor::decode) {
                Some(Ok(c)) => q.cursor = Some(c),
                _ => break,
            }
        }
        if args.last > 0 {
            let q = AuditQuery {
                limit: args.last,
                ..base.clone()
            };
            let mut events = store.query(&q).await.map_err(backend_error)?.events;
            events.reverse();
            print_tail(&events, args.format)?;
            for e in events {
                newest = newest.max(e.ts_us);
                seen.insert(e.id, e.ts_us);
            }
        }
        let mut printed = 0usize;
        loop {
            if args.max_events.is_some_and(|m| printed >= m) {
                return Ok(());
            }
            tokio::time::sleep(args.interval).await;
            let floor = newest.saturating_sub(TAIL_LOOKBACK_US);
            let mut q = AuditQuery {
                since_us: Some(base.since_us.map_or(floor, |s| s.max(floor))),
                limit: MAX_PAGE_SIZE,
                ..base.clone()
            };
            let mut fresh = Vec::new();
            for _ in 0..TAIL_MAX_PAGES {
                let page = store.query(&q).await.map_err(backend_error)?;
                fresh.extend(
                    page.events
                        .into_iter()
                        .filter(|e| !seen.contains_key(&e.id)),
                );
                match page.next.as_deref().map(Cursor::decode) {
                    Some(Ok(c)) => q.cursor = Some(c),
                    _ => break,
                }
            }
            fresh.reverse();
            if let Some(m) = args.max_events {
                fresh.truncate(m - printed);
            }
            print_tail(&fresh, args.format)?;
            printed += fresh.len();
            for e in fresh {
                newest = newest.max(e.ts_us);
                seen.insert(e.id, e.ts_us);
            }
            let floor = newest.saturating_sub(TAIL_LOOKBACK_US);
            seen.retain(|_, ts| *ts >= floor);
        }
    })
}

/// Deletes events older than `--older-than` and prints how many.
pub fn prune(args: &PruneArgs) -> Result<(), CliError> {
    let before = now_us().saturating_sub(micros(args.older_than));
    runtime()?.block_on(async {
        let store = open(&args.store).await?;
        let deleted = store.prune(before).await?;
        console::print_json(&serde_json::json!({
            "deleted": deleted,
            "before": format_rfc3339_micros(before),
        }))
    })
}
