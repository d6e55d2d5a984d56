//! The gateway behind the `portcullis` binary, as a library: the binary
//! (`src/main.rs`) parses the command line and dispatches to [`cli`]; the
//! Python package opens the same engine in process through [`embed`].
//!
//! - [`admin`]: the admin API on the ops listener (users, sessions, keys, apps, bans, OpenAPI).
//! - [`console`]: the operator console at `/console` on the ops listener.
//! - [`cli`]: the command tree and each command's thin entry point.
//! - [`embed`]: the engine of `portcullis serve` without its listeners.
//! - [`config`]: the TOML file, typed and validated (`portcullis config check`).
//! - [`serve`]: `portcullis serve`: wiring, listeners, graceful shutdown.
//! - [`reload`]: SIGHUP / `portcullis reload`: validate, then swap atomically.
//! - [`conn`]: a public connection: TLS or not, HTTP/1.1 or HTTP/2.
//! - [`limits`]: connection caps per listener, accept back-off.
//! - [`deadline`]: body, idle, upstream-body and WebSocket deadlines.
//! - [`tls`]: TLS termination, certificate reload on SIGHUP.
//! - [`demo`]: `portcullis demo`: the gateway, an echo app and a checked script.
//! - [`cases`]: pinned decisions (`portcullis test`, `[tests]`).
//! - [`explain`]: one decision step by step (`explain`, `test`, `POST /admin/explain`).
//! - [`replay`]: an audit log's recorded requests decided again (`test --replay-audit`).
//! - [`canonical`]: the one form of a request the guard and the upstream both see.
//! - [`proxy`]: the reverse proxy behind the `GuardLayer`.
//! - `websocket`: WebSockets over HTTP/2 (RFC 8441 extended CONNECT).
//! - `grpc`: gRPC calls: `grpc-timeout`, refusals as gRPC statuses.
//! - `upstream_tls`: TLS to `https://` upstreams (roots, SNI, mTLS, why a handshake failed).
//! - `live_stream`: open live streams, capped and ended when their credential is revoked.
//! - `ops_guard`: the ops listener's `Host` names and cross-site refusal.
//! - `redact`: credentials taken out of URLs in errors, logs and answers.
//! - [`forward_auth`]: decision endpoints for nginx, Traefik, Caddy and Envoy.

#![forbid(unsafe_code)]

pub mod admin;
mod canonical;
pub mod cases;
pub mod cli;
pub mod config;
mod conn;
mod console;
mod deadline;
mod demo;
pub mod embed;
pub mod escalation;
pub mod explain;
mod forward_auth;
mod grpc;
mod identity;
mod limits;
mod live_stream;
mod ops_guard;
mod proxy;
mod redact;
mod reload;
pub mod replay;
pub mod serve;
mod storage;
mod tls;
mod upstream_tls;
mod websocket;
