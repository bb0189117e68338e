//! Data path (also used by health checks): one TCP (+ TLS unless the pool
//! has `tls = false`) connection to a fleet server, bounded by the connect
//! timeout.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// A connection to a server: TLS, or plain TCP for `tls = false` pools.
#[derive(Debug)]
pub enum UpStream {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl AsyncRead for UpStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            UpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            UpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            UpStream::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            UpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

use crate::balance::Server;

/// Why a connection to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("resolve {addr}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("connect {addr}: {source}")]
    Tcp { addr: String, source: std::io::Error },
    #[error("TLS handshake with {addr}: {source}")]
    Tls { addr: String, source: std::io::Error },
    #[error("connect {addr}: timed out after {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
}

/// Connects and completes the TLS handshake (unless `tls` is None) within `timeout`.
pub async fn connect(
    server: &Server,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<UpStream, ConnectError> {
    let addr = server.def.addr();
    let fut = async {
        let mut addrs = tokio::net::lookup_host(&addr)
            .await
            .map_err(|e| ConnectError::Resolve {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let sock = addrs.next().ok_or_else(|| ConnectError::Resolve {
            addr: addr.clone(),
            reason: "no address".to_owned(),
        })?;
        let tcp = TcpStream::connect(sock).await.map_err(|source| ConnectError::Tcp {
            addr: addr.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(UpStream::Plain(tcp));
        };
        TlsConnector::from(tls)
            .connect(server.server_name.clone(), tcp)
            .await
            .map(|s| {
                let counter = match s.get_ref().1.handshake_kind() {
                    Some(rustls::HandshakeKind::Resumed) => &server.live().tls_resumed,
                    _ => &server.live().tls_full,
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                UpStream::Tls(Box::new(s))
            })
            .map_err(|source| ConnectError::Tls {
                addr: addr.clone(),
                source,
            })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout {
            addr: addr.clone(),
            timeout,
        }),
    }
}

/// A keep-alive connection to a fleet's web tier (`http` routes).
pub type IdleConn = hyper::client::conn::http1::SendRequest<hyper::body::Incoming>;

/// Idle keep-alive connections by server. Each list belongs to one server
/// object: a reload that gives a server a new address, SNI or TLS settings
/// makes a new object, and the old connections are dropped, not reused.
#[derive(Debug, Default)]
pub struct IdleConns(Mutex<HashMap<u32, Parked>>);

/// The server object a list belongs to, and its idle connections.
type Parked = (Weak<Server>, Vec<IdleConn>);

impl IdleConns {
    /// The most recently parked connection to `server`, if any.
    pub fn take(&self, server: &Arc<Server>) -> Option<IdleConn> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (owner, conns) = map.get_mut(&server.id)?;
        if !std::ptr::eq(owner.as_ptr(), Arc::as_ptr(server)) {
            map.remove(&server.id);
            return None;
        }
        conns.pop()
    }

    /// Parks a connection to `server` for the next request.
    pub fn put(&self, server: &Arc<Server>, conn: IdleConn) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map
            .entry(server.id)
            .or_insert_with(|| (Arc::downgrade(server), Vec::new()));
        if !std::ptr::eq(entry.0.as_ptr(), Arc::as_ptr(server)) {
            *entry = (Arc::downgrade(server), Vec::new());
        }
        entry.1.push(conn);
    }
}
