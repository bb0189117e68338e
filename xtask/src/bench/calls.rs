//! Figures 1–4, measured through each proxy in turn: TLS + upgrade set-ups
//! (proxy CPU per set-up, set-ups/s), echo round trips at a fixed offered
//! load, RSS of idle calls, and the seeds' S4 (a fleet fills behind the
//! proxy's back).

use std::time::Duration;

use anyhow::bail;
use fleet_sim::report::{Echo, IdleOpen, S4};
use testbed::{Fleet, Proc, poll::wait_for};

use super::{
    Ctx, figure, port,
    procs::{Cpu, kernel_kb, loadgen, median, rss_kb},
    proxies::Kind,
    results::{EchoFigure, EchoResult, EchoRun, Figure, IdleFigure, IdleResult, PerProxy, SetupsResult, SetupsRun},
    wait_idle,
};

/// Figure 1: full TLS handshake + upgrade; proxy CPU per set-up and set-ups/s.
/// Which set-ups figure 1 measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Setup {
    /// 1: a full handshake from each carrier, each proxy's default to the fleets.
    Full,
    /// 1b: the same, every proxy on TLS 1.2 to the fleets.
    FleetTls12,
    /// 1c: carriers that resume the session the proxy issued them.
    CarrierResumed,
}

/// Figure 1, 1b or 1c: proxy CPU per TLS + upgrade set-up.
pub(super) fn setups(ctx: &Ctx, fleets: &[Fleet], which: Setup) -> anyhow::Result<PerProxy<SetupsResult>> {
    let s = ctx.sizes;
    let tag = match which {
        Setup::Full => "load",
        Setup::FleetTls12 => "load-tls12",
        Setup::CarrierResumed => "load-resumed",
    };
    let resume = which == Setup::CarrierResumed;
    Ok(PerProxy::measure(|kind| {
        figure(&format!("  set-ups ({tag}) through {}", kind.key()), || {
            let mut spec = ctx.spec(kind, tag, port(kind), fleets, s.fleet_workers);
            spec.fleet_tls12 = which == Setup::FleetTls12;
            let addr = spec.listen;
            let p = ctx.start(&spec, addr)?;
            // Warm-up (first allocations, session caches to the fleets).
            ctx.setups(None, addr, 50, 4, 5000, resume)?;
            let mut runs = Vec::new();
            for _ in 0..s.reps {
                let cpu = Cpu::read(p.pid());
                let r = ctx.setups(None, addr, s.setups, s.setup_concurrency, 5000, resume)?;
                let cpu_ms = cpu.since(p.pid());
                runs.push(SetupsRun {
                    cpu_ms,
                    ok: r.ok,
                    outcomes: r.outcomes,
                    cpu_ms_per_setup: (r.ok > 0).then(|| cpu_ms / r.ok as f64),
                    setups_per_s: r.ok_per_s,
                    setup_ms: r.ok_ms,
                });
            }
            wait_idle(fleets)?;
            Ok(SetupsResult {
                cpu_ms_per_setup: median(runs.iter().filter_map(|r| r.cpu_ms_per_setup).collect()),
                setups_per_s: median(runs.iter().map(|r| r.setups_per_s).collect()),
                failed: runs.iter().map(|r| u64::from(s.setups) - r.ok).sum(),
                runs,
            })
        })
    }))
}

/// Figure 2: echo round trips at a fixed offered load. Every proxy is up
/// at once (its own port, the same core) and the repetitions alternate
/// (ours, HAProxy, nginx; HAProxy, nginx, ours; …), so a slow minute of the
/// machine falls on one repetition of each rather than on one proxy's three.
pub(super) fn echo(ctx: &Ctx, fleets: &[Fleet]) -> anyhow::Result<EchoFigure> {
    let s = ctx.sizes;
    let running = PerProxy::measure(|kind| {
        figure(&format!("  start {} for echo", kind.key()), || {
            let spec = ctx.spec(kind, "echo", port(kind), fleets, s.fleet_workers);
            Ok((ctx.start(&spec, spec.listen)?, spec.listen))
        })
    });
    let mut runs: [Result<Vec<EchoRun>, String>; 3] = std::array::from_fn(|_| Ok(Vec::new()));
    for rep in 0..s.reps {
        // Each repetition starts with the next proxy: none always goes first.
        for kind in (0..3).map(|k| Kind::ALL[(k + rep) % 3]) {
            let i = kind.index();
            let (Ok((p, addr)), Ok(done)) = (running.get(kind).get(), runs[i].as_mut()) else {
                continue;
            };
            let run = figure(
                &format!("  echo through {} ({} of {})", kind.key(), rep + 1, s.reps),
                || {
                    let cpu = Cpu::read(p.pid());
                    let load = ctx.echo(*addr, "/ws/echo-", s.echo_secs)?;
                    let run = EchoRun {
                        load,
                        proxy_cpu_ms: cpu.since(p.pid()),
                    };
                    wait_idle(fleets)?;
                    Ok(run)
                },
            );
            match run {
                Figure::Done(r) => done.push(r),
                Figure::Missing { missing } => runs[i] = Err(missing),
            }
        }
    }
    let mut runs = runs.map(Some);
    let proxies = PerProxy::measure(|kind| {
        if let Err(m) = running.get(kind).get() {
            return Figure::missing(m);
        }
        match runs[kind.index()]
            .take()
            .unwrap_or_else(|| Err("measured twice".into()))
        {
            Err(m) => Figure::missing(m),
            Ok(runs) => {
                let ms = |pick: fn(&Echo) -> Option<f64>| median(runs.iter().filter_map(|r| pick(&r.load)).collect());
                Figure::Done(EchoResult {
                    p50_ms: ms(|e| e.rtt_us.p50.map(|us| us / 1000.0)),
                    p99_ms: ms(|e| e.rtt_us.p99.map(|us| us / 1000.0)),
                    p999_ms: ms(|e| e.rtt_us.p999.map(|us| us / 1000.0)),
                    lost: runs.iter().map(|r| r.load.lost).sum(),
                    sent: runs.iter().map(|r| r.load.sent).sum(),
                    proxy_cpu_ms: median(runs.iter().map(|r| r.proxy_cpu_ms).collect()),
                    runs,
                })
            }
        }
    });
    drop(running);
    Ok(EchoFigure {
        offered: format!(
            "{} calls × {} msg/s × {} B for {} s",
            s.echo_calls, s.echo_rate, s.echo_size, s.echo_secs
        ),
        proxies,
    })
}

