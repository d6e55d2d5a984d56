//! What keeps a long-lived stream (the live audit stream, on the admin API
//! and through the console) answerable to its credential: a cap on open
//! streams, in total and per credential ([`StreamSlots`]), and a wrapper
//! that re-checks the credential every [`RECHECK`] and ends the stream
//! with a final `event: revoked` once it is no longer valid
//! ([`until_revoked`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// How often an open stream's credential is checked again.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Gauge: live streams open on this replica.
pub const OPEN_STREAMS_METRIC: &str = "portcullis_admin_streams_open";

/// The open-stream counts, in total and by credential.
#[derive(Debug)]
pub struct StreamSlots {
    max_total: usize,
    max_per_key: usize,
    open: Mutex<(usize, HashMap<String, usize>)>,
}

/// One open stream's place; given back when dropped (the stream ends or
/// its client goes away).
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    key: String,
}

/// Why a stream was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefused {
    /// `server.admin_streams` are open.
    Total(usize),
    /// This credential holds `server.admin_streams_per_key` already.
    PerKey(usize),
}

impl StreamSlots {
    /// At most `max_total` streams, `max_per_key` of one credential.
    pub fn new(max_total: usize, max_per_key: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_key: max_per_key.max(1),
            open: Mutex::new((0, HashMap::new())),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<String, usize>)> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a stream of credential `key`, or why not.
    pub fn acquire(self: &Arc<Self>, key: &str) -> Result<StreamSlot, SlotRefused> {
        let mut table = self.table();
        if table.0 >= self.max_total {
            return Err(SlotRefused::Total(self.max_total));
        }
        let held = table.1.get(key).copied().unwrap_or(0);
        if held >= self.max_per_key {
            return Err(SlotRefused::PerKey(self.max_per_key));
        }
        table.0 += 1;
        table.1.insert(key.to_owned(), held + 1);
        let total = table.0;
        drop(table);
        metrics::gauge!(OPEN_STREAMS_METRIC).set(total as f64);
        Ok(StreamSlot {
            slots: Arc::clone(self),
            key: key.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut table = self.slots.table();
        table.0 = table.0.saturating_sub(1);
        if let Some(n) = table.1.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.1.remove(&self.key);
            }
        }
        let total = table.0;
        drop(table);
        metrics::gauge!(OPEN_STREAMS_METRIC).set(total as f64);
    }
}

/// The answer of one credential check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Still valid.
    Valid,
    /// Could not be checked now (a store that does not answer).
    Unknown,
    /// No longer valid: the stream ends, saying why.
    Revoked(String),
}

/// How long a credential may stay unconfirmed (its store does not
/// answer) before the stream ends as if it were revoked.
pub const UNCONFIRMED_LIMIT: Duration = Duration::from_secs(10);

type Check = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Standing> + Send>> + Send>;

struct State<S> {
    inner: Pin<Box<S>>,
    check: Check,
    tick: tokio::time::Interval,
    last_confirmed: tokio::time::Instant,
    done: bool,
    _slot: Option<StreamSlot>,
}

/// The final event of a stream whose credential was revoked.
pub fn revoked_event(reason: &str) -> Bytes {
    let data = serde_json::json!({ "reason": reason }).to_string();
    Bytes::from(format!("event: revoked\ndata: {data}\n\n"))
}

/// `inner`, checked with `check` every [`RECHECK`]: when the credential
/// is revoked (or unconfirmed for [`UNCONFIRMED_LIMIT`]) the stream sends
/// `event: revoked` and ends. `slot` is held until it does.
pub fn until_revoked<S, E>(
    inner: S,
    slot: Option<StreamSlot>,
    check: impl FnMut() -> Pin<Box<dyn Future<Output = Standing> + Send>> + Send + 'static,
) -> impl Stream<Item = Result<Bytes, E>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = State {
        inner: Box::pin(inner),
        check: Box::new(check),
        tick,
        last_confirmed: tokio::time::Instant::now(),
        done: false,
        _slot: slot,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            tokio::select! {
                biased;
                _ = st.tick.tick() => {
                    let reason = match (st.check)().await {
                        Standing::Valid => {
                            st.last_confirmed = tokio::time::Instant::now();
                            None
                        }
                        Standing::Unknown => (st.last_confirmed.elapsed() > UNCONFIRMED_LIMIT)
                            .then(|| "the credential could not be checked again".to_owned()),
                        Standing::Revoked(reason) => Some(reason),
                    };
                    if let Some(reason) = reason {
                        st.done = true;
                        return Some((Ok(revoked_event(&reason)), st));
                    }
                }
                item = st.inner.next() => {
                    return item.map(|i| (i, st));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stream that never yields: only the re-check can end it.
    fn silent() -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
        futures_util::stream::pending()
    }

    fn checker(
        answers: Vec<Standing>,
    ) -> (
        Arc<AtomicUsize>,
        impl FnMut() -> Pin<Box<dyn Future<Output = Standing> + Send>> + Send + 'static,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let check = move || {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let answer = answers
                .get(n)
                .or(answers.last())
                .cloned()
                .unwrap_or(Standing::Valid);
            Box::pin(async move { answer }) as Pin<Box<dyn Future<Output = Standing> + Send>>
        };
        (calls, check)
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_credential_ends_the_stream_with_one_last_event() {
        let slots = StreamSlots::new(2, 1);
        let slot = slots.acquire("k").unwrap();
        let (calls, check) = checker(vec![
            Standing::Valid,
            Standing::Valid,
            Standing::Valid,
            Standing::Revoked("gone".into()),
        ]);
        let start = tokio::time::Instant::now();
        let mut stream = Box::pin(until_revoked(silent(), Some(slot), check));
        let last = stream.next().await.unwrap().unwrap();
        assert_eq!(last, revoked_event("gone"));
        assert!(stream.next().await.is_none(), "nothing after revoked");
        // Checked at once, then every second: the fourth check is at 3 s.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(start.elapsed(), RECHECK * 3);
        // Its slot was given back.
        drop(stream);
        assert!(slots.acquire("k").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unconfirmable_credential_ends_the_stream_after_the_limit() {
        let (_, check) = checker(vec![Standing::Valid, Standing::Unknown]);
        let start = tokio::time::Instant::now();
        let mut stream = Box::pin(until_revoked(silent(), None, check));
        let last = stream.next().await.unwrap().unwrap();
        assert!(
            String::from_utf8_lossy(&last).starts_with("event: revoked\n"),
            "{last:?}"
        );
        let waited = start.elapsed();
        assert!(
            waited > UNCONFIRMED_LIMIT && waited <= UNCONFIRMED_LIMIT + RECHECK * 2,
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_inner_streams_events_pass_while_the_credential_stands() {
        let inner = futures_util::stream::iter(
            ["a", "b"].map(|s| Ok::<_, std::convert::Infallible>(Bytes::from(s))),
        );
        let (_, check) = checker(vec![Standing::Valid]);
        let got: Vec<_> = until_revoked(inner, None, check)
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(got, vec![Bytes::from("a"), Bytes::from("b")]);
    }

    #[test]
    fn slots_are_capped_per_key_and_in_total_and_given_back() {
        let slots = StreamSlots::new(3, 2);
        let a1 = slots.acquire("a").unwrap();
        let _a2 = slots.acquire("a").unwrap();
        assert_eq!(slots.acquire("a").unwrap_err(), SlotRefused::PerKey(2));
        let _b1 = slots.acquire("b").unwrap();
        assert_eq!(slots.acquire("c").unwrap_err(), SlotRefused::Total(3));
        drop(a1);
        assert!(slots.acquire("c").is_ok());
    }
}
