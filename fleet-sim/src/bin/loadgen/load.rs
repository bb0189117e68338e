//! The bench's measuring modes: `setups` (full handshakes + upgrades, C at a
//! time), `echo` (round trips at a fixed offered load) and `idle` (calls held
//! open until stdin closes).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    sync::Arc,
    time::{Duration, Instant},
};

use fleet_sim::{
    client::connect,
    report::{Echo, IdleOpen, Percentiles, Report, Setups},
};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::dial::{Target, close, open_calls, outcome, resuming_tls, tls};

pub async fn setups(t: Target, count: u32, concurrency: u32, timeout_ms: u64, resume: bool) -> anyhow::Result<Report> {
    let tls = if resume { resuming_tls(&t.ca)? } else { tls(&t.ca)? };
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
    Ok(Report::Setups(Setups {
        attempts: count,
        ok,
        outcomes,
        elapsed_s: elapsed,
        ok_per_s: ok as f64 / elapsed,
        attempts_per_s: f64::from(count) / elapsed,
        ok_ms: Percentiles::of(ok_ms),
        fail_ms: Percentiles::of(fail_ms),
    }))
}

pub async fn echo(t: Target, calls: u32, rate: u32, size: usize, seconds: u64) -> anyhow::Result<Report> {
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
    Ok(Report::Echo(Echo {
        calls,
        open: n_open,
        failed,
        rate,
        size,
        seconds,
        sent,
        received,
        lost: sent.saturating_sub(received) + u64::from(calls - n_open) * per_call,
        rtt_us: Percentiles::of(rtts),
        elapsed_s: base.elapsed().as_secs_f64(),
    }))
}

pub async fn idle(t: Target, calls: u32, concurrency: u32, hold_max_s: u64) -> anyhow::Result<Report> {
    let tls = tls(&t.ca)?;
    let started = Instant::now();
    let (open, failed) = open_calls(&t, &tls, calls, concurrency).await;
    let line = serde_json::to_string(&Report::IdleOpen(IdleOpen {
        calls,
        open: open.len(),
        failed,
        open_s: started.elapsed().as_secs_f64(),
    }))?;
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
    Ok(Report::IdleClosed { closed: true })
}
