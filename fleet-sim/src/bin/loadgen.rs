//! `loadgen`: the load generator of `cargo xtask bench`. One mode per run,
//! one JSON line on stdout at the end (`idle` prints one when its calls are
//! open, then holds them until stdin closes). Every loop is bounded in count
//! and in time; it only dials the address it is given (the bench gives it
//! loopback or an address in a namespace of its own).
//!
//! - `setups`: N full TLS handshakes (no resumption) + WebSocket upgrades, C at a time;
//!   counts what each attempt ended in (101, an HTTP status, refused, timeout, …).
//! - `echo`: N calls, each sending `rate` messages/s of `size` bytes for `seconds`;
//!   round-trip percentiles and lost messages.
//! - `idle`: N calls held open until stdin closes (or `--hold-max-s`).
//! - `s4`: the seeds' S4: fill a fleet through its control port, 8 calls 100 ms apart,
//!   then probes until the full fleet is no longer picked, then free it and probe until
//!   it is picked again; each call is attributed to a fleet by its `/state` counters.
//! - `soak`: calls opened at a steady rate for `seconds`, each held 2–10 s while echoing a
//!   message every `msg-interval-ms`, while a flapper walks the fleets through a Gray code of
//!   full/free (one fleet toggled every `flap-s` through their control ports, every state
//!   visited, "all full" included). A call that fails to open is *expected* when every fleet
//!   was full at some moment in [start − grace, end] (the ingress sees capacity through its
//!   health checks), else *lost*; a call whose echo stops is *broken*.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Args as ClapArgs, Parser, Subcommand};
use fleet_sim::client::{CallError, Wss, connect};
use futures_util::{SinkExt as _, StreamExt as _};
use rustls::ClientConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "Bounded WSS load for `cargo xtask bench`")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, ClapArgs)]
struct Target {
    /// Proxy address (loopback or an address in a namespace of the bench).
    #[arg(long)]
    addr: SocketAddr,
    /// SNI and Host header.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// CA certificate (PEM) of the proxy's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Call path prefix; the call number is appended.
    #[arg(long, default_value = "/ws/bench-")]
    path: String,
}

