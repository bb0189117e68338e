//! Balancer: one small strategy per balance mode. Each chooses among the
//! eligible servers without reserving; the pool's pick reserves and retries.

pub mod cookie;
mod leastconn;
mod roundrobin;
mod uri_hash;

use std::sync::Arc;

use super::Server;
use crate::model::Balance;

/// The servers in the order a strategy walks them: a rotating start, so
/// ties do not always go to the same server.
#[derive(Debug, Clone, Copy)]
pub struct Ring<'a> {
    pub servers: &'a [Arc<Server>],
    pub start: usize,
}

impl<'a> Ring<'a> {
    pub fn iter(self) -> impl Iterator<Item = &'a Arc<Server>> {
        let n = self.servers.len();
        (0..n).map(move |i| &self.servers[(self.start + i) % n.max(1)])
    }
}

/// The server `balance` chooses among those `eligible` accepts.
pub fn choose<'a>(
    balance: Balance,
    ring: Ring<'a>,
    hash_key: Option<&str>,
    eligible: impl Fn(&Server) -> bool,
) -> Option<&'a Arc<Server>> {
    match balance {
        // Cookie mode picks new clients by least-conn; the pin is tried before.
        Balance::Leastconn | Balance::Cookie => leastconn::choose(ring, eligible),
        Balance::Roundrobin => roundrobin::choose(ring, eligible),
        Balance::UriHash => uri_hash::choose(ring.servers, hash_key.unwrap_or(""), eligible),
    }
}
