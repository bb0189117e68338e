//! Data path: just enough HTTP/1.1 for an upgrade proxy. Reads a request or
//! response head with bounds (bytes, header count, deadline), validates a
//! WebSocket upgrade, and writes short local answers. Bodies and frames are
//! never parsed here.

use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::Instant,
};

use crate::balance::select::cookie;

/// Why a head could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("head larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {0} header lines")]
    TooManyHeaders(usize),
    #[error("malformed head: {0}")]
    Malformed(String),
    #[error("timed out after {bytes} bytes")]
    Timeout { bytes: usize },
    #[error("connection closed after {bytes} bytes")]
    Closed { bytes: usize },
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Bounds for reading a head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_bytes: usize,
    pub max_headers: usize,
}

/// A parsed request head; `rest` holds bytes read past it.
#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    pub rest: BytesMut,
}

impl RequestHead {
    /// First value of a header, case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// Whether a comma-separated header holds `token` (case-insensitive), in any of its lines.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// A parsed response head; `raw` is the head exactly as received.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub raw: BytesMut,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub rest: BytesMut,
}

async fn read_more<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut, deadline: Instant) -> Result<(), HeadError> {
    let bytes = buf.len();
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(4096);
    }
    match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
        Err(_) => Err(HeadError::Timeout { bytes }),
        Ok(Ok(0)) => Err(HeadError::Closed { bytes }),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(HeadError::Io(e)),
    }
}

fn map_parse_error(e: httparse::Error, limits: HeadLimits) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders(limits.max_headers),
        other => HeadError::Malformed(other.to_string()),
    }
}

/// Whether bytes from `from` on may end a head (`\n\n` or `\n\r\n`,
/// looking 2 bytes back so a terminator split across reads is seen).
fn may_end_head(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(2)..];
    #[cfg(test)]
    EXAMINED.with(|p| p.set(p.get() + tail.len()));
    tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
}

/// Reads until `parse` finds a complete head in the buffer. `parse` runs on
/// the first bytes (to refuse junk at once) and after that only when new
/// bytes may end the head, so a trickled head costs linear time, not a
/// re-parse of everything per read. Past `max_bytes` without an end: too large.
async fn read_head<S, T>(
    io: &mut S,
    buf: &mut BytesMut,
    limits: HeadLimits,
    deadline: Instant,
    mut parse: impl FnMut(&mut BytesMut) -> Result<Option<T>, HeadError>,
) -> Result<T, HeadError>
where
    S: AsyncRead + Unpin,
{
    // Bytes already looked at for a head's end (None: nothing parsed yet).
    let mut scanned: Option<usize> = None;
    loop {
        if scanned.is_none_or(|from| may_end_head(buf, from))
            && let Some(head) = parse(buf)?
        {
            return Ok(head);
        }
        scanned = Some(buf.len());
        if buf.len() >= limits.max_bytes {
            return Err(HeadError::TooLarge(limits.max_bytes));
        }
        read_more(io, buf, deadline).await?;
    }
}

#[cfg(test)]
thread_local! {
    /// Head bytes this thread has looked at, scanning or parsing (to see
    /// that a trickled head costs linear time).
    static EXAMINED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Reads a request head that must be complete before `deadline`.
pub async fn read_request<S: AsyncRead + Unpin>(
    io: &mut S,
    mut buf: BytesMut,
    limits: HeadLimits,
    deadline: Instant,
) -> Result<RequestHead, HeadError> {
    read_head(io, &mut buf, limits, deadline, |buf| {
        #[cfg(test)]
        EXAMINED.with(|p| p.set(p.get() + buf.len()));
        let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                if len > limits.max_bytes {
                    return Err(HeadError::TooLarge(limits.max_bytes));
                }
                let head = RequestHead {
                    method: req.method.unwrap_or_default().to_owned(),
                    target: req.path.unwrap_or_default().to_owned(),
                    minor_version: req.version.unwrap_or(1),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_owned(), h.value.to_vec()))
                        .collect(),
                    rest: BytesMut::new(),
                };
                buf.advance(len);
                Ok(Some(RequestHead {
                    rest: std::mem::take(buf),
                    ..head
                }))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(map_parse_error(e, limits)),
        }
    })
    .await
}

/// Interim (1xx) answers skipped before a final one, at most.
const MAX_INTERIM: usize = 8;

