//! Dialling calls for every mode: the target, the client TLS configs (no
//! resumption, or a reconnecting carrier's), what an attempt ended in, batches of calls, and the fleets'
//! control ports (through `testbed::FleetControl`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use clap::Args as ClapArgs;
use fleet_sim::client::{CallError, Wss, connect};
use rustls::ClientConfig;
use serde_json::Value;

#[derive(Debug, ClapArgs)]
pub struct Target {
    /// Proxy address (loopback or an address in a namespace of the bench).
    #[arg(long)]
    pub addr: SocketAddr,
    /// SNI and Host header.
    #[arg(long, default_value = "localhost")]
    pub host: String,
    /// CA certificate (PEM) of the proxy's certificate.
    #[arg(long)]
    pub ca: PathBuf,
    /// Call path prefix; the call number is appended.
    #[arg(long, default_value = "/ws/bench-")]
    pub path: String,
}

/// The client TLS config with session resumption off: every set-up is a full handshake.
pub fn tls(ca: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    client_tls(ca, rustls::client::Resumption::disabled())
}

/// The client TLS config of a carrier that reconnects: sessions the proxy
/// issued are kept (rustls's in-memory cache) and resumed.
pub fn resuming_tls(ca: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    client_tls(ca, rustls::client::Resumption::in_memory_sessions(1024))
}

fn client_tls(ca: &Path, resumption: rustls::client::Resumption) -> anyhow::Result<Arc<ClientConfig>> {
    let pem = std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
    let base = fleet_sim::client::tls_config(&pem)?;
    let mut cfg = (*base).clone();
    cfg.resumption = resumption;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// What one attempt ended in, as a short key.
pub fn outcome(r: &Result<Result<Wss, CallError>, tokio::time::error::Elapsed>) -> String {
    match r {
        Err(_) => "timeout".into(),
        Ok(Ok(_)) => "101".into(),
        Ok(Err(CallError::Status(s, _))) => s.to_string(),
        Ok(Err(CallError::Other(e))) => {
            let e = e.to_lowercase();
            if e.contains("refused") {
                "refused".into()
            } else if e.contains("reset") {
                "reset".into()
            } else if e.contains("tls") {
                "tls-error".into()
            } else if e.contains("eof") || e.contains("closed") {
                "closed".into()
            } else {
                "other".into()
            }
        }
    }
}

pub async fn close(mut ws: Wss) {
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
}

/// Opens `n` calls, `concurrency` at a time; returns the open ones and the failures by kind.
pub async fn open_calls(
    t: &Target,
    tls: &Arc<ClientConfig>,
    n: u32,
    concurrency: u32,
) -> (Vec<Wss>, BTreeMap<String, u64>) {
    let mut open = Vec::new();
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + concurrency).min(n))
            .map(|k| {
                let path = format!("{}{k}", t.path);
                let (addr, host, tls) = (t.addr, t.host.clone(), Arc::clone(tls));
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_secs(10), connect(addr, &host, &path, tls)).await
                })
            })
            .collect();
        for b in batch {
            match b.await {
                Ok(Ok(Ok(ws))) => open.push(ws),
                Ok(r) => *failed.entry(outcome(&r)).or_default() += 1,
                Err(_) => *failed.entry("panic".into()).or_default() += 1,
            }
        }
        i += concurrency;
    }
    (open, failed)
}

/// `GET path` on a fleet's control port (off the runtime thread); the JSON body.
pub async fn control(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let fleet = testbed::FleetControl { addr, netns: None };
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || fleet.get(&path))
        .await
        .context("fleet control task")?
}
