//! The gateway behind the `portcullis` binary, as a library. Its modules
//! form layers whose imports run one way, top to bottom; none imports a
//! layer above it:
//!
//! 1. [`cli`]: the command tree and each command's entry point (the binary,
//!    `src/main.rs`, parses and dispatches to it). Nothing imports `cli`.
//! 2. [`serve`]: the assembly: builds stores, keys, audit, guard, token
//!    service and proxy from a [`config::Config`], runs the listeners and
//!    shuts down; [`serve::embed`] is the same engine without listeners
//!    (the Python package). Only `cli` imports it.
//! 3. The parts the assembly puts together:
//!    - [`proxy`]: the reverse proxy behind the `GuardLayer`, with the one
//!      canonical form of a request, identity headers, deadlines, gRPC,
//!      WebSockets over HTTP/2 and TLS to upstreams;
//!    - `forward_auth`: decision endpoints for nginx, Traefik, Caddy, Envoy;
//!    - [`ops`]: the ops listener's admin API, console, reload, host checks,
//!      live streams and escalation;
//!    - [`explain`]: one decision step by step, pinned cases, audit replay;
//!    - `listen`: a public connection (TLS or not, HTTP/1.1 or HTTP/2),
//!      connection caps, TLS termination;
//!    - `signed_requests`: `[signed_requests]` as the library's authenticator.
//! 4. The ground every layer stands on: [`config`] (the TOML file, typed and
//!    validated), [`keys`] (key files and key directories) and `redact`
//!    (credentials taken out of URLs in errors, logs and answers).

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod explain;
mod forward_auth;
pub mod keys;
mod listen;
pub mod ops;
mod proxy;
mod redact;
pub mod serve;
mod signed_requests;

pub use explain::{cases, replay};
pub use ops::{admin, escalation};
pub use serve::embed;
