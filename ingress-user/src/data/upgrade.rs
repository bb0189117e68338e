//! Data path: one WebSocket call. Pick a server, connect, send the upgrade,
//! and either tunnel after a 101 or relay the fleet's answer. Failures are
//! retried on another server only before anything reached the carrier; a
//! 429 is never rewritten; no capacity anywhere is a 503 at once.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    DataCtx,
    calllog::{CallLog, Front, Steps},
    forward,
    http1::{self, HeadError, HeadLimits, RequestHead},
    tunnel::{self, CloseReason, TunnelStats},
    upstream,
};
use crate::{
    balance::{Demand, Hints, Lease, Pool},
    model::{Balance, RetryOn},
    snapshot::Runtime,
};

/// Largest non-101 answer body held to relay or retry.
const MAX_ANSWER_BODY: usize = 64 * 1024;

/// A call as logged.
#[derive(Debug)]
pub struct Call<'a> {
    pub peer: SocketAddr,
    pub local_port: u16,
    pub route: &'a str,
    pub bot_id: Option<&'a str>,
    /// For `balance = "uri-hash"`: the key the pool hashes.
    pub hash_key: Option<&'a str>,
    pub started: Instant,
    /// The TLS connection it came on.
    pub front: Front,
}

/// One attempt's outcome.
enum Attempt<S> {
    /// 101: the server stream and the response head (with any bytes behind it).
    Upgraded(S, http1::ResponseHead),
    /// A complete non-101 answer.
    Answer { status: u16, bytes: Vec<u8> },
    /// Nothing usable; `RetryOn` says which kind of failure.
    Failed(RetryOn, String),
    /// A response that is not HTTP (not retried).
    BadResponse(String),
    /// The ingress could not make the connection itself (out of descriptors,
    /// ports, memory; resolver down): not the server's fault, not retried.
    Local(String),
}

