//! `soak`: calls opened at a steady rate, each echoing while held, while a
//! flapper walks the fleets through a Gray code of full/free; each failure is
//! judged expected (every fleet was full around it) or lost.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use fleet_sim::{
    client::connect,
    report::{Soak, SoakExample},
};
use futures_util::{SinkExt as _, StreamExt as _};
use rustls::ClientConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::dial::{Target, close, control, outcome, tls};

pub struct SoakParams {
    pub fleets: Vec<SocketAddr>,
    pub workers: u32,
    pub seconds: u64,
    pub rate: u32,
    pub hold: (u64, u64),
    pub msg_interval: Duration,
    pub flap: Duration,
    pub grace: Duration,
    pub seed: u64,
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

pub async fn soak(t: Target, p: SoakParams) -> anyhow::Result<Soak> {
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
                    examples.push(SoakExample::Broken {
                        broken_after_ms: after_ms,
                        why,
                    });
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
                        examples.push(SoakExample::Failed {
                            failed: key.clone(),
                            at_s: started.duration_since(base).as_secs_f64(),
                            took_ms: ended.duration_since(started).as_millis() as u64,
                            full_mask: state,
                        });
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
    Ok(Soak {
        attempts: k,
        ok,
        echoed,
        expected: expected.values().sum::<u64>(),
        expected_by_kind: expected,
        lost: lost.values().sum::<u64>(),
        lost_by_kind: lost,
        broken,
        examples,
        flips,
        all_full_s,
        elapsed_s: base.elapsed().as_secs_f64(),
    })
}
