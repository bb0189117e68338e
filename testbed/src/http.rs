//! Bounded blocking HTTP/1.1 exchanges (`Connection: close`, read until the
//! peer closes or the time is up) over TCP, optionally from inside a network
//! namespace, and over unix sockets: the one client under the admin and
//! fleet-control clients. Control path of the harness only.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::netns;

/// Status and body of a raw HTTP/1.1 response (status 0 when there is none).
pub fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A `Connection: close` request with a JSON body (`Content-Length: 0` when empty).
pub fn request(method: &str, host: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Writes `req`, then reads until the peer closes or `limit` has passed
/// since the call; whatever arrived by then.
pub fn exchange<S: Read + Write>(
    s: &mut S,
    set_timeout: impl Fn(&S, Duration) -> std::io::Result<()>,
    req: &[u8],
    limit: Duration,
) -> std::io::Result<Vec<u8>> {
    let deadline = Instant::now() + limit;
    s.write_all(req)?;
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || set_timeout(s, left).is_err() {
            break;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(out)
}

/// One request over TCP to `addr` (connect and answer bounded by `limit`); the raw answer.
pub fn tcp_raw(addr: SocketAddr, req: &[u8], limit: Duration) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, limit).with_context(|| format!("connect {addr}"))?;
    exchange(&mut s, |s, d| s.set_read_timeout(Some(d)), req, limit).with_context(|| format!("write to {addr}"))
}

/// `GET path` over TCP, from inside `netns` when given; status and body.
pub fn get(netns: Option<&str>, addr: SocketAddr, path: &str, limit: Duration) -> anyhow::Result<(u16, String)> {
    let req = request("GET", &addr.to_string(), path, "");
    let raw = match netns {
        None => tcp_raw(addr, req.as_bytes(), limit)?,
        Some(ns) => netns::try_run_in(ns, move || tcp_raw(addr, req.as_bytes(), limit))??,
    };
    Ok(parse_response(&raw))
}

/// One request over the unix socket `socket`; status and body.
pub fn unix(socket: &Path, method: &str, path: &str, body: &str, limit: Duration) -> anyhow::Result<(u16, String)> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).with_context(|| format!("{}", socket.display()))?;
    let req = request(method, "admin", path, body);
    let raw = exchange(&mut s, |s, d| s.set_read_timeout(Some(d)), req.as_bytes(), limit)
        .with_context(|| format!("write to {}", socket.display()))?;
    Ok(parse_response(&raw))
}
