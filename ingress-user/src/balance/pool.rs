//! Balancer: a pool as the data path sees it — its settings, its servers
//! behind `ArcSwap`, its counters, and the pick: filter, select by balance
//! mode, slowstart, reserve.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
};

use super::{
    Hints, Hold, Lease, Server,
    select::{self, Ring, cookie},
};
use crate::{
    config::{CheckConfig, PoolConfig},
    model::{Balance, OnMarkedDown, RetryOn, ServerState},
};

/// A pool as the data path sees it: settings plus its servers.
pub struct Pool {
    pub index: usize,
    pub name: Arc<str>,
    pub balance: Balance,
    pub retry_on: Vec<RetryOn>,
    pub retries: u32,
    pub check: CheckConfig,
    pub servers: arc_swap::ArcSwap<Vec<Arc<Server>>>,
    rotation: AtomicU32,
    /// Where ties among equally free servers start for dialers' picks.
    pick_rotation: AtomicU32,
    /// Calls answered 503 because no server had capacity.
    pub no_capacity_total: AtomicU64,
    /// Upgrade attempts retried on another server.
    pub retries_total: AtomicU64,
    /// Fleets' answers handed to carriers, by status (a 429 when every
    /// candidate refused, or 429 is not retried).
    pub passed: crate::telemetry::StatusCounts,
    /// TLS towards the servers; None for `tls = false`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Per server (by id): `tls` with a session cache of its own. rustls
    /// keys resumption by server name, and servers of a pool may share one
    /// (or an IP); a shared cache would offer one fleet's tickets to another
    /// and fall back to full handshakes. Built with the pool, so a reload
    /// (a changed `[tls]` included) never resumes old sessions.
    server_tls: std::collections::HashMap<u32, Arc<rustls::ClientConfig>>,
    pub hash_key: String,
    pub cookie: String,
    pub slowstart: Option<std::time::Duration>,
    pub on_marked_down: OnMarkedDown,
    /// State of the slowstart coin (xorshift).
    coin: AtomicU64,
    /// The pool's `tls.sni` (servers without their own).
    pub tls_sni: Option<String>,
    /// The pool's default per-server `maxconn`.
    pub maxconn: u32,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).finish()
    }
}

impl Pool {
    pub fn new(
        index: usize,
        name: Arc<str>,
        cfg: &PoolConfig,
        servers: Vec<Arc<Server>>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let server_tls = match &tls {
            Some(base) => servers
                .iter()
                .map(|s| {
                    let mut c = rustls::ClientConfig::clone(base);
                    // One server name per cache; rustls keeps up to 8 TLS 1.3 tickets per name.
                    c.resumption = rustls::client::Resumption::in_memory_sessions(4);
                    (s.id, Arc::new(c))
                })
                .collect(),
            None => std::collections::HashMap::new(),
        };
        Self {
            index,
            name,
            balance: cfg.balance,
            retry_on: cfg.retry_on.clone(),
            retries: cfg.retries,
            check: cfg.check.clone(),
            servers: arc_swap::ArcSwap::from_pointee(servers),
            rotation: AtomicU32::new(0),
            pick_rotation: AtomicU32::new(0),
            no_capacity_total: AtomicU64::new(0),
            retries_total: AtomicU64::new(0),
            passed: crate::telemetry::StatusCounts::default(),
            tls,
            server_tls,
            hash_key: cfg.hash_key.clone(),
            cookie: cfg.cookie.clone(),
            slowstart: cfg.slowstart.map(|d| d.0),
            on_marked_down: cfg.on_marked_down,
            coin: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            tls_sni: cfg.tls.settings().and_then(|t| t.sni),
            maxconn: cfg.maxconn,
        }
    }

    /// Keeps the counters of the pool this one replaces (reload).
    pub fn carry_counters(&self, old: &Pool) {
        for (new, old) in [
            (&self.no_capacity_total, &old.no_capacity_total),
            (&self.retries_total, &old.retries_total),
        ] {
            new.store(old.load(Relaxed), Relaxed);
        }
        self.passed.carry(&old.passed);
    }

