//! Figure 7: how cost grows with the number of fleets. With 2, 10 and 50
//! fleets behind one pool, ours and HAProxy (nginx has no active checks):
//! CPU per second with no call at a 1 s and a 200 ms check interval (ours
//! also with XDP attached, and with probes keeping their connection), and
//! CPU per TLS + upgrade set-up. The proxy and
//! its fleets run in a namespace and carriers dial over a veth, as in
//! figure 5, so XDP attaches where it would in production.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use testbed::NetPair;

use super::{
    Ctx, figure,
    procs::Cpu,
    proxies::Kind,
    results::{Figure, Growth, GrowthRun},
    storm::{Pins, attached},
    wait_idle,
};

/// The fleet counts measured.
const FLEETS: [usize; 3] = [2, 10, 50];

/// Workers per fleet: enough for the set-ups' concurrency on two fleets.
const WORKERS: u32 = 64;

/// One proxy configuration of the figure.
struct Config {
    name: &'static str,
    kind: Kind,
    xdp: bool,
    check_interval_ms: u64,
    /// Ours: probes keep their connection (`reuse_connection`).
    reuse: bool,
    /// Also measure set-ups (once per proxy, at the 1 s interval, XDP off).
    setups: bool,
}

const CONFIGS: [Config; 6] = [
    Config {
        name: "ours, 1 s checks",
        kind: Kind::Ingress,
        xdp: false,
        check_interval_ms: 1000,
        reuse: false,
        setups: true,
    },
    Config {
        name: "ours, 1 s checks, XDP attached",
        kind: Kind::Ingress,
        xdp: true,
        check_interval_ms: 1000,
        reuse: false,
        setups: false,
    },
    Config {
        name: "ours, 200 ms checks",
        kind: Kind::Ingress,
        xdp: false,
        check_interval_ms: 200,
        reuse: false,
        setups: false,
    },
    Config {
        name: "ours, 200 ms checks, kept connections",
        kind: Kind::Ingress,
        xdp: false,
        check_interval_ms: 200,
        reuse: true,
        setups: false,
    },
    Config {
        name: "HAProxy, 1 s checks",
        kind: Kind::Haproxy,
        xdp: false,
        check_interval_ms: 1000,
        reuse: false,
        setups: true,
    },
    Config {
        name: "HAProxy, 200 ms checks",
        kind: Kind::Haproxy,
        xdp: false,
        check_interval_ms: 200,
        reuse: false,
        setups: false,
    },
];

pub(super) fn growth(ctx: &Ctx) -> anyhow::Result<Growth> {
    let s = ctx.sizes;
    let pair = NetPair::new('g')?;
    let ns = pair.ingress_ns.clone();
    let port = 18443;
    let dial = SocketAddr::from((pair.ingress_ip, port));
    let mut runs = Vec::new();
    for n in FLEETS {
        let fleets = ctx.start_fleets(n, WORKERS, Some(&ns), &format!("growth-{n}"))?;
        for c in &CONFIGS {
            let run = figure(&format!("  {n} fleets: {}", c.name), || -> anyhow::Result<GrowthRun> {
                let pins = Pins::new(&format!("growth-{n}"));
                let tag = format!(
                    "growth-{n}-{}-{}{}",
                    c.kind.key(),
                    c.check_interval_ms,
                    if c.reuse { "-kept" } else { "" }
                );
                let mut spec = ctx.spec_in_pair(
                    &pair,
                    (c.kind, &tag, port),
                    &fleets,
                    WORKERS,
                    c.xdp.then_some(("drop", None, pins.0.as_path())),
                );
                spec.check_interval_ms = c.check_interval_ms;
                spec.reuse_checks = c.reuse;
                let p = ctx.start(&spec, dial)?;
                if c.xdp {
                    attached(&p)?;
                }
                let cpu = Cpu::read(p.pid());
                let at = Instant::now();
                std::thread::sleep(Duration::from_secs(s.growth_idle_s));
                let idle_cpu_ms_per_s = cpu.since(p.pid()) / at.elapsed().as_secs_f64();
                let mut cpu_ms_per_setup = None;
                if c.setups {
                    // Warm-up: a session to each fleet.
                    ctx.setups(Some(&pair.carrier_ns), dial, 4 * n as u32, 4, 5000, false)?;
                    wait_idle(&fleets)?;
                    let cpu = Cpu::read(p.pid());
                    let at = Instant::now();
                    let r = ctx.setups(Some(&pair.carrier_ns), dial, s.growth_setups, 16, 5000, false)?;
                    let ms = cpu.since(p.pid()) - idle_cpu_ms_per_s * at.elapsed().as_secs_f64();
                    cpu_ms_per_setup = (r.ok > 0).then(|| ms.max(0.0) / r.ok as f64);
                    wait_idle(&fleets)?;
                }
                Ok(GrowthRun {
                    fleets: n,
                    name: c.name.to_owned(),
                    check_interval_ms: c.check_interval_ms,
                    idle_cpu_ms_per_s,
                    cpu_ms_per_setup,
                })
            });
            runs.push(run);
        }
    }
    drop(pair);
    Ok(Growth {
        setups: s.growth_setups,
        idle_s: s.growth_idle_s,
        runs,
    })
}

/// Figure 7 as a table: one row per measure, one column per fleet count.
pub(super) fn table(g: &Figure<Growth>) -> String {
    let g = match g.get() {
        Ok(g) => g,
        Err(m) => return format!("7. how cost grows: {}\n", super::report::missing(m)),
    };
    let mut out = format!(
        "7. how cost grows with the fleets behind one pool (proxy and fleets in a namespace, carriers over a veth; CPU ms per second with no call over {} s, and per set-up net of that over {} set-ups):\n\n",
        g.idle_s, g.setups
    );
    let head: Vec<String> = FLEETS.iter().map(|n| format!("{n} fleets")).collect();
    let _ = writeln!(out, "| measure | {} |", head.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(FLEETS.len()));
    let cell = |name: &str, n: usize, pick: fn(&GrowthRun) -> Option<f64>, decimals: usize| {
        g.runs
            .iter()
            .find_map(|r| match r.get() {
                Ok(r) if r.fleets == n && r.name == name => {
                    Some(pick(r).map_or("missing".into(), |v| format!("{v:.decimals$}")))
                }
                _ => None,
            })
            .unwrap_or_else(|| "missing".into())
    };
    for c in &CONFIGS {
        let cells: Vec<String> = FLEETS
            .iter()
            .map(|n| cell(c.name, *n, |r| Some(r.idle_cpu_ms_per_s), 2))
            .collect();
        let _ = writeln!(out, "| {}: CPU ms/s, no call | {} |", c.name, cells.join(" | "));
    }
    for c in CONFIGS.iter().filter(|c| c.setups) {
        let cells: Vec<String> = FLEETS
            .iter()
            .map(|n| cell(c.name, *n, |r| r.cpu_ms_per_setup, 3))
            .collect();
        let _ = writeln!(
            out,
            "| {} (XDP off): CPU ms per set-up | {} |",
            c.name,
            cells.join(" | ")
        );
    }
    for r in &g.runs {
        if let Err(m) = r.get() {
            let _ = writeln!(out, "\n{}", super::report::missing(m));
        }
    }
    out.push('\n');
    out
}