#[derive(Debug, Subcommand)]
enum Mode {
    Setups {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        count: u32,
        #[arg(long, default_value_t = 16)]
        concurrency: u32,
        /// Per attempt: TCP + TLS + upgrade.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    Echo {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 200)]
        calls: u32,
        /// Messages per second per call.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        #[arg(long, default_value_t = 320)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        calls: u32,
        #[arg(long, default_value_t = 32)]
        concurrency: u32,
        /// Hold at most this long when stdin stays open.
        #[arg(long, default_value_t = 600)]
        hold_max_s: u64,
    },
    S4 {
        #[command(flatten)]
        target: Target,
        /// Control addresses of the fleets; the first is the one filled.
        #[arg(long, required = true)]
        fleet: Vec<SocketAddr>,
        /// Workers to occupy on the first fleet.
        #[arg(long, default_value_t = 16)]
        fill: u32,
        #[arg(long, default_value_t = 8)]
        calls: u32,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// Probe calls after the held ones (closed at once), at the same interval.
        #[arg(long, default_value_t = 40)]
        probes: u32,
        /// After freeing the fleet, probe at most this long for it to be picked again.
        #[arg(long, default_value_t = 15)]
        recover_s: u64,
    },
    Soak {
        #[command(flatten)]
        target: Target,
        /// Control addresses of the fleets the flapper toggles.
        #[arg(long, required = true)]
        fleet: Vec<SocketAddr>,
        /// Workers of each fleet (occupied to make it full, freed to make it free).
        #[arg(long)]
        workers: u32,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// New calls per second.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        #[arg(long, default_value_t = 2000)]
        hold_min_ms: u64,
        #[arg(long, default_value_t = 10000)]
        hold_max_ms: u64,
        #[arg(long, default_value_t = 500)]
        msg_interval_ms: u64,
        /// One fleet toggled this often; 0 = no flapping.
        #[arg(long, default_value_t = 15)]
        flap_s: u64,
        /// How far before a failed call's start an all-full moment still explains it.
        #[arg(long, default_value_t = 3000)]
        grace_ms: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// Lifts the open-files limit to its hard maximum (thousands of calls at once).
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid, properly typed struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The client TLS config with session resumption off: every set-up is a full handshake.
fn tls(ca: &PathBuf) -> anyhow::Result<Arc<ClientConfig>> {
    let pem = std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
    let base = fleet_sim::client::tls_config(&pem)?;
    let mut cfg = (*base).clone();
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// What one attempt ended in, as a short key.
fn outcome(r: &Result<Result<Wss, CallError>, tokio::time::error::Elapsed>) -> String {
    match r {
        Err(_) => "timeout".into(),
        Ok(Ok(_)) => "101".into(),
        Ok(Err(CallError::Status(s, _))) => s.to_string(),
        Ok(Err(CallError::Other(e))) => {
            let e = e.to_lowercase();
            if e.contains("refused") {
                "refused".into()
            } else if e.contains("reset") {
                "reset".into()
            } else if e.contains("tls") {
                "tls-error".into()
            } else if e.contains("eof") || e.contains("closed") {
                "closed".into()
            } else {
                "other".into()
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[idx.clamp(1, sorted.len()) - 1])
}

fn percentiles(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({
        "n": v.len(),
        "p50": percentile(&v, 50.0),
        "p99": percentile(&v, 99.0),
        "p999": percentile(&v, 99.9),
        "max": v.last(),
    })
}

async fn close(mut ws: Wss) {
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
}

async fn setups(t: Target, count: u32, concurrency: u32, timeout_ms: u64) -> anyhow::Result<Value> {
    let tls = tls(&t.ca)?;
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let started = Instant::now();
    let t = Arc::new(t);
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (tls, next, t) = (Arc::clone(&tls), Arc::clone(&next), Arc::clone(&t));
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<(String, f64)> = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= count {
                    break;
                }
                let at = Instant::now();
                let path = format!("{}{i}", t.path);
                let r = tokio::time::timeout(
                    Duration::from_millis(timeout_ms),
                    connect(t.addr, &t.host, &path, Arc::clone(&tls)),
                )
                .await;
                let key = outcome(&r);
                seen.push((key, at.elapsed().as_secs_f64() * 1e3));
                if let Ok(Ok(ws)) = r {
                    close(ws).await;
                }
            }
            seen
        }));
    }
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok_ms = Vec::new();
    let mut fail_ms = Vec::new();
    for task in tasks {
        for (key, ms) in task.await? {
            if key == "101" {
                ok_ms.push(ms);
            } else {
                fail_ms.push(ms);
            }
            *outcomes.entry(key).or_default() += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = outcomes.get("101").copied().unwrap_or(0);
    Ok(json!({
        "mode": "setups",
        "attempts": count,
        "ok": ok,
        "outcomes": outcomes,
        "elapsed_s": elapsed,
        "ok_per_s": ok as f64 / elapsed,
        "attempts_per_s": f64::from(count) / elapsed,
        "ok_ms": percentiles(ok_ms),
        "fail_ms": percentiles(fail_ms),
    }))
}

/// Opens `n` calls, `concurrency` at a time; returns the open ones and the failures by kind.
async fn open_calls(
    t: &Target,
    tls: &Arc<ClientConfig>,
    n: u32,
    concurrency: u32,
) -> (Vec<Wss>, BTreeMap<String, u64>) {
    let mut open = Vec::new();
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + concurrency).min(n))
            .map(|k| {
                let path = format!("{}{k}", t.path);
                let (addr, host, tls) = (t.addr, t.host.clone(), Arc::clone(tls));
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_secs(10), connect(addr, &host, &path, tls)).await
                })
            })
            .collect();
        for b in batch {
            match b.await {
                Ok(Ok(Ok(ws))) => open.push(ws),
                Ok(r) => *failed.entry(outcome(&r)).or_default() += 1,
                Err(_) => *failed.entry("panic".into()).or_default() += 1,
            }
        }
        i += concurrency;
    }
    (open, failed)
}

