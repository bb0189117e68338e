//! Data path (also used by health checks): one TCP + TLS connection to a
//! fleet server, bounded by the connect timeout.

use std::{sync::Arc, time::Duration};

use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::pool::Server;

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

/// Connects and completes the TLS handshake within `timeout`.
pub async fn connect(
    server: &Server,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, ConnectError> {
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
        TlsConnector::from(Arc::clone(tls))
            .connect(server.server_name.clone(), tcp)
            .await
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
