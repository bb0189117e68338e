//! Balancer: what a request asks of the pick (demand, hints), the lease on
//! a reserved slot, which gives the slot back when dropped, and the hold a
//! pick keeps for an outbound dialer.

use std::sync::Arc;

use super::Server;

/// What is being placed. A call holds one of the fleet's workers, so it
/// takes reported capacity; a plain HTTP request (route kind `http`) is
/// answered by the fleet's web tier and only holds a `maxconn` slot while
/// it is in flight.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    #[default]
    Call,
    Request,
}

/// What a request tells the pick: the hash key (uri-hash), the sticky
/// cookie's value, and whether it is a call or a plain request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hints<'a> {
    pub hash_key: Option<&'a str>,
    pub sticky: Option<&'a str>,
    pub demand: Demand,
}

/// A reserved slot on a server; dropping it releases the slot. A call
/// holds a worker from its reservation to its end, 101 or not, so every
/// drop gives back what the reservation took (see [`Server::release`]).
#[derive(Debug)]
pub struct Lease {
    pub server: Arc<Server>,
    /// The report window the call was counted in (None: not counted).
    window: Option<u32>,
}

impl Lease {
    /// Reserves a slot on `server` for `demand`; None when it has none left.
    pub(super) fn take(server: &Arc<Server>, demand: Demand) -> Option<Self> {
        server.try_reserve(demand).map(|window| Self {
            server: Arc::clone(server),
            window,
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.server.release(self.window);
    }
}

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
    at: std::time::Instant,
}

impl Hold {
    /// Takes a held slot on `server`; None when it has none left.
    pub(super) fn take(server: &Arc<Server>) -> Option<Self> {
        server.try_hold().then(|| Self {
            server: Arc::clone(server),
            at: std::time::Instant::now(),
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
