//! Data path (also used by health checks): one TCP (+ TLS unless the pool
//! has `tls = false`) connection to a fleet server, bounded by the connect
//! timeout.

use std::{
    pin::Pin,
    sync::Arc,
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
    /// The error as `local` (the ingress's own, see [`Self::is_local`]) or
    /// as `server` (the server's), with its message.
    pub fn by_blame<T>(self, local: impl FnOnce(String) -> T, server: impl FnOnce(String) -> T) -> T {
        if self.is_local() {
            local(self.to_string())
        } else {
            server(self.to_string())
        }
    }

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
                let conn = s.get_ref().1;
                let version = usize::from(conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2));
                let kind = usize::from(conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed));
                server.live().tls_handshakes[version][kind].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
