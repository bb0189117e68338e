//! Data path: one request of an `http` route to a fleet server over a
//! pooled keep-alive connection. A connection is taken from the idle pool
//! only when it is ready, and goes back to it only once its answer's body
//! has been read to the end (a connection still streaming a body is never
//! handed to another request); a reused connection that fails before
//! answering is retried once on a new one (the request returned unsent, or
//! an idempotent request without a body). Also the idle pool itself
//! ([`IdleConns`]).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
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

use super::upstream;
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
pub struct Destination<'a> {
    pub idle: &'a Arc<IdleConns>,
    pub server: &'a Arc<Server>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub connect: Duration,
    pub answer: Duration,
}

/// Sends `req` and returns the answer, whose body parks the connection when read to its end.
pub async fn send(to: &Destination<'_>, req: Request<Incoming>) -> Result<Response<ParkOnEnd>, Failure> {
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
async fn checkout(to: &Destination<'_>) -> Result<(IdleConn, bool), Failure> {
    while let Some(mut conn) = to.idle.take(to.server, to.tls.as_ref()) {
        // Parked only after its last answer was read: ready at once, or closed.
        if matches!(tokio::time::timeout(to.connect, conn.ready()).await, Ok(Ok(()))) {
            return Ok((conn, true));
        }
    }
    Ok((connect(to).await?, false))
}

async fn connect(to: &Destination<'_>) -> Result<IdleConn, Failure> {
    let io = upstream::connect(to.server, to.tls.clone(), to.connect)
        .await
        .map_err(|e| e.by_blame(Failure::Local, Failure::Unreachable))?;
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

/// A keep-alive connection to a fleet's web tier (`http` routes).
pub type IdleConn = hyper::client::conn::http1::SendRequest<UpBody>;

/// Idle keep-alive connections by server. Each list belongs to one server
/// object and one TLS configuration: a reload or an admin change that gives
/// a server a new address or SNI makes a new server object, and every
/// rebuild of a pool makes new TLS configurations, so a parked connection is
/// never reused under settings other than those it was made with. Lists of
/// servers that are gone are dropped at the next park.
#[derive(Debug, Default)]
pub struct IdleConns(Mutex<HashMap<u32, Parked>>);

/// Whose connections these are, and the connections.
#[derive(Debug)]
struct Parked {
    server: Weak<Server>,
    tls: Option<Arc<rustls::ClientConfig>>,
    conns: Vec<IdleConn>,
}

impl Parked {
    fn belongs_to(&self, server: &Arc<Server>, tls: Option<&Arc<rustls::ClientConfig>>) -> bool {
        std::ptr::eq(self.server.as_ptr(), Arc::as_ptr(server))
            && match (&self.tls, tls) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl IdleConns {
    /// The most recently parked connection to `server` made with `tls`, if any.
    pub fn take(&self, server: &Arc<Server>, tls: Option<&Arc<rustls::ClientConfig>>) -> Option<IdleConn> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let parked = map.get_mut(&server.id)?;
        if !parked.belongs_to(server, tls) {
            map.remove(&server.id);
            return None;
        }
        parked.conns.pop()
    }

    /// Parks a connection to `server` (made with `tls`) for the next request.
    pub fn put(&self, server: &Arc<Server>, tls: Option<Arc<rustls::ClientConfig>>, conn: IdleConn) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, p| p.server.strong_count() > 0);
        let parked = map.entry(server.id).or_insert_with(|| Parked {
            server: Arc::downgrade(server),
            tls: tls.clone(),
            conns: Vec::new(),
        });
        if !parked.belongs_to(server, tls.as_ref()) {
            *parked = Parked {
                server: Arc::downgrade(server),
                tls,
                conns: Vec::new(),
            };
        }
        parked.conns.push(conn);
    }
}

#[cfg(test)]
mod tests {
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::ServerName;

    use super::*;
    use crate::model::ServerDef;

    fn server(id: u32, host: &str) -> Arc<Server> {
        let def = ServerDef {
            name: format!("s{id}"),
            host: host.to_owned(),
            port: 443,
            sni: None,
            maxconn: None,
        };
        Arc::new(Server::new(
            id,
            "p".into(),
            def,
            16,
            ServerName::try_from("localhost").unwrap(),
            true,
        ))
    }

    fn tls() -> Arc<rustls::ClientConfig> {
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    }

    async fn conn() -> IdleConn {
        let (near, far) = tokio::io::duplex(64);
        std::mem::forget(far); // keep the peer open: the connection stays usable
        let (send, task) = hyper::client::conn::http1::handshake(TokioIo::new(near)).await.unwrap();
        tokio::spawn(task);
        send
    }

    #[tokio::test]
    async fn parked_connections_serve_only_their_server_object_and_tls_config() {
        let idle = IdleConns::default();
        let (s1, t1, t2) = (server(1, "10.0.0.1"), tls(), tls());
        idle.put(&s1, Some(Arc::clone(&t1)), conn().await);
        assert!(
            idle.take(&s1, Some(&t2)).is_none(),
            "a pool rebuilt with new TLS settings"
        );
        assert!(idle.take(&s1, Some(&t1)).is_none(), "and the old list is gone");
        idle.put(&s1, Some(Arc::clone(&t1)), conn().await);
        let replaced = server(1, "10.0.0.2"); // same id, new address
        assert!(idle.take(&replaced, Some(&t1)).is_none());
        idle.put(&s1, None, conn().await);
        assert!(
            idle.take(&s1, None).is_some(),
            "a plain-TCP pool's connection is reused"
        );
    }

    #[tokio::test]
    async fn lists_of_servers_that_are_gone_are_dropped() {
        let idle = IdleConns::default();
        let (s1, s2) = (server(1, "10.0.0.1"), server(2, "10.0.0.2"));
        idle.put(&s2, None, conn().await);
        drop(s2);
        idle.put(&s1, None, conn().await);
        let held: Vec<u32> = idle.0.lock().unwrap().keys().copied().collect();
        assert_eq!(held, [1]);
    }
}
