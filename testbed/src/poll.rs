//! Bounded polling: wait for a condition, never longer than a limit.

use std::time::{Duration, Instant};

use anyhow::bail;

/// Polls `f` every `every` until it returns true; an error naming `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, every: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(every);
    }
    bail!("timed out after {limit:?} waiting for {what}")
}
