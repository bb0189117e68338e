//! The seeds' S4: fill a fleet through its control port, place calls 100 ms
//! apart, probe until the full fleet is no longer picked, free it and probe
//! until it is picked again; each call is attributed to a fleet by the
//! fleets' `/state` counters.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use fleet_sim::{
    client::{Wss, connect},
    report::{S4, S4Call},
};
use rustls::ClientConfig;

use crate::dial::{Target, close, control, outcome, tls};

/// Per fleet: calls_total + answered_429 (every upgrade that reached it).
async fn touches(fleets: &[SocketAddr]) -> anyhow::Result<Vec<u64>> {
    let mut v = Vec::new();
    for f in fleets {
        let s = control(*f, "/state").await?;
        v.push(s["calls_total"].as_u64().unwrap_or(0) + s["answered_429"].as_u64().unwrap_or(0));
    }
    Ok(v)
}

pub struct S4Params {
    pub fleets: Vec<SocketAddr>,
    pub fill: u32,
    pub calls: u32,
    pub interval: Duration,
    pub probes: u32,
    pub recover: Duration,
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

pub async fn s4(t: Target, p: S4Params) -> anyhow::Result<S4> {
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
        calls.push(S4Call {
            i,
            at_ms: at.duration_since(t0).as_millis() as u64,
            status,
            fleets: touched,
        });
    }
    let statuses: Vec<String> = calls[..p.calls as usize].iter().map(|c| c.status.clone()).collect();
    let carrier_429 = calls[..p.calls as usize].iter().filter(|c| c.status == "429").count();
    let not_101 = calls[..p.calls as usize].iter().filter(|c| c.status != "101").count();
    let full_hits = calls.iter().filter(|c| c.fleets.contains(&0)).count();
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
    Ok(S4 {
        statuses,
        carrier_429,
        carrier_not_101: not_101,
        full_fleet_hits: full_hits,
        stop_ms: stopped.then_some(stop_ms),
        recover_ms,
        recover_window_ms: p.recover.as_millis() as u64,
        calls,
    })
}
