//! Data path: routes of kind `http`. Ordinary requests are proxied with
//! keep-alive on both sides (hyper), bodies streamed, `X-Forwarded-*` set,
//! hop-by-hop headers dropped, upstream connections pooled per server. The
//! front has already read the first head; it is replayed into hyper. A
//! WebSocket upgrade later on the connection becomes a call like any other.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::OwnedSemaphorePermit,
};

use super::{DataCtx, calllog::Front, exchange, forward, http1::RequestHead, keepalive, target, tunnel, upgrade};
use crate::{
    balance::{Demand, Hints, select::cookie},
    model::{
        Balance, RouteKind,
        route::{CallKeys, Target},
    },
    snapshot::Runtime,
};

type Body = Either<exchange::ParkOnEnd, Full<Bytes>>;

/// Why a request head is refused before proxying (request smuggling guards).
pub fn smuggling_error(head: &RequestHead) -> Option<&'static str> {
    let lengths: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let has_te = head.header("transfer-encoding").is_some();
    if has_te && !lengths.is_empty() {
        return Some("both Content-Length and Transfer-Encoding");
    }
    if lengths.iter().any(|l| l.parse::<u64>().is_err()) {
        return Some("a Content-Length that is not a number");
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return Some("conflicting Content-Length values");
    }
    if has_te
        && !head
            .header_str("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().trim_end().ends_with("chunked"))
    {
        return Some("a Transfer-Encoding that does not end in chunked");
    }
    None
}

fn replay(head: &RequestHead) -> Bytes {
    let mut out = Vec::with_capacity(512 + head.rest.len());
    out.extend_from_slice(format!("{} {} HTTP/1.{}\r\n", head.method, head.target, head.minor_version).as_bytes());
    for (n, v) in &head.headers {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&head.rest);
    Bytes::from(out)
}

/// Serves an `http` route's connection until the client closes it or its
/// keep-alive clock expires. `permit` is the connection's `max_connections`
/// slot: a later upgrade outlives this function (hyper hands its connection
/// over) and keeps a share of it until the call ends.
pub async fn serve<S>(
    shared: Arc<DataCtx>,
    io: S,
    head: RequestHead,
    (peer, local_port, front): (std::net::SocketAddr, u16, Front),
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = replay(&head);
    let limits = {
        let rt = shared.runtime.load();
        keepalive::ConnLimits {
            // The first head as replayed (CRLF line ends, a settled Host)
            // may be a little longer than the one the front accepted.
            max_header_bytes: rt.limits.max_header_bytes.max(first.len() - head.rest.len()),
            max_headers: rt.limits.max_headers,
            header_timeout: rt.limits.header_timeout.0,
            keepalive_idle: rt.timeouts.keepalive_idle.0,
        }
    };
    let permit = Arc::new(permit);
    let metrics_of = Arc::clone(&shared);
    let answer = move |req| {
        handle(
            Arc::clone(&shared),
            req,
            (peer, local_port, front.clone()),
            Arc::clone(&permit),
        )
    };
    if let Some(why) = keepalive::serve(io, first, limits, answer).await {
        metrics_of.metrics.keepalive_closed(why.reason());
    }
}

fn local(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(format!("{text}\n")))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

