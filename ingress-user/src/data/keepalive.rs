//! Data path: the client side of an `http` route's keep-alive connection:
//! the first head (already read by the front) replayed into hyper, the head
//! limits for every later request, and the connection's clock: a connection
//! with no request in flight is closed after `keepalive_idle` without a byte
//! either way (an answer still draining to the client keeps it), a later
//! head, once its first byte arrived, must be complete within
//! `header_timeout`, and a request in flight with no byte either way for
//! `keepalive_idle` is cut. A request is in flight from its head until
//! hyper drops its response body (the whole answer handed over, or the
//! client gone).

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::Instant,
};

/// The bounds a connection is served under (from the snapshot at accept).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_timeout: Duration,
    pub keepalive_idle: Duration,
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in flight since this instant.
    Idle(Instant),
    /// The first byte of a head arrived at this instant.
    Head(Instant),
    /// This many requests in flight.
    Busy(usize),
}

/// Why the clock ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request in flight and no byte either way for `keepalive_idle`.
    Idle,
    /// A later head not complete within `header_timeout` of its first byte.
    Head,
    /// A request in flight, and no byte either way for `keepalive_idle`
    /// (a client that stopped reading its answer, or stopped sending).
    Stalled,
}

impl Expired {
    /// The reason label of `ingress_keepalive_closed_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Expired::Idle => "idle",
            Expired::Head => "header_timeout",
            Expired::Stalled => "stalled",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct State {
    phase: Phase,
    /// The last byte read from or written to the client.
    progress: Instant,
}

/// The connection's phase, moved by reads, writes, requests and response ends.
#[derive(Debug)]
pub struct Clock {
    state: Mutex<State>,
    moved: Notify,
}

impl Clock {
    /// A clock whose first head is being read now.
    pub fn new() -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            state: Mutex::new(State {
                phase: Phase::Head(now),
                progress: now,
            }),
            moved: Notify::new(),
        })
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = state.phase;
        f(&mut state);
        if state.phase != before {
            self.moved.notify_one();
        }
    }

    /// Bytes arrived from the client: an idle connection is now reading a head.
    fn read(&self) {
        self.update(|s| {
            s.progress = Instant::now();
            if let Phase::Idle(_) = s.phase {
                s.phase = Phase::Head(s.progress);
            }
        });
    }

    /// Bytes went out to the client (an answer still draining is progress).
    fn wrote(&self) {
        self.update(|s| s.progress = Instant::now());
    }

    /// A grace period from now (after asking hyper to close).
    fn touch(&self) {
        self.update(|s| {
            s.progress = Instant::now();
            if let Phase::Idle(_) = s.phase {
                s.phase = Phase::Idle(s.progress);
            }
        });
    }

    /// A request head is complete: in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.update(|s| {
            s.phase = match s.phase {
                Phase::Busy(n) => Phase::Busy(n + 1),
                _ => Phase::Busy(1),
            }
        });
        InFlight(Arc::clone(self))
    }

    /// Resolves when the connection has expired (see [`Expired`]).
    pub async fn expired(&self, limits: ConnLimits) -> Expired {
        loop {
            let moved = self.moved.notified();
            let state = *self.state.lock().unwrap_or_else(|p| p.into_inner());
            let (deadline, why) = match state.phase {
                Phase::Idle(since) => (since.max(state.progress) + limits.keepalive_idle, Expired::Idle),
                Phase::Head(since) => (since + limits.header_timeout, Expired::Head),
                Phase::Busy(_) => (state.progress + limits.keepalive_idle, Expired::Stalled),
            };
            if Instant::now() >= deadline {
                return why;
            }
            // Woken by a phase change, or at the deadline to look again
            // (progress since may have moved it on).
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = moved => {}
            }
        }
    }
}

/// A request in flight; dropping it (with the response body) may make the connection idle.
#[derive(Debug)]
pub struct InFlight(Arc<Clock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|s| {
            s.phase = match s.phase {
                Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
                _ => Phase::Idle(Instant::now()),
            }
        });
    }
}

/// A response body that keeps its request in flight until hyper drops it.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Replays already-read bytes before the rest of a stream, and tells the
/// clock when client bytes arrive.
struct Rewind<S> {
    prefix: Bytes,
    inner: S,
    clock: Arc<Clock>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote();
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one client connection with hyper: `first` (the head the front
/// read, with any bytes after it) is replayed, every request goes to
/// `handle`, and the connection ends when the client closes it or the
/// clock expires (returned). Upgrades are handed over as hyper does.
pub async fn serve<S, F, Fut, B>(io: S, first: Bytes, limits: ConnLimits, handle: F) -> Option<Expired>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let clock = Clock::new();
    let rewind = Rewind {
        prefix: first,
        inner: io,
        clock: Arc::clone(&clock),
    };
    let handle = Arc::new(handle);
    let svc = {
        let clock = Arc::clone(&clock);
        hyper::service::service_fn(move |req| {
            let in_flight = clock.begin();
            let answer = handle(req);
            async move {
                let resp = answer.await;
                Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .serve_connection(TokioIo::new(rewind), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let mut closing = None;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return closing,
            why = clock.expired(limits) => {
                if why != Expired::Idle || closing.is_some() {
                    return Some(why);
                }
                // Idle: hyper closes at once; a request that slipped in is
                // answered first, the clock running on from now.
                conn.as_mut().graceful_shutdown();
                clock.touch();
                closing = Some(why);
            }
        }
    }
}
