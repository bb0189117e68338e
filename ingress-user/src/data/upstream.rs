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
    Resolve {
        addr: String,
        reason: String,
        /// The errno behind a resolver's system error (EAI_SYSTEM), if any.
        errno: Option<i32>,
    },
    #[error("connect {addr}: {source}")]
    Tcp { addr: String, source: std::io::Error },
    #[error("TLS handshake with {addr}: {source}")]
    Tls { addr: String, source: std::io::Error },
    #[error("connect {addr}: timed out after {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
}

/// `errno`s that say the ingress itself is short of something (descriptors,
/// local ports, buffers, memory), not that the server is unreachable.
const LOCAL_ERRNOS: [i32; 6] = [
    libc::EMFILE,
    libc::ENFILE,
    libc::EADDRNOTAVAIL,
    libc::ENOBUFS,
    libc::ENOMEM,
    libc::EADDRINUSE,
];

impl ConnectError {
    /// Whether the failure is the ingress's own: out of descriptors, local
    /// ports, buffers or memory (also inside the resolver). Never counted
    /// against the server. Any other resolver failure (no such name, its
    /// DNS failing) is the server's: it is marked down like an unreachable one.
    pub fn is_local(&self) -> bool {
        match self {
            ConnectError::Tcp { source, .. } | ConnectError::Tls { source, .. } => {
                source.raw_os_error().is_some_and(|e| LOCAL_ERRNOS.contains(&e))
            }
            ConnectError::Resolve { errno, reason, .. } => {
                errno.is_some_and(|e| LOCAL_ERRNOS.contains(&e)) || reason.contains("Memory allocation failure")
            }
            ConnectError::Timeout { .. } => false,
        }
    }
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
                errno: e.raw_os_error(),
            })?;
        let sock = addrs.next().ok_or_else(|| ConnectError::Resolve {
            addr: addr.clone(),
            reason: "no address".to_owned(),
            errno: None,
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
pub type IdleConn = hyper::client::conn::http1::SendRequest<super::exchange::UpBody>;

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
