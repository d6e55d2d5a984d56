//! `portcullis explain` (one decision, step by step, offline from the
//! configuration or live from a running gateway's admin API) and
//! `portcullis test` (files of pinned decisions, for CI; or, with
//! `--replay-audit`, the recorded requests of an audit log decided again).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::remote::Body;
use super::{CliError, console};
use crate::explain::{AssumedCaller, ExplainRequest, Explainer};

/// Output format of `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainFormat {
    /// Sections for people.
    Text,
    /// The report as JSON.
    Json,
}

/// Arguments of `explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The configuration file (offline: the configuration alone).
    #[arg(long, value_name = "FILE", required_unless_present = "admin")]
    pub config: Option<PathBuf>,
    /// Ask a running gateway instead (its ops listener, e.g.
    /// http://127.0.0.1:9090): bans, revocation and rate-limit counters are
    /// read too. The admin key needs `admin.explain`.
    #[arg(long, value_name = "URL", conflicts_with = "config")]
    pub admin: Option<String>,
    /// A file holding the admin API key (default: $PORTCULLIS_ADMIN_KEY).
    #[arg(long, value_name = "FILE", requires = "admin")]
    pub key_file: Option<PathBuf>,
    /// The request method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The `Host` header.
    #[arg(long)]
    pub host: Option<String>,
    /// A path (`/docs/1`) or an absolute URL (`https://api.example.com/docs/1`).
    #[arg(value_name = "PATH_OR_URL")]
    pub target: String,
    /// An extra header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "K: V")]
    pub headers: Vec<String>,
    /// An access token, verified against the configured keys (`-`: read it from stdin).
    #[arg(long, conflicts_with_all = ["api_key", "as_subject"])]
    pub token: Option<String>,
    /// An API key (checked only against a running gateway: --admin).
    #[arg(long, conflicts_with = "as_subject")]
    pub api_key: Option<String>,
    /// Decide for this subject instead of a credential.
    #[arg(long = "as", value_name = "SUBJECT")]
    pub as_subject: Option<String>,
    /// Roles of the --as caller, comma-separated.
    #[arg(long, value_delimiter = ',', requires = "as_subject")]
    pub roles: Vec<String>,
    /// Permissions of the --as caller, comma-separated.
    #[arg(long, value_delimiter = ',', requires = "as_subject")]
    pub permissions: Vec<String>,
    /// Scopes of the --as caller, comma-separated.
    #[arg(long, value_delimiter = ',', requires = "as_subject")]
    pub scopes: Vec<String>,
    /// Tenant of the --as caller.
    #[arg(long, requires = "as_subject")]
    pub tenant: Option<String>,
    /// The client's address (default 192.0.2.1).
    #[arg(long)]
    pub client_ip: Option<IpAddr>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ExplainFormat,
}

impl ExplainArgs {
    fn request(&self) -> Result<ExplainRequest, CliError> {
        let token = match &self.token {
            Some(t) => Some(String::from_utf8_lossy(&console::read_token(t)?).into_owned()),
            None => None,
        };
        Ok(ExplainRequest {
            method: Some(self.method.clone()),
            target: self.target.clone(),
            host: self.host.clone(),
            headers: self.headers.clone(),
            token,
            api_key: self.api_key.clone(),
            assume: self.as_subject.as_ref().map(|subject| AssumedCaller {
                subject: Some(subject.clone()),
                roles: self.roles.clone(),
                permissions: self.permissions.clone(),
                scopes: self.scopes.clone(),
                tenant: self.tenant.clone(),
                method: None,
            }),
            client_ip: self.client_ip,
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)
}

fn offline(config: &std::path::Path) -> Result<Explainer, CliError> {
    let config = crate::config::load(config).map_err(CliError::Config)?;
    Explainer::offline(&config).map_err(CliError::Usage)
}

/// Prints the explanation of one request; exit 0 whatever the decision.
pub fn explain(args: &ExplainArgs) -> Result<(), CliError> {
    let request = args.request()?;
    let value = match (&args.admin, &args.config) {
        (Some(url), _) => {
            let target = super::remote::Target {
                url: url.clone(),
                key_file: args.key_file.clone(),
                format: super::remote::Format::Json,
            };
            let body = serde_json::to_value(&request)
                .map_err(|e| CliError::Usage(format!("the request: {e}")))?;
            target.call("POST", "/admin/explain", Some(Body::Json(body)))?
        }
        (None, Some(config)) => {
            let explainer = offline(config)?;
            let report = runtime()?
                .block_on(explainer.explain(&request))
                .map_err(|e| CliError::Usage(e.to_string()))?;
            if args.format == ExplainFormat::Text {
                return console::print(report.text().trim_end());
            }
            serde_json::to_value(&report)
                .map_err(|e| CliError::Usage(format!("the report: {e}")))?
        }
        (None, None) => {
            return Err(CliError::Usage("pass --config FILE or --admin URL".into()));
        }
    };
    match args.format {
        ExplainFormat::Json => console::print_json(&value),
        ExplainFormat::Text => {
            // A live report comes as JSON: the same renderer reads it back.
            let report: crate::explain::Report = serde_json::from_value(value)
                .map_err(|e| CliError::Usage(format!("the gateway's answer: {e}")))?;
            console::print(report.text().trim_end())
        }
    }
}

/// Arguments of `test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The configuration the cases (or the recorded requests) are decided under.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Files of `[[case]]`s.
    #[arg(value_name = "CASES.toml", required_unless_present = "replay_audit")]
    pub cases: Vec<PathBuf>,
    /// Instead of cases: decide the recorded requests of an audit log
    /// (--sqlite or --postgres) again and report which decisions change.
    #[arg(long, conflicts_with = "cases")]
    pub replay_audit: bool,
    /// The SQLite audit database (with --replay-audit).
    #[arg(
        long,
        value_name = "PATH",
        requires = "replay_audit",
        conflicts_with = "postgres"
    )]
    pub sqlite: Option<PathBuf>,
    /// The PostgreSQL audit database URL (with --replay-audit).
    #[arg(long, value_name = "URL", requires = "replay_audit")]
    pub postgres: Option<String>,
    /// Replay events from this time on: RFC 3339, or a duration ago (default 24h).
    #[arg(long, value_parser = super::audit::parse_time, requires = "replay_audit")]
    pub since: Option<super::audit::TimeArg>,
    /// Exit 1 when any recorded decision would change.
    #[arg(long, requires = "replay_audit")]
    pub fail_on_change: bool,
}

