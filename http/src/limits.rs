//! Bounds on the HTTP server's connections (issue 23), so a client that never finishes its
//! request cannot hold a connection (and its memory and file descriptor) for ever:
//!
//! - `header_read_timeout`: hyper closes an HTTP/1 connection whose next request's headers
//!   are not complete this long after it started waiting for them — also one that sends
//!   nothing at all (measured: hyper 0.14.32 does *not* apply it to a keep-alive connection
//!   silent after a complete request).
//! - `idle_timeout`: a connection on which the server waits to read or write and no byte
//!   moves for this long is closed (a keep-alive connection silent after its reply, a
//!   stalled body, a client that does not read its reply).
//! - `max_connections`: connections served at once; the next one is accepted only when one
//!   ends, so the excess waits in the kernel's listen backlog instead of being refused.

use crate::HttpOptions;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The limits `serve` applies (from `[http]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// `http.header_read_timeout_ms`.
    pub header_read_timeout: Duration,
    /// `http.idle_timeout_ms`.
    pub idle_timeout: Duration,
    /// `http.max_connections`.
    pub max_connections: usize,
}

impl ServerLimits {
    pub fn from_options(options: &HttpOptions) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(options.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(options.idle_timeout_ms),
            max_connections: options.max_connections,
        }
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self::from_options(&HttpOptions::default())
    }
}

/// An accepted connection: fails a read or write that waited `timeout` with no byte read
/// or written, and holds one of the `max_connections` permits until hyper drops it.
pub(crate) struct LimitedConn {
    stream: TcpStream,
    /// The client's address (failed authentications are counted per address).
    peer: std::net::IpAddr,
    timeout: Duration,
    /// When a byte was last read or written (or the connection accepted).
    last_progress: Instant,
    /// Fires at `last_progress + timeout` or later; re-armed lazily when it fires, so a busy
    /// connection does not touch the timer per read.
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl LimitedConn {
    fn new(
        stream: TcpStream,
        peer: std::net::IpAddr,
        timeout: Duration,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let now = Instant::now();
        Self {
            stream,
            peer,
            timeout,
            last_progress: now,
            deadline: Box::pin(tokio::time::sleep_until(now + timeout)),
            _permit: permit,
        }
    }

    pub(crate) fn peer(&self) -> std::net::IpAddr {
        self.peer
    }

    fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }

    /// Called while an operation is pending: an error once the connection has been silent
    /// for `timeout`, else `Pending` with the timer armed to wake the task.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let due = self.last_progress + self.timeout;
            if Instant::now() >= due {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "HTTP connection idle past http.idle_timeout_ms",
                ));
            }
            self.deadline.as_mut().reset(due);
        }
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                // Bytes or end of stream: either way the client did something.
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => match this.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
        }
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => match this.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => match this.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The accepted connections of `listener`, at most `limits.max_connections` alive at once:
/// a permit is taken before `accept`, so past the cap connections wait in the backlog.
/// Never yields an error (an error would stop hyper's server): failed accepts are skipped,
/// and on others (e.g. out of file descriptors) it logs and retries after a second, as
/// hyper's own listener does.
pub(crate) fn incoming(
    listener: TcpListener,
    limits: ServerLimits,
) -> impl futures::Stream<Item = io::Result<LimitedConn>> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    futures::stream::unfold((listener, permits), move |(listener, permits)| async move {
        let conn = accept(&listener, &permits, limits.idle_timeout).await?;
        Some((Ok(conn), (listener, permits)))
    })
}

async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    idle_timeout: Duration,
) -> Option<LimitedConn> {
    // The semaphore is never closed: `None` cannot happen, it would end the stream.
    let permit = permits.clone().acquire_owned().await.ok()?;
    loop {
        match listener.accept().await {
            // TCP_NODELAY stays off, as hyper's AddrIncoming leaves it by default.
            Ok((stream, peer)) => {
                return Some(LimitedConn::new(stream, peer.ip(), idle_timeout, permit))
            }
            Err(error) if is_connection_error(&error) => {
                tracing::debug!(%error, "accepted connection already failed");
            }
            Err(error) => {
                tracing::error!(%error, "accept failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
