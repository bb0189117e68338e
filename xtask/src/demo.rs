//! The built-in demo of `cargo xtask run`: a throwaway CA, a self-signed
//! front certificate for `localhost`, two fleet simulators with 16 workers
//! each, and the ingress on local ports with XDP on `lo` in SKB mode (when
//! root). Ctrl-C stops everything it started.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::bail;
use fleet_sim::pki::TestCa;
use testbed::{
    Fleet, FleetSpec, IngressConfig, Proc,
    config::{Check, Pool, Server, Xdp},
};

use crate::root;

/// How long a demo process gets to print its ready line.
const READY: Duration = Duration::from_secs(60);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The demo's processes, stopped last-started first (the ingress before
/// its fleets) when this drops, errors included.
struct Procs(Vec<Proc>);

impl Drop for Procs {
    fn drop(&mut self) {
        while let Some(mut p) = self.0.pop() {
            p.stop();
            eprintln!("demo: stopped {}", p.name);
        }
    }
}

/// Starts a process that prints one JSON line when ready (its log goes to
/// our stderr); returns that line.
fn start(procs: &mut Procs, name: &str, cmd: &mut Command) -> anyhow::Result<serde_json::Value> {
    let p = Proc::start(name, cmd, None, Some(READY))?;
    let ready = p.ready.clone();
    procs.0.push(p);
    Ok(ready)
}

pub fn run() -> anyhow::Result<()> {
    let dir = root().join("target/demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("certs"))?;
    let ca = TestCa::new("ingress demo CA")?;
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
    std::fs::write(
        dir.join("certs/localhost.pem"),
        ca.issue(&["localhost", "127.0.0.1"])?.bundle(),
    )?;
    std::fs::write(dir.join("fleet.pem"), ca.issue(&["127.0.0.1", "localhost"])?.bundle())?;

    let release = root().join("target/release");
    let mut procs = Procs(Vec::new());
    let mut fleets = Vec::new();
    for i in 1..=2 {
        let spec = FleetSpec {
            bin: &release.join("fleet-sim"),
            cert: &dir.join("fleet.pem"),
            workers: 16,
            threads: None,
            netns: None,
            listen: None,
            core: None,
            log: None,
            ready: READY,
        };
        let Fleet { proc, https, control } = Fleet::start(&format!("fleet{i}"), &spec)?;
        procs.0.push(proc);
        fleets.push((https, control.addr));
    }
    let xdp = if nix::unistd::geteuid().is_root() {
        Xdp::on("lo").mode("skb").pin_path("/sys/fs/bpf/ingress-demo")
    } else {
        Xdp::off()
    };
    let pool = fleets
        .iter()
        .enumerate()
        .fold(Pool::new("fleets").maxconn(16), |p, (i, (https, _))| {
            p.server(Server::new(&format!("fleet{}", i + 1), https))
        })
        .tls_ca("ca.pem")
        .check(Check::default().interval("1s"));
    let config_path = dir.join("ingress.toml");
    IngressConfig::new("127.0.0.1:8443", "certs", "admin.sock")
        .comment("Written by `cargo xtask run` (demo).")
        .http("127.0.0.1:8080")
        .admin_listen("127.0.0.1:9090")
        .call_routes("fleets")
        .pool(pool)
        .xdp(xdp)
        .write(&config_path)?;
    let ready = start(
        &mut procs,
        "ingress",
        Command::new(release.join("ingress"))
            .arg("run")
            .arg("--config")
            .arg(&config_path),
    )?;

    let wscall = release.join("wscall");
    println!();
    println!("ingress demo is up ({}).", dir.display());
    println!("  XDP:      {}", ready["xdp"]);
    println!(
        "  place a call:  {} --ca {} wss://localhost:8443/ws/demo-bot --message hello --count 3",
        wscall.display(),
        dir.join("ca.pem").display()
    );
    println!("  stats page:    http://127.0.0.1:9090/stats   (JSON: /stats.json, admin: /api/servers)");
    println!("  metrics:       http://127.0.0.1:9090/metrics");
    for (i, (_, control)) in fleets.iter().enumerate() {
        println!(
            "  fleet{} control: curl 'http://{control}/occupy?n=16'   (free: /free?n=16, state: /state)",
            i + 1
        );
    }
    println!("  Ctrl-C stops everything.");
    println!();

    let handler = nix::sys::signal::SigHandler::Handler(on_signal);
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        nix::sys::signal::signal(nix::sys::signal::Signal::SIGINT, handler)?;
        nix::sys::signal::signal(nix::sys::signal::Signal::SIGTERM, handler)?;
    }
    while !STOP.load(Ordering::SeqCst) {
        for p in &mut procs.0 {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited: {status}", p.name);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
