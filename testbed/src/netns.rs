//! Two network namespaces, "ingress" and "carrier", joined by a veth pair
//! with 10.77.0.1 on the ingress side and 10.77.0.2 (plus a second address,
//! 10.77.0.3) on the carrier side ([`NetPair`]); or a carrier namespace
//! joined to the root namespace ([`HostPair`]). Everything is deleted on drop, also when
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
pub(crate) const PREFIX: &str = "ingtb";

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

/// SIGKILLs every process left in namespace `ns` (a killed test's daemons).
pub(crate) fn kill_inside(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Removes namespaces of earlier processes that no longer run (and what
/// still runs in them), and the
/// root-namespace ends (`v{tag}h{pid}x{n}`) a killed one left behind.
pub(crate) fn sweep_stale() {
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show", "type", "veth"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // `17: vrh1234x0@if16: <…`
            let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else {
                continue;
            };
            let Some(rest) = name.strip_prefix('v').filter(|r| r.chars().nth(1) == Some('h')) else {
                continue;
            };
            let pid: String = rest.chars().skip(2).take_while(char::is_ascii_digit).collect();
            if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["link", "del", name]).status();
            }
        }
    }
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
            kill_inside(name);
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

/// Names made here are unique within the process: `{tag}{pid}…{n}`.
static N: AtomicU32 = AtomicU32::new(0);

/// A veth pair, `a_if` in `a_ns` (`None`: the root namespace) with
/// `a_addr`, `b_if` in `b_ns` with `b_addrs`; every end up, with loopback.
fn veth(
    a_ns: Option<&str>,
    a_if: &str,
    a_addr: Ipv4Addr,
    b_ns: &str,
    b_if: &str,
    b_addrs: &[Ipv4Addr],
) -> anyhow::Result<()> {
    ip(&["link", "add", a_if, "type", "veth", "peer", "name", b_if])?;
    if let Some(ns) = a_ns {
        ip(&["link", "set", a_if, "netns", ns])?;
    }
    ip(&["link", "set", b_if, "netns", b_ns])?;
    // `ip -n NS`, or no `-n` for the root namespace.
    let ip_in = |ns: Option<&str>, args: &[&str]| {
        let mut all: Vec<&str> = ns.map(|n| vec!["-n", n]).unwrap_or_default();
        all.extend_from_slice(args);
        ip(&all)
    };
    for (ns, dev, addrs) in [(a_ns, a_if, &[a_addr][..]), (Some(b_ns), b_if, b_addrs)] {
        for a in addrs {
            ip_in(ns, &["addr", "add", &format!("{a}/24"), "dev", dev])?;
        }
        if ns.is_some() {
            ip_in(ns, &["link", "set", "lo", "up"])?;
        }
        ip_in(ns, &["link", "set", dev, "up"])?;
    }
    Ok(())
}

fn need_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("network namespaces need root; run as root, as CI does");
    }
    sweep_stale();
    Ok(())
}

impl NetPair {
    /// Creates a pair; `tag` (one ASCII letter) tells whose it is in `ip netns list`.
    pub fn new(tag: char) -> anyhow::Result<Self> {
        need_root()?;
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
        veth(
            Some(&pair.ingress_ns),
            &pair.ingress_if,
            pair.ingress_ip,
            &pair.carrier_ns,
            &pair.carrier_if,
            &[pair.carrier_ip, pair.other_ip],
        )?;
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

/// A carrier namespace joined by a veth pair to the root namespace, as on a
/// container host: the ingress end (`host_if`, `.1`) stays in the root
/// namespace, the carrier end (`.2`, and `.3` as a second address) is in
/// `carrier_ns`. The /24 is one of the benchmarking range 198.18.0.0/15
/// (RFC 2544) that no interface of the root namespace uses yet, routed
/// only over the veth; deleting the namespace on drop deletes both ends.
pub struct HostPair {
    pub carrier_ns: String,
    pub host_if: String,
    pub carrier_if: String,
    pub host_ip: Ipv4Addr,
    pub carrier_ip: Ipv4Addr,
    /// A second address on the carrier's end (e.g. a non-carrier source).
    pub other_ip: Ipv4Addr,
}

impl HostPair {
    /// Creates the pair; `tag` as for [`NetPair::new`].
    pub fn new(tag: char) -> anyhow::Result<Self> {
        need_root()?;
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let net = free_benchmark_subnet(pid.wrapping_mul(31).wrapping_add(n))?;
        let at = |host| Ipv4Addr::new(198, 18 + net[0], net[1], host);
        let pair = Self {
            carrier_ns: format!("{PREFIX}{tag}{pid}c{n}"),
            host_if: format!("v{tag}h{pid}x{n}"),
            carrier_if: format!("v{tag}c{pid}x{n}"),
            host_ip: at(1),
            carrier_ip: at(2),
            other_ip: at(3),
        };
        ip(&["netns", "add", &pair.carrier_ns])?;
        veth(
            None,
            &pair.host_if,
            pair.host_ip,
            &pair.carrier_ns,
            &pair.carrier_if,
            &[pair.carrier_ip, pair.other_ip],
        )?;
        Ok(pair)
    }
}

/// The first /24 of 198.18.0.0/15, from `start` on, that no address of the
/// root namespace is in: `[second octet - 18, third octet]`.
fn free_benchmark_subnet(start: u32) -> anyhow::Result<[u8; 2]> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .context("ip addr show")?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    for k in 0..512 {
        let k = (start + k) % 512;
        let net = [u8::try_from(k / 256)?, u8::try_from(k % 256)?];
        if !used.contains(&format!(" 198.{}.{}.", 18 + net[0], net[1])) {
            return Ok(net);
        }
    }
    bail!("every /24 of 198.18.0.0/15 is in use in the root namespace")
}

impl Drop for HostPair {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.carrier_ns])
            .stderr(std::process::Stdio::null())
            .status();
        // Gone with the namespace; removed here should it have been moved back.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(std::process::Stdio::null())
            .status();
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
