//! `cargo xtask bench [--quick]`: our `ingress` side by side with HAProxy and
//! nginx from Debian's packages, each pinned to the same single core with one
//! worker and an equivalent config, against the same Rust fleet simulators
//! (pinned to the other core), driven by our load generator (`loadgen`).
//! Traffic stays on loopback or in two namespaces the bench makes itself;
//! every load loop is bounded in count and time; every child is stopped on
//! the way out, errors included. Results: a table on stdout, `results.json`,
//! `chart.svg` and `README-performance.md` under `target/bench/`.
//! A figure that cannot be measured here is reported as `missing: reason`.

mod net;
pub(crate) mod procs;
pub(crate) mod proxies;
mod report;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use fleet_sim::pki::TestCa;
use serde_json::{Value, json};

use testbed::NetPair;

use self::{
    procs::{Cpu, Proc, admin_get, bench_dir, http_get, loadgen, median, pinned, rss_kb, softirq_ms, wait_for},
    proxies::{Kind, Pki, Running, Spec, Xdp},
};
use crate::{cargo, root, setup};

/// Debian packages the bench runs (its own instances, never the system services).
const BENCH_PACKAGES: &[&str] = &[
    "haproxy",
    "nginx",
    "linux-perf",
    "netsniff-ng",
    "hping3",
    "ethtool",
    "iproute2",
    "util-linux",
];

/// The core the proxy under test gets; everything else runs on the other.
const PROXY_CORE: u32 = 1;
const LOAD_CORE: u32 = 0;

/// How much of everything, full or `--quick`.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    reps: usize,
    setups: u32,
    setup_concurrency: u32,
    echo_calls: u32,
    echo_rate: u32,
    echo_size: usize,
    echo_secs: u64,
    idle_low: u32,
    idle_high: u32,
    fleet_workers: u32,
    storm: u32,
    flood: u64,
    perf_setups: u32,
    s4_probes: u32,
    s4_recover_s: u64,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                reps: 1,
                setups: 600,
                setup_concurrency: 16,
                echo_calls: 200,
                echo_rate: 20,
                echo_size: 320,
                echo_secs: 5,
                idle_low: 1000,
                idle_high: 2000,
                fleet_workers: 1500,
                storm: 300,
                flood: 300_000,
                perf_setups: 400,
                s4_probes: 30,
                s4_recover_s: 12,
            }
        } else {
            Self {
                reps: 3,
                setups: 2000,
                setup_concurrency: 16,
                echo_calls: 200,
                echo_rate: 20,
                echo_size: 320,
                echo_secs: 20,
                idle_low: 1000,
                idle_high: 5000,
                fleet_workers: 3000,
                storm: 1000,
                flood: 2_000_000,
                perf_setups: 1500,
                s4_probes: 40,
                s4_recover_s: 15,
            }
        }
    }
}

pub(crate) struct Ctx {
    pub(crate) dir: PathBuf,
    pub(crate) bins: PathBuf,
    pub(crate) pki: Pki,
    sizes: Sizes,
}

impl Ctx {
    pub(crate) fn loadgen(&self, netns: Option<&str>) -> Command {
        pinned(LOAD_CORE, netns, &self.bins.join("loadgen"))
    }

    pub(crate) fn target_args(&self, cmd: &mut Command, addr: SocketAddr, path: &str) {
        cmd.arg("--addr")
            .arg(addr.to_string())
            .arg("--ca")
            .arg(&self.pki.ca)
            .arg("--path")
            .arg(path);
    }

    fn setups(
        &self,
        netns: Option<&str>,
        addr: SocketAddr,
        count: u32,
        conc: u32,
        timeout_ms: u64,
    ) -> anyhow::Result<Value> {
        let mut cmd = self.loadgen(netns);
        cmd.arg("setups");
        self.target_args(&mut cmd, addr, "/ws/setup-");
        cmd.args(["--count", &count.to_string(), "--concurrency", &conc.to_string()])
            .args(["--timeout-ms", &timeout_ms.to_string()]);
        loadgen(&mut cmd, Duration::from_secs(600))
    }

