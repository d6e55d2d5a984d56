//! `portcullis._native`: the gateway's engine ([`portcullis_gateway::embed`])
//! as a Python extension. The Python package (`python/portcullis`) wraps it
//! in `Guard`, the ASGI and WSGI middleware and the token-service helpers;
//! this module only crosses the boundary:
//!
//! - [`Engine::decide`] (ASGI) runs the guard on the calling thread first:
//!   on the memory backends and a verified-token cache hit the decision is
//!   ready at once and returned as a `Decision` without touching the event
//!   loop; only a decision that waits on I/O (SQLite, PostgreSQL, Redis, a
//!   key fetch) is finished on the engine's tokio runtime and returned as an
//!   awaitable (pyo3-async-runtimes). [`Engine::decide_sync`] (WSGI) waits
//!   for it with the GIL released.
//! - Errors cross as `portcullis.errors` exceptions carrying the stable code
//!   (`portcullis.AuthError.code == "auth.token_expired"`); nothing panics
//!   across the boundary (no `unwrap` on input; a panic in the engine is
//!   caught by PyO3 and raised as `PanicException`).
//!
//! The tokio runtime (one worker thread: the audit batcher, purges and the
//! decisions that wait on I/O) is started with the first engine. An engine
//! opened before `fork()` refuses to run in the child: its runtime's threads
//! did not survive the fork. (The package registers [`_forked`] with
//! `os.register_at_fork`, so telling costs an atomic load, not a `getpid`
//! system call per request.)

#![forbid(unsafe_code)]

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use portcullis::guard::AuditTicket;
use portcullis::http::{ProblemJson, problem_body, refusal_response};
use portcullis_core::anomaly::BanTarget;
use portcullis_gateway::embed::Engine as GatewayEngine;
use portcullis_gateway::serve::ServeError;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyTuple};
use tokio::runtime::Runtime;

/// Largest token-service answer read back (its own bodies are small).
const MAX_SERVICE_BODY: usize = 1 << 20;

/// Most request headers handed to the guard (hyper's own default limit).
const MAX_HEADERS: usize = 100;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Bumped in every child process after `fork()` (see [`_forked`]).
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Called by `os.register_at_fork(after_in_child=...)`: engines opened
/// before now belong to the parent.
#[pyfunction]
fn _forked() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The response header names the guard adds, as shared `bytes` objects.
static HEADER_NAMES: PyOnceLock<[(HeaderName, Py<PyBytes>); 3]> = PyOnceLock::new();

/// `name` as Python `bytes`: one shared object for the names the guard adds
/// to every allowed response, a new one otherwise.
fn header_name<'py>(py: Python<'py>, name: &HeaderName) -> Bound<'py, PyBytes> {
    let known = HEADER_NAMES.get_or_init(py, || {
        [
            http::header::HeaderName::from_static("ratelimit"),
            http::header::HeaderName::from_static("ratelimit-policy"),
            http::header::HeaderName::from_static("x-request-id"),
        ]
        .map(|n| {
            let bytes = PyBytes::new(py, n.as_str().as_bytes()).unbind();
            (n, bytes)
        })
    });
    match known.iter().find(|(n, _)| n == name) {
        Some((_, bytes)) => bytes.bind(py).clone(),
        None => PyBytes::new(py, name.as_str().as_bytes()),
    }
}

/// The engine's runtime, started on first use.
fn runtime() -> PyResult<&'static Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("portcullis")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the tokio runtime: {e}")))?;
    // A racing first call may have set it: keep whichever won.
    let _ = RUNTIME.set(rt);
    let rt = RUNTIME
        .get()
        .ok_or_else(|| PyRuntimeError::new_err("the tokio runtime is not set"))?;
    // Err only when already initialised with this same runtime.
    let _ = pyo3_async_runtimes::tokio::init_with_runtime(rt);
    Ok(rt)
}