/// How far back `--replay-audit` reads without `--since`.
const DEFAULT_REPLAY_SINCE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Decides the audit log's recorded requests again under `--config`;
/// prints the changes by route and outcome and what could not be decided
/// again; exit 1 with `--fail-on-change` when a decision changes.
fn replay_audit(args: &TestArgs, explainer: Explainer) -> Result<(), CliError> {
    use portcullis::audit::{AuditQuery, Cursor};
    use portcullis_core::audit::query::MAX_PAGE_SIZE;
    use portcullis_core::audit::time::format_rfc3339_micros;

    if args.sqlite.is_none() && args.postgres.is_none() {
        return Err(CliError::Usage(
            "--replay-audit reads an audit database: pass --sqlite PATH or --postgres URL".into(),
        ));
    }
    let since = args
        .since
        .unwrap_or(super::audit::TimeArg::Ago(DEFAULT_REPLAY_SINCE))
        .resolve(super::audit::now_us());
    let store_args = super::audit::StoreArgs {
        sqlite: args.sqlite.clone(),
        postgres: args.postgres.clone(),
        admin: None,
        key_file: None,
    };
    let summary = runtime()?.block_on(async {
        let store = super::audit::open(&store_args).await?;
        let store = store.as_store();
        let mut query = AuditQuery {
            since_us: Some(since),
            limit: MAX_PAGE_SIZE,
            ..AuditQuery::default()
        };
        let mut replay = crate::explain::replay::Replay::new(explainer);
        loop {
            let page = store
                .query(&query)
                .await
                .map_err(super::audit::backend_error)?;
            for event in &page.events {
                replay.add(event).await;
            }
            match page.next {
                Some(next) => {
                    query.cursor =
                        Some(Cursor::decode(&next).map_err(super::audit::backend_error)?);
                }
                None => break,
            }
        }
        Ok::<_, CliError>(replay.finish())
    })?;
    console::print(&format!(
        "replayed the audit log since {} under {}",
        format_rfc3339_micros(since),
        args.config.display()
    ))?;
    console::print(summary.text().trim_end())?;
    if args.fail_on_change && summary.changed > 0 {
        return Err(CliError::DecisionsChanged {
            changed: summary.changed,
        });
    }
    Ok(())
}

/// Runs every case: one line each and a summary; exit 1 when one fails.
/// With `--replay-audit`, replays the audit log instead.
pub fn test(args: &TestArgs) -> Result<(), CliError> {
    let explainer = offline(&args.config)?;
    if args.replay_audit {
        return replay_audit(args, explainer);
    }
    let mut all = Vec::new();
    for file in &args.cases {
        let cases =
            crate::explain::cases::load(file).map_err(|e| CliError::Lines(vec![e.to_string()]))?;
        all.push((file, cases));
    }
    let runtime = runtime()?;
    let (mut total, mut failed) = (0, 0);
    for (file, cases) in &all {
        for r in runtime.block_on(crate::explain::cases::run(&explainer, cases)) {
            total += 1;
            if r.passed {
                console::print(&format!("ok    {}", r.name))?;
            } else {
                failed += 1;
                console::print(&format!(
                    "FAIL  {}  ({})\n        expected: {}\n        actual:   {}",
                    r.name,
                    file.display(),
                    r.expected,
                    r.actual
                ))?;
            }
        }
    }
    console::print(&format!(
        "\n{total} cases: {} passed, {failed} failed",
        total - failed
    ))?;
    if failed > 0 {
        return Err(CliError::CasesFailed { failed, total });
    }
    Ok(())
}