/// Figure 3: RSS with N idle calls held open.
pub(super) fn idle(ctx: &Ctx, fleets: &[Fleet]) -> anyhow::Result<IdleFigure> {
    let s = ctx.sizes;
    let proxies = PerProxy::measure(|kind| {
        figure(&format!("  idle calls through {}", kind.key()), || {
            let spec = ctx.spec(kind, "idle", port(kind), fleets, s.fleet_workers);
            let addr = spec.listen;
            let p = ctx.start(&spec, addr)?;
            std::thread::sleep(Duration::from_secs(1));
            let base = rss_kb(p.pid());
            let hold = |n: u32, tag: &str| -> anyhow::Result<Proc> {
                let mut cmd = ctx.loadgen(None);
                cmd.arg("idle");
                ctx.target_args(&mut cmd, addr, &format!("/ws/idle-{tag}-"));
                cmd.args(["--calls", &n.to_string(), "--concurrency", "32", "--hold-max-s", "300"]);
                let g = Proc::start(
                    "loadgen idle",
                    &mut cmd,
                    Some(&ctx.dir.join(format!("loadgen-idle-{tag}.log"))),
                    Some(Duration::from_secs(240)),
                )?;
                let open = serde_json::from_value::<IdleOpen>(g.ready.clone()).map_or(0, |r| r.open);
                if open != n as usize {
                    bail!("only {open} of {n} idle calls opened: {}", g.ready);
                }
                Ok(g)
            };
            let mut groups = vec![hold(s.idle_low, "a")?];
            std::thread::sleep(Duration::from_secs(1));
            let (rss_low, kernel_low) = (rss_kb(p.pid()), kernel_kb());
            groups.push(hold(s.idle_high - s.idle_low, "b")?);
            std::thread::sleep(Duration::from_secs(1));
            let (rss_high, kernel_high) = (rss_kb(p.pid()), kernel_kb());
            // The third point is the edge of what descriptors allow: its
            // failure leaves the slope standing.
            let rss_top_kb = match s.idle_top.map(|top| hold(top - s.idle_high, "c")) {
                Some(Ok(g)) => {
                    groups.push(g);
                    std::thread::sleep(Duration::from_secs(1));
                    Some(rss_kb(p.pid()))
                }
                Some(Err(e)) => {
                    eprintln!("bench: the {:?}-call point through {}: {e:#}", s.idle_top, kind.key());
                    None
                }
                None => None,
            };
            for g in &mut groups {
                drop(g.stdin.take());
            }
            let _ = wait_for(
                "idle loadgens to close their calls",
                Duration::from_secs(30),
                Duration::from_millis(50),
                || groups.iter_mut().all(|g| !g.alive()),
            );
            drop(groups);
            drop(p);
            wait_idle(fleets)?;
            let calls = f64::from(s.idle_high - s.idle_low);
            let per_call = (rss_high as f64 - rss_low as f64) / calls;
            Ok(IdleResult {
                base_kb: base,
                rss_low_kb: rss_low,
                rss_high_kb: rss_high,
                rss_top_kb,
                kb_per_call: per_call,
                kb_per_call_from_base: (rss_low as f64 - base as f64) / f64::from(s.idle_low),
                mb_per_1000_calls: per_call * 1000.0 / 1024.0,
                kernel_kb_per_call: (kernel_high as f64 - kernel_low as f64) / calls,
            })
        })
    });
    Ok(IdleFigure {
        low: s.idle_low,
        high: s.idle_high,
        top: s.idle_top,
        proxies,
    })
}

/// Figure 4: the seeds' S4 with fleets of 16 and a 1 s check.
pub(super) fn s4(ctx: &Ctx) -> anyhow::Result<PerProxy<S4>> {
    let s = ctx.sizes;
    Ok(PerProxy::measure(|kind| {
        figure(&format!("  S4 through {}", kind.key()), || {
            let fleets = ctx.start_fleets(2, 16, None, &format!("s4-{}", kind.key()))?;
            let spec = ctx.spec(kind, "s4", port(kind), &fleets, 16);
            let addr = spec.listen;
            let _p = ctx.start(&spec, addr)?;
            let mut cmd = ctx.loadgen(None);
            cmd.arg("s4");
            ctx.target_args(&mut cmd, addr, "/ws/");
            for f in &fleets {
                cmd.arg("--fleet").arg(f.control.addr.to_string());
            }
            cmd.args(["--fill", "16", "--calls", "8", "--interval-ms", "100"])
                .args([
                    "--probes",
                    &s.s4_probes.to_string(),
                    "--recover-s",
                    &s.s4_recover_s.to_string(),
                ]);
            loadgen(&mut cmd, Duration::from_secs(s.s4_recover_s + 120))
        })
    }))
}
