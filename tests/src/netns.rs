//! Network namespaces for root tests: the testbed's [`NetPair`] ("ingress"
//! and "carrier" joined by a veth, deleted on drop, even when the test
//! panics), async helpers that run inside a namespace, and a bpffs directory
//! per test for pinned maps. Traffic never leaves these namespaces.

use std::sync::atomic::{AtomicU32, Ordering};

pub use testbed::netns::run_in;

/// The test's pair of namespaces (see `testbed::NetPair`).
pub struct NetPair(testbed::NetPair);

impl NetPair {
    /// Creates the pair; panics (the test fails) without root.
    pub fn new() -> Self {
        Self(testbed::NetPair::new('t').unwrap_or_else(|e| panic!("{e:#}")))
    }
}

impl Default for NetPair {
    fn default() -> Self {
        Self::new()
    }
}

impl std::ops::Deref for NetPair {
    type Target = testbed::NetPair;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
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
    connect_timed(ns, src, dst, timeout).0
}

/// [`connect_from`], and how long the connect itself took (from its SYN
/// to its answer, without entering the namespace).
pub fn connect_timed(
    ns: &str,
    src: std::net::Ipv4Addr,
    dst: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> (Connect, std::time::Duration) {
    block_on_in(ns, move || async move {
        let sock = match tokio::net::TcpSocket::new_v4() {
            Ok(s) => s,
            Err(e) => return (Connect::Other(e.to_string()), std::time::Duration::ZERO),
        };
        if let Err(e) = sock.bind(std::net::SocketAddr::from((src, 0))) {
            return (Connect::Other(format!("bind {src}: {e}")), std::time::Duration::ZERO);
        }
        let started = std::time::Instant::now();
        let got = match tokio::time::timeout(timeout, sock.connect(dst)).await {
            Ok(Ok(_)) => Connect::Connected,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Connect::Refused,
            Ok(Err(e)) => Connect::Other(e.to_string()),
            Err(_) => Connect::TimedOut,
        };
        (got, started.elapsed())
    })
}

/// A TCP connection opened from inside `ns` to `dst` (5 s at most), for use
/// on the caller's runtime: the socket stays in the namespace it was made in.
pub async fn tcp_from(ns: &str, dst: std::net::SocketAddr) -> tokio::net::TcpStream {
    let ns = ns.to_owned();
    let std_stream = tokio::task::spawn_blocking(move || {
        run_in(&ns, move || {
            std::net::TcpStream::connect_timeout(&dst, std::time::Duration::from_secs(5))
        })
    })
    .await
    .expect("connect task")
    .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
    std_stream.set_nonblocking(true).expect("nonblocking");
    tokio::net::TcpStream::from_std(std_stream).expect("tokio stream")
}

/// A WSS call opened from inside `ns` to `dst` (`wss://localhost{path}`),
/// bounded by `timeout` (SYN retransmits included): the socket is made in
/// the namespace, the call runs on the caller's runtime.
pub async fn call_from(
    ns: &str,
    dst: std::net::SocketAddr,
    path: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    timeout: std::time::Duration,
) -> Result<fleet_sim::client::Wss, fleet_sim::client::CallError> {
    use fleet_sim::client::CallError;
    let ns = ns.to_owned();
    let socket = tokio::task::spawn_blocking(move || run_in(&ns, tokio::net::TcpSocket::new_v4))
        .await
        .map_err(|e| CallError::Other(e.to_string()))?
        .map_err(|e| CallError::Other(format!("socket: {e}")))?;
    let call = async {
        let tcp = socket
            .connect(dst)
            .await
            .map_err(|e| CallError::Other(format!("connect {dst}: {e}")))?;
        fleet_sim::client::connect_on(tcp, "localhost", path, tls).await
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(CallError::Other(format!("no call to {dst} within {timeout:?}"))))
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

impl BpfPins {
    /// `ingress bpf dump --json` of these pins.
    pub fn dump(&self) -> serde_json::Value {
        let out = std::process::Command::new(crate::bin("ingress"))
            .args(["bpf", "dump", "--json", "--pin-path"])
            .arg(&self.0)
            .output()
            .expect("bpf dump");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("dump JSON")
    }
}

impl Drop for BpfPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