async fn handle(
    shared: Arc<DataCtx>,
    mut req: Request<Incoming>,
    (peer, local_port, front): (std::net::SocketAddr, u16, Front),
    permit: Arc<OwnedSemaphorePermit>,
) -> Response<Body> {
    let rt = shared.runtime.load_full();
    if let Err(why) = settle(&mut req) {
        shared.metrics.bad_request("target");
        super::calllog::refused(&shared, peer, 400, "target", why);
        return local(StatusCode::BAD_REQUEST, why);
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let (route, pool_index, hash_key, bot_id) = match rt.routes.lookup(&target, host.as_deref()) {
        Target::Pool { route, pool, params } if rt.routes.routes[route].kind == RouteKind::Http => {
            let keys = CallKeys::of(req.uri().path(), &params, &rt.pools[pool].hash_key);
            (route, pool, keys.hash_key, keys.bot_id)
        }
        Target::Health if shared.is_withdrawn() => return local(StatusCode::SERVICE_UNAVAILABLE, "leaving"),
        Target::Health => return local(StatusCode::OK, "ok"),
        _ => {
            super::calllog::refused(&shared, peer, 404, "no_route", "not found");
            return local(StatusCode::NOT_FOUND, "not found");
        }
    };
    if req.headers().contains_key(header::UPGRADE) {
        let call = LaterCall {
            route,
            pool: pool_index,
            hash_key,
            bot_id,
            peer,
            local_port,
            front,
            permit,
        };
        return later_upgrade(shared, rt, req, call).await;
    }
    let pool = Arc::clone(&rt.pools[pool_index]);
    let sticky = if pool.balance == Balance::Cookie {
        cookie_of(&req, &pool.cookie)
    } else {
        None
    };
    let hints = Hints {
        hash_key: hash_key.as_deref(),
        sticky: sticky.as_deref(),
        demand: Demand::Request,
    };
    let Some(lease) = pool.pick(&hints, &[]) else {
        pool.no_capacity_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared.metrics.response(503);
        let mut r = local(StatusCode::SERVICE_UNAVAILABLE, "no server has capacity");
        if let Ok(v) = HeaderValue::from_str(&rt.retry_after(pool_index).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    };
    // The request as the server sees it.
    let headers = req.headers_mut();
    for name in forward::connection_named(headers.get_all(header::CONNECTION).iter().map(|v| v.as_bytes())) {
        if forward::may_be_connection_named(&name) {
            headers.remove(name.as_str());
        }
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    let spoofed: Vec<_> = headers
        .keys()
        .filter(|n| forward::is_spoofable(n.as_str()))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
    if pool.balance == Balance::Cookie {
        strip_cookie(headers, &pool.cookie);
    }
    for (name, value) in forward::forwarded_headers(peer.ip(), "https", local_port) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    let server = Arc::clone(&lease.server);
    let to = exchange::Destination {
        idle: &shared.idle,
        server: &server,
        // The TLS config the connection is made with is also the key it is parked under.
        tls: pool.client_tls(&server),
        connect: rt.timeouts.connect.0,
        answer: rt.timeouts.upgrade_response.0,
    };
    let route_path = rt.routes.routes[route].path.clone();
    let started = std::time::Instant::now();
    let resp = match exchange::send(&to, req).await {
        Ok(r) => r,
        Err(exchange::Failure::Local(e)) => {
            shared.metrics.local_error("http");
            shared.metrics.response(503);
            return local(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("ingress out of resources: {e}"),
            );
        }
        Err(exchange::Failure::Unreachable(e)) => {
            server.passive_failure(&e);
            shared.changed.signal();
            shared.metrics.response(502);
            return local(StatusCode::BAD_GATEWAY, &format!("server unreachable: {e}"));
        }
        Err(exchange::Failure::Failed(e)) => {
            shared.metrics.response(502);
            return local(StatusCode::BAD_GATEWAY, &format!("server failed: {e}"));
        }
        Err(exchange::Failure::Timeout) => {
            shared.metrics.response(504);
            return local(StatusCode::GATEWAY_TIMEOUT, "server did not answer in time");
        }
    };
    let status = resp.status();
    shared.metrics.response(status.as_u16());
    tracing::info!(target: "call", route = %route_path, pool = %pool.name, server = server.name(), status = status.as_u16(),
        duration_ms = started.elapsed().as_millis() as u64, client = %peer, "http");
    let (mut parts, body) = resp.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    if pool.balance == Balance::Cookie
        && sticky.as_deref() != Some(server.cookie_id.as_str())
        && let Ok(v) = HeaderValue::from_str(&cookie::set_cookie(&pool.cookie, &server.cookie_id))
    {
        parts.headers.append(header::SET_COOKIE, v);
    }
    Response::from_parts(parts, Either::Left(body))
}

/// A later request made unambiguous as the front does the first
/// ([`target::settle`]): one Host, origin form, no dot segments.
fn settle(req: &mut Request<Incoming>) -> Result<(), target::Refusal> {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    let minor = u8::from(req.version() != http::Version::HTTP_10);
    if let Some(why) = target::host_error(hosts, minor) {
        return Err(why);
    }
    let written = req.uri().to_string();
    if target::is_settled(&written) {
        return Ok(());
    }
    let n = target::normalize(&written)?;
    *req.uri_mut() = n.origin.parse().map_err(|_| "an unusable request target")?;
    if let Some(authority) = n.authority {
        let v = HeaderValue::from_str(&authority).map_err(|_| "an unusable host")?;
        req.headers_mut().insert(header::HOST, v);
    }
    Ok(())
}

/// Buffer of the in-memory pipe of a later upgrade, each way.
const PIPE_BYTES: usize = 16 * 1024;

/// Where a later upgrade goes (from the route lookup).
struct LaterCall {
    route: usize,
    pool: usize,
    hash_key: Option<String>,
    bot_id: Option<String>,
    peer: std::net::SocketAddr,
    local_port: u16,
    front: Front,
    permit: Arc<OwnedSemaphorePermit>,
}

/// A WebSocket upgrade after other requests on a keep-alive connection. The
/// call goes through `proxy::forward` like a first-request upgrade (same
/// picking, retries, cookie, tunnel, metrics and call log), with an
/// in-memory pipe standing in for the carrier: the fleet's answer read from
/// the pipe becomes hyper's response, and after a 101 the pipe is spliced to
/// the upgraded connection (idle timeout and linger as any tunnel; the
/// connection's slot held until then). A refusal (503, 429, 502) leaves the
/// connection open for further requests.
async fn later_upgrade(
    shared: Arc<DataCtx>,
    rt: Arc<Runtime>,
    mut req: Request<Incoming>,
    call: LaterCall,
) -> Response<Body> {
    // A call on its way (and then its splice): a stopping process waits.
    let setup = shared.count_setup();
    let started = std::time::Instant::now();
    let head = RequestHead {
        method: req.method().as_str().to_owned(),
        target: req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        minor_version: u8::from(req.version() != http::Version::HTTP_10),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        rest: bytes::BytesMut::new(),
    };
    if let Some(why) = super::http1::websocket_upgrade_error(&head) {
        shared.metrics.bad_request("not_websocket");
        super::calllog::refused(&shared, call.peer, 400, "not_websocket", why);
        return local(StatusCode::BAD_REQUEST, why);
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    drop(req);
    let (mut carrier, pipe) = tokio::io::duplex(PIPE_BYTES);
    {
        let shared = Arc::clone(&shared);
        let rt = Arc::clone(&rt);
        tokio::spawn(async move {
            let route_path = rt.routes.routes[call.route].path.clone();
            let c = upgrade::Call {
                peer: call.peer,
                local_port: call.local_port,
                route: &route_path,
                bot_id: call.bot_id.as_deref(),
                hash_key: call.hash_key.as_deref(),
                started,
                front: call.front,
            };
            // The splice below holds the connection's slot.
            upgrade::forward(Arc::clone(&shared), Arc::clone(&rt), call.pool, pipe, head, c, ()).await;
        });
    }
    // The fleet's head within our limits, plus the `Set-Cookie` `forward` may add.
    let limits = super::http1::HeadLimits {
        max_bytes: rt.limits.max_header_bytes + 512,
        max_headers: rt.limits.max_headers + 1,
    };
    // `forward` always answers: its attempts are bounded by its own timeouts.
    let answer = match super::http1::read_response(&mut carrier, limits, std::time::Duration::from_secs(3600)).await {
        Ok(a) => a,
        Err(e) => return local(StatusCode::BAD_GATEWAY, &format!("no answer for the upgrade: {e}")),
    };
    let mut builder = Response::builder().status(answer.status);
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut parsed = httparse::Response::new(&mut headers);
    let framing = ["content-length", "transfer-encoding", "connection", "keep-alive"];
    if parsed.parse(&answer.raw).is_ok() {
        for h in parsed.headers.iter() {
            if answer.status == 101 || !framing.iter().any(|f| h.name.eq_ignore_ascii_case(f)) {
                builder = builder.header(h.name, h.value);
            }
        }
    }
    if answer.status != 101 {
        // A refusal: the whole answer follows, then `forward` closes its end.
        // hyper frames the body anew; the connection stays open.
        let mut body = answer.rest.to_vec();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut carrier, &mut body),
        )
        .await;
        if let Some(n) = answer.content_length {
            body.truncate(usize::try_from(n).unwrap_or(usize::MAX));
        } else if answer.chunked {
            body = dechunk(&body);
        }
        return builder
            .body(Either::Right(Full::new(Bytes::from(body))))
            .unwrap_or_else(|e| local(StatusCode::BAD_GATEWAY, &format!("unusable answer: {e}")));
    }
    let early = answer.rest.freeze();
    let (idle, permit) = (rt.timeouts.tunnel_idle.0, call.permit);
    tokio::spawn(async move {
        let _counted = (permit, setup);
        let Ok(upgraded) = on_upgrade.await else { return };
        let mut client = TokioIo::new(upgraded);
        if !early.is_empty() && tokio::io::AsyncWriteExt::write_all(&mut client, &early).await.is_err() {
            return;
        }
        // `forward` accounts for the call; this splice only has to end with it.
        let _ = tunnel::run(client, carrier, idle, std::future::pending(), None).await;
    });
    builder
        .body(Either::Right(Full::new(Bytes::new())))
        .unwrap_or_else(|e| local(StatusCode::BAD_GATEWAY, &format!("unusable answer: {e}")))
}

/// The payload of a complete chunked body (trailers dropped; a cut body
/// yields what arrived whole).
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size.filter(|&n| n > 0) else {
            return out;
        };
        rest = &rest[eol + 2..];
        let Some(chunk) = rest.get(..size) else {
            return out;
        };
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

fn cookie_of(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| cookie::value_in(v, name).map(str::to_owned))
}

fn strip_cookie(headers: &mut http::HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| cookie::without(v, name))
        .filter(|v| !v.is_empty())
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn dechunk_joins_chunks_and_stops_at_the_end_or_a_cut() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n1;x=y\r\n!\r\n0\r\nTrailer: t\r\n\r\n"),
            b"hello!"
        );
        assert_eq!(dechunk(b"5\r\nhello\r\n3\r\nab"), b"hello", "a cut chunk is left out");
        assert_eq!(dechunk(b"zz\r\nhello\r\n"), b"", "a bad size ends it");
        assert_eq!(dechunk(b""), b"");
    }
}
