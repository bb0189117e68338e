//! A WSS call client (used by `wscall`, the tests and the benchmarks): TCP,
//! TLS with a given CA (or none), then a WebSocket handshake.

use std::{net::SocketAddr, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_tungstenite::{WebSocketStream, tungstenite};

/// A WebSocket over TLS over TCP.
pub type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A client TLS config trusting only `ca_pem`.
pub fn tls_config(ca_pem: &str) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let cfg = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Why a call could not be set up: the HTTP status when the server answered one.
#[derive(Debug)]
pub enum CallError {
    Status(u16, String),
    Other(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Status(s, body) => write!(f, "HTTP {s}: {body}"),
            CallError::Other(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for CallError {}

impl CallError {
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status(s, _) => Some(*s),
            CallError::Other(_) => None,
        }
    }
}

/// Opens `wss://{host}{path}` on `addr`; `host` is the SNI and Host header.
pub async fn connect(addr: SocketAddr, host: &str, path: &str, tls: Arc<ClientConfig>) -> Result<Wss, CallError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| CallError::Other(format!("connect {addr}: {e}")))?;
    connect_on(tcp, host, path, tls).await
}

/// [`connect`] over a TCP connection already made (e.g. from another network namespace).
pub async fn connect_on(tcp: TcpStream, host: &str, path: &str, tls: Arc<ClientConfig>) -> Result<Wss, CallError> {
    let addr = tcp.peer_addr().map_err(|e| CallError::Other(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_owned()).map_err(|e| CallError::Other(e.to_string()))?;
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| CallError::Other(format!("TLS: {e}")))?;
    let url = format!("wss://{host}:{}{path}", addr.port());
    match tokio_tungstenite::client_async(url, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err(CallError::Status(status, body))
        }
        Err(e) => Err(CallError::Other(e.to_string())),
    }
}
