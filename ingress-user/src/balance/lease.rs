//! Balancer: what a request asks of the pick (demand, hints) and the lease on
//! a reserved slot, which gives the slot back when dropped.

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
