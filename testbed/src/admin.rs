//! The client of the ingress admin API over its unix socket (reachable
//! whatever the network namespace), for the tests, the bench and the soak.
//! `ingress ctl` is the operator's client; this one is the harness's.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::http;

/// The admin API of one running daemon.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The daemon's `admin.socket`.
    pub socket: PathBuf,
    /// Bound on each request, connect to close.
    pub timeout: Duration,
}

impl Admin {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Bounds each request by `limit` instead of 30 s.
    pub fn with_timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Any request (`body` is sent as JSON); status and body, whatever the status.
    pub fn request(&self, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
        http::unix(&self.socket, method, path, body, self.timeout)
            .with_context(|| format!("admin socket {}", self.socket.display()))
    }

    /// `GET path`; status and body.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.request("GET", path, "")
    }

    /// `GET path`, which must answer 200 with JSON.
    pub fn json(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get(path)?;
        if status != 200 {
            bail!("admin {path}: {status} {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("admin {path}: {body}"))
    }

    /// `/api/servers`: every server of every pool.
    pub fn servers(&self) -> anyhow::Result<Vec<Value>> {
        let v = self.json("/api/servers")?;
        Ok(v["servers"].as_array().cloned().unwrap_or_default())
    }

    /// `/metrics` (Prometheus text), which must answer 200.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("admin /metrics: {status} {body}");
        }
        Ok(body)
    }
}
