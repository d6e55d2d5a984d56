//! The demo's script, defined once: [`steps`] is the table that
//! `portcullis demo` prints as copy-paste shell lines ([`Step::shell`]) and
//! that `portcullis demo --check` executes with an HTTP client
//! ([`run_step`]), judging each answer by the same expectation that was
//! printed ([`judge`]).
//!
//! Over 800 lines: most of it is the table of steps itself, data that
//! reads best in one place, in the order the demo prints it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;

/// Requests per minute the demo's `per_caller` rule admits per subject.
pub const RATE_LIMIT: usize = 5;

/// Largest answer body the checker reads.
const MAX_BODY: usize = 1024 * 1024;

/// How long the checker waits for an answer, and for the audit log to
/// show what it expects (events are written in batches, every 100 ms).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Shell variables the steps set and use.
pub const GW: &str = "GW";
/// The demo API key.
pub const API_KEY: &str = "API_KEY";
/// The current access token.
pub const TOKEN: &str = "TOKEN";
/// The current refresh token.
pub const REFRESH: &str = "REFRESH";

/// The credential a request carries.
#[derive(Debug, Clone, Copy)]
pub enum Auth {
    /// None.
    None,
    /// `Authorization: Bearer $VAR`.
    Bearer(&'static str),
    /// `x-api-key: $VAR`.
    ApiKey(&'static str),
}

/// A JSON string value of a request body: a literal or a variable.
#[derive(Debug, Clone)]
pub enum Text {
    /// As is.
    Lit(String),
    /// The variable's value.
    Var(&'static str),
}

/// One HTTP request to the gateway.
#[derive(Debug, Clone)]
pub struct Req {
    /// GET or POST.
    pub method: Method,
    /// Path on the gateway (`$GW` is prepended).
    pub path: &'static str,
    /// The credential.
    pub auth: Auth,
    /// A JSON object of string fields, sent as `application/json`.
    pub json: Vec<(&'static str, Text)>,
}

/// What the answers to a step must look like.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// The status of each request, in order (a step repeats its request
    /// once per entry).
    pub statuses: Vec<u16>,
    /// Headers present on the last answer.
    pub headers: Vec<&'static str>,
    /// The problem `code` of the last answer.
    pub code: Option<&'static str>,
    /// Text the last answer's body contains.
    pub body_has: Option<&'static str>,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Sets shell variables.
    Set(Vec<(&'static str, String)>),
    /// Sends a request (as many times as `expect.statuses` has entries);
    /// `capture` copies string fields of the last JSON answer into
    /// variables, through the shell variable `response`.
    Http {
        /// The request.
        req: Req,
        /// The expected answers.
        expect: Expect,
        /// The shell variable holding the answer, when something is captured.
        response: &'static str,
        /// (variable, JSON field) pairs.
        capture: Vec<(&'static str, &'static str)>,
    },
    /// Runs a program; it must exit 0 and print every one of `output_has`.
    Command {
        /// The program.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// Texts its standard output must contain.
        output_has: Vec<&'static str>,
    },
}

/// One numbered step of the script.
#[derive(Debug, Clone)]
pub struct Step {
    /// What it shows.
    pub title: &'static str,
    /// What the caller sees besides the statuses and code.
    pub note: String,
    /// What it does.
    pub action: Action,
}

/// What the script needs to know about the running demo.
#[derive(Debug, Clone)]
pub struct Context {
    /// `http://ADDR` of the gateway.
    pub gateway: String,
    /// The demo user's name.
    pub username: String,
    /// The demo user's password.
    pub password: String,
    /// The demo API key.
    pub api_key: String,
    /// The permission the demo user lacks.
    pub missing_permission: &'static str,
    /// This program (`portcullis`).
    pub exe: PathBuf,
    /// The audit database.
    pub audit_db: PathBuf,
}

fn get(path: &'static str, auth: Auth) -> Req {
    Req {
        method: Method::GET,
        path,
        auth,
        json: Vec::new(),
    }
}

fn post(path: &'static str, auth: Auth, json: Vec<(&'static str, Text)>) -> Req {
    Req {
        method: Method::POST,
        path,
        auth,
        json,
    }
}

fn http(req: Req, expect: Expect) -> Action {
    Action::Http {
        req,
        expect,
        response: "",
        capture: Vec::new(),
    }
}

fn status(s: u16) -> Expect {
    Expect {
        statuses: vec![s],
        ..Expect::default()
    }
}

/// The script, in order. Step numbers are positions in this list.
pub fn steps(ctx: &Context) -> Vec<Step> {
    let bearer = Auth::Bearer(TOKEN);
    // Steps 4 and 5 spend one request each of the caller's budget.
    let remaining = RATE_LIMIT - 2;
    let mut burst = vec![200; remaining];
    burst.push(429);
    vec![
        Step {
            title: "Set the gateway's address and the demo API key (shown only now)",
            note: String::new(),
            action: Action::Set(vec![
                (GW, ctx.gateway.clone()),
                (API_KEY, ctx.api_key.clone()),
            ]),
        },
        Step {
            title: "The public route needs no credential",
            note: "the echo app received no identity".into(),
            action: http(
                get("/public/hello", Auth::None),
                Expect {
                    body_has: Some(r#""identity":{}"#),
                    ..status(200)
                },
            ),
        },
        Step {
            title: "The API refuses a call without a credential",
            note: String::new(),
            action: http(
                get("/api/notes", Auth::None),
                Expect {
                    code: Some("auth.missing_credentials"),
                    headers: vec!["www-authenticate"],
                    ..status(401)
                },
            ),
        },
        Step {
            title: "Log in with the demo user's password (the token service)",
            note: "a token pair; TOKEN and REFRESH are set from it".into(),
            action: Action::Http {
                req: post(
                    "/auth/login",
                    Auth::None,
                    vec![
                        ("username", Text::Lit(ctx.username.clone())),
                        ("password", Text::Lit(ctx.password.clone())),
                    ],
                ),
                expect: Expect {
                    body_has: Some(r#""refresh_token":"#),
                    ..status(200)
                },
                response: "LOGIN",
                capture: vec![(TOKEN, "access_token"), (REFRESH, "refresh_token")],
            },
        },
        Step {
            title: "Call the JWT route with the access token",
            note: format!(
                "RateLimit and RateLimit-Policy headers (\"per_caller\";q={RATE_LIMIT};w=60); the echo app shows your identity"
            ),
            action: http(
                get("/api/notes", bearer),
                Expect {
                    headers: vec!["ratelimit", "ratelimit-policy"],
                    body_has: Some(r#""x-portcullis-auth-method":"jwt""#),
                    ..status(200)
                },
            ),
        },
        Step {
            title: "Call it with the API key instead",
            note: "the same caller, so the same budget".into(),
            action: http(
                get("/api/notes", Auth::ApiKey(API_KEY)),
                Expect {
                    headers: vec!["ratelimit"],
                    body_has: Some(r#""x-portcullis-auth-method":"api_key""#),
                    ..status(200)
                },
            ),
        },
        Step {
            title: "Repeat until the rate limit refuses",
            note: format!("{RATE_LIMIT} calls a minute per caller"),
            action: http(
                get("/api/notes", bearer),
                Expect {
                    statuses: burst,
                    ..Expect::default()
                },
            ),
        },
        Step {
            title: "Refused: the answer says when to retry",
            note: "Retry-After and RateLimit headers".into(),
            action: http(
                get("/api/notes", bearer),
                Expect {
                    headers: vec!["retry-after", "ratelimit"],
                    code: Some("rate_limit.exceeded"),
                    ..status(429)
                },
            ),
        },
        Step {
            title: "The admin route needs a permission the demo user lacks",
            note: format!("missing `{}`", ctx.missing_permission),
            action: http(
                get("/api/admin/stats", bearer),
                Expect {
                    code: Some("authz.denied"),
                    ..status(403)
                },
            ),
        },
        Step {
            title: "Refresh: the refresh token is spent for a new pair",
            note: "TOKEN and REFRESH are replaced".into(),
            action: Action::Http {
                req: post(
                    "/auth/refresh",
                    Auth::None,
                    vec![("refresh_token", Text::Var(REFRESH))],
                ),
                expect: Expect {
                    body_has: Some(r#""access_token":"#),
                    ..status(200)
                },
                response: "PAIR",
                capture: vec![(TOKEN, "access_token"), (REFRESH, "refresh_token")],
            },
        },
        Step {
            title: "The new token works: list your sessions",
            note: "one session, \"current\":true".into(),
            action: http(
                get("/auth/sessions", bearer),
                Expect {
                    body_has: Some(r#""current":true"#),
                    ..status(200)
                },
            ),
        },
        Step {
            title: "Log out",
            note: "the session is revoked".into(),
            action: http(post("/auth/logout", bearer, Vec::new()), status(204)),
        },
        Step {
            title: "The logged-out token is refused at once",
            note: "revocation is checked before the rate limit".into(),
            action: http(
                get("/api/notes", bearer),
                Expect {
                    code: Some("auth.token_revoked"),
                    ..status(401)
                },
            ),
        },
        Step {
            title: "The audit log holds every refusal",
            note: String::new(),
            action: Action::Command {
                program: ctx.exe.clone(),
                args: vec![
                    "audit".into(),
                    "query".into(),
                    "--sqlite".into(),
                    ctx.audit_db.display().to_string(),
                    "--decision".into(),
                    "deny".into(),
                ],
                output_has: vec![
                    "auth.missing_credentials",
                    "rate_limit.exceeded",
                    "authz.denied",
                    "auth.token_revoked",
                ],
            },
        },
    ]
}

impl Step {
    /// `=> ` and what the step should show: statuses, code, note.
    pub fn expectation(&self) -> String {
        let mut out = String::new();
        match &self.action {
            Action::Set(_) => return String::new(),
            Action::Http { expect, .. } => {
                let statuses: Vec<String> = expect.statuses.iter().map(u16::to_string).collect();
                out.push_str(&statuses.join(" "));
                if let Some(code) = expect.code {
                    let _ = write!(out, " {code}");
                }
            }
            Action::Command { output_has, .. } => {
                let _ = write!(out, "lists {}", output_has.join(", "));
            }
        }
        if !self.note.is_empty() {
            let _ = write!(out, ", {}", self.note);
        }
        out
    }

    /// The step as shell lines: a `# N. title => expectation` comment, then
    /// the commands.
    pub fn shell(&self, n: usize) -> String {
        let expectation = self.expectation();
        let mut out = if expectation.is_empty() {
            format!("# {n}. {}\n", self.title)
        } else {
            format!("# {n}. {} => {expectation}\n", self.title)
        };
        match &self.action {
            Action::Set(vars) => {
                for (name, value) in vars {
                    let _ = writeln!(out, "{name}={}", quote(value));
                }
            }
            Action::Http {
                req,
                expect,
                response,
                capture,
            } => {
                let args = curl_args(req);
                if !capture.is_empty() {
                    let _ = writeln!(out, "{response}=$(curl -s{args}); echo \"${response}\"");
                    for (var, field) in capture {
                        let _ = writeln!(
                            out,
                            "{var}=$(echo \"${response}\" | sed -n 's/.*\"{field}\":\"\\([^\"]*\\)\".*/\\1/p')"
                        );
                    }
                } else if expect.statuses.len() > 1 {
                    let times: Vec<String> =
                        (1..=expect.statuses.len()).map(|i| i.to_string()).collect();
                    let _ = writeln!(
                        out,
                        "for i in {}; do curl -s -o /dev/null -w '%{{http_code}} '{args}; done; echo",
                        times.join(" ")
                    );
                } else {
                    let _ = writeln!(out, "curl -si{args}");
                }
            }
            Action::Command { program, args, .. } => {
                let mut line = quote(&program.display().to_string());
                for a in args {
                    line.push(' ');
                    line.push_str(&quote(a));
                }
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

/// Shell-quotes `text` unless every character is safe bare.
fn quote(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-:=@+,%".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The curl arguments after `curl -s…`, each with a leading space.
fn curl_args(req: &Req) -> String {
    let mut out = String::new();
    if req.method == Method::POST && req.json.is_empty() {
        out.push_str(" -X POST");
    }
    let _ = write!(out, " ${GW}{}", req.path);
    match req.auth {
        Auth::None => {}
        Auth::Bearer(var) => {
            let _ = write!(out, " -H \"Authorization: Bearer ${var}\"");
        }
        Auth::ApiKey(var) => {
            let _ = write!(out, " -H \"x-api-key: ${var}\"");
        }
    }
    if !req.json.is_empty() {
        out.push_str(" -H 'content-type: application/json'");
        let has_var = req.json.iter().any(|(_, v)| matches!(v, Text::Var(_)));
        let mut body = String::from("{");
        for (i, (name, value)) in req.json.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&json_string(name));
            body.push(':');
            match value {
                Text::Lit(text) => body.push_str(&json_string(text)),
                Text::Var(var) => {
                    let _ = write!(body, "\"${var}\"");
                }
            }
        }
        body.push('}');
        if has_var {
            // Inside double quotes: escape what the shell would interpret,
            // except the `$VAR` references themselves.
            let mut escaped = String::new();
            let mut chars = body.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '"' | '\\' | '`' => {
                        escaped.push('\\');
                        escaped.push(c);
                    }
                    '$' if chars.peek().is_some_and(|n| n.is_ascii_uppercase()) => {
                        escaped.push('$');
                    }
                    '$' => escaped.push_str("\\$"),
                    _ => escaped.push(c),
                }
            }
            let _ = write!(out, " -d \"{escaped}\"");
        } else {
            let _ = write!(out, " -d {}", quote(&body));
        }
    }
    out
}

fn json_string(text: &str) -> String {
    Value::from(text).to_string()
}

/// One answer, as the checker saw it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Its status.
    pub status: u16,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body (at most 1 MiB).
    pub body: Bytes,
}

/// Whether `observed` (one answer per expected status) is what `expect`
/// says; otherwise what differs.
pub fn judge(expect: &Expect, observed: &[Observed]) -> Result<(), String> {
    let got: Vec<u16> = observed.iter().map(|o| o.status).collect();
    let Some(last) = observed.last() else {
        return Err("no answer".into());
    };
    let code = serde_json::from_slice::<Value>(&last.body)
        .ok()
        .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_owned));
    if got != expect.statuses {
        let show = |s: &[u16]| s.iter().map(u16::to_string).collect::<Vec<_>>().join(" ");
        return Err(format!(
            "expected {}, got {}{}",
            show(&expect.statuses),
            show(&got),
            code.map(|c| format!(" ({c})")).unwrap_or_default()
        ));
    }
    for name in &expect.headers {
        if !last.headers.contains_key(*name) {
            return Err(format!("no `{name}` header"));
        }
    }
    if let Some(want) = expect.code
        && code.as_deref() != Some(want)
    {
        return Err(format!(
            "expected code {want}, got {}",
            code.as_deref().unwrap_or("none")
        ));
    }
    if let Some(text) = expect.body_has
        && !String::from_utf8_lossy(&last.body).contains(text)
    {
        return Err(format!("the body does not contain `{text}`"));
    }
    Ok(())
}

/// The checker's HTTP client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new checker client.
pub fn client() -> HttpClient {
    Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// The shell variables of a run.
pub type Vars = HashMap<&'static str, String>;

fn var<'a>(vars: &'a Vars, name: &str) -> Result<&'a str, String> {
    vars.get(name)
        .map(String::as_str)
        .ok_or_else(|| format!("${name} is not set (an earlier step failed)"))
}

fn build(req: &Req, vars: &Vars) -> Result<Request<Full<Bytes>>, String> {
    let uri = format!("{}{}", var(vars, GW)?, req.path);
    let mut builder = Request::builder().method(req.method.clone()).uri(uri);
    match req.auth {
        Auth::None => {}
        Auth::Bearer(v) => {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {}", var(vars, v)?));
        }
        Auth::ApiKey(v) => builder = builder.header("x-api-key", var(vars, v)?),
    }
    let body = if req.json.is_empty() {
        Bytes::new()
    } else {
        let mut object = serde_json::Map::new();
        for (name, value) in &req.json {
            let text = match value {
                Text::Lit(t) => t.clone(),
                Text::Var(v) => var(vars, v)?.to_owned(),
            };
            object.insert((*name).to_owned(), Value::from(text));
        }
        builder = builder.header(header::CONTENT_TYPE, "application/json");
        Bytes::from(Value::Object(object).to_string())
    };
    builder
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the request: {e}"))
}

async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Result<Observed, String> {
    let response = tokio::time::timeout(STEP_TIMEOUT, client.request(req))
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| format!("request failed: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(STEP_TIMEOUT, Limited::new(body, MAX_BODY).collect())
        .await
        .map_err(|_| "the body did not arrive within 10 s".to_owned())?
        .map_err(|e| format!("cannot read the body: {e}"))?
        .to_bytes();
    Ok(Observed {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// Executes `step` against the running demo, updating `vars` as the shell
/// lines would; `Err` says how the outcome differed from the expectation.
pub async fn run_step(client: &HttpClient, vars: &mut Vars, step: &Step) -> Result<(), String> {
    match &step.action {
        Action::Set(set) => {
            for (name, value) in set {
                vars.insert(name, value.clone());
            }
            Ok(())
        }
        Action::Http {
            req,
            expect,
            capture,
            ..
        } => {
            let mut observed = Vec::with_capacity(expect.statuses.len());
            for _ in 0..expect.statuses.len().max(1) {
                observed.push(send(client, build(req, vars)?).await?);
            }
            judge(expect, &observed)?;
            if !capture.is_empty() {
                let body = observed.last().map(|o| o.body.clone()).unwrap_or_default();
                let json: Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("the answer is not JSON: {e}"))?;
                for (name, field) in capture {
                    let value = json
                        .get(field)
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("the answer has no string `{field}`"))?;
                    vars.insert(name, value.to_owned());
                }
            }
            Ok(())
        }
        Action::Command {
            program,
            args,
            output_has,
        } => {
            // Audit events are written in batches: look again until they
            // are all there or the step's time is up.
            let deadline = Instant::now() + STEP_TIMEOUT;
            loop {
                let (program, args) = (program.clone(), args.clone());
                let output = tokio::task::spawn_blocking(move || {
                    std::process::Command::new(program)
                        .args(args)
                        .stdin(std::process::Stdio::null())
                        .output()
                })
                .await
                .map_err(|e| format!("cannot run the command: {e}"))?
                .map_err(|e| format!("cannot run the command: {e}"))?;
                let stdout = String::from_utf8_lossy(&output.stdout);
                let missing: Vec<&str> = output_has
                    .iter()
                    .copied()
                    .filter(|t| !stdout.contains(t))
                    .collect();
                if output.status.success() && missing.is_empty() {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(if output.status.success() {
                        format!("the output lacks {}", missing.join(", "))
                    } else {
                        format!(
                            "exited with {}: {}",
                            output.status,
                            String::from_utf8_lossy(&output.stderr).trim()
                        )
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(status: u16, headers: &[(&'static str, &'static str)], body: &str) -> Observed {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, http::HeaderValue::from_static(v));
        }
        Observed {
            status,
            headers: map,
            body: Bytes::from(body.to_owned()),
        }
    }

    fn ctx() -> Context {
        Context {
            gateway: "http://127.0.0.1:8080".into(),
            username: "demo".into(),
            password: "pw-with_chars".into(),
            api_key: "pck_abc".into(),
            missing_permission: "notes.admin",
            exe: PathBuf::from("/opt/my bin/portcullis"),
            audit_db: PathBuf::from("/tmp/d/audit.db"),
        }
    }

    fn expect_of(step: &Step) -> &Expect {
        match &step.action {
            Action::Http { expect, .. } => expect,
            other => panic!("not an HTTP step: {other:?}"),
        }
    }

    #[test]
    fn a_wrong_status_fails_the_step_and_says_what_came() {
        let steps = steps(&ctx());
        // Step 8 expects 403 authz.denied; a 200 is a failure.
        let expect = expect_of(&steps[8]);
        let err = judge(expect, &[observed(200, &[], "{}")]).unwrap_err();
        assert_eq!(err, "expected 403, got 200");
        // The right status with the wrong code fails too.
        let err = judge(
            expect,
            &[observed(403, &[], r#"{"code":"anomaly.banned"}"#)],
        )
        .unwrap_err();
        assert_eq!(err, "expected code authz.denied, got anomaly.banned");
        judge(expect, &[observed(403, &[], r#"{"code":"authz.denied"}"#)]).unwrap();
    }

    #[test]
    fn a_missing_header_or_body_text_fails_the_step() {
        let steps = steps(&ctx());
        let expect = expect_of(&steps[4]);
        let body = r#"{"identity":{"x-portcullis-auth-method":"jwt"}}"#;
        let err = judge(expect, &[observed(200, &[("ratelimit", "x")], body)]).unwrap_err();
        assert_eq!(err, "no `ratelimit-policy` header");
        let both = [("ratelimit", "x"), ("ratelimit-policy", "y")];
        let err = judge(expect, &[observed(200, &both, "{}")]).unwrap_err();
        assert!(err.contains("does not contain"), "{err}");
        judge(expect, &[observed(200, &both, body)]).unwrap();
    }

    #[test]
    fn a_repeated_step_judges_every_status_in_order() {
        let steps = steps(&ctx());
        let expect = expect_of(&steps[6]);
        assert_eq!(expect.statuses, [200, 200, 200, 429]);
        let ok: Vec<Observed> = [200, 200, 200, 429]
            .iter()
            .map(|s| observed(*s, &[], ""))
            .collect();
        judge(expect, &ok).unwrap();
        let early: Vec<Observed> = [200, 200, 429, 429]
            .iter()
            .map(|s| observed(*s, &[], ""))
            .collect();
        assert_eq!(
            judge(expect, &early).unwrap_err(),
            "expected 200 200 200 429, got 200 200 429 429"
        );
        assert_eq!(judge(expect, &[]).unwrap_err(), "no answer");
    }

    #[test]
    fn shell_lines_quote_what_the_shell_would_interpret() {
        let steps = steps(&ctx());
        assert_eq!(
            steps[0].shell(0),
            "# 0. Set the gateway's address and the demo API key (shown only now)\n\
             GW=http://127.0.0.1:8080\nAPI_KEY=pck_abc\n"
        );
        assert_eq!(
            steps[1].shell(1),
            "# 1. The public route needs no credential => 200, the echo app received no identity\n\
             curl -si $GW/public/hello\n"
        );
        let login = steps[3].shell(3);
        assert!(
            login.contains(
                r#"LOGIN=$(curl -s $GW/auth/login -H 'content-type: application/json' -d '{"username":"demo","password":"pw-with_chars"}'); echo "$LOGIN""#
            ),
            "{login}"
        );
        assert!(
            login.contains(
                r#"TOKEN=$(echo "$LOGIN" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')"#
            ),
            "{login}"
        );
        let refresh = steps[9].shell(9);
        assert!(
            refresh.contains(r#"-d "{\"refresh_token\":\"$REFRESH\"}""#),
            "{refresh}"
        );
        assert!(
            steps[6]
                .shell(6)
                .contains("for i in 1 2 3 4; do curl -s -o /dev/null -w '%{http_code} ' $GW/api/notes -H \"Authorization: Bearer $TOKEN\"; done; echo"),
        );
        assert!(
            steps[11]
                .shell(11)
                .contains("curl -si -X POST $GW/auth/logout")
        );
        assert!(steps[13].shell(13).ends_with(
            "'/opt/my bin/portcullis' audit query --sqlite /tmp/d/audit.db --decision deny\n"
        ));
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