    pub(crate) fn start_fleets(
        &self,
        n: usize,
        workers: u32,
        netns: Option<&str>,
        tag: &str,
    ) -> anyhow::Result<Vec<Fleet>> {
        (0..n)
            .map(|i| {
                let mut cmd = pinned(LOAD_CORE, netns, &self.bins.join("fleet-sim"));
                cmd.arg("--cert").arg(&self.pki.fleet_bundle).args([
                    "--workers",
                    &workers.to_string(),
                    "--threads",
                    "1",
                ]);
                let log = self.dir.join(format!("fleet-{tag}-{}.log", i + 1));
                let proc = Proc::start(
                    &format!("fleet{}", i + 1),
                    &mut cmd,
                    Some(&log),
                    Some(Duration::from_secs(20)),
                )?;
                let addr = |k: &str| -> anyhow::Result<SocketAddr> {
                    proc.ready[k]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .context("fleet address")
                };
                Ok(Fleet {
                    https: addr("https")?,
                    control: addr("control")?,
                    netns: netns.map(str::to_owned),
                    _proc: proc,
                })
            })
            .collect()
    }

    pub(crate) fn spec(&self, kind: Kind, tag: &str, port: u16, fleets: &[Fleet], maxconn: u32) -> Spec {
        Spec {
            kind,
            tag: tag.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            fleets: fleets.iter().map(|f| f.https).collect(),
            maxconn,
            check_interval_ms: 1000,
            xdp: None,
            netns: None,
            core: PROXY_CORE,
        }
    }

    pub(crate) fn start(&self, spec: &Spec, probe: SocketAddr) -> anyhow::Result<Running> {
        proxies::start(&self.dir, &self.bins, &self.pki, spec, probe)
    }
}

pub(crate) struct Fleet {
    _proc: Proc,
    https: SocketAddr,
    pub(crate) control: SocketAddr,
    netns: Option<String>,
}

