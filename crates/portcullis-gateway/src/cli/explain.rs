//! `portcullis explain` (one decision, step by step, offline from the
//! configuration or live from a running gateway's admin API) and
//! `portcullis test` (files of pinned decisions, for CI).

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
    /// The configuration the cases are decided under.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Files of `[[case]]`s.
    #[arg(value_name = "CASES.toml", required = true)]
    pub cases: Vec<PathBuf>,
}

/// Runs every case: one line each and a summary; exit 1 when one fails.
pub fn test(args: &TestArgs) -> Result<(), CliError> {
    let explainer = offline(&args.config)?;
    let mut all = Vec::new();
    for file in &args.cases {
        let cases = crate::cases::load(file).map_err(|e| CliError::Lines(vec![e.to_string()]))?;
        all.push((file, cases));
    }
    let runtime = runtime()?;
    let (mut total, mut failed) = (0, 0);
    for (file, cases) in &all {
        for r in runtime.block_on(crate::cases::run(&explainer, cases)) {
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
