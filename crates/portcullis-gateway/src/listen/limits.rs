//! What a listener admits: a cap on its open connections (past it a new
//! connection is closed at once, counted) and an accept loop that backs
//! off on errors (`EMFILE`: out of file descriptors) instead of spinning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Gauge: connections open on a listener (`listener` = `public` | `ops`).
pub const OPEN_CONNECTIONS_METRIC: &str = "portcullis_gateway_open_connections";
/// Counter: connections closed at once because the listener was at its cap.
pub const REFUSED_CONNECTIONS_METRIC: &str = "portcullis_gateway_connections_refused_total";
/// Counter: failed `accept` calls (out of file descriptors, …).
pub const ACCEPT_ERRORS_METRIC: &str = "portcullis_gateway_accept_errors_total";

/// First pause after a failed `accept`; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between two `accept` attempts that fail.
const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// At most one log line per listener per interval while `accept` fails.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The connection cap of one listener; cheap to clone.
#[derive(Clone)]
pub struct ConnLimit {
    listener: &'static str,
    slots: Arc<Semaphore>,
    max: usize,
    last_log: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// One admitted connection: holds its slot until dropped.
pub struct ConnPermit {
    listener: &'static str,
    _slot: OwnedSemaphorePermit,
}

impl ConnLimit {
    /// At most `max` connections open at once on `listener`.
    pub fn new(listener: &'static str, max: usize) -> Self {
        metrics::gauge!(OPEN_CONNECTIONS_METRIC, "listener" => listener).set(0.0);
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
            last_log: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// A slot for a new connection, or `None` (counted, logged at most
    /// once per interval) when the listener is full: the caller closes
    /// the connection at once.
    pub fn admit(&self) -> Option<ConnPermit> {
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            metrics::gauge!(OPEN_CONNECTIONS_METRIC, "listener" => self.listener).increment(1.0);
            return Some(ConnPermit {
                listener: self.listener,
                _slot: slot,
            });
        }
        metrics::counter!(REFUSED_CONNECTIONS_METRIC, "listener" => self.listener).increment(1);
        if let Ok(mut last) = self.last_log.lock()
            && last.is_none_or(|t| t.elapsed() >= LOG_INTERVAL)
        {
            *last = Some(Instant::now());
            tracing::warn!(
                listener = self.listener,
                max = self.max,
                "connection cap reached; new connections are closed at once"
            );
        }
        None
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        metrics::gauge!(OPEN_CONNECTIONS_METRIC, "listener" => self.listener).decrement(1.0);
    }
}

/// The back-off state of one listener's accept loop.
pub struct Acceptor {
    listener: &'static str,
    delay: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl Acceptor {
    /// A fresh state for `listener` (a metric label).
    pub fn new(listener: &'static str) -> Self {
        metrics::counter!(ACCEPT_ERRORS_METRIC, "listener" => listener).absolute(0);
        Self {
            listener,
            delay: BACKOFF_MIN,
            last_log: None,
            suppressed: 0,
        }
    }

    /// The next connection on `listener`. A failed `accept` is counted,
    /// logged at most once per interval, and followed by a pause (10 ms
    /// doubling to 100 ms) so that a listener whose pending connection
    /// cannot be taken (no file descriptor left) does not spin a core.
    /// Cancel-safe: dropping the future loses no connection.
    pub async fn accept(&mut self, listener: &TcpListener) -> (TcpStream, SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(accepted) => {
                    self.delay = BACKOFF_MIN;
                    return accepted;
                }
                Err(e) => {
                    metrics::counter!(ACCEPT_ERRORS_METRIC, "listener" => self.listener)
                        .increment(1);
                    if self.last_log.is_none_or(|t| t.elapsed() >= LOG_INTERVAL) {
                        tracing::warn!(
                            listener = self.listener,
                            error = %e,
                            suppressed = self.suppressed,
                            retry_in_ms = self.delay.as_millis() as u64,
                            "accept failed; backing off"
                        );
                        self.last_log = Some(Instant::now());
                        self.suppressed = 0;
                    } else {
                        self.suppressed += 1;
                    }
                    tokio::time::sleep(self.delay).await;
                    self.delay = (self.delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_admits_max_and_frees_a_slot_on_drop() {
        let limit = ConnLimit::new("test", 2);
        let a = limit.admit();
        let b = limit.admit();
        assert!(a.is_some() && b.is_some());
        assert!(limit.admit().is_none());
        drop(a);
        assert!(limit.admit().is_some());
    }
}
