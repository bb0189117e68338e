//! `cargo xtask soak [--minutes N]` (not run in CI): the release `ingress`
//! in front of three fleet simulators on loopback, calls opened at a steady
//! rate (20/s, each held 2–10 s and echoing a message every 500 ms) by
//! `loadgen soak`, while its flapper toggles one fleet between full and free
//! every 15 s through the fleets' control ports (a Gray code over the
//! fleets, so "all full" comes round too). Counted: calls that failed while
//! some fleet had free capacity (lost; should be 0), failures while every
//! fleet was full (expected, 503/429), calls whose echo stopped (broken).
//! The ingress's RSS and open fds are sampled after a warm-up (idle), every
//! minute under load, and at the end once calls drained. Files under
//! `target/soak/`. Reuses the bench's processes, configs and certificates.

use std::{
    fs,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use fleet_sim::report::Soak;
use serde::Serialize;
use testbed::Fleet;

use crate::{
    bench::{self, procs::rss_kb, proxies::Kind},
    cargo, root, run,
};

const FLEETS: usize = 3;
/// Per fleet; also the ingress's maxconn per server. The load peaks near
/// 20 calls/s × 10 s = 200, so one free fleet can always take a call.
const WORKERS: u32 = 250;
const PORT: u16 = 18453;
const RATE: u32 = 20;
const FLAP_S: u64 = 15;
const HOLD_MAX_MS: u64 = 10_000;

fn fds(pid: i32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

#[derive(Debug, Clone, Serialize)]
struct Sample {
    label: String,
    rss_kb: u64,
    fds: u64,
}

impl Sample {
    fn take(label: impl Into<String>, pid: i32) -> Self {
        Self {
            label: label.into(),
            rss_kb: rss_kb(pid),
            fds: fds(pid),
        }
    }
}

/// `target/soak/results.json`.
#[derive(Debug, Serialize)]
struct Results<'a> {
    minutes: u64,
    warmup: &'a Soak,
    soak: &'a Soak,
    baseline: &'a Sample,
    per_minute: &'a [Sample],
    end: &'a Sample,
    max: &'a Sample,
}

/// Runs `loadgen soak` for `seconds` (bounded), sampling the ingress every 10 s
/// (`every_minute` gets one sample a minute).
fn load(
    ctx: &bench::Ctx,
    control: &[String],
    seconds: u64,
    flap_s: u64,
    pid: i32,
    every_minute: &mut Vec<Sample>,
    peak: &mut Sample,
) -> anyhow::Result<Soak> {
    let mut cmd = ctx.loadgen(None);
    cmd.arg("soak");
    ctx.target_args(
        &mut cmd,
        std::net::SocketAddr::from(([127, 0, 0, 1], PORT)),
        "/ws/soak-",
    );
    for c in control {
        cmd.args(["--fleet", c]);
    }
    cmd.args(["--workers", &WORKERS.to_string(), "--seconds", &seconds.to_string()])
        .args(["--rate", &RATE.to_string(), "--flap-s", &flap_s.to_string()])
        .args(["--hold-min-ms", "2000", "--hold-max-ms", &HOLD_MAX_MS.to_string()]);
    let out_path = ctx.dir.join(format!("loadgen-soak-{seconds}s.json"));
    let err_path = ctx.dir.join(format!("loadgen-soak-{seconds}s.log"));
    let mut child = cmd
        .stdout(fs::File::create(&out_path)?)
        .stderr(fs::File::create(&err_path)?)
        .stdin(Stdio::null())
        .spawn()
        .context("starting loadgen")?;
    let started = Instant::now();
    let limit = Duration::from_secs(seconds) + Duration::from_millis(HOLD_MAX_MS) + Duration::from_secs(120);
    let mut next_sample = started + Duration::from_secs(10);
    let mut tick = 0u64;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("loadgen soak did not finish within {limit:?}");
        }
        if Instant::now() >= next_sample {
            tick += 1;
            next_sample += Duration::from_secs(10);
            let s = Sample::take(format!("{:.1} min", tick as f64 / 6.0), pid);
            if s.rss_kb > peak.rss_kb {
                peak.rss_kb = s.rss_kb;
            }
            peak.fds = peak.fds.max(s.fds);
            if tick.is_multiple_of(6) {
                eprintln!("soak: {}: RSS {} KiB, {} fds", s.label, s.rss_kb, s.fds);
                every_minute.push(s);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        bail!(
            "loadgen soak failed ({status}): {}",
            fs::read_to_string(&err_path).unwrap_or_default().trim()
        );
    }
    serde_json::from_str(out.lines().last().unwrap_or_default()).with_context(|| format!("loadgen printed {out:?}"))
}

pub fn run_soak(minutes: u64) -> anyhow::Result<()> {
    if minutes == 0 || minutes > 24 * 60 {
        bail!("--minutes between 1 and 1440");
    }
    run(cargo().args(["build", "--release", "-p", "ingress-user", "-p", "fleet-sim"]))?;
    let ctx = bench::prepare_in(root().join("target/soak"), true)?;
    let fleets = ctx.start_fleets(FLEETS, WORKERS, None, "soak")?;
    let control: Vec<String> = fleets.iter().map(|f| f.control.addr.to_string()).collect();
    let spec = ctx.spec(Kind::Ingress, "soak", PORT, &fleets, WORKERS);
    let ingress = ctx.start(&spec, spec.listen)?;
    let pid = ingress.pid();
    let mut peak = Sample::take("max", pid);
    let mut minutes_samples = Vec::new();

    // Warm-up: 20 s of the same calls, no flapping; then drained and idle.
    eprintln!("soak: warm-up (20 s)");
    let warm = load(&ctx, &control, 20, 0, pid, &mut Vec::new(), &mut peak)?;
    drain(&fleets)?;
    let baseline = Sample::take("baseline (idle after warm-up)", pid);
    eprintln!("soak: baseline RSS {} KiB, {} fds", baseline.rss_kb, baseline.fds);

    eprintln!("soak: {minutes} min of calls with the flapper");
    let r = load(
        &ctx,
        &control,
        minutes * 60,
        FLAP_S,
        pid,
        &mut minutes_samples,
        &mut peak,
    )?;
    drain(&fleets)?;
    let end = Sample::take("end (idle, calls drained)", pid);
    peak.rss_kb = peak.rss_kb.max(end.rss_kb);
    peak.fds = peak.fds.max(end.fds);

    println!();
    println!(
        "soak: {minutes} min, {FLEETS} fleets × {WORKERS} workers, {RATE} calls/s held 2–10 s echoing every 500 ms, \
         one fleet toggled full/free every {FLAP_S} s ({} flips, all full for {:.0} s)",
        r.flips, r.all_full_s
    );
    println!(
        "{:<12} {:>8} {:>8} {:>14} {:>8} {:>8}",
        "calls", "attempts", "ok", "503 expected", "lost", "broken"
    );
    println!(
        "{:<12} {:>8} {:>8} {:>14} {:>8} {:>8}",
        "", r.attempts, r.ok, r.expected, r.lost, r.broken
    );
    println!(
        "  expected by kind: {}   lost by kind: {}",
        serde_json::to_string(&r.expected_by_kind)?,
        serde_json::to_string(&r.lost_by_kind)?
    );
    if r.lost + r.broken > 0 {
        println!("  examples: {}", serde_json::to_string(&r.examples)?);
    }
    println!();
    println!("{:<32} {:>10} {:>6}", "ingress", "RSS KiB", "fds");
    for s in std::iter::once(&baseline).chain(&minutes_samples).chain([&end, &peak]) {
        println!("{:<32} {:>10} {:>6}", s.label, s.rss_kb, s.fds);
    }
    println!(
        "end − baseline: RSS {:+} KiB, fds {:+}",
        end.rss_kb as i64 - baseline.rss_kb as i64,
        end.fds as i64 - baseline.fds as i64
    );
    let results = Results {
        minutes,
        warmup: &warm,
        soak: &r,
        baseline: &baseline,
        per_minute: &minutes_samples,
        end: &end,
        max: &peak,
    };
    let path = ctx.dir.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    println!("(results: {})", path.display());
    drop(ingress);
    drop(fleets);
    if r.lost + r.broken > 0 {
        bail!("{} lost and {} broken calls", r.lost, r.broken);
    }
    Ok(())
}

/// Waits (bounded) until no call holds a fleet worker, then for the ingress to close what is left.
fn drain(fleets: &[Fleet]) -> anyhow::Result<()> {
    bench::wait_idle(fleets)?;
    std::thread::sleep(Duration::from_secs(3));
    Ok(())
}
