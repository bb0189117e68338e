//! Figures 6 and 6b: where our CPU goes while setting calls up and while
//! echoing — `perf record` on the daemon, the top frames by self time, the
//! self time split by kind of frame (crypto, kernel, allocator, other) and
//! frame tracking's share.

use std::{process::Command, time::Duration};

use anyhow::bail;
use testbed::{Fleet, Proc, poll::wait_for};

use super::{
    Ctx, port, procs,
    proxies::Kind,
    results::{Frame, Perf, Split},
};

/// Substrings of ring's and the curves' symbols.
const CRYPTO: &[&str] = &[
    "ring_core",
    "nistz256",
    "sha",
    "aes",
    "gcm",
    "x25519",
    "curve25519",
    "p256",
    "bn_",
    "limbs",
    "chacha",
    "poly1305",
];
const ALLOCATOR: &[&str] = &["malloc", "free", "realloc", "memcpy", "memmove", "memset"];

impl Split {
    /// Adds a frame's self time to its kind.
    fn add(&mut self, pct: f64, rest: &str) {
        let sym = rest.to_lowercase();
        let kind = if rest.contains("[k]") {
            &mut self.kernel
        } else if CRYPTO.iter().any(|k| sym.contains(k)) {
            &mut self.crypto
        } else if ALLOCATOR.iter().any(|k| sym.contains(k)) {
            &mut self.allocator
        } else {
            &mut self.other
        };
        *kind += pct;
    }
}

/// `perf report` lines with a sample: (percent, the rest of the line).
fn samples(report: &str) -> impl Iterator<Item = (f64, &str)> {
    report
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('%'))
        .filter_map(|l| {
            let (pct, rest) = l.trim().split_once('%')?;
            Some((pct.trim().parse().ok()?, rest))
        })
}

/// `perf record` on `pid` for `secs` seconds while `load` runs, then the
/// report by self time (kept as `target/bench/perf-{tag}.txt`).
fn profile(
    ctx: &Ctx,
    pid: i32,
    tag: &str,
    secs: u64,
    load: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let data = ctx.dir.join(format!("perf-{tag}.data"));
    let mut rec = Proc::start(
        "perf",
        Command::new("perf")
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "999",
                "-g",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(&data)
            .args(["--", "sleep", &secs.to_string()]),
        Some(&ctx.dir.join(format!("perf-record-{tag}.log"))),
        None,
    )?;
    std::thread::sleep(Duration::from_millis(300));
    load()?;
    wait_for(
        "perf record to finish",
        Duration::from_secs(secs + 30),
        Duration::from_millis(50),
        || !rec.alive(),
    )?;
    let report = procs::output(
        Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "sym",
                "-g",
                "none",
                "-i",
            ])
            .arg(&data),
        Duration::from_secs(120),
    )?;
    std::fs::write(ctx.dir.join(format!("perf-{tag}.txt")), &report)?;
    Ok(report)
}

/// The top five frames of a report and its split by kind.
fn summary(report: &str, during: String) -> anyhow::Result<Perf> {
    let top: Vec<Frame> = samples(report)
        .map(|(percent, rest)| Frame {
            percent,
            symbol: rest
                .trim()
                .trim_start_matches("[.]")
                .trim_start_matches("[k]")
                .trim()
                .to_owned(),
            kernel: rest.contains("[k]"),
        })
        .take(5)
        .collect();
    if top.is_empty() {
        bail!("perf report had no samples (see target/bench/perf-*.txt)");
    }
    let mut split = Split::default();
    for (pct, rest) in samples(report) {
        split.add(pct, rest);
    }
    let share = |needle: &str| {
        samples(report)
            .filter(|(_, r)| r.contains(needle))
            .map(|(p, _)| p)
            .sum::<f64>()
            + 0.0 // an empty float sum is -0.0
    };
    Ok(Perf {
        top,
        split_percent: split,
        frame_tracking_percent: share("FrameCursor"),
        during,
    })
}

/// Figure 6: our profile during a burst of set-ups.
pub(super) fn perf(ctx: &Ctx, fleets: &[Fleet]) -> anyhow::Result<Perf> {
    let s = ctx.sizes;
    let spec = ctx.spec(Kind::Ingress, "perf", port(Kind::Ingress), fleets, s.fleet_workers);
    let addr = spec.listen;
    let p = ctx.start(&spec, addr)?;
    ctx.setups(None, addr, 50, 4, 5000, false)?;
    let secs = if s.reps == 1 { 3 } else { 6 };
    let report = profile(ctx, p.pid(), "setups", secs, || {
        ctx.setups(None, addr, s.perf_setups, s.setup_concurrency, 5000, false)
            .map(drop)
    })?;
    summary(
        &report,
        format!(
            "{} set-ups, perf record -e cpu-clock -F 999 -p <ingress>",
            s.perf_setups
        ),
    )
}

/// Figure 6b: our profile during echo at figure 2's load: how much of it
/// is frame tracking (`FrameCursor`, kept out of line for this).
pub(super) fn perf_echo(ctx: &Ctx, fleets: &[Fleet]) -> anyhow::Result<Perf> {
    let s = ctx.sizes;
    let spec = ctx.spec(Kind::Ingress, "perf-echo", port(Kind::Ingress), fleets, s.fleet_workers);
    let addr = spec.listen;
    let p = ctx.start(&spec, addr)?;
    let secs = 6;
    let report = profile(ctx, p.pid(), "echo", secs, || {
        ctx.echo(addr, "/ws/perf-echo-", secs - 1).map(drop)
    })?;
    super::wait_idle(fleets)?;
    summary(
        &report,
        format!(
            "echo, {} calls × {} msg/s × {} B, perf record -e cpu-clock -F 999 -p <ingress>",
            s.echo_calls, s.echo_rate, s.echo_size
        ),
    )
}
