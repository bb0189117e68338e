//! Balancer: the slots a pick holds for outbound dialers (`POST
//! /api/pick`): counted against a server's reported capacity until a report
//! that can show the dialer's call, or the hold's end.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use super::Server;

/// How long an outbound dialer is given to reach the fleet after its pick:
/// a report on a probe sent later than that can show its call.
pub const DIALER_CONNECT: std::time::Duration = std::time::Duration::from_secs(1);

/// A slot held on a server for an outbound dialer (`POST /api/pick`):
/// counted against the server's reported capacity, as a routed call is,
/// until a report that can show the dialer's call or the hold's end; it
/// takes no `maxconn` slot (the call does not pass here). Dropping it
/// lets the slot go.
#[derive(Debug)]
pub struct Hold {
    pub server: Arc<Server>,
    at: Instant,
}

impl Hold {
    /// Takes a held slot on `server`; None when it has none left.
    pub(super) fn take(server: &Arc<Server>) -> Option<Self> {
        server.try_hold().then(|| Self {
            server: Arc::clone(server),
            at: Instant::now(),
        })
    }

    /// Keeps the slot until a report on a probe sent [`DIALER_CONNECT`]
    /// after the pick has come, or `hold` is over.
    pub async fn keep(self, hold: std::time::Duration) {
        let until = tokio::time::Instant::now() + hold;
        let seen_after = self.at + DIALER_CONNECT;
        while tokio::time::Instant::now() < until && !self.server.reported_on_probe_after(seen_after) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.server.release_hold();
    }
}

impl Server {
    /// Slots held for outbound dialers now.
    pub fn held(&self) -> u32 {
        self.live().held.load(Relaxed)
    }

    /// Takes a held slot if the server has reported capacity left (a
    /// liveness-only one: a `maxconn` slot's worth) after the holds
    /// already out.
    pub(super) fn try_hold(&self) -> bool {
        self.live()
            .held
            .fetch_update(Relaxed, Relaxed, |h| {
                (self.capacity_before_holds() > h).then_some(h + 1)
            })
            .is_ok()
    }

    pub(super) fn release_hold(&self) {
        let _ = self.live().held.fetch_update(Relaxed, Relaxed, |h| h.checked_sub(1));
    }

    /// Whether the last report answered a probe sent after `t`.
    pub(super) fn reported_on_probe_after(&self, t: Instant) -> bool {
        self.live()
            .reported_probe_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|p| p > t)
    }
}
