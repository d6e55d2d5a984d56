//! One connection on the public listener: TLS when `[server.tls]` is set,
//! then HTTP/1.1 or HTTP/2 (hyper-util's `auto` builder, upgrades on, so
//! a WebSocket can leave HTTP/1.1; extended CONNECT on, so one can open
//! on an HTTP/2 stream).
//!
//! Which HTTP is spoken is read from the first bytes: the HTTP/2 preface
//! (h2c prior knowledge on plaintext; after ALPN `h2` under TLS) or
//! anything else for HTTP/1.1. Those first bytes are awaited here with the
//! head timeout, so a client that connects and says nothing is closed
//! instead of holding a task and a socket forever; hyper's own
//! `header_read_timeout` then bounds the rest of an HTTP/1 head.
//!
//! A connection holds a slot of the listener's cap ([`crate::listen::limits`]) for
//! its life, and is closed gracefully (HTTP/2 GOAWAY, HTTP/1 between
//! requests) once no request has been in progress for `server.idle_timeout`
//! ([`crate::proxy::deadline::Activity`]) or the gateway stops.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::listen::limits::ConnPermit;
use crate::listen::tls::Tls;
use crate::proxy::ResponseBody;
use crate::proxy::deadline::{Activity, TrackedBody};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Time a client gets to send its first bytes, and an HTTP/1 request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Time an idle connection asked to close gets before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What serves the public listener's connections; shared.
pub struct Public {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<Arc<Tls>>,
    idle_timeout: Duration,
}

impl Public {
    /// HTTP/1.1 and HTTP/2, over TLS when `tls` is given; a connection
    /// with no request in progress for `idle_timeout` is closed.
    pub fn new(tls: Option<Arc<Tls>>, idle_timeout: Duration) -> Arc<Self> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT);
        // Pings find peers that vanished without closing. Extended CONNECT
        // (RFC 8441) carries WebSockets over HTTP/2.
        builder
            .http2()
            .timer(TokioTimer::new())
            .enable_connect_protocol()
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        Arc::new(Self {
            builder,
            tls,
            idle_timeout,
        })
    }

    /// Serves `stream` on its own task, holding `permit` (its slot of the
    /// listener's cap) until it closes. `make` builds the connection's
    /// service, told whether the connection is TLS. `watcher` ties it to
    /// the graceful shutdown; `stopping` turning true abandons a connection
    /// that is still in its handshake or has not sent its first bytes, and
    /// asks the others to finish.
    pub fn spawn<S, M>(
        self: &Arc<Self>,
        stream: TcpStream,
        permit: ConnPermit,
        watcher: Watcher,
        stopping: watch::Receiver<bool>,
        make: M,
    ) where
        M: FnOnce(bool) -> S + Send + 'static,
        S: hyper::service::Service<
                Request<Incoming>,
                Response = Response<ResponseBody>,
                Error = Infallible,
            > + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let _ = stream.set_nodelay(true);
        let slot = match &self.tls {
            Some(tls) => match tls.slot() {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!("too many TLS handshakes in progress; connection closed");
                    return;
                }
            },
            None => None,
        };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _permit = permit;
            let mut stopping = stopping;
            match (&this.tls, slot) {
                (Some(tls), Some(slot)) => {
                    let tls_stream = tokio::select! {
                        r = tls.accept(stream, slot) => match r {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(error = %e, "TLS connection not established");
                                return;
                            }
                        },
                        () = stopped(&mut stopping) => return,
                    };
                    this.serve(tls_stream, watcher, stopping, make(true)).await;
                }
                _ => this.serve(stream, watcher, stopping, make(false)).await,
            }
        });
    }

    async fn serve<I, S>(
        &self,
        mut io: I,
        watcher: Watcher,
        mut stopping: watch::Receiver<bool>,
        svc: S,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                Request<Incoming>,
                Response = Response<ResponseBody>,
                Error = Infallible,
            > + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let first = tokio::select! {
            r = tokio::time::timeout(HEAD_TIMEOUT, sniff(&mut io)) => match r {
                Ok(Ok(first)) if !first.is_empty() => first,
                Ok(Ok(_)) => return, // closed without a byte
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "connection failed before its first request");
                    return;
                }
                Err(_) => {
                    tracing::debug!("no request within {HEAD_TIMEOUT:?}; connection closed");
                    return;
                }
            },
            () = stopped(&mut stopping) => return,
        };
        let io = Prefixed {
            prefix: first,
            at: 0,
            io,
        };
        let activity = Arc::new(Activity::default());
        let svc = {
            let activity = Arc::clone(&activity);
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let in_flight = activity.start();
                // An HTTP/2 WebSocket keeps its connection busy while open.
                req.extensions_mut()
                    .insert(crate::proxy::deadline::ConnActivity(Arc::clone(&activity)));
                let response = hyper::service::Service::call(&svc, req);
                async move {
                    let response = response.await?;
                    Ok::<_, Infallible>(response.map(|b| TrackedBody::wrap(b, in_flight)))
                }
            })
        };
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc)
            .into_owned();
        tokio::pin!(conn);
        // Held, not used: the graceful shutdown waits until it drops.
        let _watcher = watcher;
        let mut closing = false;
        // An idle connection asked to close gets this long to do so (an
        // HTTP/2 peer that never acknowledges the GOAWAY's ping), then is
        // dropped.
        let grace = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace);
        let ended = loop {
            tokio::select! {
                ended = conn.as_mut() => break ended,
                () = stopped(&mut stopping), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = activity.idle(self.idle_timeout), if !closing => {
                    closing = true;
                    crate::proxy::deadline::idle_closed(self.idle_timeout);
                    conn.as_mut().graceful_shutdown();
                    grace.as_mut().reset(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
                }
                () = grace.as_mut() => {
                    tracing::debug!("idle connection did not close in time; dropped");
                    return;
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Resolves once `stopping` is true (or its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// Reads the first bytes: until they are the whole HTTP/2 preface, or
/// differ from it (HTTP/1), or the stream ends. At most 24 bytes.
async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    loop {
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(buf[..filled].to_vec());
        }
        filled += n;
        if filled == buf.len() || buf[..filled] != H2_PREFACE[..filled] {
            return Ok(buf[..filled].to_vec());
        }
    }
}

/// `io` with bytes already read from it put back in front.
struct Prefixed<I> {
    prefix: Vec<u8>,
    at: usize,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let rest = &this.prefix[this.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
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

    #[tokio::test]
    async fn sniff_stops_at_the_first_byte_that_is_not_the_preface() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let first = sniff(&mut server).await.unwrap();
        assert!(!first.is_empty() && first[0] == b'G');
        assert!(first.len() <= H2_PREFACE.len());
    }

    #[tokio::test]
    async fn sniff_reads_the_whole_preface_sent_in_pieces() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move { sniff(&mut server).await.unwrap() });
        for piece in H2_PREFACE.chunks(5) {
            tokio::io::AsyncWriteExt::write_all(&mut client, piece)
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        assert_eq!(reader.await.unwrap(), H2_PREFACE.to_vec());
    }

    #[tokio::test]
    async fn prefixed_replays_the_sniffed_bytes_before_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b" world")
            .await
            .unwrap();
        drop(client);
        let mut io = Prefixed {
            prefix: b"hello".to_vec(),
            at: 0,
            io: server,
        };
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
