//! The built-in demo of `cargo xtask run`: a throwaway CA, a self-signed
//! front certificate for `localhost`, two fleet simulators with 16 workers
//! each, and the ingress on local ports with XDP on `lo` in SKB mode (when
//! root). Ctrl-C stops everything it started.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use fleet_sim::pki::TestCa;

use crate::root;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Children are stopped (SIGTERM, then SIGKILL) when this drops.
struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (name, child) in self.0.iter_mut().rev() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..50 {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("demo: stopped {name}");
        }
    }
}

/// Starts a process that prints one JSON line when ready; returns that line.
fn start(procs: &mut Procs, name: &str, cmd: &mut Command) -> anyhow::Result<serde_json::Value> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    procs.0.push((name.to_owned(), child));
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim().is_empty() {
        bail!("{name} exited before it was ready");
    }
    serde_json::from_str(line.trim()).with_context(|| format!("{name} printed {line:?}"))
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
        let ready = start(
            &mut procs,
            &format!("fleet{i}"),
            Command::new(release.join("fleet-sim"))
                .arg("--cert")
                .arg(dir.join("fleet.pem"))
                .args(["--workers", "16"]),
        )?;
        fleets.push(ready);
    }
    let is_root = nix::unistd::geteuid().is_root();
    let xdp = if is_root {
        "[xdp]\ninterface = \"lo\"\nmode = \"skb\"\npin_path = \"/sys/fs/bpf/ingress-demo\"\n"
    } else {
        "[xdp]\nmode = \"off\"\n"
    };
    let servers: Vec<String> = fleets
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                "  {{ addr = \"{}\", name = \"fleet{}\" }},",
                f["https"].as_str().unwrap_or_default(),
                i + 1
            )
        })
        .collect();
    let config = format!(
        r#"# Written by `cargo xtask run` (demo).
[listen]
https = "127.0.0.1:8443"
http = "127.0.0.1:8080"
certs = "certs"
default_cert = "localhost"

[admin]
socket = "admin.sock"
listen = "127.0.0.1:9090"

[[routes]]
path = "/ws/{{bot_id}}"
pool = "fleets"

[[routes]]
path = "/exotel/{{bot_id}}"
pool = "fleets"

[pools.fleets]
maxconn = 16
servers = [
{servers}
]

[pools.fleets.tls]
ca = "ca.pem"

[pools.fleets.check]
interval = "1s"

{xdp}"#,
        servers = servers.join("\n"),
    );
    let config_path = dir.join("ingress.toml");
    std::fs::write(&config_path, config)?;
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
    for (i, f) in fleets.iter().enumerate() {
        println!(
            "  fleet{} control: curl 'http://{}/occupy?n=16'   (free: /free?n=16, state: /state)",
            i + 1,
            f["control"].as_str().unwrap_or_default()
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
        for (name, child) in &mut procs.0 {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited: {status}");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