impl Fleet {
    fn control(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = http_get(self.netns.as_deref(), self.control, path)?;
        if status != 200 {
            bail!("fleet control {path}: {status} {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Waits (bounded) until no call holds a worker.
    pub(crate) fn wait_idle(&self) -> anyhow::Result<()> {
        wait_for("fleet calls to end", Duration::from_secs(30), || {
            self.control("/state").is_ok_and(|s| s["calls"] == 0)
        })
    }
}

fn port(kind: Kind) -> u16 {
    match kind {
        Kind::Ingress => 18443,
        Kind::Haproxy => 18444,
        Kind::Nginx => 18445,
    }
}

/// Runs a figure; an error becomes `{"missing": reason}` instead of stopping the bench.
fn figure(name: &str, f: impl FnOnce() -> anyhow::Result<Value>) -> Value {
    eprintln!("bench: {name} …");
    let started = Instant::now();
    match f() {
        Ok(v) => {
            eprintln!("bench: {name} done in {:.0?}", started.elapsed());
            v
        }
        Err(e) => {
            eprintln!("bench: {name} missing: {e:#}");
            json!({"missing": format!("{e:#}")})
        }
    }
}

pub fn run(quick: bool, only: &[String]) -> anyhow::Result<()> {
    const FIGURES: [&str; 6] = ["setups", "echo", "perf", "idle", "s4", "storm"];
    if let Some(bad) = only.iter().find(|o| !FIGURES.contains(&o.as_str())) {
        bail!("--only {bad}: one of {FIGURES:?} expected");
    }
    let wanted = |f: &str| only.is_empty() || only.iter().any(|o| o == f);
    if !nix::unistd::geteuid().is_root() {
        bail!("cargo xtask bench needs root (Debian packages, namespaces, XDP, perf)");
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!("cargo xtask bench needs two cores (one for the proxy, one for the load)");
    }
    setup::setup()?;
    setup::debian_packages(BENCH_PACKAGES)?;
    crate::run(cargo().args(["build", "--release", "-p", "ingress-user", "-p", "fleet-sim"]))?;
    let started = Instant::now();
    let ctx = prepare(quick)?;
    let mut results = json!({
        "meta": meta(quick),
    });
    let skipped = || json!({"missing": "not run (--only)"});
    for f in FIGURES {
        results[f] = skipped();
    }
    if ["setups", "echo", "perf", "idle"].iter().any(|f| wanted(f)) {
        let fleets = ctx.start_fleets(2, ctx.sizes.fleet_workers, None, "load")?;
        if wanted("setups") {
            results["setups"] = figure("1. TLS + upgrade set-ups", || setups(&ctx, &fleets));
        }
        if wanted("echo") {
            results["echo"] = figure("2. echo round trips", || echo(&ctx, &fleets));
        }
        if wanted("perf") {
            results["perf"] = figure("6. CPU profile of ours", || perf(&ctx, &fleets));
        }
        if wanted("idle") {
            results["idle"] = figure("3. RSS of idle calls", || idle(&ctx, &fleets));
        }
    }
    if wanted("s4") {
        results["s4"] = figure("4. S4: a fleet fills behind our back", || s4(&ctx));
    }
    if wanted("storm") {
        results["storm"] = figure("5. carrier storm and SYN flood", || storm(&ctx));
    }
    results["meta"]["elapsed_s"] = json!(started.elapsed().as_secs());
    report::write(&ctx.dir, &results)
}

fn prepare(quick: bool) -> anyhow::Result<Ctx> {
    prepare_in(bench_dir(), quick)
}

/// A fresh `dir` with a throwaway CA, the front certificate and the fleets' certificate.
pub(crate) fn prepare_in(dir: PathBuf, quick: bool) -> anyhow::Result<Ctx> {
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("certs"))?;
    let ca = TestCa::new("ingress bench CA")?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem)?;
    let front = ca.issue(&["localhost", "127.0.0.1", "10.78.0.1"])?;
    let bundle = dir.join("certs/localhost.pem");
    std::fs::write(&bundle, front.bundle())?;
    std::fs::write(dir.join("front-cert.pem"), &front.cert_pem)?;
    std::fs::write(dir.join("front-key.pem"), &front.key_pem)?;
    let fleet_bundle = dir.join("fleet.pem");
    std::fs::write(&fleet_bundle, ca.issue(&["localhost", "127.0.0.1"])?.bundle())?;
    Ok(Ctx {
        bins: root().join("target/release"),
        pki: Pki {
            ca: ca_path,
            certs_dir: dir.join("certs"),
            bundle,
            cert: dir.join("front-cert.pem"),
            key: dir.join("front-key.pem"),
            fleet_bundle,
        },
        dir,
        sizes: Sizes::new(quick),
    })
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            let s = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default()
}

fn meta(quick: bool) -> Value {
    json!({
        "quick": quick,
        "sizes": format!("{:?}", Sizes::new(quick)),
        "kernel": first_line(Command::new("uname").arg("-r")),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines()
            .find_map(|l| l.strip_prefix("model name")).map(|s| s.trim_start_matches([' ', '\t', ':']).to_owned()),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "haproxy": first_line(Command::new("haproxy").arg("-v")),
        "nginx": first_line(Command::new("nginx").arg("-v")),
        "rustc": first_line(Command::new("rustc").arg("-V")),
        "git": first_line(Command::new("git").args(["-C"]).arg(root()).args(["rev-parse", "--short", "HEAD"])),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    })
}

/// Figure 1: full TLS handshake + upgrade; proxy CPU per set-up and set-ups/s.
fn setups(ctx: &Ctx, fleets: &[Fleet]) -> anyhow::Result<Value> {
    let s = ctx.sizes;
    let mut out = json!({});
    for kind in Kind::ALL {
        let r = figure(&format!("  set-ups through {}", kind.key()), || {
            let spec = ctx.spec(kind, "load", port(kind), fleets, s.fleet_workers);
            let addr = spec.listen;
            let p = ctx.start(&spec, addr)?;
            // Warm-up (first allocations, session caches to the fleets).
            ctx.setups(None, addr, 50, 4, 5000)?;
            let mut runs = Vec::new();
            for _ in 0..s.reps {
                let cpu = Cpu::read(p.pid());
                let r = ctx.setups(None, addr, s.setups, s.setup_concurrency, 5000)?;
                let cpu_ms = cpu.since(p.pid());
                let ok = r["ok"].as_u64().unwrap_or(0);
                runs.push(json!({
                    "cpu_ms": cpu_ms,
                    "ok": ok,
                    "outcomes": r["outcomes"],
                    "cpu_ms_per_setup": if ok > 0 { json!(cpu_ms / ok as f64) } else { Value::Null },
                    "setups_per_s": r["ok_per_s"],
                    "setup_ms": r["ok_ms"],
                }));
            }
            for f in fleets {
                f.wait_idle()?;
            }
            let med = |k: &str| median(runs.iter().filter_map(|r| r[k].as_f64()).collect());
            Ok(json!({
                "cpu_ms_per_setup": med("cpu_ms_per_setup"),
                "setups_per_s": med("setups_per_s"),
                "failed": runs.iter().map(|r| s.setups as u64 - r["ok"].as_u64().unwrap_or(0)).sum::<u64>(),
                "runs": runs,
            }))
        });
        out[kind.key()] = r;
    }
    Ok(out)
}

/// Figure 2: echo round trips at a fixed offered load.
fn echo(ctx: &Ctx, fleets: &[Fleet]) -> anyhow::Result<Value> {
    let s = ctx.sizes;
    let mut out = json!({
        "offered": format!("{} calls × {} msg/s × {} B for {} s", s.echo_calls, s.echo_rate, s.echo_size, s.echo_secs),
    });
    for kind in Kind::ALL {
        let r = figure(&format!("  echo through {}", kind.key()), || {
            let spec = ctx.spec(kind, "echo", port(kind), fleets, s.fleet_workers);
            let addr = spec.listen;
            let p = ctx.start(&spec, addr)?;
            let mut runs = Vec::new();
            for _ in 0..s.reps {
                let cpu = Cpu::read(p.pid());
                let mut cmd = ctx.loadgen(None);
                cmd.arg("echo");
                ctx.target_args(&mut cmd, addr, "/ws/echo-");
                cmd.args(["--calls", &s.echo_calls.to_string(), "--rate", &s.echo_rate.to_string()])
                    .args([
                        "--size",
                        &s.echo_size.to_string(),
                        "--seconds",
                        &s.echo_secs.to_string(),
                    ]);
                let mut r = loadgen(&mut cmd, Duration::from_secs(s.echo_secs + 120))?;
                r["proxy_cpu_ms"] = json!(cpu.since(p.pid()));
                runs.push(r);
                for f in fleets {
                    f.wait_idle()?;
                }
            }
            let med = |k: &str| {
                median(
                    runs.iter()
                        .filter_map(|r| r["rtt_us"][k].as_f64().map(|us| us / 1000.0))
                        .collect(),
                )
            };
            Ok(json!({
                "p50_ms": med("p50"),
                "p99_ms": med("p99"),
                "p999_ms": med("p999"),
                "lost": runs.iter().map(|r| r["lost"].as_u64().unwrap_or(0)).sum::<u64>(),
                "sent": runs.iter().map(|r| r["sent"].as_u64().unwrap_or(0)).sum::<u64>(),
                "proxy_cpu_ms": median(runs.iter().filter_map(|r| r["proxy_cpu_ms"].as_f64()).collect()),
                "runs": runs,
            }))
        });
        out[kind.key()] = r;
    }
    Ok(out)
}

/// Figure 6: where our CPU goes while setting calls up (`perf record` on the daemon).
fn perf(ctx: &Ctx, fleets: &[Fleet]) -> anyhow::Result<Value> {
    let s = ctx.sizes;
    let spec = ctx.spec(Kind::Ingress, "perf", port(Kind::Ingress), fleets, s.fleet_workers);
    let addr = spec.listen;
    let p = ctx.start(&spec, addr)?;
    ctx.setups(None, addr, 50, 4, 5000)?;
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
    let _ = ctx.setups(None, addr, s.perf_setups, s.setup_concurrency, 5000)?;
    wait_for("perf record to finish", Duration::from_secs(secs + 30), || !rec.alive())?;
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
    let top: Vec<Value> = report
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('%'))
        .filter_map(|l| {
            let l = l.trim();
            let (pct, rest) = l.split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            let sym = rest.trim().trim_start_matches("[.]").trim_start_matches("[k]").trim();
            Some(json!({"percent": pct, "symbol": sym, "kernel": rest.contains("[k]")}))
        })
        .take(5)
        .collect();
    if top.is_empty() {
        bail!("perf report had no samples (see target/bench/perf-report.txt)");
    }
    // Where the self time goes, by kind of frame.
    let mut split = json!({"crypto": 0.0, "kernel": 0.0, "allocator": 0.0, "other": 0.0});
    for l in report
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('%'))
    {
        let Some((pct, rest)) = l.trim().split_once('%') else {
            continue;
        };
        let Ok(pct) = pct.trim().parse::<f64>() else { continue };
        let sym = rest.to_lowercase();
        let kind = if rest.contains("[k]") {
            "kernel"
        } else if [
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
        ]
        .iter()
        .any(|k| sym.contains(k))
        {
            "crypto"
        } else if ["malloc", "free", "realloc", "memcpy", "memmove", "memset"]
            .iter()
            .any(|k| sym.contains(k))
        {
            "allocator"
        } else {
            "other"
        };
        split[kind] = json!(split[kind].as_f64().unwrap_or(0.0) + pct);
    }
    Ok(
        json!({"top": top, "split_percent": split, "while": format!("{} set-ups, perf record -e cpu-clock -F 999 -p <ingress>", s.perf_setups)}),
    )
}

