//! Control path: one active health check loop per server. A probe is a real
//! HTTP request over TLS; its JSON body is parsed and the capacity read with
//! a JSON pointer (never a regex over JSON). `fall`/`rise` smooth failures;
//! a valid report of 0 is an answer and takes effect at once (FULL).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    balance::{Pool, Server},
    config::CheckConfig,
    data::{DataCtx, upstream},
    model::{OnMarkedDown, ServerState},
};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use regex::Regex;

/// Largest health body read.
const MAX_BODY: usize = 64 * 1024;

/// Consecutive-result smoothing: `fall` failures take a server down, `rise`
/// successes bring it back. The very first success counts fully, so a fresh
/// start does not wait `rise` intervals.
#[derive(Debug, Default, Clone)]
pub struct FallRise {
    healthy: bool,
    checked_ok_once: bool,
    ok_streak: u32,
    fail_streak: u32,
}

impl FallRise {
    /// A machine that continues from a known state (a restarted check loop).
    pub fn starting(healthy: bool) -> Self {
        Self {
            healthy,
            checked_ok_once: healthy,
            ok_streak: 0,
            fail_streak: 0,
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    pub fn success(&mut self, rise: u32) -> bool {
        self.fail_streak = 0;
        self.ok_streak = self.ok_streak.saturating_add(1);
        if !self.checked_ok_once || self.ok_streak >= rise {
            self.healthy = true;
        }
        self.checked_ok_once = true;
        self.healthy
    }

    pub fn failure(&mut self, fall: u32) -> bool {
        self.ok_streak = 0;
        self.fail_streak = self.fail_streak.saturating_add(1);
        if self.fail_streak >= fall {
            self.healthy = false;
        }
        self.healthy
    }
}

/// What the capacity parser reads from one answer.
pub fn evaluate(status: u16, expect: &Regex, body: &[u8], pointer: &str) -> Result<Option<u32>, String> {
    if !expect.is_match(&status.to_string()) {
        return Err(format!("status {status} does not match `{}`", expect.as_str()));
    }
    if pointer.is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        let shown: String = String::from_utf8_lossy(&body[..body.len().min(60)]).chars().collect();
        format!("body is not valid JSON ({e}): {shown:?}")
    })?;
    let field = value
        .pointer(pointer)
        .ok_or_else(|| format!("no `{pointer}` in the body"))?;
    let n = field
        .as_u64()
        .ok_or_else(|| format!("`{pointer}` is {field}, not a non-negative integer"))?;
    Ok(Some(u32::try_from(n).unwrap_or(u32::MAX - 1)))
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The ingress could not open the connection itself (descriptors, ports,
    /// memory, resolver): says nothing about the server.
    #[error("ingress out of resources: {0}")]
    Local(String),
    #[error("{0}")]
    Server(String),
}

/// A kept probe connection is replaced after this long, so DNS is
/// resolved and the fleet's certificate verified again now and then.
const KEPT_MAX_AGE: Duration = Duration::from_secs(30);

/// A probe's HTTP connection kept for the next probe (`reuse_connection`),
/// with what it was made for: a changed server or TLS config, a passive
/// failure since, or [`KEPT_MAX_AGE`] drops it.
pub struct Kept {
    sender: Sender,
    server: Arc<Server>,
    tls: Option<Arc<rustls::ClientConfig>>,
    passive_failures: u64,
    made: Instant,
}

type Sender = SendRequest<Empty<Bytes>>;

/// One probe on a fresh connection: status and body, or why it failed.
pub async fn probe(server: &Server, pool: &Pool) -> Result<(u16, Bytes), ProbeError> {
    let tls = pool.client_tls(server);
    probe_on(server, pool, tls, None, false, || true)
        .await
        .map(|(answer, _)| answer)
}

/// One probe. With `reuse_connection`, first on the connection an earlier
/// probe left in `kept` while it is fit (see [`Kept`]); when that gives no
/// answer (a connection error, or nothing within half the timeout), or
/// the server had a passive failure while it was on its way, on a fresh
/// connection within the rest of the timeout, whose result is the probe's.
/// The connection that answered is kept. Without `reuse_connection`, on a
/// fresh connection closed after the answer.
pub async fn probe_keeping(
    server: &Arc<Server>,
    pool: &Pool,
    kept: &mut Option<Kept>,
) -> Result<(u16, Bytes), ProbeError> {
    let tls = pool.client_tls(server);
    let reuse = pool.check.reuse_connection;
    let passive_now = || {
        server
            .live()
            .passive_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let passive_failures = passive_now();
    let old = kept.take().filter(|k| {
        reuse
            && Arc::ptr_eq(&k.server, server)
            && k.tls.as_ref().map(Arc::as_ptr) == tls.as_ref().map(Arc::as_ptr)
            && k.passive_failures == passive_failures
            && k.made.elapsed() < KEPT_MAX_AGE
            && !k.sender.is_closed()
    });
    let made = old.as_ref().map(|k| k.made);
    // An answer on the old connection counts only if no call failed to
    // connect meanwhile: only a new connection may bring the server back.
    let no_passive_failure = || passive_now() == passive_failures;
    let (answer, sender) = probe_on(
        server,
        pool,
        tls.clone(),
        old.map(|k| k.sender),
        reuse,
        no_passive_failure,
    )
    .await?;
    *kept = sender.map(|(sender, reused)| Kept {
        sender,
        server: Arc::clone(server),
        tls,
        passive_failures,
        made: made.filter(|_| reused).unwrap_or_else(Instant::now),
    });
    Ok(answer)
}

/// A probe within the check's timeout: on `old` when it answers within
/// half of it and `old_still_counts` then, else on a fresh connection;
/// returns the connection too when `keep` (and whether it was `old`).
async fn probe_on(
    server: &Server,
    pool: &Pool,
    tls: Option<Arc<rustls::ClientConfig>>,
    old: Option<Sender>,
    keep: bool,
    old_still_counts: impl Fn() -> bool,
) -> Result<((u16, Bytes), Option<(Sender, bool)>), ProbeError> {
    let check = &pool.check;
    let deadline = tokio::time::Instant::now() + check.timeout.0;
    let fut = async {
        if let Some(mut sender) = old {
            let attempt = async {
                sender
                    .ready()
                    .await
                    .map_err(|e| ProbeError::Server(format!("kept connection: {e}")))?;
                request(&mut sender, server, pool, false).await
            };
            match tokio::time::timeout(check.timeout.0 / 2, attempt).await {
                Ok(Ok(answer)) if old_still_counts() => return Ok((answer, keep.then_some((sender, true)))),
                Ok(Ok(_)) => {
                    tracing::debug!(pool = %server.pool, server = server.name(), "a call failed to connect while the probe was on the kept connection; probing on a new one");
                }
                Ok(Err(e)) => {
                    tracing::debug!(pool = %server.pool, server = server.name(), error = %e, "kept check connection failed; probing on a new one");
                }
                Err(_) => {
                    tracing::debug!(pool = %server.pool, server = server.name(), "no answer on the kept check connection within half the timeout; probing on a new one");
                }
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let io = upstream::connect(server, tls, left)
            .await
            .map_err(|e| e.by_blame(ProbeError::Local, ProbeError::Server))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProbeError::Server(format!("HTTP handshake: {e}")))?;
        tokio::spawn(conn);
        let answer = request(&mut sender, server, pool, !keep).await?;
        Ok((answer, keep.then_some((sender, false))))
    };
    match tokio::time::timeout(check.timeout.0, fut).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Server(format!(
            "timed out after {}",
            humantime::format_duration(check.timeout.0)
        ))),
    }
}

/// The probe's request on `sender` and its whole answer (read to the end,
/// so the connection can carry the next one).
async fn request(sender: &mut Sender, server: &Server, pool: &Pool, close: bool) -> Result<(u16, Bytes), ProbeError> {
    let check = &pool.check;
    let host = check.host.clone().unwrap_or_else(|| server.def.host_header());
    let mut req = http::Request::builder()
        .method(check.method.as_str())
        .uri(check.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "ingress-health-check");
    if close {
        req = req.header(http::header::CONNECTION, "close");
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Server(format!("bad request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ProbeError::Server(format!("request: {e}")))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ProbeError::Server(format!("reading body: {e}")))?
        .to_bytes();
    Ok((status, body))
}

/// The server with `id` and its pool in the snapshot in force, if it is still there.
fn current(ctx: &DataCtx, id: u32) -> Option<(Arc<Pool>, Arc<Server>)> {
    let rt = ctx.runtime.load();
    rt.pools.iter().find_map(|p| {
        let s = p.servers.load().iter().find(|s| s.id == id).cloned()?;
        Some((Arc::clone(p), s))
    })
}

/// Runs the check loop for the server with `id` while the snapshot in force
/// has it. Each probe uses the server and pool settings in force at that
/// moment, so a reload or an admin change neither restarts the loop (its
/// fall/rise streaks carry on) nor makes every fleet be probed at once; a
/// changed interval takes effect from the next probe.
pub async fn run(id: u32, ctx: Arc<DataCtx>) {
    let Some((pool, server)) = current(&ctx, id) else {
        return;
    };
    let mut check: CheckConfig = pool.check.clone();
    let Ok(mut expect) = Regex::new(&check.expect_status) else {
        tracing::error!(pool = %pool.name, "bad expect_status; checks disabled");
        return;
    };
    let mut machine = FallRise::starting(server.healthy());
    let mut ticker = tokio::time::interval(check.interval.0);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ever_up = server.healthy();
    let mut kept: Option<Kept> = None;
    loop {
        ticker.tick().await;
        let Some((pool, server)) = current(&ctx, id) else {
            return;
        };
        if pool.check != check {
            if pool.check.interval != check.interval {
                ticker = tokio::time::interval_at(
                    tokio::time::Instant::now() + pool.check.interval.0,
                    pool.check.interval.0,
                );
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            match Regex::new(&pool.check.expect_status) {
                Ok(r) => expect = r,
                Err(e) => tracing::error!(error = %e, "bad expect_status; keeping the previous one"),
            }
            check = pool.check.clone();
        }
        let was_healthy = server.healthy();
        let started = Instant::now();
        // Calls routed from here on count against this probe's answer.
        server.probe_sent();
        let result = match probe_keeping(&server, &pool, &mut kept).await {
            Err(ProbeError::Local(reason)) => {
                // Neither a failure nor a success of the server: its streaks,
                // state and last check stand (a server never checked stays
                // unchecked, so XDP stays open); the metric and log say it.
                ctx.metrics.local_error("health");
                tracing::warn!(pool = %server.pool, server = server.name(), %reason, "health probe not sent: the ingress is out of resources");
                continue;
            }
            Err(ProbeError::Server(reason)) => Err(reason),
            Ok(answer) => Ok(answer),
        };
        let latency = started.elapsed().as_secs_f64() * 1000.0;
        server.live().check_latency.observe(latency / 1000.0);
        let before = (server.state(), server.reported());
        let outcome = result.and_then(|(status, body)| evaluate(status, &expect, &body, &check.capacity));
        match outcome {
            Ok(capacity) => {
                let healthy = machine.success(check.rise);
                if let Some(n) = capacity {
                    server.report_capacity(n);
                }
                server.set_healthy(healthy);
                let reason = match capacity {
                    Some(n) => format!("{n} available"),
                    None => "alive".to_owned(),
                };
                server.record_check(true, reason, Some(latency));
            }
            Err(reason) => {
                // A failed probe never brings a server back (a passive failure may have taken it out).
                if !machine.failure(check.fall) {
                    server.set_healthy(false);
                }
                server.record_check(false, reason, Some(latency));
            }
        }
        let now_healthy = server.healthy();
        if now_healthy && !was_healthy && ever_up {
            // Back after being DOWN: slowstart ramps its share from now.
            *server.live().recovered_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        ever_up |= now_healthy;
        if was_healthy && !now_healthy && pool.on_marked_down == OnMarkedDown::ShutdownSessions {
            tracing::warn!(pool = %server.pool, server = server.name(), active = server.active(), "marked DOWN: cutting its calls (shutdown-sessions)");
            server.end_calls();
        }
        let after = (server.state(), server.reported());
        if before != after {
            if before.0 != after.0 {
                let reason = server.check_status().reason;
                // DOWN at warning (`journalctl -p warning`); the rest is routine.
                if after.0 == ServerState::Down {
                    tracing::warn!(pool = %server.pool, server = server.name(), from = %before.0, to = %after.0, %reason, "server state changed");
                } else {
                    tracing::info!(pool = %server.pool, server = server.name(), from = %before.0, to = %after.0, %reason, "server state changed");
                }
            }
            ctx.changed.signal();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn re() -> Regex {
        Regex::new("^2").unwrap()
    }

    #[test]
    fn capacity_is_read_by_pointer_whatever_the_key_order() {
        let p = "/fleet_available";
        assert_eq!(
            evaluate(
                200,
                &re(),
                br#"{"fleet_workers":16,"fleet_busy":9,"fleet_available":7}"#,
                p
            ),
            Ok(Some(7))
        );
        assert_eq!(
            evaluate(200, &re(), br#"{"fleet_available":3,"fleet_workers":16}"#, p),
            Ok(Some(3))
        );
        assert_eq!(
            evaluate(
                200,
                &re(),
                br#"{"prev_fleet_available":9,"max_fleet_available":16,"fleet_available":0}"#,
                p
            ),
            Ok(Some(0)),
            "decoy keys are ignored"
        );
        assert_eq!(
            evaluate(200, &re(), br#"{"fleet_available":20}"#, p),
            Ok(Some(20)),
            "no upper bound tied to maxconn"
        );
    }

    #[test]
    fn bad_answers_fail_with_a_reason() {
        let p = "/fleet_available";
        let e = evaluate(200, &re(), br#"{"fleet_available":"#, p).unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = evaluate(200, &re(), b"<html>oops</html>", p).unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = evaluate(200, &re(), br#"{"prev_fleet_available":4}"#, p).unwrap_err();
        assert!(e.contains("no `/fleet_available`"), "{e}");
        let e = evaluate(200, &re(), br#"{"fleet_available":-1}"#, p).unwrap_err();
        assert!(e.contains("not a non-negative integer"), "{e}");
        let e = evaluate(500, &re(), br#"{"fleet_available":4}"#, p).unwrap_err();
        assert!(e.contains("status 500"), "{e}");
    }

    #[test]
    fn liveness_only_and_302() {
        let re = Regex::new("^[23]").unwrap();
        assert_eq!(evaluate(302, &re, b"", ""), Ok(None));
    }

    #[test]
    fn fall_and_rise_smooth_failures() {
        let mut m = FallRise::default();
        assert!(!m.failure(2), "never healthy yet");
        assert!(m.success(2), "first success counts fully");
        assert!(m.failure(2), "one blip is smoothed");
        assert!(!m.failure(2), "two in a row take it down");
        assert!(!m.success(2), "one success is not enough to rise");
        assert!(m.success(2));
    }
}
