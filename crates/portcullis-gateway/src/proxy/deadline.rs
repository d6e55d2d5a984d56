//! Deadlines on everything a peer can hold open: a request body must
//! arrive whole within `server.request_body_timeout`; a connection with no
//! request in progress is closed after `server.idle_timeout` (pings do not
//! count); an upstream body that sends nothing for
//! `server.upstream_body_timeout` is cut; a WebSocket tunnel with no byte
//! either way for `server.websocket_idle_timeout` is closed, and at most
//! `server.max_websockets` are open at once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::proxy::{BoxError, ResponseBody};

/// Counter: requests whose body did not arrive within the deadline (`surface`).
pub const BODY_TIMEOUTS_METRIC: &str = "portcullis_gateway_request_body_timeouts_total";
/// Counter: connections closed because no request was in progress.
pub const IDLE_CLOSED_METRIC: &str = "portcullis_gateway_idle_connections_closed_total";
/// Counter: WebSocket tunnels closed for silence.
pub const WEBSOCKET_IDLE_METRIC: &str = "portcullis_gateway_websocket_idle_closed_total";
/// Counter: WebSocket handshakes refused at `server.max_websockets`.
pub const WEBSOCKET_REFUSED_METRIC: &str = "portcullis_gateway_websockets_refused_total";
/// Counter of upstream failures by `kind` (shared with the proxy).
const UPSTREAM_FAILURES_METRIC: &str = "portcullis_gateway_upstream_failures_total";

/// The request body did not arrive within `server.request_body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

/// The upstream sent no body bytes for `server.upstream_body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no body bytes for {0:?}")]
pub struct UpstreamBodyStalled(pub Duration);

/// Whether a request's body deadline passed; read once the request is answered.
#[derive(Clone, Default)]
pub struct Expired(Arc<AtomicBool>);

