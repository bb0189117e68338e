//! Control path: what the BPF sync last wrote and read (attached, mode,
//! shedding, total capacity, counters), for `/metrics`, `/api/status` and `stat`.

use std::sync::Mutex;

use serde::Serialize;

/// One reading of the XDP status, as `/metrics`, `/api/status` and `stat` show it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct XdpView {
    /// `[xdp] mode` is not `off`: the program is meant to be attached.
    pub configured: bool,
    pub attached: bool,
    pub interface: Option<String>,
    /// `native` or `skb` when attached.
    pub mode: Option<String>,
    /// Why `mode` is not the configured one (e.g. RST on a veth), when it is not.
    pub mode_reason: Option<String>,
    /// Shedding for want of capacity.
    pub shedding: bool,
    /// Dropping every new carrier SYN: the process leaves its group.
    pub leaving: bool,
    pub total_capacity: u64,
    /// Why XDP is not attached, when it is not.
    pub error: Option<String>,
    pub counters: Vec<(&'static str, u64)>,
}

/// Shared XDP status, written by the sync task.
#[derive(Debug, Default)]
pub struct XdpStatus(Mutex<XdpView>);

impl XdpStatus {
    pub fn view(&self) -> XdpView {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn update(&self, f: impl FnOnce(&mut XdpView)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }
}
