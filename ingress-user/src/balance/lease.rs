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

/// A reserved slot on a server; dropping it releases the slot.
#[derive(Debug)]
pub struct Lease {
    pub server: Arc<Server>,
    /// Set once the fleet accepted the call (101): from then on dropping
    /// releases `active` only; before, it gives the capacity back too.
    accepted: bool,
    demand: Demand,
}

impl Lease {
    /// Reserves a slot on `server` for `demand`; None when it has none left.
    pub(super) fn take(server: &Arc<Server>, demand: Demand) -> Option<Self> {
        server.try_reserve(demand).then(|| Self {
            server: Arc::clone(server),
            accepted: false,
            demand,
        })
    }

    pub fn accepted(&mut self) {
        self.accepted = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.accepted || self.demand == Demand::Request {
            self.server.release();
        } else {
            self.server.unreserve();
        }
    }
}
