//! Control path: what an operator asks of the process itself — `ctl
//! upgrade` (also SIGUSR2) and `ctl stop` (also SIGTERM) — sent to the
//! daemon's one loop, which owns the process's life.

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// One request to the daemon's loop.
#[derive(Debug)]
pub enum Request {
    /// Start the binary on disk and hand it the sockets; the reply says
    /// how that went.
    Upgrade(oneshot::Sender<Result<Upgraded, String>>),
    /// Stop gracefully (as the first SIGTERM).
    Stop,
}

/// A binary upgrade that took: the new process serves.
#[derive(Debug, Clone, Serialize)]
pub struct Upgraded {
    pub pid: u32,
    pub version: String,
    pub old_pid: u32,
    /// Calls the old process keeps until they end (or its grace).
    pub calls_kept: usize,
}

/// Where requests go.
pub type Requests = mpsc::Sender<Request>;
