//! Talking to the daemon and the fleets on the wire, for assertions: plain
//! and TLS requests as raw bytes, WebSocket upgrade heads and cookies, one
//! echo round trip.

use std::{net::SocketAddr, sync::Arc, time::Duration};

pub use testbed::http::parse_response;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{Ingress, blocking};

/// How long a raw exchange may read before it takes what it has.
const READ: Duration = Duration::from_secs(10);

/// Plain HTTP GET; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_owned();
    blocking(move || testbed::http::get(None, addr, &path, READ)).await
}

/// Sends raw bytes over plain TCP and reads until the server closes (10 s max).
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(READ, s.read_to_end(&mut out)).await;
    out
}

/// A TLS connection to the ingress (SNI `localhost`).
pub async fn tls_connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// TLS connect to the ingress and send raw request bytes; returns the raw answer
/// (read until the server closes, 10 s max).
pub async fn https_raw(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, request: &[u8]) -> Vec<u8> {
    let mut s = tls_connect(addr, tls).await;
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(READ, s.read_to_end(&mut out)).await;
    out
}

/// Reads one answer with a `Content-Length` body off a kept-alive
/// connection: its status and its bytes (10 s max).
pub async fn read_answer<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (u16, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    return;
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(READ, read).await;
    (parse_response(&got).0, got)
}

/// A WebSocket upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Sends an upgrade over a new TLS connection with `cookie` (after a
/// `theme=dark` cookie of the client's own); returns the response head (the
/// call is then dropped).
pub async fn upgrade_head(
    ingress: &Ingress,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    cookie: Option<&str>,
) -> String {
    let tcp = tokio::net::TcpStream::connect(ingress.https).await.unwrap();
    upgrade_on(tcp, tls, path, cookie).await.0
}

/// A WebSocket upgrade over `tcp` (TLS, SNI `localhost`): the answer's head
/// (and whatever came with it) and the stream, still open.
pub async fn upgrade_on(
    tcp: tokio::net::TcpStream,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    cookie: Option<&str>,
) -> (String, tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
    let cookie = cookie
        .map(|c| format!("Cookie: theme=dark; {c}\r\n"))
        .unwrap_or_default();
    let req = upgrade_request(path).replace("Host: localhost\r\n", &format!("Host: localhost\r\n{cookie}"));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("answer")
            .unwrap();
        assert!(n > 0, "closed before the head: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    (String::from_utf8_lossy(&buf).into_owned(), s)
}

pub fn set_cookie(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
}

/// Sends one text message and expects it back within 5 s.
pub async fn echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(text)).await.map_err(|e| format!("send: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => Ok(()),
        other => Err(format!("no echo: {other:?}")),
    }
}
