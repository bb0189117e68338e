//! `cargo xtask fuzz [--seconds N] [--target NAME]`: coverage-guided fuzzing
//! of ingress-user's parsers with cargo-fuzz (libFuzzer), targets in `fuzz/`
//! (its own workspace). Each target runs for N seconds on its corpus
//! (`fuzz/corpus/TARGET`, kept between runs, not committed) plus the
//! committed seeds (`fuzz/seeds/TARGET`); a table of executions, coverage and
//! crashes follows. A crash leaves its input in `fuzz/artifacts/TARGET/`;
//! replay it with `fuzz/target/x86_64-unknown-linux-gnu/release/TARGET FILE`.
//!
//! Toolchain: cargo-fuzz needs a nightly `rustc` (sanitizer flags). The
//! nightly toolchain here has no `rust-src`, which ingress-user's build.rs
//! needs to build the eBPF object (`-Z build-std=core`), and nothing can
//! download it. So the fuzz crate is compiled by nightly `rustc` (`RUSTC`,
//! which cargo-fuzz honours) under the default `cargo`, while build.rs,
//! which picks its toolchain from `RUSTUP_TOOLCHAIN` (unset → stable),
//! builds the eBPF object with stable and its `rust-src` as in any build.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};

use crate::{root, run, setup};

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Every target in `fuzz/fuzz_targets/`, in the order they run.
pub const TARGETS: [&str; 9] = [
    "config",
    "servers_file",
    "health_body",
    "route",
    "http_head",
    "head_rest",
    "frames",
    "admin_body",
    "xdp_packet",
];

/// Installs cargo-fuzz into `target/xtask-tools/cargo-fuzz/` unless the pinned version is there.
fn cargo_fuzz() -> anyhow::Result<PathBuf> {
    let dir = setup::tools_dir().join("cargo-fuzz");
    let bin = dir.join("bin/cargo-fuzz");
    let stamp = dir.join("stamp");
    let stamp_value = format!("cargo-fuzz {CARGO_FUZZ_VERSION}\n");
    if bin.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_value.as_str()) {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (a few minutes)",
        dir.display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
            "--locked",
            "--force",
        ])
        .arg("--root")
        .arg(&dir))?;
    fs::write(&stamp, stamp_value)?;
    Ok(bin)
}

/// The nightly toolchain's own `rustc` (not the rustup proxy).
fn nightly_rustc() -> anyhow::Result<PathBuf> {
    let out = Command::new("rustup")
        .args(["which", "--toolchain", "nightly", "rustc"])
        .output()
        .context("starting rustup")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain (rustup which: {}); cargo-fuzz needs one",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn fuzz_cmd(cargo_fuzz: &Path, rustc: &Path) -> Command {
    let mut cmd = Command::new(cargo_fuzz);
    cmd.arg("fuzz").current_dir(root()).env("RUSTC", rustc);
    cmd
}

/// What one run reported.
#[derive(Debug, Default)]
struct Outcome {
    execs: Option<u64>,
    exec_per_s: Option<u64>,
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: Option<String>,
    crashes: Vec<PathBuf>,
    note: String,
}

/// Reads libFuzzer's output: `-print_final_stats` lines and the last status line
/// (`#N DONE cov: C ft: F corp: U/Sb ...`).
fn parse_log(log: &str, out: &mut Outcome) {
    let stat = |name: &str| -> Option<u64> {
        log.lines()
            .rev()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
    };
    out.execs = stat("number_of_executed_units");
    out.exec_per_s = stat("average_exec_per_sec");
    let Some(status) = log.lines().rev().find(|l| l.starts_with('#') && l.contains(" cov: ")) else {
        return;
    };
    let words: Vec<&str> = status.split_whitespace().collect();
    let after = |key: &str| words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1));
    out.cov = after("cov:").and_then(|v| v.parse().ok());
    out.ft = after("ft:").and_then(|v| v.parse().ok());
    out.corpus = after("corp:").map(|v| (*v).to_owned());
    if out.execs.is_none() {
        out.execs = words.first().and_then(|w| w.trim_start_matches('#').parse().ok());
    }
}

