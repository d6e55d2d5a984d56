//! Pinned decisions: files of `[[case]]`s, each a request, a caller and
//! the decision expected, decided offline by [`crate::explain`] (the
//! engine's own code). Run by `portcullis test`, and by `config check`,
//! start-up and every reload for the files `[tests] files` lists.

use std::path::{Path, PathBuf};

use portcullis_core::ErrorCode;
use serde::Deserialize;

use crate::explain::{AssumedCaller, ExplainRequest, Explainer, Report};

/// Largest cases file read.
pub const MAX_CASES_FILE_BYTES: u64 = 1024 * 1024;

/// Most cases in one file.
pub const MAX_CASES: usize = 10_000;

/// A cases file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(default)]
    case: Vec<Case>,
}

/// One case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What it pins, in words.
    pub name: String,
    /// `METHOD TARGET` (`DELETE https://api.example.com/docs/1`) or a
    /// target alone (GET).
    pub request: String,
    /// Extra headers, `Name: value`.
    #[serde(default)]
    pub headers: Vec<String>,
    /// The socket peer.
    #[serde(default)]
    pub client_ip: Option<std::net::IpAddr>,
    /// The caller, assumed.
    #[serde(default, rename = "as")]
    pub assume: Option<AssumedCaller>,
    /// An access token (verified against the configured keys).
    #[serde(default)]
    pub token: Option<String>,
    /// An API key (undetermined offline: it lives in the stores).
    #[serde(default)]
    pub api_key: Option<String>,
    /// No credential at all (the default when none is given; saying so
    /// is clearer).
    #[serde(default)]
    pub anonymous: bool,
    /// The decision expected.
    pub expect: Expect,
}

/// What a case expects.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Expect {
    /// `allow`, `deny`, or a stable code (`authz.denied`): refused with it.
    Word(String),
    /// Each field given must hold.
    Table(ExpectTable),
}

/// `expect = { allow = true, upstream = "docs" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectTable {
    /// Let through or not.
    #[serde(default)]
    pub allow: Option<bool>,
    /// The upstream it goes to.
    #[serde(default)]
    pub upstream: Option<String>,
    /// The stable code of the refusal.
    #[serde(default)]
    pub code: Option<String>,
    /// The status of the refusal.
    #[serde(default)]
    pub status: Option<u16>,
    /// The route that decides.
    #[serde(default)]
    pub route: Option<String>,
}

/// Why a cases file cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct CasesError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Whether the decision is the one expected.
    pub passed: bool,
    /// The expectation, in words.
    pub expected: String,
    /// The decision, in words.
    pub actual: String,
}

fn known_code(code: &str) -> bool {
    ErrorCode::ALL.iter().any(|c| c.as_str() == code)
        || portcullis_core::canonical::NonCanonical::ALL
            .iter()
            .any(|c| c.code() == code)
}

impl Expect {
    fn table(&self) -> ExpectTable {
        match self {
            Self::Table(t) => t.clone(),
            Self::Word(w) => match w.as_str() {
                "allow" => ExpectTable {
                    allow: Some(true),
                    ..ExpectTable::default()
                },
                "deny" => ExpectTable {
                    allow: Some(false),
                    ..ExpectTable::default()
                },
                code => ExpectTable {
                    allow: Some(false),
                    code: Some(code.to_owned()),
                    ..ExpectTable::default()
                },
            },
        }
    }

    fn check(&self) -> Result<(), String> {
        let t = self.table();
        if let Some(code) = &t.code
            && !known_code(code)
        {
            return Err(format!(
                "`{code}` is neither allow, deny nor a stable error code (e.g. authz.denied)"
            ));
        }
        if t.allow == Some(true) && (t.code.is_some() || t.status.is_some()) {
            return Err("an allowed request has no refusal code or status".into());
        }
        if t.allow.is_none()
            && t.upstream.is_none()
            && t.code.is_none()
            && t.status.is_none()
            && t.route.is_none()
        {
            return Err("expect says nothing; give allow, upstream, code, status or route".into());
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let t = self.table();
        let mut parts = Vec::new();
        match (t.allow, &t.code) {
            (_, Some(code)) => parts.push(format!("deny {code}")),
            (Some(true), None) => parts.push("allow".to_owned()),
            (Some(false), None) => parts.push("deny".to_owned()),
            (None, None) => {}
        }
        if let Some(s) = t.status {
            parts.push(format!("status {s}"));
        }
        if let Some(r) = &t.route {
            parts.push(format!("by route `{r}`"));
        }
        if let Some(u) = &t.upstream {
            parts.push(format!("to upstream `{u}`"));
        }
        parts.join(" ")
    }

    fn holds(&self, report: &Report) -> bool {
        let t = self.table();
        let d = &report.decision;
        if d.undetermined.is_some() {
            return false;
        }
        let upstream = report.upstream.as_ref().and_then(|u| u.name.as_deref());
        let route = report.routes.as_ref().and_then(|r| r.decided_by.as_deref());
        t.allow.is_none_or(|a| a == d.allow)
            && t.code
                .as_deref()
                .is_none_or(|c| d.code.as_deref() == Some(c))
            && t.status.is_none_or(|s| d.status == Some(s))
            && t.upstream.as_deref().is_none_or(|u| upstream == Some(u))
            && t.route.as_deref().is_none_or(|r| route == Some(r))
    }
}

/// The decision of `report`, in words (for a case's diff).
pub fn describe(report: &Report) -> String {
    let d = &report.decision;
    if let Some(why) = &d.undetermined {
        return format!("undetermined: {why}");
    }
    let route = report
        .routes
        .as_ref()
        .and_then(|r| r.decided_by.as_deref())
        .map_or_else(
            || "no route (the default)".to_owned(),
            |r| format!("route `{r}`"),
        );
    if d.allow {
        let upstream = report
            .upstream
            .as_ref()
            .and_then(|u| u.name.as_deref())
            .map_or_else(String::new, |u| format!(" to upstream `{u}`"));
        let dry = d
            .dry_run_would_refuse
            .as_ref()
            .map_or_else(String::new, |w| {
                format!(" (dry run: would refuse {})", w.code)
            });
        format!(
            "allow by {route} ({}){upstream}{dry}",
            d.reason.as_deref().unwrap_or("allowed")
        )
    } else {
        format!(
            "deny {} {} by {route}: {}",
            d.status.unwrap_or(0),
            d.code.as_deref().unwrap_or("?"),
            d.detail.as_deref().unwrap_or("")
        )
    }
}

impl Case {
    fn request(&self) -> ExplainRequest {
        let text = self.request.trim();
        let (method, target) = match text.split_once(char::is_whitespace) {
            Some((m, t)) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
                (Some(m.to_owned()), t.trim().to_owned())
            }
            _ => (None, text.to_owned()),
        };
        ExplainRequest {
            method,
            target,
            host: None,
            headers: self.headers.clone(),
            token: self.token.clone(),
            api_key: self.api_key.clone(),
            assume: self.assume.clone(),
            client_ip: self.client_ip,
        }
    }

