//! Balancer: a server's last health check as `stat` shows it.

use std::time::SystemTime;

use serde::Serialize;

use super::Server;

/// The last health check as shown by `stat`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckStatus {
    pub ok: bool,
    pub reason: String,
    pub latency_ms: Option<f64>,
    /// Seconds since the Unix epoch.
    pub at: Option<f64>,
}

impl Default for CheckStatus {
    fn default() -> Self {
        Self {
            ok: false,
            reason: "not checked yet".to_owned(),
            latency_ms: None,
            at: None,
        }
    }
}

impl Server {
    /// Check result for `stat`.
    pub fn record_check(&self, ok: bool, reason: String, latency_ms: Option<f64>) {
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .ok();
        *self.live().check.lock().unwrap_or_else(|e| e.into_inner()) = CheckStatus {
            ok,
            reason,
            latency_ms,
            at,
        };
    }

    pub fn check_status(&self) -> CheckStatus {
        self.live().check.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
