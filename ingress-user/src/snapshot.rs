//! Snapshot: the immutable [`Runtime`] the data path reads (routes, pools,
//! limits, timeouts) — one per configuration generation, swapped whole.
//! Building one (carrying servers over by key) is `control::build`'s job;
//! reading one is the data path's.

use std::{collections::BTreeSet, sync::Arc, time::Instant};

use serde::Serialize;

use crate::{
    balance::{CheckStatus, Pool, Server},
    config::{Limits, Timeouts},
    model::{ServerState, route::RouteTable},
};

/// One immutable view of the configuration in force.
#[derive(Debug)]
pub struct Runtime {
    pub generation: u64,
    pub routes: RouteTable,
    pub pools: Vec<Arc<Pool>>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub acme_upstream: String,
}

impl Runtime {
    /// Pools that at least one route leads to.
    pub fn routed_pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        let used: BTreeSet<usize> = self.routes.routes.iter().map(|r| r.pool).collect();
        self.pools.iter().filter(move |p| used.contains(&p.index))
    }

    /// Retry-After for a pool's all-full 503: its check interval in whole seconds, at least 1.
    /// The server `name` of `pool`, if there is one.
    pub fn server(&self, pool: &str, name: &str) -> Option<Arc<Server>> {
        let pool = self.pools.iter().find(|p| &*p.name == pool)?;
        pool.servers.load().iter().find(|s| s.name() == name).cloned()
    }

    pub fn retry_after(&self, pool: usize) -> u64 {
        let ms = self.pools[pool].check.interval.0.as_millis() as u64;
        ms.div_ceil(1000).max(1)
    }
}

/// One server as every reader shows it — `/api/servers`, `/stats`,
/// `/metrics` and the BPF `FLEETS` map — read once from its live state.
#[derive(Debug, Serialize)]
pub struct ServerView {
    pub pool: String,
    pub name: String,
    pub addr: String,
    pub state: ServerState,
    pub active: u32,
    /// Calls the process this one replaced still holds here (an upgrade).
    pub inherited: u32,
    pub maxconn: u32,
    /// Slots held for outbound dialers (`POST /api/pick`).
    pub held: u32,
    pub reported: Option<u32>,
    pub effective: u32,
    pub check: CheckStatus,
    /// The server's id (the key in `FLEETS`).
    #[serde(skip)]
    pub id: u32,
    /// Its pool's index in the configuration.
    #[serde(skip)]
    pub pool_index: usize,
    /// Whether a route leads to its pool.
    #[serde(skip)]
    pub routed: bool,
    #[serde(skip)]
    pub last_report: Option<Instant>,
    /// The server itself, for its counters.
    #[serde(skip)]
    pub server: Arc<Server>,
}

impl Runtime {
    /// Every server of every pool, in configuration order.
    pub fn server_views(&self) -> Vec<ServerView> {
        let routed: BTreeSet<usize> = self.routed_pools().map(|p| p.index).collect();
        let mut out = Vec::new();
        for pool in &self.pools {
            for s in pool.servers.load().iter() {
                out.push(ServerView {
                    pool: pool.name.to_string(),
                    name: s.name().to_owned(),
                    addr: s.def.addr(),
                    state: s.state(),
                    active: s.active(),
                    inherited: s.inherited(),
                    maxconn: s.maxconn,
                    held: s.held(),
                    reported: s.reported(),
                    effective: s.effective(),
                    check: s.check_status(),
                    id: s.id,
                    pool_index: pool.index,
                    routed: routed.contains(&pool.index),
                    last_report: *s.live().last_report.lock().unwrap_or_else(|e| e.into_inner()),
                    server: Arc::clone(s),
                });
            }
        }
        out
    }
}