    fn check(&self) -> Result<(), String> {
        let given = usize::from(self.assume.is_some())
            + usize::from(self.token.is_some())
            + usize::from(self.api_key.is_some())
            + usize::from(self.anonymous);
        if given > 1 {
            return Err("give at most one of as, token, api_key, anonymous".into());
        }
        self.expect.check()
    }
}

/// Reads and checks the cases of `file` (at most [`MAX_CASES_FILE_BYTES`],
/// [`MAX_CASES`] cases, every case well-formed).
pub fn load(file: &Path) -> Result<Vec<Case>, CasesError> {
    use std::io::Read as _;
    let err = |message: String| CasesError {
        file: file.to_path_buf(),
        message,
    };
    let f = std::fs::File::open(file).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut text = String::new();
    f.take(MAX_CASES_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if text.len() as u64 > MAX_CASES_FILE_BYTES {
        return Err(err(format!(
            "larger than {MAX_CASES_FILE_BYTES} bytes; split it into several files"
        )));
    }
    let parsed: CasesFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    if parsed.case.is_empty() {
        return Err(err("no [[case]] in the file".into()));
    }
    if parsed.case.len() > MAX_CASES {
        return Err(err(format!("more than {MAX_CASES} cases")));
    }
    for (i, c) in parsed.case.iter().enumerate() {
        if parsed.case[..i].iter().any(|o| o.name == c.name) {
            return Err(err(format!("case `{}` is named twice", c.name)));
        }
        c.check()
            .map_err(|m| err(format!("case `{}`: {m}", c.name)))?;
    }
    Ok(parsed.case)
}

/// Decides every case with `explainer` and compares.
pub async fn run(explainer: &Explainer, cases: &[Case]) -> Vec<CaseResult> {
    let mut out = Vec::with_capacity(cases.len());
    for c in cases {
        let expected = c.expect.describe();
        let (passed, actual) = match explainer.explain(&c.request()).await {
            Ok(report) => (c.expect.holds(&report), describe(&report)),
            Err(e) => (false, format!("the request cannot be explained: {e}")),
        };
        out.push(CaseResult {
            name: c.name.clone(),
            passed,
            expected,
            actual,
        });
    }
    out
}

/// Each file of `files` (relative to `base`) run against `explainer`:
/// `Ok` when every case passes, else one line per failure or error.
pub async fn run_files(
    explainer: &Explainer,
    base: &Path,
    files: &[PathBuf],
) -> Result<usize, Vec<String>> {
    let mut failures = Vec::new();
    let mut passed = 0;
    for f in files {
        let path = base.join(f);
        let cases = match load(&path) {
            Ok(c) => c,
            Err(e) => {
                failures.push(e.to_string());
                continue;
            }
        };
        for r in run(explainer, &cases).await {
            if r.passed {
                passed += 1;
            } else {
                failures.push(format!(
                    "{}: case `{}`: expected {}, got {}",
                    path.display(),
                    r.name,
                    r.expected,
                    r.actual
                ));
            }
        }
    }
    if failures.is_empty() {
        Ok(passed)
    } else {
        Err(failures)
    }
}

/// The `[tests]` of `config`, loaded from `config_path`, decided offline
/// under `config` itself: `Ok(passed)` (0 without tests), else one line
/// per failure.
pub async fn run_config_tests(
    config: &crate::config::Config,
    config_path: &Path,
) -> Result<usize, Vec<String>> {
    if config.tests.files.is_empty() {
        return Ok(0);
    }
    let explainer = Explainer::offline(config)
        .map_err(|e| vec![format!("{}: [tests]: {e}", config_path.display())])?;
    let base = config_path.parent().unwrap_or_else(|| Path::new("."));
    run_files(&explainer, base, &config.tests.files).await
}