/// Figure 3: RSS with N idle calls held open.
fn idle(ctx: &Ctx, fleets: &[Fleet]) -> anyhow::Result<Value> {
    let s = ctx.sizes;
    let mut out = json!({"low": s.idle_low, "high": s.idle_high});
    for kind in Kind::ALL {
        let r = figure(&format!("  idle calls through {}", kind.key()), || {
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
                let open = g.ready["open"].as_u64().unwrap_or(0);
                if open != u64::from(n) {
                    bail!("only {open} of {n} idle calls opened: {}", g.ready);
                }
                Ok(g)
            };
            let mut low = hold(s.idle_low, "a")?;
            std::thread::sleep(Duration::from_secs(1));
            let rss_low = rss_kb(p.pid());
            let mut high = hold(s.idle_high - s.idle_low, "b")?;
            std::thread::sleep(Duration::from_secs(1));
            let rss_high = rss_kb(p.pid());
            for g in [&mut low, &mut high] {
                drop(g.stdin.take());
            }
            let _ = wait_for("idle loadgens to close their calls", Duration::from_secs(30), || {
                !low.alive() && !high.alive()
            });
            drop((low, high));
            drop(p);
            for f in fleets {
                f.wait_idle()?;
            }
            let per_call = (rss_high as f64 - rss_low as f64) / f64::from(s.idle_high - s.idle_low);
            Ok(json!({
                "base_kb": base,
                "rss_low_kb": rss_low,
                "rss_high_kb": rss_high,
                "kb_per_call": per_call,
                "kb_per_call_from_base": (rss_low as f64 - base as f64) / f64::from(s.idle_low),
                "mb_per_1000_calls": per_call * 1000.0 / 1024.0,
            }))
        });
        out[kind.key()] = r;
    }
    Ok(out)
}

