//! Network namespaces for root tests: an "ingress" namespace and a "carrier"
//! namespace joined by a veth pair. Everything is deleted on drop (even when
//! the test panics); namespaces left by a killed test run are swept at the
//! next start. Traffic never leaves these namespaces.

use std::{
    net::Ipv4Addr,
    os::fd::AsFd as _,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

const PREFIX: &str = "ingt";

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes namespaces of earlier test processes that no longer run.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: Option<u32> = rest.split(['a', 'c', 'i']).next().and_then(|p| p.parse().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
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
    pub fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (network namespaces); run it as root, as CI does"
        );
        sweep_stale();
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let pair = Self {
            ingress_ns: format!("{PREFIX}{pid}i{n}"),
            carrier_ns: format!("{PREFIX}{pid}c{n}"),
            ingress_if: format!("vi{pid}x{n}"),
            carrier_if: format!("vc{pid}x{n}"),
            ingress_ip: Ipv4Addr::new(10, 77, 0, 1),
            carrier_ip: Ipv4Addr::new(10, 77, 0, 2),
            other_ip: Ipv4Addr::new(10, 77, 0, 3),
        };
        ip(&["netns", "add", &pair.ingress_ns]);
        ip(&["netns", "add", &pair.carrier_ns]);
        ip(&[
            "link",
            "add",
            &pair.ingress_if,
            "type",
            "veth",
            "peer",
            "name",
            &pair.carrier_if,
        ]);
        ip(&["link", "set", &pair.ingress_if, "netns", &pair.ingress_ns]);
        ip(&["link", "set", &pair.carrier_if, "netns", &pair.carrier_ns]);
        ip(&[
            "-n",
            &pair.ingress_ns,
            "addr",
            "add",
            &format!("{}/24", pair.ingress_ip),
            "dev",
            &pair.ingress_if,
        ]);
        ip(&[
            "-n",
            &pair.carrier_ns,
            "addr",
            "add",
            &format!("{}/24", pair.carrier_ip),
            "dev",
            &pair.carrier_if,
        ]);
        ip(&[
            "-n",
            &pair.carrier_ns,
            "addr",
            "add",
            &format!("{}/24", pair.other_ip),
            "dev",
            &pair.carrier_if,
        ]);
        for (ns, dev) in [
            (&pair.ingress_ns, &pair.ingress_if),
            (&pair.carrier_ns, &pair.carrier_if),
        ] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }
}

impl Default for NetPair {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.ingress_ns, &self.carrier_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
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

/// Runs an async block on a current-thread runtime inside `ns`.
pub fn block_on_in<T, F>(ns: &str, f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    run_in(ns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}

/// What a TCP connect from a namespace ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect {
    Connected,
    /// A RST came back (no listener, or the XDP program answered).
    Refused,
    /// No answer at all (the SYN was dropped).
    TimedOut,
    Other(String),
}

/// One TCP connect from `src` inside `ns` to `dst`, bounded by `timeout`.
pub fn connect_from(
    ns: &str,
    src: std::net::Ipv4Addr,
    dst: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> Connect {
    block_on_in(ns, move || async move {
        let sock = match tokio::net::TcpSocket::new_v4() {
            Ok(s) => s,
            Err(e) => return Connect::Other(e.to_string()),
        };
        if let Err(e) = sock.bind(std::net::SocketAddr::from((src, 0))) {
            return Connect::Other(format!("bind {src}: {e}"));
        }
        match tokio::time::timeout(timeout, sock.connect(dst)).await {
            Ok(Ok(_)) => Connect::Connected,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Connect::Refused,
            Ok(Err(e)) => Connect::Other(e.to_string()),
            Err(_) => Connect::TimedOut,
        }
    })
}

/// A bpffs directory for one test's pinned maps, removed on drop.
pub struct BpfPins(pub std::path::PathBuf);

impl BpfPins {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        Self(std::path::PathBuf::from(format!(
            "/sys/fs/bpf/ingress-test-{tag}-{}-{n}",
            std::process::id()
        )))
    }
}

impl Drop for BpfPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