/// Reads a final response head within `timeout`: interim answers (100,
/// 103, …; never 101, which is final for an upgrade) are skipped.
pub async fn read_response<S: AsyncRead + Unpin>(
    io: &mut S,
    limits: HeadLimits,
    timeout: Duration,
) -> Result<ResponseHead, HeadError> {
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(2048);
    let mut interim = 0;
    loop {
        let mut skipped = false;
        let head = read_head(io, &mut buf, limits, deadline, |buf| {
            let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf) {
                Ok(httparse::Status::Complete(len))
                    if (100..200).contains(&resp.code.unwrap_or(0)) && resp.code != Some(101) =>
                {
                    let _ = buf.split_to(len);
                    skipped = true;
                    // Done with this head; the loop reads the next one.
                    Ok(Some(None))
                }
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    let mut content_length = None;
                    let mut chunked = false;
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            content_length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = String::from_utf8_lossy(h.value)
                                .to_ascii_lowercase()
                                .contains("chunked");
                        }
                    }
                    let rest = buf.split_off(len);
                    Ok(Some(Some(ResponseHead {
                        status,
                        raw: std::mem::take(buf),
                        content_length,
                        chunked,
                        rest,
                    })))
                }
                Ok(httparse::Status::Partial) => Ok(None),
                Err(e) => Err(map_parse_error(e, limits)),
            }
        })
        .await?;
        if let Some(head) = head {
            return Ok(head);
        }
        if skipped {
            interim += 1;
            if interim > MAX_INTERIM {
                return Err(HeadError::Malformed(format!("more than {MAX_INTERIM} interim answers")));
            }
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` header(s).
pub fn cookie_value(head: &RequestHead, name: &str) -> Option<String> {
    head.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .find_map(|v| cookie::value_in(v, name).map(str::to_owned))
}

/// Removes cookie `name` from the request (the server never sees the ingress's own cookie).
pub fn remove_cookie(head: &mut RequestHead, name: &str) {
    for (n, v) in head.headers.iter_mut() {
        if n.eq_ignore_ascii_case("cookie") {
            *v = cookie::without(&String::from_utf8_lossy(v), name).into_bytes();
        }
    }
    head.headers
        .retain(|(n, v)| !(n.eq_ignore_ascii_case("cookie") && v.is_empty()));
}

/// A response head with one more `Set-Cookie` line.
pub fn with_set_cookie(raw: &[u8], name: &str, value: &str) -> Vec<u8> {
    // Drop the blank line that ends the head, keeping the last header's
    // line end (CRLF, or a bare LF from a lenient fleet).
    let end = if raw.ends_with(b"\r\n\r\n") {
        raw.len() - 2
    } else if raw.ends_with(b"\n\n") {
        raw.len() - 1
    } else {
        raw.len().saturating_sub(2)
    };
    let mut out = Vec::with_capacity(raw.len() + 64);
    out.extend_from_slice(&raw[..end]);
    out.extend_from_slice(format!("Set-Cookie: {}\r\n\r\n", cookie::set_cookie(name, value)).as_bytes());
    out
}

/// Why a request on a WebSocket route is not a valid upgrade (answered 400).
pub fn websocket_upgrade_error(head: &RequestHead) -> Option<&'static str> {
    if head.method != "GET" {
        return Some("a WebSocket upgrade must be a GET");
    }
    if head.minor_version != 1 {
        return Some("a WebSocket upgrade needs HTTP/1.1");
    }
    if !head.header_has_token("upgrade", "websocket") {
        return Some("missing `Upgrade: websocket`");
    }
    if !head.header_has_token("connection", "upgrade") {
        return Some("missing `Connection: Upgrade`");
    }
    if head.header_str("sec-websocket-version") != Some("13") {
        return Some("`Sec-WebSocket-Version` must be 13");
    }
    let key_ok = head
        .header_str("sec-websocket-key")
        .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
        .is_some_and(|k| k.len() == 16);
    if !key_ok {
        return Some("`Sec-WebSocket-Key` must be 16 bytes in base64");
    }
    if head.header("content-length").is_some() || head.header("transfer-encoding").is_some() {
        return Some("a WebSocket upgrade carries no body");
    }
    None
}

/// Reason phrase for the statuses the ingress answers itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// A complete local answer with `Connection: close`.
pub fn local_response(status: u16, body: &str, extra_headers: &[(&str, String)]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len() + 1
    );
    for (k, v) in extra_headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.push('\n');
    out.into_bytes()
}

/// Writes a local answer and shuts the write side down (TLS close_notify).
pub async fn respond<S: AsyncWrite + Unpin>(io: &mut S, status: u16, body: &str, extra: &[(&str, String)]) {
    send_and_close(io, &local_response(status, body, extra)).await;
}

/// Writes a whole answer and closes, within [`ANSWER_WRITE`]: a client that
/// does not read holds nothing for long.
pub async fn send_and_close<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8]) {
    let _ = tokio::time::timeout(ANSWER_WRITE, async {
        let _ = io.write_all(bytes).await;
        let _ = io.shutdown().await;
    })
    .await;
}

/// How long an answer that ends a connection may take to write.
const ANSWER_WRITE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeadLimits {
        HeadLimits {
            max_bytes: 1024,
            max_headers: 8,
        }
    }

    async fn parse(bytes: &[u8]) -> Result<RequestHead, HeadError> {
        let mut io = bytes;
        read_request(
            &mut io,
            BytesMut::new(),
            limits(),
            Instant::now() + Duration::from_secs(1),
        )
        .await
    }

    const UPGRADE: &[u8] = b"GET /ws/bot1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Forwarded-For: 6.6.6.6\r\n\r\nEXTRA";

    #[test]
    fn set_cookie_goes_on_a_line_of_its_own_after_a_bare_lf_head() {
        let out = with_set_cookie(b"HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\n\n", "S", "x1");
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nSet-Cookie: S=x1; Path=/; HttpOnly\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn sticky_cookie_is_read_stripped_and_set() {
        let req =
            String::from_utf8_lossy(UPGRADE).replace("Host: x\r\n", "Host: x\r\nCookie: a=1; SERVERID=abc; b=2\r\n");
        let mut head = parse(req.as_bytes()).await.unwrap();
        assert_eq!(cookie_value(&head, "SERVERID").as_deref(), Some("abc"));
        remove_cookie(&mut head, "SERVERID");
        assert_eq!(head.header_str("cookie"), Some("a=1; b=2"));
        let resp = with_set_cookie(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "SERVERID",
            "x1",
        );
        assert!(resp.ends_with(b"Upgrade: websocket\r\nSet-Cookie: SERVERID=x1; Path=/; HttpOnly\r\n\r\n"));
    }

    #[tokio::test]
    async fn invalid_upgrades_say_why() {
        let plain = parse(b"GET /ws/x HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert!(websocket_upgrade_error(&plain).unwrap().contains("Upgrade"));
        let bad_key = String::from_utf8_lossy(UPGRADE).replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
        let head = parse(bad_key.as_bytes()).await.unwrap();
        assert!(websocket_upgrade_error(&head).unwrap().contains("Sec-WebSocket-Key"));
        let http10 = String::from_utf8_lossy(UPGRADE).replace("HTTP/1.1", "HTTP/1.0");
        let head = parse(http10.as_bytes()).await.unwrap();
        assert!(websocket_upgrade_error(&head).unwrap().contains("HTTP/1.1"));
    }

    /// A reader that yields one byte per read.
    struct Trickle<'a>(&'a [u8]);

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some((first, rest)) = self.0.split_first() {
                buf.put_slice(&[*first]);
                self.0 = rest;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_trickled_head_is_parsed_in_linear_time() {
        let lines: String = (0..90).map(|i| format!("X-{i}: {}\r\n", "v".repeat(80))).collect();
        let wire = format!("GET /ws/x HTTP/1.1\r\nHost: x\r\n{lines}\r\n");
        let limits = HeadLimits {
            max_bytes: 16_384,
            max_headers: 100,
        };
        EXAMINED.with(|p| p.set(0));
        let head = read_request(
            &mut Trickle(wire.as_bytes()),
            BytesMut::new(),
            limits,
            Instant::now() + Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(head.headers.len(), 91);
        let examined = EXAMINED.with(std::cell::Cell::get);
        assert!(
            examined <= 5 * wire.len(),
            "{examined} bytes looked at for a {} byte head read a byte at a time",
            wire.len()
        );
        // A terminator split across reads, and a bare-LF head, are still seen.
        let head = read_request(
            &mut Trickle(b"GET / HTTP/1.1\nHost: x\n\n"),
            BytesMut::new(),
            limits,
            Instant::now() + Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(head.header_str("host"), Some("x"));
        let resp = read_response(
            &mut Trickle(b"HTTP/1.1 103 Early\r\n\r\nHTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n\r\nframe"),
            limits,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 101);
    }

    #[tokio::test]
    async fn limits_are_enforced() {
        let many: String = (0..20).map(|i| format!("X-{i}: v\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(req.as_bytes()).await, Err(HeadError::TooManyHeaders(8))));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert!(matches!(parse(big.as_bytes()).await, Err(HeadError::TooLarge(1024))));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost").await,
            Err(HeadError::Closed { bytes: 20 })
        ));
        assert!(matches!(
            parse(b"\x16\x03\x01garbage\r\n\r\n").await,
            Err(HeadError::Malformed(_))
        ));
    }
}