/// Figure 4: the seeds' S4 with fleets of 16 and a 1 s check.
fn s4(ctx: &Ctx) -> anyhow::Result<Value> {
    let s = ctx.sizes;
    let mut out = json!({});
    for kind in Kind::ALL {
        let r = figure(&format!("  S4 through {}", kind.key()), || {
            let fleets = ctx.start_fleets(2, 16, None, &format!("s4-{}", kind.key()))?;
            let spec = ctx.spec(kind, "s4", port(kind), &fleets, 16);
            let addr = spec.listen;
            let _p = ctx.start(&spec, addr)?;
            let mut cmd = ctx.loadgen(None);
            cmd.arg("s4");
            ctx.target_args(&mut cmd, addr, "/ws/");
            for f in &fleets {
                cmd.arg("--fleet").arg(f.control.to_string());
            }
            cmd.args(["--fill", "16", "--calls", "8", "--interval-ms", "100"])
                .args([
                    "--probes",
                    &s.s4_probes.to_string(),
                    "--recover-s",
                    &s.s4_recover_s.to_string(),
                ]);
            loadgen(&mut cmd, Duration::from_secs(s.s4_recover_s + 120))
        });
        out[kind.key()] = r;
    }
    Ok(out)
}

/// A bpffs directory for one run's pinned maps, removed on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn xdp_counters(ctx: &Ctx, pins: &Path) -> Value {
    procs::output(
        Command::new(ctx.bins.join("ingress"))
            .args(["bpf", "dump", "--json", "--pin-path"])
            .arg(pins),
        Duration::from_secs(20),
    )
    .ok()
    .and_then(|o| serde_json::from_str::<Value>(&o).ok())
    .map(|v| v["counters"].clone())
    .unwrap_or(Value::Null)
}