async fn echo(t: Target, calls: u32, rate: u32, size: usize, seconds: u64) -> anyhow::Result<Value> {
    let tls = tls(&t.ca)?;
    let (open, failed) = open_calls(&t, &tls, calls, 32).await;
    let base = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let per_call = seconds * u64::from(rate);
    let n_open = open.len() as u32;
    let mut tasks = Vec::new();
    for (k, ws) in open.into_iter().enumerate() {
        let (mut tx, mut rx) = ws.split();
        // Spread the calls' send instants over one period.
        let offset = period.mul_f64(k as f64 / f64::from(n_open.max(1)));
        tasks.push(tokio::spawn(async move {
            let reader = tokio::spawn(async move {
                let mut rtts = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds + 10);
                while (rtts.len() as u64) < per_call {
                    match tokio::time::timeout_at(deadline, rx.next()).await {
                        Ok(Some(Ok(Message::Binary(b)))) if b.len() >= 8 => {
                            let sent = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
                            let now = base.elapsed().as_nanos() as u64;
                            rtts.push(now.saturating_sub(sent) as f64 / 1e3);
                        }
                        Ok(Some(Ok(_))) => {}
                        _ => break,
                    }
                }
                (rtts, rx)
            });
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sent = 0u64;
            let mut payload = vec![0x5a_u8; size.max(8)];
            while sent < per_call {
                ticker.tick().await;
                let now = base.elapsed().as_nanos() as u64;
                payload[..8].copy_from_slice(&now.to_le_bytes());
                if tx.send(Message::binary(payload.clone())).await.is_err() {
                    break;
                }
                sent += 1;
            }
            let rtts = match reader.await {
                Ok((rtts, rx)) => {
                    if let Ok(ws) = tx.reunite(rx) {
                        close(ws).await;
                    }
                    rtts
                }
                Err(_) => Vec::new(),
            };
            (sent, rtts)
        }));
    }
    let mut sent = 0;
    let mut rtts = Vec::new();
    for task in tasks {
        let (s, r) = task.await?;
        sent += s;
        rtts.extend(r);
    }
    let received = rtts.len() as u64;
    Ok(json!({
        "mode": "echo",
        "calls": calls,
        "open": n_open,
        "failed": failed,
        "rate": rate,
        "size": size,
        "seconds": seconds,
        "sent": sent,
        "received": received,
        "lost": sent.saturating_sub(received) + u64::from(calls - n_open) * per_call,
        "rtt_us": percentiles(rtts),
        "elapsed_s": base.elapsed().as_secs_f64(),
    }))
}

