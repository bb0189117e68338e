//! Figure 6: where our CPU goes while setting calls up — `perf record` on
//! the daemon during a burst of set-ups, the top frames by self time and the
//! self time split by kind of frame (crypto, kernel, allocator, other).

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

pub(super) fn perf(ctx: &Ctx, fleets: &[Fleet]) -> anyhow::Result<Perf> {
    let s = ctx.sizes;
    let spec = ctx.spec(Kind::Ingress, "perf", port(Kind::Ingress), fleets, s.fleet_workers);
    let addr = spec.listen;
    let p = ctx.start(&spec, addr)?;
    ctx.setups(None, addr, 50, 4, 5000, false)?;
    let data = ctx.dir.join("perf.data");
    let secs = if s.reps == 1 { 3 } else { 6 };
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
                &p.pid().to_string(),
                "-o",
            ])
            .arg(&data)
            .args(["--", "sleep", &secs.to_string()]),
        Some(&ctx.dir.join("perf-record.log")),
        None,
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let _ = ctx.setups(None, addr, s.perf_setups, s.setup_concurrency, 5000, false)?;
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
    std::fs::write(ctx.dir.join("perf-report.txt"), &report)?;
    let top: Vec<Frame> = samples(&report)
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
        bail!("perf report had no samples (see target/bench/perf-report.txt)");
    }
    let mut split = Split::default();
    for (pct, rest) in samples(&report) {
        split.add(pct, rest);
    }
    Ok(Perf {
        top,
        split_percent: split,
        during: format!(
            "{} set-ups, perf record -e cpu-clock -F 999 -p <ingress>",
            s.perf_setups
        ),
    })
}