fn counter_delta(before: &Value, after: &Value, key: &str) -> u64 {
    after[key]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(before[key].as_u64().unwrap_or(0))
}

/// Figure 5: every fleet full; (a) carriers storm with TLS + upgrade attempts from a
/// namespace over a veth; (b) a bounded SYN flood, XDP vs the kernel stack.
fn storm(ctx: &Ctx) -> anyhow::Result<Value> {
    let s = ctx.sizes;
    let pair = NetPair::new('b')?;
    // RST mode answers with XDP_TX from the ingress end.
    pair.carrier_gro_on()?;
    let ns = pair.ingress_ns.clone();
    let fleets = ctx.start_fleets(2, 16, Some(&ns), "storm")?;
    for f in &fleets {
        f.control("/occupy?n=16")?;
    }
    let configs: [(&str, Kind, Option<&'static str>); 5] = [
        ("ours, XDP drop", Kind::Ingress, Some("drop")),
        ("ours, XDP rst", Kind::Ingress, Some("rst")),
        ("ours, XDP off", Kind::Ingress, None),
        ("HAProxy", Kind::Haproxy, None),
        ("nginx", Kind::Nginx, None),
    ];
    let port = 18443;
    let dial = SocketAddr::from((pair.ingress_ip, port));
    let mut runs = Vec::new();
    let mut floods = json!({});
    for (name, kind, xdp) in configs {
        let r = figure(&format!("  storm: {name}"), || -> anyhow::Result<Value> {
            let pins = Pins(PathBuf::from(format!(
                "/sys/fs/bpf/ingress-bench-{}-{}",
                std::process::id(),
                xdp.unwrap_or("off")
            )));
            let _ = std::fs::remove_dir_all(&pins.0);
            let mut spec = ctx.spec(kind, &format!("storm-{}", name_tag(name)), port, &fleets, 16);
            spec.listen = SocketAddr::from(([0, 0, 0, 0], port));
            spec.netns = Some(ns.clone());
            spec.xdp = xdp.map(|action| Xdp {
                interface: pair.ingress_if.clone(),
                action,
                pin_path: pins.0.clone(),
            });
            // XDP_TX on a veth reaches the peer only when the peer runs NAPI: give the
            // carrier side a pass-through XDP program (a second ingress that sheds nothing).
            let _peer = if xdp == Some("rst") {
                Some(xdp_peer(ctx, &pair)?)
            } else {
                None
            };
            let p = ctx.start(&spec, dial)?;
            let mut attached = Value::Null;
            if let Some(sock) = &p.admin_socket {
                attached = p.proc.ready["xdp"].clone();
                if xdp.is_some() {
                    if p.proc.ready["xdp"]["attached"] != true {
                        bail!("XDP did not attach: {}", p.proc.ready["xdp"]);
                    }
                    wait_for("XDP shedding", Duration::from_secs(10), || {
                        admin_get(sock, "/api/status").is_ok_and(|v| v["xdp"]["shedding"] == true)
                    })?;
                } else {
                    wait_for("every fleet FULL", Duration::from_secs(10), || {
                        admin_get(sock, "/api/servers").is_ok_and(|v| {
                            v["servers"]
                                .as_array()
                                .is_some_and(|a| a.iter().all(|s| s["state"] == "FULL"))
                        })
                    })?;
                }
            } else if kind == Kind::Haproxy {
                // fall 2 × inter 1s after start: both fleets DOWN.
                std::thread::sleep(Duration::from_millis(1500));
            }
            // What the proxy burns with no load (health checks, lease renewal), per second.
            let idle_cpu = Cpu::read(p.pid());
            let idle_soft = softirq_ms();
            let idle_at = Instant::now();
            std::thread::sleep(Duration::from_secs(3));
            let idle_s = idle_at.elapsed().as_secs_f64();
            let idle_rate = idle_cpu.since(p.pid()) / idle_s;
            let idle_soft_rate = (softirq_ms() - idle_soft) / idle_s;
            let before = xdp.map(|_| xdp_counters(ctx, &pins.0));
            let cpu = Cpu::read(p.pid());
            let soft = softirq_ms();
            let at = Instant::now();
            let r = ctx.setups(Some(&pair.carrier_ns), dial, s.storm, 50, 1000)?;
            let elapsed = at.elapsed().as_secs_f64();
            let cpu_ms = cpu.since(p.pid());
            let soft_ms = softirq_ms() - soft;
            let attempts = f64::from(s.storm);
            let net_cpu = (cpu_ms - idle_rate * elapsed).max(0.0);
            let net_soft = (soft_ms - idle_soft_rate * elapsed).max(0.0);
            let mut out = json!({
                "name": name,
                "attempts": s.storm,
                "proxy_cpu_ms": cpu_ms,
                "proxy_idle_cpu_ms_per_s": idle_rate,
                "cpu_ms_per_attempt": net_cpu / attempts,
                "softirq_ms_per_attempt": net_soft / attempts,
                "carrier_sees": r["outcomes"],
                "answer_p50_ms": r["fail_ms"]["p50"],
                "elapsed_s": r["elapsed_s"],
                "xdp": attached,
            });
            if let Some(before) = before {
                let after = xdp_counters(ctx, &pins.0);
                out["xdp_shed_drop"] = json!(counter_delta(&before, &after, "shed_drop"));
                out["xdp_shed_rst"] = json!(counter_delta(&before, &after, "shed_rst"));
            }
            // 5b: the SYN flood, with XDP dropping and with the kernel stack taking it.
            if kind == Kind::Ingress && xdp != Some("rst") {
                let key = if xdp.is_some() { "xdp_drop" } else { "kernel_stack" };
                floods[key] = figure(&format!("  SYN flood: {name}"), || {
                    flood(ctx, &pair, &p, &pins.0, xdp.is_some(), port)
                });
            }
            Ok(out)
        });
        runs.push(r);
    }
    drop(fleets);
    drop(pair);
    Ok(json!({"runs": runs, "flood": floods}))
}

/// An `ingress` in the carrier namespace whose XDP program (native, on the carrier
/// side of the veth) passes every packet: carriers = a TEST-NET address, port 9.
fn xdp_peer(ctx: &Ctx, pair: &NetPair) -> anyhow::Result<(Proc, Pins)> {
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/ingress-bench-{}-peer",
        std::process::id()
    )));
    let _ = std::fs::remove_dir_all(&pins.0);
    let socket = ctx.dir.join("xdp-peer.sock");
    let _ = std::fs::remove_file(&socket);
    let config = ctx.dir.join("xdp-peer.toml");
    std::fs::write(
        &config,
        format!(
            r#"# Written by `cargo xtask bench`: a pass-through XDP program on the carrier side (RST mode needs NAPI there).
[listen]
https = "127.0.0.1:0"
certs = "{certs}"
default_cert = "localhost"

[admin]
socket = "{socket}"

[[routes]]
path = "/ws/{{bot_id}}"
pool = "none"

[pools.none]
servers = [{{ addr = "127.0.0.1:9", name = "none" }}]

[pools.none.tls]
ca = "{ca}"

[xdp]
interface = "{dev}"
mode = "native"
carriers = ["192.0.2.1/32"]
ports = [9]
pin_path = "{pins}"
"#,
            certs = ctx.pki.certs_dir.display(),
            socket = socket.display(),
            ca = ctx.pki.ca.display(),
            dev = pair.carrier_if,
            pins = pins.0.display(),
        ),
    )?;
    let mut cmd = pinned(LOAD_CORE, Some(&pair.carrier_ns), &ctx.bins.join("ingress"));
    cmd.arg("run").arg("--config").arg(&config).env("INGRESS_LOG", "warn");
    let p = Proc::start(
        "xdp peer",
        &mut cmd,
        Some(&ctx.dir.join("xdp-peer.log")),
        Some(Duration::from_secs(30)),
    )?;
    if p.ready["xdp"]["attached"] != true {
        bail!(
            "the carrier-side pass-through XDP program did not attach: {}",
            p.ready["xdp"]
        );
    }
    Ok((p, pins))
}