/// `portcullis.errors.error_for(code, detail, status)`: the exception of
/// the code's area (`auth.*` → `AuthError`, …).
fn portcullis_error(py: Python<'_>, code: &str, detail: &str, status: u16) -> PyErr {
    let made = py
        .import("portcullis.errors")
        .and_then(|m| m.getattr("error_for"))
        .and_then(|f| f.call1((code, detail, status)));
    match made {
        Ok(err) => PyErr::from_value(err),
        Err(e) => e,
    }
}

/// The engine of one configuration (`portcullis.Guard` wraps it).
#[pyclass(frozen, module = "portcullis._native")]
struct Engine {
    engine: Arc<GatewayEngine>,
    /// The fork generation it was opened in (see the module docs on `fork()`).
    generation: u64,
}

/// Polls `fut` once on the calling thread (inside the runtime's context, so
/// its timers and I/O register there): `Ok` when it finished, else the
/// future to finish elsewhere.
fn poll_once<F: Future + Unpin>(rt: &Runtime, mut fut: F) -> Result<F::Output, F> {
    let _entered = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut fut).poll(&mut cx) {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => Err(fut),
    }
}

/// The request parts the guard decides on, from ASGI / WSGI pieces.
fn request_parts(
    method: &str,
    target: &[u8],
    headers: &Bound<'_, PyList>,
) -> PyResult<http::request::Parts> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| PyValueError::new_err("invalid HTTP method"))?;
    let uri =
        http::Uri::try_from(target).map_err(|_| PyValueError::new_err("invalid request target"))?;
    let (mut parts, ()) = Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .map_err(|e| PyValueError::new_err(format!("invalid request: {e}")))?
        .into_parts();
    if headers.len() > MAX_HEADERS {
        return Err(PyValueError::new_err("too many request headers"));
    }
    parts.headers.reserve(headers.len());
    for item in headers.iter() {
        let pair = item.cast::<PyTuple>()?;
        if pair.len() != 2 {
            return Err(PyValueError::new_err(
                "a header is not a (name, value) pair",
            ));
        }
        let name = pair.get_item(0)?;
        let value = pair.get_item(1)?;
        let name = HeaderName::from_bytes(name.cast::<PyBytes>()?.as_bytes())
            .map_err(|_| PyValueError::new_err("invalid header name"))?;
        let value = HeaderValue::from_bytes(value.cast::<PyBytes>()?.as_bytes())
            .map_err(|_| PyValueError::new_err("invalid header value"))?;
        parts.headers.append(name, value);
    }
    Ok(parts)
}

fn peer_ip(client: Option<&str>) -> Option<IpAddr> {
    client.and_then(|c| c.parse().ok())
}

fn header_list<'py, 'a>(
    py: Python<'py>,
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for (name, value) in headers {
        list.append((PyBytes::new(py, name), PyBytes::new(py, value)))?;
    }
    Ok(list)
}

/// The guard's `(name, value)` pairs as a Python list of `bytes` pairs.
fn guard_header_list<'py, 'a>(
    py: Python<'py>,
    headers: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for (name, value) in headers {
        list.append((header_name(py, name), PyBytes::new(py, value.as_bytes())))?;
    }
    Ok(list)
}

/// A decision that waits on I/O, to finish on the engine's runtime.
type PendingDecision = Pin<Box<dyn Future<Output = portcullis::Decision> + Send>>;

impl Engine {
    /// The engine `open` / `open_text` opened, or its error as `ConfigError`.
    fn opened(py: Python<'_>, opened: Result<GatewayEngine, ServeError>) -> PyResult<Self> {
        match opened {
            Ok(engine) => Ok(Self {
                engine: Arc::new(engine),
                generation: FORK_GENERATION.load(Ordering::Relaxed),
            }),
            Err(e) => Err(portcullis_error(py, "config.invalid", &e.to_string(), 0)),
        }
    }

    /// Another handle on the same engine (for a decision finished later).
    fn handle(&self) -> Self {
        Self {
            engine: Arc::clone(&self.engine),
            generation: self.generation,
        }
    }

