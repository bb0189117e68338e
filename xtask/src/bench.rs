//! `cargo xtask bench [--quick]`: our `ingress` side by side with HAProxy and
//! nginx from Debian's packages, each pinned to the same single core with one
//! worker and an equivalent config, against the same Rust fleet simulators
//! (pinned to the other core), driven by our load generator (`loadgen`).
//! Traffic stays on loopback or in two namespaces the bench makes itself;
//! every load loop is bounded in count and time; every child is stopped on
//! the way out, errors included. Results: a table on stdout, `results.json`,
//! `chart.svg` and `README-performance.md` under `target/bench/`.
//! A figure that cannot be measured here is reported as `missing: reason`.

mod calls;
mod chart;
mod growth;
mod net;
mod perf;
pub(crate) mod procs;
pub(crate) mod proxies;
mod report;
mod results;
mod storm;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;
use fleet_sim::pki::TestCa;
use testbed::{Fleet, FleetSpec, proc::launcher};

use self::{
    procs::{bench_dir, loadgen},
    proxies::{Kind, Pki, Running, Spec},
    results::{Figure, Meta, Results},
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
pub(crate) const PROXY_CORE: u32 = 1;
pub(crate) const LOAD_CORE: u32 = 0;

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
    /// A third idle point, the most a proxy's 20 000 descriptors hold here.
    idle_top: Option<u32>,
    fleet_workers: u32,
    storm: u32,
    flood: u64,
    perf_setups: u32,
    s4_probes: u32,
    s4_recover_s: u64,
    /// Figure 7: seconds of no-call CPU per configuration, set-ups per proxy.
    growth_idle_s: u64,
    growth_setups: u32,
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
                idle_top: None,
                fleet_workers: 1500,
                storm: 300,
                flood: 300_000,
                perf_setups: 400,
                s4_probes: 30,
                s4_recover_s: 12,
                growth_idle_s: 2,
                growth_setups: 300,
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
                idle_top: Some(9000),
                fleet_workers: 4600,
                storm: 1000,
                flood: 2_000_000,
                perf_setups: 1500,
                s4_probes: 40,
                s4_recover_s: 15,
                growth_idle_s: 5,
                growth_setups: 1000,
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
        launcher(&self.bins.join("loadgen"), netns, Some(LOAD_CORE))
    }

    pub(crate) fn target_args(&self, cmd: &mut Command, addr: SocketAddr, path: &str) {
        cmd.arg("--addr")
            .arg(addr.to_string())
            .arg("--ca")
            .arg(&self.pki.ca)
            .arg("--path")
            .arg(path);
    }

    pub(crate) fn setups(
        &self,
        netns: Option<&str>,
        addr: SocketAddr,
        count: u32,
        conc: u32,
        timeout_ms: u64,
        resume: bool,
    ) -> anyhow::Result<fleet_sim::report::Setups> {
        let mut cmd = self.loadgen(netns);
        cmd.arg("setups");
        self.target_args(&mut cmd, addr, "/ws/setup-");
        cmd.args(["--count", &count.to_string(), "--concurrency", &conc.to_string()])
            .args(["--timeout-ms", &timeout_ms.to_string()]);
        if resume {
            cmd.arg("--resume");
        }
        loadgen(&mut cmd, Duration::from_secs(600))
    }

    /// Figure 2's echo load (calls, rate, size) to `addr` for `secs` seconds; its report.
    pub(crate) fn echo(&self, addr: SocketAddr, path: &str, secs: u64) -> anyhow::Result<fleet_sim::report::Echo> {
        let s = self.sizes;
        let mut cmd = self.loadgen(None);
        cmd.arg("echo");
        self.target_args(&mut cmd, addr, path);
        cmd.args(["--calls", &s.echo_calls.to_string(), "--rate", &s.echo_rate.to_string()])
            .args(["--size", &s.echo_size.to_string(), "--seconds", &secs.to_string()]);
        loadgen(&mut cmd, Duration::from_secs(secs + 120))
    }

    /// A spec for a proxy in `pair`'s ingress namespace, listening on every
    /// address there; `xdp` (action, mode) attaches ours to the pair's
    /// ingress end with its maps pinned under `pins`.
    pub(crate) fn spec_in_pair(
        &self,
        pair: &testbed::NetPair,
        (kind, tag, port): (Kind, &str, u16),
        fleets: &[Fleet],
        maxconn: u32,
        xdp: Option<(&'static str, Option<&'static str>, &std::path::Path)>,
    ) -> Spec {
        let mut spec = self.spec(kind, tag, port, fleets, maxconn);
        spec.listen = SocketAddr::from(([0, 0, 0, 0], port));
        spec.netns = Some(pair.ingress_ns.clone());
        spec.xdp = xdp.map(|(action, mode, pins)| proxies::Xdp {
            interface: pair.ingress_if.clone(),
            action,
            pin_path: pins.to_path_buf(),
            mode,
        });
        spec
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
                let spec = FleetSpec {
                    bin: &self.bins.join("fleet-sim"),
                    cert: &self.pki.fleet_bundle,
                    workers,
                    threads: Some(1),
                    netns,
                    listen: None,
                    core: Some(LOAD_CORE),
                    log: Some(&self.dir.join(format!("fleet-{tag}-{}.log", i + 1))),
                    ready: Duration::from_secs(20),
                };
                Fleet::start(&format!("fleet{}", i + 1), &spec)
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
            reuse_checks: false,
            xdp: None,
            fleet_tls12: false,
            netns: None,
            core: PROXY_CORE,
        }
    }

    pub(crate) fn start(&self, spec: &Spec, probe: SocketAddr) -> anyhow::Result<Running> {
        proxies::start(&self.dir, &self.bins, &self.pki, spec, probe)
    }
}