async fn idle(t: Target, calls: u32, concurrency: u32, hold_max_s: u64) -> anyhow::Result<Value> {
    let tls = tls(&t.ca)?;
    let started = Instant::now();
    let (open, failed) = open_calls(&t, &tls, calls, concurrency).await;
    let line = json!({
        "mode": "idle",
        "calls": calls,
        "open": open.len(),
        "failed": failed,
        "open_s": started.elapsed().as_secs_f64(),
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    // Hold until stdin closes (the bench measured what it wanted), bounded.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let _ = tokio::time::timeout(Duration::from_secs(hold_max_s), rx).await;
    let mut closing = Vec::new();
    for ws in open {
        closing.push(tokio::spawn(close(ws)));
    }
    for c in closing {
        let _ = c.await;
    }
    Ok(json!({"mode": "idle", "closed": true}))
}

/// Plain HTTP GET on a fleet's control port; the JSON body.
async fn control(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .context("control timeout")??;
    let text = String::from_utf8_lossy(&out);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body).with_context(|| format!("control {path}: {text}"))
}

/// Per fleet: calls_total + answered_429 (every upgrade that reached it).
async fn touches(fleets: &[SocketAddr]) -> anyhow::Result<Vec<u64>> {
    let mut v = Vec::new();
    for f in fleets {
        let s = control(*f, "/state").await?;
        v.push(s["calls_total"].as_u64().unwrap_or(0) + s["answered_429"].as_u64().unwrap_or(0));
    }
    Ok(v)
}

struct S4Params {
    fleets: Vec<SocketAddr>,
    fill: u32,
    calls: u32,
    interval: Duration,
    probes: u32,
    recover: Duration,
}

/// One call at `path`; held when `hold`. Returns (status, fleets touched).
async fn attributed_call(
    t: &Target,
    tls: &Arc<ClientConfig>,
    fleets: &[SocketAddr],
    path: &str,
    held: &mut Vec<Wss>,
    hold: bool,
) -> anyhow::Result<(String, Vec<usize>)> {
    let before = touches(fleets).await?;
    let r = tokio::time::timeout(Duration::from_secs(10), connect(t.addr, &t.host, path, Arc::clone(tls))).await;
    let key = outcome(&r);
    if let Ok(Ok(ws)) = r {
        if hold {
            held.push(ws);
        } else {
            close(ws).await;
        }
    }
    let after = touches(fleets).await?;
    let touched = before
        .iter()
        .zip(&after)
        .enumerate()
        .filter(|(_, (b, a))| a > b)
        .map(|(i, _)| i)
        .collect();
    Ok((key, touched))
}

async fn s4(t: Target, p: S4Params) -> anyhow::Result<Value> {
    let tls = tls(&t.ca)?;
    let fleets = p.fleets.clone();
    let mut held = Vec::new();
    control(fleets[0], &format!("/occupy?n={}", p.fill)).await?;
    let t0 = Instant::now();
    let mut calls = Vec::new();
    let mut last_hit: Option<usize> = None;
    let total = p.calls + p.probes;
    for i in 0..total {
        let at = t0 + p.interval * i;
        tokio::time::sleep_until(at.into()).await;
        let (status, touched) =
            attributed_call(&t, &tls, &fleets, &format!("{}s4-{i}", t.path), &mut held, i < p.calls).await?;
        if touched.contains(&0) {
            last_hit = Some(i as usize);
        }
        calls.push(
            json!({"i": i, "at_ms": at.duration_since(t0).as_millis() as u64, "status": status, "fleets": touched}),
        );
    }
    let statuses: Vec<Value> = calls[..p.calls as usize].iter().map(|c| c["status"].clone()).collect();
    let carrier_429 = calls[..p.calls as usize]
        .iter()
        .filter(|c| c["status"] == "429")
        .count();
    let not_101 = calls[..p.calls as usize]
        .iter()
        .filter(|c| c["status"] != "101")
        .count();
    let full_hits = calls
        .iter()
        .filter(|c| c["fleets"].as_array().is_some_and(|a| a.contains(&json!(0))))
        .count();
    // Time from "full" to the first call after which none went to the full fleet.
    let stop_ms = match last_hit {
        None => 0,
        Some(i) => p.interval.as_millis() as u64 * (i as u64 + 1),
    };
    let stopped = last_hit.is_none_or(|i| i + 1 < total as usize);
    // Free the fleet; how long until it is picked again?
    control(fleets[0], &format!("/free?n={}", p.fill)).await?;
    let t1 = Instant::now();
    let mut recover_ms = None;
    let mut k = 0u32;
    while t1.elapsed() < p.recover {
        let (_, touched) = attributed_call(&t, &tls, &fleets, &format!("{}rec-{k}", t.path), &mut held, false).await?;
        if touched.contains(&0) {
            recover_ms = Some(t1.elapsed().as_millis() as u64);
            break;
        }
        k += 1;
        tokio::time::sleep(p.interval).await;
    }
    for ws in held {
        close(ws).await;
    }
    Ok(json!({
        "mode": "s4",
        "statuses": statuses,
        "carrier_429": carrier_429,
        "carrier_not_101": not_101,
        "full_fleet_hits": full_hits,
        "stop_ms": if stopped { json!(stop_ms) } else { Value::Null },
        "recover_ms": recover_ms,
        "recover_window_ms": p.recover.as_millis() as u64,
        "calls": calls,
    }))
}

struct SoakParams {
    fleets: Vec<SocketAddr>,
    workers: u32,
    seconds: u64,
    rate: u32,
    hold: (u64, u64),
    msg_interval: Duration,
    flap: Duration,
    grace: Duration,
    seed: u64,
}

/// Flapper states: (since, bit i set = fleet i full).
type Timeline = Arc<std::sync::Mutex<Vec<(Instant, u32)>>>;

/// How one soak call ended.
enum CallEnd {
    Ok {
        echoed: u64,
    },
    Broken {
        after_ms: u64,
        why: String,
    },
    Failed {
        key: String,
        started: Instant,
        ended: Instant,
    },
}

/// Whether every fleet was full at some moment in `[from, to]`.
fn all_full_during(timeline: &[(Instant, u32)], all: u32, from: Instant, to: Instant) -> bool {
    timeline.iter().enumerate().any(|(i, (since, mask))| {
        let until = timeline.get(i + 1).map(|(t, _)| *t);
        *mask == all && *since <= to && until.is_none_or(|u| u >= from)
    })
}

async fn set_fleet(addr: SocketAddr, full: bool, workers: u32) -> anyhow::Result<()> {
    // occupy/free add and subtract: reset to free first so the state is exact.
    control(addr, &format!("/free?n={workers}")).await?;
    if full {
        control(addr, &format!("/occupy?n={workers}")).await?;
    }
    Ok(())
}

/// Walks a Gray code over the fleets (one toggles per step) until `stop`; records each state.
async fn flapper(p: Arc<SoakParams>, timeline: Timeline, stop: Instant) -> anyhow::Result<u64> {
    let n = p.fleets.len() as u32;
    let mut flips = 0;
    for (i, f) in p.fleets.iter().enumerate() {
        set_fleet(*f, false, p.workers)
            .await
            .with_context(|| format!("fleet {i}"))?;
    }
    timeline
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((Instant::now(), 0));
    if p.flap.is_zero() {
        return Ok(0);
    }
    let mut mask = 0u32;
    let mut step = 0u32;
    loop {
        let next_at = Instant::now() + p.flap;
        if next_at >= stop {
            break;
        }
        tokio::time::sleep_until(next_at.into()).await;
        step = (step + 1) % (1 << n);
        let next = step ^ (step >> 1);
        let changed = mask ^ next;
        for i in 0..n {
            if changed & (1 << i) != 0 {
                set_fleet(p.fleets[i as usize], next & (1 << i) != 0, p.workers).await?;
                flips += 1;
            }
        }
        mask = next;
        timeline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((Instant::now(), mask));
    }
    for f in &p.fleets {
        set_fleet(*f, false, p.workers).await?;
    }
    timeline
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((Instant::now(), 0));
    Ok(flips)
}

/// One call: open, echo for `hold`, close.
async fn soak_call(t: Arc<Target>, tls: Arc<ClientConfig>, path: String, hold: Duration, every: Duration) -> CallEnd {
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), connect(t.addr, &t.host, &path, tls)).await;
    let mut ws = match r {
        Ok(Ok(ws)) => ws,
        r => {
            return CallEnd::Failed {
                key: outcome(&r),
                started,
                ended: Instant::now(),
            };
        }
    };
    let opened = Instant::now();
    let mut echoed = 0u64;
    while opened.elapsed() < hold {
        let payload = format!("{path} {echoed}").into_bytes();
        let round = async {
            ws.send(Message::Binary(payload.clone().into()))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) if b[..] == payload[..] => return Ok(()),
                    Some(Ok(Message::Binary(_) | Message::Text(_))) => return Err("wrong echo".to_owned()),
                    Some(Ok(Message::Close(_))) | None => return Err("closed".to_owned()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), round).await {
            Ok(Ok(())) => echoed += 1,
            Ok(Err(why)) => {
                return CallEnd::Broken {
                    after_ms: opened.elapsed().as_millis() as u64,
                    why,
                };
            }
            Err(_) => {
                return CallEnd::Broken {
                    after_ms: opened.elapsed().as_millis() as u64,
                    why: "no echo within 5 s".to_owned(),
                };
            }
        }
        tokio::time::sleep(every).await;
    }
    close(ws).await;
    CallEnd::Ok { echoed }
}

