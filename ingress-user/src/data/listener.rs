//! Data path: the client-facing listeners. `:443` accepts, caps concurrent
//! connections, completes TLS and reads the request head under one
//! deadline, then routes; `:80` forwards ACME HTTP-01 challenges and answers
//! everything else 404.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, watch},
    time::Instant,
};
use tokio_rustls::TlsAcceptor;

use super::{
    DataCtx, calllog, forward, http,
    http1::{self, HeadError, HeadLimits},
    target, tunnel, upgrade,
};
use crate::model::{
    RouteKind,
    route::{CallKeys, Target},
};

/// Accepts until `stop` turns true. `tls` false serves the plain HTTP front.
pub async fn serve(listener: TcpListener, shared: Arc<DataCtx>, tls: bool, mut stop: watch::Receiver<bool>) {
    let kind = if tls { "https" } else { "http" };
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: refuse by not accepting for a moment; live calls are unaffected.
                shared.metrics.refuse("accept_error");
                tracing::warn!(listener = kind, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = shared.connection_slot_for(&peer) else {
            shared.metrics.refuse("max_connections");
            drop(tcp);
            continue;
        };
        shared.metrics.accept(kind);
        let _ = tcp.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let local_port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        if tls {
            let acceptor = TlsAcceptor::from(shared.tls.load_full());
            // Counted from accept on: a stopping process waits for it.
            let setup = shared.count_setup();
            tokio::spawn(handle_https(tcp, peer, local_port, shared, acceptor, (permit, setup)));
        } else {
            tokio::spawn(handle_http(tcp, peer, shared, permit));
        }
    }
}

fn limits(shared: &DataCtx) -> (HeadLimits, Duration) {
    let rt = shared.runtime.load();
    (
        HeadLimits {
            max_bytes: rt.limits.max_header_bytes,
            max_headers: rt.limits.max_headers,
        },
        rt.limits.header_timeout.0,
    )
}

/// Answers a head that could not be read, or just closes.
async fn refuse_head<S: AsyncWrite + Unpin>(io: &mut S, shared: &DataCtx, peer: SocketAddr, err: &HeadError) {
    let (status, reason) = match err {
        HeadError::TooLarge(_) => (Some(431), "header_too_large"),
        HeadError::TooManyHeaders(_) => (Some(431), "too_many_headers"),
        HeadError::Malformed(_) => (Some(400), "malformed"),
        HeadError::Timeout { bytes: 0 } => (None, "header_timeout_idle"),
        HeadError::Timeout { .. } => (Some(408), "header_timeout"),
        HeadError::Closed { .. } | HeadError::Io(_) => (None, "client_closed"),
    };
    shared.metrics.bad_request(reason);
    if let Some(status) = status {
        refuse(io, shared, peer, (status, reason), &err.to_string()).await;
    }
}

/// Answers a request the ingress refuses itself: counted by status,
/// logged (rate-limited) with its reason.
async fn refuse<S: AsyncWrite + Unpin>(
    io: &mut S,
    shared: &DataCtx,
    peer: SocketAddr,
    (status, reason): (u16, &str),
    why: &str,
) {
    calllog::refused(shared, peer, status, reason, why);
    http1::respond(io, status, why, &[]).await;
}