impl Expired {
    /// True once the body deadline passed with bytes still missing.
    pub fn fired(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A client's request body that fails with [`BodyTimedOut`] when it is
/// not complete by its deadline. The timer is armed only once a read has
/// to wait, so a request without a body costs no timer.
pub struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    expired: Expired,
}

impl TimedBody {
    /// `req`'s body, due complete `timeout` from now; the flag says
    /// whether the deadline passed.
    pub fn wrap(req: Request<Incoming>, timeout: Duration) -> (Request<Self>, Expired) {
        let expired = Expired::default();
        let flag = expired.clone();
        let req = req.map(|inner| Self {
            inner,
            deadline: Instant::now() + timeout,
            timeout,
            sleep: None,
            expired: flag,
        });
        (req, expired)
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.expired.fired() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.expired.0.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a request whose body missed its deadline: 408
/// `gateway.request_timeout` (kept when the surface already answered it,
/// with its request id), and the HTTP/1 connection closes (the rest of the
/// body is never read).
pub fn request_timeout(
    answered: Response<ResponseBody>,
    version: http::Version,
    timeout: Duration,
    surface: &'static str,
) -> Response<ResponseBody> {
    metrics::counter!(BODY_TIMEOUTS_METRIC, "surface" => surface).increment(1);
    tracing::debug!(surface, ?timeout, "request body not received in time; 408");
    let mut response = if answered.status() == StatusCode::REQUEST_TIMEOUT {
        answered
    } else {
        timed_out_problem(timeout, None)
    };
    if version < http::Version::HTTP_2 {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// The 408 problem of a body that missed its `timeout`.
pub fn timed_out_problem(timeout: Duration, request_id: Option<&str>) -> Response<ResponseBody> {
    crate::proxy::problem(
        StatusCode::REQUEST_TIMEOUT,
        "gateway.request_timeout",
        &format!(
            "the request body did not arrive within {} ms",
            timeout.as_millis()
        ),
        request_id,
    )
}

/// The requests in progress on one connection, for its idle timeout.
#[derive(Default)]
pub struct Activity {
    open: AtomicUsize,
    changed: Notify,
}

/// The connection a request arrived on, as its [`Activity`]: an HTTP/2
/// WebSocket holds it busy (not idle) while its tunnel is open.
#[derive(Clone)]
pub struct ConnActivity(pub Arc<Activity>);

/// One request in progress: from its head until its response body is
/// sent or dropped.
pub struct InFlight(Arc<Activity>);

impl Activity {
    /// Counts a request as in progress until the returned guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        InFlight(Arc::clone(self))
    }

    /// Resolves once no request has been in progress for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                if tokio::time::timeout(timeout, notified).await.is_err() {
                    return;
                }
            } else {
                notified.await;
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request counted as in progress.
pub struct TrackedBody {
    inner: ResponseBody,
    _in_flight: InFlight,
}

impl TrackedBody {
    /// `inner`, holding `in_flight` until it is sent or dropped.
    pub fn wrap(inner: ResponseBody, in_flight: InFlight) -> ResponseBody {
        http_body_util::BodyExt::boxed_unsync(Self {
            inner,
            _in_flight: in_flight,
        })
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts a connection closed for idleness.
pub fn idle_closed(timeout: Duration) {
    metrics::counter!(IDLE_CLOSED_METRIC).increment(1);
    tracing::debug!(?timeout, "no request in progress; connection closed");
}

/// An upstream's response body that fails with [`UpstreamBodyStalled`]
/// when no frame arrives for `timeout` (the timer restarts at each frame).
/// The client's response then ends in error: the HTTP/1 connection is
/// closed before the body is complete, the HTTP/2 stream is reset.
pub struct UpstreamBody {
    inner: Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The timer runs from the last frame: re-armed at the next wait.
    armed: bool,
    upstream: Arc<str>,
}

impl UpstreamBody {
    /// `inner` from `upstream`, allowed `timeout` between frames.
    pub fn wrap(inner: Incoming, timeout: Duration, upstream: Arc<str>) -> ResponseBody {
        http_body_util::BodyExt::boxed_unsync(Self {
            inner,
            timeout,
            sleep: None,
            armed: false,
            upstream,
        })
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                // Armed once per wait: the clock is read only when a wait
                // starts, not on every wake-up during it.
                if !this.armed {
                    let at = Instant::now() + this.timeout;
                    match &mut this.sleep {
                        Some(sleep) => sleep.as_mut().reset(at),
                        None => this.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                    this.armed = true;
                }
                if let Some(sleep) = this.sleep.as_mut()
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    metrics::counter!(
                        UPSTREAM_FAILURES_METRIC,
                        "upstream" => metrics::SharedString::from(Arc::clone(&this.upstream)),
                        "kind" => "body_timeout"
                    )
                    .increment(1);
                    tracing::warn!(
                        upstream = %this.upstream,
                        timeout = ?this.timeout,
                        "upstream response body stalled; the client's response is cut"
                    );
                    return Poll::Ready(Some(Err(Box::new(UpstreamBodyStalled(this.timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The WebSocket tunnels open in the process, against `server.max_websockets`.
#[derive(Default)]
pub struct Tunnels {
    open: AtomicUsize,
}

/// One open tunnel: holds its place until dropped.
pub struct TunnelSlot(Arc<Tunnels>);

impl Tunnels {
    /// A place for one more tunnel, or `None` (counted) when `max` are open.
    pub fn try_open(self: &Arc<Self>, max: usize) -> Option<TunnelSlot> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            Some(TunnelSlot(Arc::clone(self)))
        } else {
            metrics::counter!(WEBSOCKET_REFUSED_METRIC).increment(1);
            tracing::warn!(max, "WebSocket cap reached; handshake refused (503)");
            None
        }
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a tunnel ended.
pub enum TunnelEnd {
    /// One side closed: bytes to the upstream, bytes to the client.
    Closed(u64, u64),
    /// A side failed.
    Failed(io::Error),
    /// No byte either way for the idle timeout.
    Idle,
}

/// Copies bytes both ways between `a` and `b` until either closes, or
/// until no byte has moved either way for `idle`.
pub async fn relay<A, B>(a: A, b: B, idle: Duration) -> TunnelEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Touching {
        io: a,
        start,
        last: Arc::clone(&last),
    };
    let mut b = Touching {
        io: b,
        start,
        last: Arc::clone(&last),
    };
    let watchdog = async {
        loop {
            let moved = Duration::from_millis(last.load(Ordering::Relaxed));
            let quiet = start.elapsed().saturating_sub(moved);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut a, &mut b) => match copied {
            Ok((up, down)) => TunnelEnd::Closed(up, down),
            Err(e) => TunnelEnd::Failed(e),
        },
        () = watchdog => {
            metrics::counter!(WEBSOCKET_IDLE_METRIC).increment(1);
            TunnelEnd::Idle
        }
    }
}

/// An I/O that records when it last read a byte.
struct Touching<I> {
    io: I,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Touching<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = u64::try_from(this.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            this.last.store(now, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Touching<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_ends_after_the_idle_timeout_and_a_chatty_one_does_not() {
        let (a, mut a_peer) = tokio::io::duplex(64);
        let (b, _b_peer) = tokio::io::duplex(64);
        let relay = tokio::spawn(relay(a, b, Duration::from_secs(10)));
        // Bytes every 6 s keep it open past 10 s.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            tokio::io::AsyncWriteExt::write_all(&mut a_peer, b"x")
                .await
                .unwrap();
        }
        assert!(!relay.is_finished());
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(matches!(relay.await.unwrap(), TunnelEnd::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_the_last_request_to_end() {
        let activity = Arc::new(Activity::default());
        let in_flight = activity.start();
        let idle = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.idle(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!idle.is_finished());
        drop(in_flight);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(idle.is_finished());
    }
}