    /// Runs the guard on a request until it decides or waits on I/O
    /// ([`poll_once`]); with the runtime the rest must finish on.
    fn start_decision(
        &self,
        method: &str,
        target: &[u8],
        headers: &Bound<'_, PyList>,
        client: Option<&str>,
    ) -> PyResult<(
        &'static Runtime,
        Result<portcullis::Decision, PendingDecision>,
    )> {
        self.check_fork()?;
        let rt = runtime()?;
        let parts = request_parts(method, target, headers)?;
        let peer = peer_ip(client);
        let guard = self.engine.guard().clone();
        let fut: PendingDecision = Box::pin(async move { guard.check(&parts, peer).await });
        Ok((rt, poll_once(rt, fut)))
    }

    fn check_fork(&self) -> PyResult<()> {
        if FORK_GENERATION.load(Ordering::Relaxed) == self.generation {
            Ok(())
        } else {
            Err(PyRuntimeError::new_err(
                "this portcullis.Guard was opened before fork(); open it in each worker process",
            ))
        }
    }

    fn decision(&self, py: Python<'_>, mut d: portcullis::Decision) -> PyResult<Decision> {
        let ticket = d.take_audit();
        let principal = match &d.principal {
            Some(p) => Some(Py::new(
                py,
                Principal {
                    principal: Arc::clone(p),
                    guard: self.engine.guard().clone(),
                },
            )?),
            None => None,
        };
        let request_id = d.request_id.as_str().to_owned();
        let dry_run_code = d.dry_run_refusal.as_ref().map(|r| r.code.as_str());
        match &d.refusal {
            None => {
                let id = HeaderValue::from_str(&request_id)
                    .map_err(|_| PyRuntimeError::new_err("request id"))?;
                let headers = guard_header_list(
                    py,
                    d.headers
                        .iter()
                        .map(|(n, v)| (n, v))
                        .chain(std::iter::once((&portcullis::http::REQUEST_ID, &id))),
                )?
                .unbind();
                Ok(Decision {
                    allowed: true,
                    status: 200,
                    code: None,
                    detail: None,
                    request_id,
                    principal,
                    headers,
                    body: PyBytes::new(py, b"").unbind(),
                    dry_run_code,
                    ticket: Mutex::new(Some(ticket)),
                })
            }
            Some(refusal) => {
                // The gateway's refusal: its head from the renderer, its
                // body the renderer's own problem+json.
                let (head, _) = refusal_response(&ProblemJson, refusal, &request_id).into_parts();
                let body = problem_body(refusal, &request_id);
                let headers = guard_header_list(py, head.headers.iter())?.unbind();
                Ok(Decision {
                    allowed: false,
                    status: refusal.status.as_u16(),
                    code: Some(refusal.code.as_str()),
                    detail: Some(refusal.detail.clone()),
                    request_id,
                    principal,
                    headers,
                    body: PyBytes::new(py, body.as_bytes()).unbind(),
                    dry_run_code,
                    ticket: Mutex::new(Some(ticket)),
                })
            }
        }
    }

    fn service_request(
        &self,
        method: &str,
        target: &[u8],
        headers: &Bound<'_, PyList>,
        body: Vec<u8>,
        client: Option<&str>,
    ) -> PyResult<(axum::Router, Request<axum::body::Body>)> {
        let Some((_, router)) = self.engine.token_service() else {
            return Err(PyRuntimeError::new_err(
                "the token service is disabled (token_service.enabled = false)",
            ));
        };
        let parts = request_parts(method, target, headers)?;
        let mut req = Request::from_parts(parts, axum::body::Body::from(body));
        if let Some(ip) = peer_ip(client) {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(SocketAddr::new(ip, 0)));
        }
        Ok((router.clone(), req))
    }
}

