//! Two network namespaces, "ingress" and "carrier", joined by a veth pair
//! with 10.77.0.1 on the ingress side and 10.77.0.2 (plus a second address,
//! 10.77.0.3) on the carrier side. Everything is deleted on drop, also when
//! the owner panics; namespaces of a process that no longer runs are swept
//! at the next creation. Traffic never leaves them.

use std::{
    net::Ipv4Addr,
    os::fd::AsFd as _,
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

/// Every namespace made here starts with this, then the owner's tag letter and PID.
const PREFIX: &str = "ingtb";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("ip {args:?} (is iproute2 installed?)"))?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A command that runs `program` inside namespace `ns` (`nsenter --net=`, which
/// execs: the child's PID is the program's, and bpffs stays visible).
pub fn nsenter(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg(program);
    c
}

/// Removes namespaces of earlier processes that no longer run.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        // `{tag}{pid}{i|c}{n}`
        let digits: String = rest.chars().skip(1).take_while(char::is_ascii_digit).collect();
        if let Ok(pid) = digits.parse::<u32>()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Two namespaces and a veth pair between them.
pub struct NetPair {
    pub ingress_ns: String,
    pub carrier_ns: String,
    pub ingress_if: String,
    pub carrier_if: String,
    pub ingress_ip: Ipv4Addr,
    /// The carrier's main address.
    pub carrier_ip: Ipv4Addr,
    /// A second address in the carrier namespace (e.g. a non-carrier source).
    pub other_ip: Ipv4Addr,
}

impl NetPair {
    /// Creates a pair; `tag` (one ASCII letter) tells whose it is in `ip netns list`.
    pub fn new(tag: char) -> anyhow::Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            bail!("network namespaces need root; run as root, as CI does");
        }
        sweep_stale();
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let pair = Self {
            ingress_ns: format!("{PREFIX}{tag}{pid}i{n}"),
            carrier_ns: format!("{PREFIX}{tag}{pid}c{n}"),
            // Interface names: 15 bytes at most.
            ingress_if: format!("v{tag}i{pid}x{n}"),
            carrier_if: format!("v{tag}c{pid}x{n}"),
            ingress_ip: Ipv4Addr::new(10, 77, 0, 1),
            carrier_ip: Ipv4Addr::new(10, 77, 0, 2),
            other_ip: Ipv4Addr::new(10, 77, 0, 3),
        };
        // A failure below drops `pair`, which deletes whatever was made.
        ip(&["netns", "add", &pair.ingress_ns])?;
        ip(&["netns", "add", &pair.carrier_ns])?;
        ip(&[
            "link",
            "add",
            &pair.ingress_if,
            "type",
            "veth",
            "peer",
            "name",
            &pair.carrier_if,
        ])?;
        ip(&["link", "set", &pair.ingress_if, "netns", &pair.ingress_ns])?;
        ip(&["link", "set", &pair.carrier_if, "netns", &pair.carrier_ns])?;
        for (ns, dev, addrs) in [
            (&pair.ingress_ns, &pair.ingress_if, vec![pair.ingress_ip]),
            (&pair.carrier_ns, &pair.carrier_if, vec![pair.carrier_ip, pair.other_ip]),
        ] {
            for a in addrs {
                ip(&["-n", ns, "addr", "add", &format!("{a}/24"), "dev", dev])?;
            }
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(pair)
    }

    /// The MAC address of `dev` in `ns`.
    pub fn mac(ns: &str, dev: &str) -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args(["-n", ns, "-j", "link", "show", "dev", dev])
            .output()
            .context("ip link show")?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).with_context(|| format!("ip -j link show dev {dev} in {ns}"))?;
        v[0]["address"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no MAC address for {dev} in {ns}"))
    }

    /// GRO on the carrier's end: XDP_TX replies sent by a program on the
    /// ingress end reach the carrier only when its end runs NAPI.
    pub fn carrier_gro_on(&self) -> anyhow::Result<()> {
        let st = nsenter(&self.carrier_ns, "ethtool")
            .args(["-K", &self.carrier_if, "gro", "on"])
            .status()
            .context("ethtool")?;
        if !st.success() {
            bail!("ethtool -K {} gro on: {st}", self.carrier_if);
        }
        Ok(())
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and with it the pair.
        for ns in [&self.ingress_ns, &self.carrier_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Runs `f` on a fresh thread inside namespace `ns`; sockets it opens live there.
pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// [`run_in`] for callers that report rather than panic: an error when the
/// namespace cannot be entered (or `f` panics).
pub fn try_run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> anyhow::Result<T> {
        let file = std::fs::File::open(&path).with_context(|| path.clone())?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {path}"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a thread in namespace {ns} panicked"))?
}

/// `Tcp: InSegs` of namespace `ns` (segments that reached its TCP stack).
pub fn tcp_in_segs(ns: &str) -> u64 {
    let out = nsenter(ns, "cat").arg("/proc/net/snmp").output().map(|o| o.stdout);
    let text = String::from_utf8_lossy(&out.unwrap_or_default()).into_owned();
    let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let (Some(names), Some(values)) = (tcp.first(), tcp.get(1)) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}
