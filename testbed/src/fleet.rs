//! Fleet simulators (`fleet-sim`) seen from the harness: the process handle
//! ([`Fleet`], started from its binary and stopped on drop) and the client of
//! its plain-HTTP control port ([`FleetControl`]; `fleet_sim::sim` serves it).

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    http, poll,
    proc::{Proc, launcher},
};

/// A fleet simulator's control port, from inside `netns` when set.
#[derive(Debug, Clone)]
pub struct FleetControl {
    pub addr: SocketAddr,
    pub netns: Option<String>,
}

impl FleetControl {
    /// Bound on each control request.
    const TIMEOUT: Duration = Duration::from_secs(10);

    /// `GET path_and_query` (`/state`, `/occupy?n=4`, …), which must answer
    /// 200; the fleet's state as JSON.
    pub fn get(&self, path_and_query: &str) -> anyhow::Result<Value> {
        let (status, body) = http::get(self.netns.as_deref(), self.addr, path_and_query, Self::TIMEOUT)
            .with_context(|| format!("fleet control {}", self.addr))?;
        if status != 200 {
            bail!("fleet control {path_and_query}: {status} {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("fleet state {body:?}"))
    }

    pub fn state(&self) -> anyhow::Result<Value> {
        self.get("/state")
    }

    /// Marks `n` more workers busy.
    pub fn occupy(&self, n: u32) -> anyhow::Result<Value> {
        self.get(&format!("/occupy?n={n}"))
    }

    /// Frees `n` busy workers.
    pub fn free(&self, n: u32) -> anyhow::Result<Value> {
        self.get(&format!("/free?n={n}"))
    }

    /// Waits (bounded) until no call holds a worker.
    pub fn wait_idle(&self, limit: Duration) -> anyhow::Result<()> {
        poll::wait_for("fleet calls to end", limit, Duration::from_millis(50), || {
            self.state().is_ok_and(|s| s["calls"] == 0)
        })
    }
}

/// How to start one fleet simulator.
#[derive(Debug, Clone, Copy)]
pub struct FleetSpec<'a> {
    /// The `fleet-sim` binary.
    pub bin: &'a Path,
    /// Its certificate bundle (`--cert`).
    pub cert: &'a Path,
    pub workers: u32,
    /// Runtime threads (`--threads`); the binary's default when `None`.
    pub threads: Option<u32>,
    /// Run inside this network namespace.
    pub netns: Option<&'a str>,
    /// Where calls and health checks are taken (`--listen`); loopback, port 0 when `None`.
    pub listen: Option<&'a str>,
    /// Pin to this core.
    pub core: Option<u32>,
    /// Stderr goes here (to ours when `None`).
    pub log: Option<&'a Path>,
    /// How long to wait for its ready line.
    pub ready: Duration,
}

/// A running fleet simulator, stopped on drop.
pub struct Fleet {
    pub proc: Proc,
    /// Where calls and health checks go.
    pub https: SocketAddr,
    pub control: FleetControl,
}

impl Fleet {
    /// Starts it and reads its addresses from the ready line.
    pub fn start(name: &str, spec: &FleetSpec<'_>) -> anyhow::Result<Self> {
        let mut cmd = launcher(spec.bin, spec.netns, spec.core);
        cmd.arg("--cert")
            .arg(spec.cert)
            .args(["--workers", &spec.workers.to_string()]);
        if let Some(t) = spec.threads {
            cmd.args(["--threads", &t.to_string()]);
        }
        if let Some(l) = spec.listen {
            cmd.args(["--listen", l]);
        }
        let proc = Proc::start(name, &mut cmd, spec.log, Some(spec.ready))?;
        let addr = |k: &str| -> anyhow::Result<SocketAddr> {
            proc.ready[k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("no address `{k}` in {name}'s ready line {}", proc.ready))
        };
        Ok(Self {
            https: addr("https")?,
            control: FleetControl {
                addr: addr("control")?,
                netns: spec.netns.map(str::to_owned),
            },
            proc,
        })
    }
}