/// Waits (bounded) until no call holds a worker of any of `fleets`.
pub(crate) fn wait_idle(fleets: &[Fleet]) -> anyhow::Result<()> {
    fleets
        .iter()
        .try_for_each(|f| f.control.wait_idle(Duration::from_secs(30)))
}

fn port(kind: Kind) -> u16 {
    match kind {
        Kind::Ingress => 18443,
        Kind::Haproxy => 18444,
        Kind::Nginx => 18445,
    }
}

/// Runs a figure; an error becomes `{"missing": reason}` instead of stopping the bench.
fn figure<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> Figure<T> {
    eprintln!("bench: {name} …");
    let started = Instant::now();
    match f() {
        Ok(v) => {
            eprintln!("bench: {name} done in {:.0?}", started.elapsed());
            Figure::Done(v)
        }
        Err(e) => {
            eprintln!("bench: {name} missing: {e:#}");
            Figure::missing(format!("{e:#}"))
        }
    }
}

pub fn run(quick: bool, only: &[String]) -> anyhow::Result<()> {
    const FIGURES: [&str; 7] = ["setups", "echo", "perf", "idle", "s4", "storm", "growth"];
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
    const SKIPPED: &str = "not run (--only)";
    let mut results = Results {
        meta: meta(quick),
        setups: Figure::missing(SKIPPED),
        setups_tls12: Figure::missing(SKIPPED),
        setups_resumed: Figure::missing(SKIPPED),
        echo: Figure::missing(SKIPPED),
        perf: Figure::missing(SKIPPED),
        perf_echo: Figure::missing(SKIPPED),
        idle: Figure::missing(SKIPPED),
        s4: Figure::missing(SKIPPED),
        storm: Figure::missing(SKIPPED),
        growth: Figure::missing(SKIPPED),
    };
    if ["setups", "echo", "perf", "idle"].iter().any(|f| wanted(f)) {
        let fleets = ctx.start_fleets(2, ctx.sizes.fleet_workers, None, "load")?;
        if wanted("setups") {
            use calls::Setup;
            results.setups = figure("1. TLS + upgrade set-ups", || calls::setups(&ctx, &fleets, Setup::Full));
            results.setups_tls12 = figure("1b. set-ups, every proxy on TLS 1.2 to the fleets", || {
                calls::setups(&ctx, &fleets, Setup::FleetTls12)
            });
            results.setups_resumed = figure("1c. set-ups of a carrier that resumes its TLS session", || {
                calls::setups(&ctx, &fleets, Setup::CarrierResumed)
            });
        }
        if wanted("echo") {
            results.echo = figure("2. echo round trips", || calls::echo(&ctx, &fleets));
        }
        if wanted("perf") {
            results.perf = figure("6. CPU profile of ours", || perf::perf(&ctx, &fleets));
            results.perf_echo = figure("6b. CPU profile of ours during echo", || perf::perf_echo(&ctx, &fleets));
        }
        if wanted("idle") {
            results.idle = figure("3. RSS of idle calls", || calls::idle(&ctx, &fleets));
        }
    }
    if wanted("s4") {
        results.s4 = figure("4. S4: a fleet fills behind our back", || calls::s4(&ctx));
    }
    if wanted("storm") {
        results.storm = figure("5. carrier storm and SYN flood", || storm::storm(&ctx));
    }
    if wanted("growth") {
        results.growth = figure("7. how cost grows with the fleets", || growth::growth(&ctx));
    }
    results.meta.elapsed_s = Some(started.elapsed().as_secs());
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

fn meta(quick: bool) -> Meta {
    Meta {
        quick,
        sizes: format!("{:?}", Sizes::new(quick)),
        kernel: first_line(Command::new("uname").arg("-r")),
        cpu: std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|s| s.trim_start_matches([' ', '\t', ':']).to_owned()),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        haproxy: first_line(Command::new("haproxy").arg("-v")),
        nginx: first_line(Command::new("nginx").arg("-v")),
        rustc: first_line(Command::new("rustc").arg("-V")),
        git: first_line(
            Command::new("git")
                .args(["-C"])
                .arg(root())
                .args(["rev-parse", "--short", "HEAD"]),
        ),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        elapsed_s: None,
    }
}