async fn soak(t: Target, p: SoakParams) -> anyhow::Result<Value> {
    let tls = tls(&t.ca)?;
    let t = Arc::new(t);
    let p = Arc::new(p);
    let all = (1u32 << p.fleets.len()) - 1;
    let base = Instant::now();
    let stop = base + Duration::from_secs(p.seconds);
    let timeline: Timeline = Arc::new(std::sync::Mutex::new(Vec::new()));
    let flap = tokio::spawn(flapper(Arc::clone(&p), Arc::clone(&timeline), stop));
    // The flapper's first state (all free) is in place before the first call.
    tokio::time::timeout(Duration::from_secs(10), async {
        while timeline.lock().map(|t| t.is_empty()).unwrap_or(true) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("the flapper did not set the fleets free")?;
    // Gives the ingress a check interval to see them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let period = Duration::from_secs_f64(1.0 / f64::from(p.rate.max(1)));
    let mut rng = p.seed | 1;
    let mut calls = Vec::new();
    let started = Instant::now();
    let stop = started + Duration::from_secs(p.seconds);
    let mut k: u64 = 0;
    while Instant::now() < stop && k < p.seconds.saturating_mul(u64::from(p.rate)) + 1 {
        // xorshift64: a fixed sequence of hold times.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let (lo, hi) = p.hold;
        let hold = Duration::from_millis(lo + rng % (hi.saturating_sub(lo) + 1));
        let path = format!("{}{k}", t.path);
        calls.push(tokio::spawn(soak_call(
            Arc::clone(&t),
            Arc::clone(&tls),
            path,
            hold,
            p.msg_interval,
        )));
        k += 1;
        tokio::time::sleep_until((started + period.mul_f64(k as f64)).into()).await;
    }
    let mut ok = 0u64;
    let mut echoed = 0u64;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut lost: BTreeMap<String, u64> = BTreeMap::new();
    let mut broken = 0u64;
    let mut examples = Vec::new();
    let drain_limit = Duration::from_millis(p.hold.1) + Duration::from_secs(60);
    let timeline_now = || timeline.lock().map(|t| t.clone()).unwrap_or_default();
    for c in calls {
        match tokio::time::timeout(drain_limit, c).await {
            Ok(Ok(CallEnd::Ok { echoed: e })) => {
                ok += 1;
                echoed += e;
            }
            Ok(Ok(CallEnd::Broken { after_ms, why })) => {
                broken += 1;
                if examples.len() < 10 {
                    examples.push(json!({"broken_after_ms": after_ms, "why": why}));
                }
            }
            Ok(Ok(CallEnd::Failed { key, started, ended })) => {
                let tl = timeline_now();
                let from = started.checked_sub(p.grace).unwrap_or(started);
                if all_full_during(&tl, all, from, ended) {
                    *expected.entry(key).or_default() += 1;
                } else {
                    if examples.len() < 10 {
                        let state = tl.iter().rev().find(|(t, _)| *t <= started).map(|(_, m)| *m);
                        examples.push(json!({
                            "failed": key,
                            "at_s": started.duration_since(base).as_secs_f64(),
                            "took_ms": ended.duration_since(started).as_millis() as u64,
                            "full_mask": state,
                        }));
                    }
                    *lost.entry(key).or_default() += 1;
                }
            }
            Ok(Err(_)) => *lost.entry("panic".into()).or_default() += 1,
            Err(_) => *lost.entry("drain-timeout".into()).or_default() += 1,
        }
    }
    let flips = tokio::time::timeout(Duration::from_secs(30), flap)
        .await
        .context("flapper did not stop")?
        .context("flapper panicked")??;
    let tl = timeline_now();
    let all_full_s: f64 = tl
        .iter()
        .enumerate()
        .filter(|(_, (_, m))| *m == all)
        .map(|(i, (since, _))| {
            tl.get(i + 1)
                .map_or(Instant::now(), |(t, _)| *t)
                .duration_since(*since)
                .as_secs_f64()
        })
        .sum();
    Ok(json!({
        "mode": "soak",
        "attempts": k,
        "ok": ok,
        "echoed": echoed,
        "expected": expected.values().sum::<u64>(),
        "expected_by_kind": expected,
        "lost": lost.values().sum::<u64>(),
        "lost_by_kind": lost,
        "broken": broken,
        "examples": examples,
        "flips": flips,
        "all_full_s": all_full_s,
        "elapsed_s": base.elapsed().as_secs_f64(),
    }))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let out = rt.block_on(async move {
        match cli.mode {
            Mode::Setups {
                target,
                count,
                concurrency,
                timeout_ms,
            } => setups(target, count, concurrency, timeout_ms).await,
            Mode::Echo {
                target,
                calls,
                rate,
                size,
                seconds,
            } => echo(target, calls, rate, size, seconds).await,
            Mode::Idle {
                target,
                calls,
                concurrency,
                hold_max_s,
            } => idle(target, calls, concurrency, hold_max_s).await,
            Mode::S4 {
                target,
                fleet,
                fill,
                calls,
                interval_ms,
                probes,
                recover_s,
            } => {
                let p = S4Params {
                    fleets: fleet,
                    fill,
                    calls,
                    interval: Duration::from_millis(interval_ms),
                    probes,
                    recover: Duration::from_secs(recover_s),
                };
                s4(target, p).await
            }
            Mode::Soak {
                target,
                fleet,
                workers,
                seconds,
                rate,
                hold_min_ms,
                hold_max_ms,
                msg_interval_ms,
                flap_s,
                grace_ms,
                seed,
            } => {
                let p = SoakParams {
                    fleets: fleet,
                    workers,
                    seconds,
                    rate,
                    hold: (hold_min_ms, hold_max_ms.max(hold_min_ms)),
                    msg_interval: Duration::from_millis(msg_interval_ms),
                    flap: Duration::from_secs(flap_s),
                    grace: Duration::from_millis(grace_ms),
                    seed,
                };
                soak(target, p).await
            }
        }
    })?;
    println!("{out}");
    Ok(())
}