/// What the token service answered: status, headers, body.
type ServiceAnswer = (u16, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

async fn call_service(
    mut router: axum::Router,
    req: Request<axum::body::Body>,
) -> Result<ServiceAnswer, String> {
    let response = match tower_service::Service::call(&mut router, req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (head, body) = response.into_parts();
    let body = http_body_util::Limited::new(body, MAX_SERVICE_BODY)
        .collect()
        .await
        .map_err(|e| format!("token service body: {e}"))?
        .to_bytes()
        .to_vec();
    let headers = head
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    Ok((head.status.as_u16(), headers, body))
}

fn service_answer(py: Python<'_>, answer: ServiceAnswer) -> PyResult<Py<PyAny>> {
    let (status, headers, body) = answer;
    let headers = header_list(
        py,
        headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
    )?;
    Ok((status, headers, PyBytes::new(py, &body))
        .into_pyobject(py)?
        .into_any()
        .unbind())
}

fn ban_target(target: &str) -> PyResult<BanTarget> {
    match target.split_once(':') {
        Some(("ip", ip)) if ip.parse::<IpAddr>().is_ok() => Ok(BanTarget::Ip(ip.to_owned())),
        Some(("subject", s)) if !s.is_empty() => Ok(BanTarget::Subject(s.to_owned())),
        _ => Err(PyValueError::new_err(
            "a ban target is `ip:<address>` or `subject:<id>`",
        )),
    }
}

#[pymethods]
impl Engine {
    /// Opens the engine of the configuration file at `path` (the gateway's
    /// file and keys, with the `PORTCULLIS_…` environment overrides).
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let rt = runtime()?;
        Self::opened(
            py,
            py.detach(|| rt.block_on(GatewayEngine::open_file(&path))),
        )
    }

    /// Opens the engine of configuration `text`; `path` names it in errors
    /// and is where relative paths are resolved from.
    #[staticmethod]
    fn open_text(py: Python<'_>, path: PathBuf, text: &str) -> PyResult<Self> {
        let rt = runtime()?;
        Self::opened(
            py,
            py.detach(|| rt.block_on(GatewayEngine::open_text(&path, text))),
        )
    }

    /// The token service's path prefix, or `None` when it is disabled.
    #[getter]
    fn token_prefix(&self) -> Option<String> {
        self.engine.token_service().map(|(p, _)| p.to_owned())
    }

    /// Decides a request: a `Decision` when ready at once, else an
    /// awaitable of one (await it on the running asyncio loop).
    #[pyo3(signature = (method, target, headers, client=None))]
    fn decide(
        &self,
        py: Python<'_>,
        method: &str,
        target: &[u8],
        headers: &Bound<'_, PyList>,
        client: Option<&str>,
    ) -> PyResult<Py<PyAny>> {
        match self.start_decision(method, target, headers, client)? {
            (_, Ok(d)) => Ok(Py::new(py, self.decision(py, d)?)?.into_any()),
            (_, Err(pending)) => {
                let engine = self.handle();
                let awaitable = pyo3_async_runtimes::tokio::future_into_py(py, async move {
                    let d = pending.await;
                    Python::attach(|py| Py::new(py, engine.decision(py, d)?))
                })?;
                Ok(awaitable.unbind())
            }
        }
    }

    /// Decides a request, waiting (with the GIL released) when the
    /// decision needs I/O.
    #[pyo3(signature = (method, target, headers, client=None))]
    fn decide_sync(
        &self,
        py: Python<'_>,
        method: &str,
        target: &[u8],
        headers: &Bound<'_, PyList>,
        client: Option<&str>,
    ) -> PyResult<Decision> {
        let d = match self.start_decision(method, target, headers, client)? {
            (_, Ok(d)) => d,
            (rt, Err(pending)) => py.detach(|| rt.block_on(pending)),
        };
        self.decision(py, d)
    }

    /// Calls the token service: an awaitable of `(status, headers, body)`.
    #[pyo3(signature = (method, target, headers, body, client=None))]
    fn service<'py>(
        &self,
        py: Python<'py>,
        method: &str,
        target: &[u8],
        headers: &Bound<'py, PyList>,
        body: Vec<u8>,
        client: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.check_fork()?;
        runtime()?;
        let (router, req) = self.service_request(method, target, headers, body, client)?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let answer = call_service(router, req)
                .await
                .map_err(PyRuntimeError::new_err)?;
            Python::attach(|py| service_answer(py, answer))
        })
    }

    /// Calls the token service and waits (GIL released): `(status, headers, body)`.
    #[pyo3(signature = (method, target, headers, body, client=None))]
    fn service_sync(
        &self,
        py: Python<'_>,
        method: &str,
        target: &[u8],
        headers: &Bound<'_, PyList>,
        body: Vec<u8>,
        client: Option<&str>,
    ) -> PyResult<Py<PyAny>> {
        self.check_fork()?;
        let rt = runtime()?;
        let (router, req) = self.service_request(method, target, headers, body, client)?;
        let answer = py
            .detach(|| rt.block_on(call_service(router, req)))
            .map_err(PyRuntimeError::new_err)?;
        service_answer(py, answer)
    }

    /// Creates a user; returns its id. `password` is hashed with argon2id;
    /// `password_hash` imports an existing argon2id or bcrypt hash instead.
    #[pyo3(signature = (username, password=None, *, password_hash=None, roles=Vec::new(), permissions=Vec::new(), tenant=None))]
    #[allow(clippy::too_many_arguments)]
    fn create_user(
        &self,
        py: Python<'_>,
        username: String,
        password: Option<String>,
        password_hash: Option<String>,
        roles: Vec<String>,
        permissions: Vec<String>,
        tenant: Option<String>,
    ) -> PyResult<String> {
        self.check_fork()?;
        let rt = runtime()?;
        let new = portcullis::stores::NewUser {
            username,
            password,
            password_hash,
            roles,
            permissions,
            tenant,
        };
        let stores = Arc::clone(self.engine.stores());
        let created = py.detach(|| rt.block_on(async move { stores.create_user(&new).await }));
        match created {
            Ok(user) => Ok(user.id),
            Err(e) => Err(portcullis_error(py, e.code(), &e.to_string(), 400)),
        }
    }

    /// Bans `target` (`ip:<address>` or `subject:<id>`) for `seconds`.
    #[pyo3(signature = (target, seconds, reason="manual"))]
    fn ban(&self, py: Python<'_>, target: &str, seconds: f64, reason: &str) -> PyResult<()> {
        self.check_fork()?;
        let target = ban_target(target)?;
        let duration = std::time::Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| PyValueError::new_err("seconds must be positive"))?;
        let Some(engine) = self.engine.anomaly().cloned() else {
            return Err(PyRuntimeError::new_err(
                "bans are off (anomaly.enabled = false)",
            ));
        };
        let rt = runtime()?;
        py.detach(|| rt.block_on(async move { engine.ban(target, duration, reason).await }))
            .map(|_| ())
            .map_err(|e| portcullis_error(py, "backend.unavailable", &e.to_string(), 503))
    }

    /// Lifts a ban; whether one was active.
    fn lift_ban(&self, py: Python<'_>, target: &str) -> PyResult<bool> {
        self.check_fork()?;
        let target = ban_target(target)?;
        let Some(engine) = self.engine.anomaly().cloned() else {
            return Ok(false);
        };
        let rt = runtime()?;
        py.detach(|| rt.block_on(async move { engine.lift_ban(&target).await }))
            .map_err(|e| portcullis_error(py, "backend.unavailable", &e.to_string(), 503))
    }

    /// Writes out the audit queue (call before the process exits).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.check_fork().is_err() {
            return Ok(());
        }
        let rt = runtime()?;
        let engine = Arc::clone(&self.engine);
        py.detach(|| rt.block_on(async move { engine.close().await }));
        Ok(())
    }
}