fn name_tag(name: &str) -> String {
    name.chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

fn flood(ctx: &Ctx, pair: &NetPair, p: &Running, pins: &Path, with_xdp: bool, port: u16) -> anyhow::Result<Value> {
    let s = ctx.sizes;
    let before = with_xdp.then(|| xdp_counters(ctx, pins));
    let segs = testbed::netns::tcp_in_segs(&pair.ingress_ns);
    let cpu = Cpu::read(p.pid());
    let soft = softirq_ms();
    let r = net::syn_flood(pair, port, s.flood, LOAD_CORE, &ctx.dir)?;
    let proxy_ms = cpu.since(p.pid());
    let soft_ms = softirq_ms() - soft;
    let reached_stack = testbed::netns::tcp_in_segs(&pair.ingress_ns).saturating_sub(segs);
    let elapsed = r["elapsed_s"].as_f64().unwrap_or(f64::NAN);
    let sent = r["sent"].as_u64().unwrap_or(0);
    let mut out = json!({
        "tool": r["tool"],
        "sent": sent,
        "elapsed_s": elapsed,
        "syn_per_s": sent as f64 / elapsed,
        "reached_tcp": reached_stack,
        "softirq_ms": soft_ms,
        "proxy_cpu_ms": proxy_ms,
    });
    if let Some(before) = before {
        let after = xdp_counters(ctx, pins);
        let dropped = counter_delta(&before, &after, "shed_drop");
        out["xdp_dropped"] = json!(dropped);
        out["absorbed_per_s"] = json!(dropped as f64 / elapsed);
    } else {
        // InSegs also counts the carrier's RSTs to our SYN-ACKs: count SYNs up to what was sent.
        out["absorbed_per_s"] = json!(reached_stack.min(sent) as f64 / elapsed);
    }
    Ok(out)
}