    pub fn retries_on(&self, r: RetryOn) -> bool {
        self.retry_on.contains(&r)
    }

    /// Sum of effective capacity of servers that take new calls.
    pub fn total_effective(&self) -> u64 {
        self.servers
            .load()
            .iter()
            .filter(|s| s.state() == ServerState::Up)
            .map(|s| u64::from(s.effective()))
            .sum()
    }

    /// A uniform draw in [0, 1) (xorshift; quality is irrelevant here).
    fn coin(&self) -> f64 {
        let next = self
            .coin
            .fetch_update(Relaxed, Relaxed, |mut x| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Some(x)
            })
            .unwrap_or(1);
        (next >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks and reserves a server that is UP and not in `exclude`, by the
    /// pool's balance mode (`hints` carries the hash key and the sticky
    /// cookie). Servers in slowstart are passed over with a probability that
    /// shrinks over the window, unless nothing else is left.
    pub fn pick(&self, hints: &Hints<'_>, exclude: &[u32]) -> Option<Lease> {
        let servers = self.servers.load();
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let mut skip: Vec<u32> = exclude.to_vec();
        if self.balance == Balance::Cookie
            && let Some(pin) = hints.sticky
            && let Some(s) = cookie::pinned(&servers, pin, &skip)
            && s.accepts(hints.demand)
        {
            if let Some(lease) = Lease::take(s, hints.demand) {
                return Some(lease);
            }
            skip.push(s.id);
        }
        let ring = Ring {
            servers: &servers,
            start: self.rotation.fetch_add(1, Relaxed) as usize % n,
        };
        let mut passed_over: Option<&Arc<Server>> = None;
        // Bounded: each round removes one candidate.
        for _ in 0..n {
            let chosen = select::choose(self.balance, ring, hints.hash_key, |s| {
                !skip.contains(&s.id) && s.accepts(hints.demand)
            });
            let server = chosen.or(passed_over.take())?;
            let factor = server.slowstart_factor(self.slowstart);
            if factor < 1.0 && self.balance != Balance::UriHash && passed_over.is_none() && self.coin() >= factor {
                passed_over = Some(server);
                skip.push(server.id);
                continue;
            }
            if let Some(lease) = Lease::take(server, hints.demand) {
                return Some(lease);
            }
            skip.push(server.id);
        }
        passed_over.and_then(|s| Lease::take(s, hints.demand))
    }

    /// The TLS config to reach `server` with (None for `tls = false`); a
    /// server not in the pool yet (an `add` being checked) gets the pool's.
    pub fn client_tls(&self, server: &Server) -> Option<Arc<rustls::ClientConfig>> {
        self.server_tls.get(&server.id).or(self.tls.as_ref()).cloned()
    }

    /// Holds a slot on the UP server with the most effective capacity for
    /// an outbound dialer ([`Hold::keep`]); ties go round the pool in turn.
    pub fn hold_most_capacity(&self) -> Option<Hold> {
        let servers = self.servers.load();
        let n = servers.len().max(1);
        let start = self.pick_rotation.fetch_add(1, Relaxed) as usize;
        // Each server's capacity read once: the sort needs a fixed order.
        let mut up: Vec<(u32, usize)> = (0..servers.len())
            .map(|i| (start + i) % n)
            .filter(|&i| servers[i].state() == ServerState::Up)
            .map(|i| (servers[i].effective(), i))
            .collect();
        // Stable: among equals the rotation's order stays.
        up.sort_by_key(|&(effective, _)| std::cmp::Reverse(effective));
        up.into_iter().find_map(|(_, i)| Hold::take(&servers[i]))
    }

    /// The server with the most effective capacity (for outbound dialers), without reserving.
    pub fn most_capacity(&self) -> Option<Arc<Server>> {
        self.servers
            .load()
            .iter()
            .filter(|s| s.state() == ServerState::Up)
            .max_by_key(|s| s.effective())
            .cloned()
    }
}