async fn attempt(
    lease: &Lease,
    pool: &Pool,
    rt: &Runtime,
    request: &[u8],
    steps: &mut Steps,
) -> Attempt<upstream::UpStream> {
    let server = &lease.server;
    let began = Instant::now();
    let mut up = match upstream::connect(server, pool.client_tls(server), rt.timeouts.connect.0).await {
        Ok(s) => {
            steps.connect = began.elapsed();
            server.live().connect_latency.observe(steps.connect.as_secs_f64());
            s
        }
        Err(e) if e.is_local() => return Attempt::Local(e.to_string()),
        Err(e) => return Attempt::Failed(RetryOn::ConnFailure, e.to_string()),
    };
    // Only the head: whatever the client sent behind it waits for the 101
    // (RFC 6455 §4.1), so a fleet that answers otherwise and keeps the
    // connection never parses it as a request of its own.
    let write = async {
        up.write_all(request).await?;
        up.flush().await
    };
    let sent = Instant::now();
    if let Err(e) = write.await {
        return Attempt::Failed(RetryOn::ConnFailure, format!("sending the upgrade: {e}"));
    }
    let limits = HeadLimits {
        max_bytes: rt.limits.max_header_bytes,
        max_headers: rt.limits.max_headers,
    };
    let head = match http1::read_response(&mut up, limits, rt.timeouts.upgrade_response.0).await {
        Ok(h) => h,
        Err(HeadError::Closed { bytes: 0 }) => {
            return Attempt::Failed(RetryOn::EmptyResponse, "closed without answering".into());
        }
        Err(HeadError::Io(e)) => {
            return Attempt::Failed(RetryOn::EmptyResponse, format!("reset before answering: {e}"));
        }
        Err(HeadError::Timeout { .. }) => {
            return Attempt::Failed(RetryOn::ResponseTimeout, "no answer in time".into());
        }
        Err(e) => return Attempt::BadResponse(e.to_string()),
    };
    steps.answer = sent.elapsed();
    server.live().upgrade_latency.observe(steps.answer.as_secs_f64());
    server.live().answers.inc(head.status);
    if head.status == 101 {
        return Attempt::Upgraded(up, head);
    }
    let status = head.status;
    let mut bytes = head.raw.to_vec();
    let mut body = head.rest.to_vec();
    // No body after 204 or 304; a chunked one ends with its last chunk;
    // otherwise Content-Length, or (failing both) the connection's end.
    let want = if matches!(status, 204 | 304) {
        Some(0)
    } else {
        head.content_length.map(|n| n as usize)
    };
    let chunked = head.chunked && head.content_length.is_none();
    let read_body = async {
        let mut buf = [0u8; 4096];
        loop {
            if want.is_some_and(|w| body.len() >= w)
                || (chunked && body.ends_with(b"0\r\n\r\n"))
                || body.len() >= MAX_ANSWER_BODY
            {
                break;
            }
            match up.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(rt.timeouts.upgrade_response.0, read_body).await;
    if let Some(w) = want {
        body.truncate(w);
    }
    bytes.extend_from_slice(&body);
    Attempt::Answer { status, bytes }
}

/// Serves a validated upgrade on a route to `pool_index`.
///
/// After a 101 the tunnel runs in a task of its own, holding only what the
/// call needs from then on (and `hold`, e.g. the connection's slot, until
/// the call ends); this returns as soon as the fleet's answer is relayed.
pub async fn forward<C, H>(
    shared: Arc<DataCtx>,
    rt: Arc<Runtime>,
    pool_index: usize,
    mut client: C,
    head: RequestHead,
    call: Call<'_>,
    hold: H,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Send + 'static,
{
    let pool = Arc::clone(&rt.pools[pool_index]);
    let mut head = head;
    let sticky = (pool.balance == Balance::Cookie)
        .then(|| http1::cookie_value(&head, &pool.cookie))
        .flatten();
    if pool.balance == Balance::Cookie {
        http1::remove_cookie(&mut head, &pool.cookie);
    }
    let hints = Hints {
        hash_key: call.hash_key,
        sticky: sticky.as_deref(),
        demand: Demand::Call,
    };
    let request = forward::upstream_request(&head, call.peer.ip(), "https", call.local_port);
    let mut tried: Vec<u32> = Vec::new();
    let mut last_answer: Option<(u16, Vec<u8>)> = None;
    let mut last_failure: Option<(RetryOn, String)> = None;
    let mut local_failure: Option<String> = None;
    let mut attempts = 0u32;
    let mut server_name = String::from("-");
    let mut log = CallLog::new(
        call.bot_id.unwrap_or("-"),
        call.route,
        Arc::clone(&pool.name),
        call.started,
        call.peer,
        call.front,
    );
    loop {
        if attempts > pool.retries {
            break;
        }
        let Some(lease) = pool.pick(&hints, &tried) else {
            break;
        };
        // A `remove --now` or shutdown-sessions from now on ends this call too.
        let epoch = lease.server.end_epoch();
        attempts += 1;
        if attempts > 1 {
            pool.retries_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tried.push(lease.server.id);
        server_name = lease.server.name().to_owned();
        // Boxed: its read buffer is not kept in the call's task for the whole call.
        let mut steps = Steps::default();
        match Box::pin(attempt(&lease, &pool, &rt, &request, &mut steps)).await {
            Attempt::Upgraded(mut up, resp) => {
                // A call from its 101: a stopping process waits for it.
                let counted = shared.count_call();
                lease.server.call_upgraded();
                shared.changed.signal();
                let pinned =
                    pool.balance == Balance::Cookie && sticky.as_deref() != Some(lease.server.cookie_id.as_str());
                let head_out = if pinned {
                    http1::with_set_cookie(&resp.raw, &pool.cookie, &lease.server.cookie_id)
                } else {
                    resp.raw.to_vec()
                };
                let write = async {
                    client.write_all(&head_out).await?;
                    if !resp.rest.is_empty() {
                        client.write_all(&resp.rest).await?;
                    }
                    client.flush().await
                };
                // Bounded like the tunnel: a client that never reads holds nothing for long.
                let idle = rt.timeouts.tunnel_idle.0;
                shared.metrics.response(101);
                if !matches!(tokio::time::timeout(idle, write).await, Ok(Ok(()))) {
                    log.ended(
                        &shared,
                        attempts,
                        &server_name,
                        &TunnelStats::early(CloseReason::ClientError),
                    );
                    return;
                }
                log.routed(&shared, &server_name, attempts, steps);
                // The client's bytes behind its head, now that the fleet upgraded.
                let early = async {
                    if !head.rest.is_empty() {
                        up.write_all(&head.rest).await?;
                        up.flush().await?;
                    }
                    Ok::<_, std::io::Error>(())
                };
                if !matches!(tokio::time::timeout(idle, early).await, Ok(Ok(()))) {
                    log.ended(
                        &shared,
                        attempts,
                        &server_name,
                        &TunnelStats::early(CloseReason::ServerError),
                    );
                    return;
                }
                let call = Established {
                    idle: rt.timeouts.tunnel_idle.0,
                    frames: tunnel::Frames::after(&head.rest, &resp.rest),
                    epoch,
                    counted,
                    shared,
                    client,
                    up,
                    lease,
                    log,
                    attempts,
                    server_name,
                    hold,
                };
                tokio::spawn(call.run());
                return;
            }
            Attempt::Answer { status: 429, bytes } => {
                lease.server.saw_429();
                shared.changed.signal();
                last_answer = Some((429, bytes));
                if !pool.retries_on(RetryOn::TooManyRequests) {
                    break;
                }
            }
            Attempt::Answer { status, bytes } => {
                last_answer = Some((status, bytes));
                break;
            }
            Attempt::Failed(kind, reason) => {
                tracing::warn!(pool = %pool.name, server = %server_name, %reason, "upgrade attempt failed");
                if kind == RetryOn::ConnFailure {
                    lease.server.passive_failure(&reason);
                    shared.changed.signal();
                }
                last_failure = Some((kind, reason));
                if !pool.retries_on(kind) {
                    break;
                }
            }
            Attempt::Local(reason) => {
                // Not the fleet's fault: nothing is marked down. Another
                // fleet may still be reachable (local ports run out per
                // destination), so the retries go on.
                tracing::warn!(pool = %pool.name, server = %server_name, %reason, "the ingress is out of resources for a fleet connection");
                shared.metrics.local_error("call");
                local_failure = Some(reason);
                if !pool.retries_on(RetryOn::ConnFailure) {
                    break;
                }
            }
            Attempt::BadResponse(reason) => {
                // Junk or a cut head: nothing reached the carrier yet, so it is
                // retried like an empty response.
                tracing::warn!(pool = %pool.name, server = %server_name, %reason, "fleet sent a malformed response");
                last_failure = Some((RetryOn::EmptyResponse, reason));
                if !pool.retries_on(RetryOn::EmptyResponse) {
                    break;
                }
            }
        }
    }
    // Nothing reached the carrier yet: answer with the last real answer, or our own.
    let (status, reason) = if let Some((status, bytes)) = last_answer {
        pool.passed.inc(status);
        http1::send_and_close(&mut client, &bytes).await;
        (status, "answered")
    } else if let Some(reason) = local_failure {
        // Ours, not the fleets': say so, and never as "no fleet".
        http1::respond(
            &mut client,
            503,
            &format!("ingress out of resources: {reason}"),
            &[("Retry-After", "1".to_owned())],
        )
        .await;
        (503, "local_error")
    } else if let Some((kind, reason)) = last_failure {
        let status = if kind == RetryOn::ResponseTimeout { 504 } else { 502 };
        http1::respond(&mut client, status, &format!("no fleet answered: {reason}"), &[]).await;
        (status, "upstream_failed")
    } else {
        pool.no_capacity_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let retry_after = rt.retry_after(pool_index).to_string();
        http1::respond(
            &mut client,
            503,
            "no fleet has a free worker",
            &[("Retry-After", retry_after)],
        )
        .await;
        (503, "no_capacity")
    };
    shared.metrics.response(status);
    log.unrouted(&shared, status, attempts, &server_name, reason);
}

/// An accepted call from its 101 to its end: what the call holds while it
/// lasts. `run` is the tunnel, then the metrics, the lease released
/// (capacity back) and the log line.
struct Established<C, H> {
    shared: Arc<DataCtx>,
    client: C,
    up: upstream::UpStream,
    lease: Lease,
    idle: std::time::Duration,
    log: CallLog,
    attempts: u32,
    server_name: String,
    hold: H,
    /// Where each direction is, frame-wise, past the bytes already relayed.
    frames: tunnel::Frames,
    /// The server's end epoch when the call was routed there.
    epoch: u64,
    /// The call in `calls_open` until it ends.
    counted: super::Counted,
}

impl<C, H> Established<C, H>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(self) {
        let Self {
            shared,
            client,
            up,
            lease,
            idle,
            log,
            attempts,
            server_name,
            hold,
            frames,
            epoch,
            counted,
        } = self;
        let server = Arc::clone(&lease.server);
        let stats = tunnel::run(
            client,
            up,
            idle,
            async {
                tokio::select! {
                    () = server.calls_ended(epoch) => tunnel::Ending::GoingAway,
                    how = shared.ending() => how,
                }
            },
            Some(frames),
        )
        .await;
        // The worker, the slot and the call count are given back before
        // anyone is told (the guard signals: a stopping process counts open
        // calls when woken).
        drop(lease);
        drop(hold);
        drop(counted);
        log.ended(&shared, attempts, &server_name, &stats);
    }
}
