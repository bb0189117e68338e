//! Data path: one request of an `http` route to a fleet server over a
//! pooled keep-alive connection. A connection is taken from the idle pool
//! only when it is ready, and goes back to it only once its answer's body
//! has been read to the end (a connection still streaming a body is never
//! handed to another request); a reused connection that fails before
//! answering is retried once on a new one (the request returned unsent, or
//! an idempotent request without a body).

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;

use super::upstream::{self, IdleConn, IdleConns};
use crate::balance::Server;

/// What a fleet is sent as a body: the client's, or none (a replay).
pub type UpBody = Either<Uploading, Empty<Bytes>>;

/// The client's request body on its way to the fleet; says when it has
/// all been handed over (a connection still uploading is never parked,
/// even when the fleet answered early).
pub struct Uploading {
    inner: Incoming,
    done: Arc<AtomicBool>,
}

impl Uploading {
    pub fn new(inner: Incoming) -> Self {
        let done = Arc::new(AtomicBool::new(inner.is_end_stream()));
        Self { inner, done }
    }
}

impl Body for Uploading {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why no answer came from the server.
#[derive(Debug)]
pub enum Failure {
    /// The ingress's own resources ran out (see `ConnectError::is_local`).
    Local(String),
    /// No connection could be made: counts against the server.
    Unreachable(String),
    /// The connection failed while the request was out.
    Failed(String),
    /// No answer head within the timeout.
    Timeout,
}

/// Where and how: the server, the TLS config its connections are made
/// (and parked) with, and the timeouts.
pub struct Target<'a> {
    pub idle: &'a Arc<IdleConns>,
    pub server: &'a Arc<Server>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub connect: Duration,
    pub answer: Duration,
}

/// Sends `req` and returns the answer, whose body parks the connection when read to its end.
pub async fn send(to: &Target<'_>, req: Request<Incoming>) -> Result<Response<ParkOnEnd>, Failure> {
    let req = req.map(Uploading::new);
    let uploaded = Arc::clone(&req.body().done);
    let req = req.map(Either::Left);
    let (mut sender, reused) = checkout(to).await?;
    // A bodiless idempotent request can be sent again if a reused connection drops it.
    let again = (reused && uploaded.load(Relaxed) && is_idempotent(req.method())).then(|| {
        let mut copy = Request::new(Either::Right(Empty::new()));
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        copy
    });
    let first = tokio::time::timeout(to.answer, sender.try_send_request(req)).await;
    let resp = match first {
        Ok(Ok(resp)) => resp,
        Err(_) => return Err(Failure::Timeout),
        Ok(Err(mut e)) => {
            let Some(retry) = e.take_message().or(again).filter(|_| reused) else {
                return Err(Failure::Failed(e.into_error().to_string()));
            };
            tracing::debug!(server = to.server.name(), error = %e.error(), "a reused connection failed; sending again on a new one");
            sender = connect(to).await?;
            match tokio::time::timeout(to.answer, sender.send_request(retry)).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => return Err(Failure::Failed(e.to_string())),
                Err(_) => return Err(Failure::Timeout),
            }
        }
    };
    let (parts, body) = resp.into_parts();
    let body = ParkOnEnd {
        inner: body,
        uploaded,
        park: Some(Park {
            idle: Arc::clone(to.idle),
            server: Arc::clone(to.server),
            tls: to.tls.clone(),
            conn: sender,
        }),
        ended: false,
    };
    Ok(Response::from_parts(parts, body))
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// A ready idle connection (and `true`), or a new one.
async fn checkout(to: &Target<'_>) -> Result<(IdleConn, bool), Failure> {
    while let Some(mut conn) = to.idle.take(to.server, to.tls.as_ref()) {
        // Parked only after its last answer was read: ready at once, or closed.
        if matches!(tokio::time::timeout(to.connect, conn.ready()).await, Ok(Ok(()))) {
            return Ok((conn, true));
        }
    }
    Ok((connect(to).await?, false))
}

async fn connect(to: &Target<'_>) -> Result<IdleConn, Failure> {
    let io = upstream::connect(to.server, to.tls.clone(), to.connect)
        .await
        .map_err(|e| {
            if e.is_local() {
                Failure::Local(e.to_string())
            } else {
                Failure::Unreachable(e.to_string())
            }
        })?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The connection an answer came on, and where it is parked.
struct Park {
    idle: Arc<IdleConns>,
    server: Arc<Server>,
    tls: Option<Arc<rustls::ClientConfig>>,
    conn: IdleConn,
}

/// An answer's body that parks its connection once read to the end (and
/// drops it if the body is dropped before, the client gone mid-body, or if
/// the request's own body is still on its way).
pub struct ParkOnEnd {
    inner: Incoming,
    /// The request body has all been handed to the connection.
    uploaded: Arc<AtomicBool>,
    park: Option<Park>,
    ended: bool,
}

impl std::fmt::Debug for ParkOnEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkOnEnd").field("ended", &self.ended).finish()
    }
}

impl Body for ParkOnEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Err(_))) => self.park = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ParkOnEnd {
    fn drop(&mut self) {
        if (self.ended || self.inner.is_end_stream())
            && self.uploaded.load(Relaxed)
            && let Some(p) = self.park.take()
        {
            p.idle.put(&p.server, p.tls, p.conn);
        }
    }
}