async fn handle_https(
    tcp: TcpStream,
    peer: SocketAddr,
    local_port: u16,
    shared: Arc<DataCtx>,
    acceptor: TlsAcceptor,
    (permit, setup): (OwnedSemaphorePermit, super::Counted),
) {
    // `setup` counts the connection until it is a call (counted from its
    // 101 on) or an http route's connection.
    let started = std::time::Instant::now();
    let (limits, header_timeout) = limits(&shared);
    let deadline = Instant::now() + header_timeout;
    // The stream and every phase before the tunnel are boxed: a call's task
    // then holds only what the tunnel needs for as long as the call lasts,
    // not the largest state of the handshake or the head parsing.
    let mut tls = match tokio::time::timeout_at(deadline, Box::pin(acceptor.accept(tcp))).await {
        Ok(Ok(s)) => Box::new(s),
        Ok(Err(e)) => {
            shared.metrics.tls_error(tls_reason(&e));
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.metrics.tls_error("timeout");
            return;
        }
    };
    shared.metrics.tls_handshakes.inc();
    let front = calllog::Front::of(tls.get_ref().1, started.elapsed());
    shared.metrics.tls_handshake.observe(front.handshake.as_secs_f64());
    let mut head = match Box::pin(http1::read_request(
        &mut tls,
        BytesMut::with_capacity(2048),
        limits,
        deadline,
    ))
    .await
    {
        Ok(h) => h,
        Err(e) => {
            refuse_head(&mut tls, &shared, peer, &e).await;
            return;
        }
    };
    if let Err(why) = target::settle(&mut head) {
        shared.metrics.bad_request("target");
        refuse(&mut tls, &shared, peer, (400, "target"), why).await;
        return;
    }
    let rt = shared.runtime.load_full();
    let host = head.header_str("host").map(str::to_owned);
    match rt.routes.lookup(&head.target, host.as_deref()) {
        Target::Health => {
            // Leaving the group: a VRRP peer's tracked check sees it first.
            let (code, body) = if shared.is_withdrawn() {
                (503, "leaving")
            } else {
                (200, "ok")
            };
            shared.metrics.response(code);
            let reason = if code == 200 { "OK" } else { "Service Unavailable" };
            let bytes = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(bytes.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
        Target::NotFound => {
            refuse(&mut tls, &shared, peer, (404, "no_route"), "not found").await;
        }
        Target::Pool { route, pool, params } => {
            let is_http = rt.routes.routes[route].kind == RouteKind::Http;
            if is_http && head.header("upgrade").is_none() {
                if let Some(why) = http::smuggling_error(&head) {
                    shared.metrics.bad_request("smuggling");
                    refuse(&mut tls, &shared, peer, (400, "smuggling"), why).await;
                    return;
                }
                drop((params, setup));
                http::serve(Arc::clone(&shared), tls, head, (peer, local_port, front), permit).await;
                return;
            }
            if let Some(why) = http1::websocket_upgrade_error(&head) {
                shared.metrics.bad_request("not_websocket");
                refuse(&mut tls, &shared, peer, (400, "not_websocket"), why).await;
                return;
            }
            let keys = CallKeys::of(&head.target, &params, &rt.pools[pool].hash_key);
            let route_path = rt.routes.routes[route].path.clone();
            let call = upgrade::Call {
                peer,
                local_port,
                route: &route_path,
                bot_id: keys.bot_id.as_deref(),
                hash_key: keys.hash_key.as_deref(),
                started,
                front,
            };
            upgrade::forward(Arc::clone(&shared), Arc::clone(&rt), pool, tls, head, call, permit).await;
        }
    }
}

fn tls_reason(e: &std::io::Error) -> &'static str {
    let s = e.to_string();
    if s.contains("ProtocolVersion") || s.contains("protocol version") || s.contains("UnsupportedVersion") {
        "protocol_version"
    } else if s.contains("NoCertificatesPresented")
        || s.contains("no server certificate")
        || s.contains("NoCertificate")
    {
        "no_certificate"
    } else if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "eof"
    } else if s.contains("InvalidMessage") || s.contains("corrupt") || s.contains("invalid") {
        "invalid_message"
    } else {
        "other"
    }
}

const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

async fn handle_http(mut tcp: TcpStream, peer: SocketAddr, shared: Arc<DataCtx>, _permit: OwnedSemaphorePermit) {
    let (limits, header_timeout) = limits(&shared);
    let deadline = Instant::now() + header_timeout;
    let mut head = match http1::read_request(&mut tcp, BytesMut::with_capacity(1024), limits, deadline).await {
        Ok(h) => h,
        Err(e) => {
            refuse_head(&mut tcp, &shared, peer, &e).await;
            return;
        }
    };
    // The prefix is checked on the path the responder will read.
    if let Err(why) = target::settle(&mut head) {
        shared.metrics.bad_request("target");
        refuse(&mut tcp, &shared, peer, (400, "target"), why).await;
        return;
    }
    if !head.target.starts_with(ACME_PREFIX) {
        refuse(&mut tcp, &shared, peer, (404, "not_acme"), "not found").await;
        return;
    }
    let rt = shared.runtime.load_full();
    let connect = tokio::time::timeout(rt.timeouts.connect.0, TcpStream::connect(rt.acme_upstream.as_str())).await;
    let mut up = match connect {
        Ok(Ok(s)) => s,
        _ => {
            shared.metrics.response(502);
            http1::respond(&mut tcp, 502, "ACME responder is not running", &[]).await;
            return;
        }
    };
    shared.metrics.acme_forwarded.inc();
    let request = forward::upstream_request(&head, peer.ip(), "http", 80);
    if up.write_all(&request).await.is_err() || up.write_all(&head.rest).await.is_err() {
        shared.metrics.response(502);
        http1::respond(&mut tcp, 502, "ACME responder closed", &[]).await;
        return;
    }
    let idle = rt.timeouts.upgrade_response.0;
    let stats = tunnel::run(tcp, up, idle, std::future::pending(), None).await;
    tracing::info!(target: "acme", %peer, path = %head.target, bytes = stats.to_client, "ACME challenge forwarded");
}

/// Binds every address of a listener list.
pub async fn bind_all(addrs: &[SocketAddr]) -> std::io::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for a in addrs {
        let sock = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            let s = tokio::net::TcpSocket::new_v6()?;
            // `[::]:443` beside `0.0.0.0:443` (net.ipv6.bindv6only = 0 by default).
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv6V6Only, &true)?;
            s
        };
        sock.set_reuseaddr(true)?;
        sock.bind(*a)
            .map_err(|e| std::io::Error::new(e.kind(), format!("bind {a}: {e}")))?;
        out.push(sock.listen(4096)?);
    }
    Ok(out)
}
