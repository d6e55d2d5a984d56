//! The ops listener's parts: the admin API ([`admin`]), the operator
//! console, configuration reload (SIGHUP and `POST /reload`), the
//! listener's `Host` and cross-site checks, open live streams capped and
//! ended on revocation, and automatic escalation of anomalies to bans.
//! The listener itself (health, readiness, metrics, routing to these) is
//! wired by the assembly, `crate::serve`.

pub mod admin;
pub(crate) mod console;
pub mod escalation;
pub(crate) mod hosts;
pub(crate) mod live_stream;
pub(crate) mod reload;