/// Crash, leak, timeout and OOM inputs written since `since`.
fn new_artifacts(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since))
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| ["crash-", "leak-", "timeout-", "oom-"].iter().any(|k| n.starts_with(k)))
        })
        .collect();
    found.sort();
    found
}

fn run_target(cargo_fuzz: &Path, rustc: &Path, target: &str, seconds: u64, logs: &Path) -> anyhow::Result<Outcome> {
    let fuzz = root().join("fuzz");
    let corpus = fuzz.join("corpus").join(target);
    let seeds = fuzz.join("seeds").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    fs::create_dir_all(&corpus)?;
    fs::create_dir_all(&artifacts)?;
    let log_path = logs.join(format!("{target}.log"));
    let log = fs::File::create(&log_path)?;
    let started = SystemTime::now();
    let mut cmd = fuzz_cmd(cargo_fuzz, rustc);
    cmd.args(["run", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null());
    eprintln!("xtask: fuzzing {target} for {seconds} s (log: {})", log_path.display());
    let mut child = cmd.spawn().context("starting cargo-fuzz")?;
    // Bounded: the run itself, plus room for a rebuild and libFuzzer's final merge.
    let limit = Duration::from_secs(seconds + 900);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let mut out = Outcome::default();
    parse_log(&text, &mut out);
    out.crashes = new_artifacts(&artifacts, started);
    out.note = match status {
        None => format!("killed after {limit:?}"),
        Some(s) if s.success() => String::new(),
        Some(s) if out.crashes.is_empty() => {
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            format!("exit {s}: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
        }
        Some(_) => format!("see {}", log_path.display()),
    };
    Ok(out)
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

pub fn run_fuzz(seconds: u64, only: &[String]) -> anyhow::Result<()> {
    if let Some(bad) = only.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        bail!("--target {bad}: one of {TARGETS:?} expected");
    }
    let targets: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t))
        .collect();
    if targets.contains(&"xdp_packet") && !nix::unistd::geteuid().is_root() {
        bail!("the xdp_packet target runs BPF_PROG_TEST_RUN and needs root (or choose --target)");
    }
    setup::setup()?;
    let cargo_fuzz = cargo_fuzz()?;
    let rustc = nightly_rustc()?;
    // One build of every target first, so the timed runs only fuzz.
    // (cargo-fuzz builds one target or all of them.)
    let mut build = fuzz_cmd(&cargo_fuzz, &rustc);
    build.arg("build");
    if let [one] = targets.as_slice() {
        build.arg(one);
    }
    run(&mut build)?;
    let logs = root().join("target/fuzz-logs");
    fs::create_dir_all(&logs)?;
    let mut rows = Vec::new();
    for t in &targets {
        let out = run_target(&cargo_fuzz, &rustc, t, seconds, &logs)?;
        rows.push((*t, out));
    }
    println!();
    println!(
        "{:<13} {:>7} {:>12} {:>8} {:>7} {:>8} {:>12} {:>8}",
        "target", "seconds", "executions", "exec/s", "cov", "ft", "corpus", "crashes"
    );
    for (t, o) in &rows {
        println!(
            "{:<13} {:>7} {:>12} {:>8} {:>7} {:>8} {:>12} {:>8}  {}",
            t,
            seconds,
            show(o.execs),
            show(o.exec_per_s),
            show(o.cov),
            show(o.ft),
            o.corpus.as_deref().unwrap_or("-"),
            o.crashes.len(),
            o.note
        );
    }
    let crashes: Vec<&PathBuf> = rows.iter().flat_map(|(_, o)| &o.crashes).collect();
    let failed: Vec<&str> = rows
        .iter()
        .filter(|(_, o)| !o.note.is_empty() && o.crashes.is_empty())
        .map(|(t, _)| *t)
        .collect();
    for c in &crashes {
        println!("crash input: {}", c.display());
    }
    if !crashes.is_empty() {
        bail!(
            "{} crash input(s); make each a regression test and fix the bug",
            crashes.len()
        );
    }
    if !failed.is_empty() {
        bail!("fuzzing did not complete for {failed:?} (logs in {})", logs.display());
    }
    Ok(())
}