/// The guard's answer for one request.
#[pyclass(frozen, module = "portcullis._native")]
struct Decision {
    /// Whether the request may go through.
    #[pyo3(get)]
    allowed: bool,
    /// The refusal's status (200 when allowed).
    #[pyo3(get)]
    status: u16,
    /// The stable code of the refusal (`auth.token_expired`, …).
    #[pyo3(get)]
    code: Option<&'static str>,
    /// The refusal's detail.
    #[pyo3(get)]
    detail: Option<String>,
    /// The request id (inbound from a trusted proxy, else generated).
    #[pyo3(get)]
    request_id: String,
    /// Who is calling, when authenticated.
    #[pyo3(get)]
    principal: Option<Py<Principal>>,
    /// Allowed: the headers to add to the app's response (RateLimit,
    /// X-Request-Id). Refused: every header of the refusal response.
    #[pyo3(get)]
    headers: Py<PyList>,
    /// The refusal's problem+json body (empty when allowed).
    #[pyo3(get)]
    body: Py<PyBytes>,
    /// On a `dry_run` route: the code of the refusal that was not enforced.
    #[pyo3(get)]
    dry_run_code: Option<&'static str>,
    ticket: Mutex<Option<AuditTicket>>,
}

#[pymethods]
impl Decision {
    /// Records the request's one audit event with the status answered (a
    /// decision never finished is recorded without a status when dropped).
    fn finish(&self, status: u16) {
        let ticket = match self.ticket.lock() {
            Ok(mut t) => t.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(mut ticket) = ticket {
            ticket.finish(Some(status), None);
        }
    }

    fn __repr__(&self) -> String {
        match self.code {
            None => format!("<Decision allowed request_id={}>", self.request_id),
            Some(code) => format!(
                "<Decision refused {} {code} request_id={}>",
                self.status, self.request_id
            ),
        }
    }
}

/// Who is calling: identity, grants and the credential that proved it.
#[pyclass(frozen, module = "portcullis._native")]
struct Principal {
    principal: Arc<portcullis_core::Principal>,
    guard: portcullis::Guard,
}

#[pymethods]
impl Principal {
    /// The subject (`sub`, the user id, the API key's owner or the app id).
    #[getter]
    fn subject(&self) -> &str {
        &self.principal.subject
    }
    /// The issuer (`iss`), for tokens.
    #[getter]
    fn issuer(&self) -> Option<&str> {
        self.principal.issuer.as_deref()
    }
    /// The tenant.
    #[getter]
    fn tenant(&self) -> Option<&str> {
        self.principal.tenant.as_deref()
    }
    /// E-mail address.
    #[getter]
    fn email(&self) -> Option<&str> {
        self.principal.email.as_deref()
    }
    /// Display name.
    #[getter]
    fn name(&self) -> Option<&str> {
        self.principal.name.as_deref()
    }
    /// Role names.
    #[getter]
    fn roles(&self) -> Vec<String> {
        self.principal.roles.clone()
    }
    /// Permissions granted directly.
    #[getter]
    fn permissions(&self) -> Vec<String> {
        self.principal.permissions.clone()
    }
    /// OAuth scopes.
    #[getter]
    fn scopes(&self) -> Vec<String> {
        self.principal.scopes.clone()
    }
    /// Session id (`sid`).
    #[getter]
    fn session_id(&self) -> Option<&str> {
        self.principal.session_id.as_deref()
    }
    /// Token id (`jti`).
    #[getter]
    fn token_id(&self) -> Option<&str> {
        self.principal.token_id.as_deref()
    }
    /// How the caller authenticated: `jwt`, `api_key`, `app_credentials`, …
    #[getter]
    fn auth_method(&self) -> PyResult<String> {
        match serde_json::to_value(self.principal.auth_method) {
            Ok(serde_json::Value::String(s)) => Ok(s),
            _ => Err(PyRuntimeError::new_err("auth method")),
        }
    }
    /// Expiry, in seconds since the Unix epoch.
    #[getter]
    fn expires_at(&self) -> Option<i64> {
        self.principal.expires_at
    }
    /// Every verified claim, as JSON text (`Principal.claims` parses it).
    #[getter]
    fn claims_json(&self) -> &str {
        self.principal.claims.as_json()
    }
    /// Whether the caller holds `permission` (wildcards and the
    /// permissions of its roles count, as in the route rules).
    fn has_permission(&self, permission: &str) -> bool {
        self.guard
            .access_policy()
            .has_permission(&self.principal, permission)
    }
    /// Whether the caller holds `role` (directly or through an including role).
    fn has_role(&self, role: &str) -> bool {
        self.guard.access_policy().has_role(&self.principal, role)
    }

    fn __repr__(&self) -> String {
        format!("<Principal subject={:?}>", self.principal.subject)
    }
}

/// `portcullis._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_class::<Decision>()?;
    m.add_class::<Principal>()?;
    m.add_function(wrap_pyfunction!(_forked, m)?)?;
    Ok(())
}
