//! The running state both paths share: an immutable [`Runtime`] snapshot
//! (routes, pools, limits) behind `ArcSwap`, plus long-lived pieces
//! (metrics, certificates, XDP status). Building a snapshot from a config
//! is control path; reading it is data path.

use std::{
    collections::BTreeSet,
    sync::{Arc, atomic::AtomicU32},
};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore};

use crate::{
    certs::CertStore,
    config::{Config, ConfigError, Limits, Timeouts},
    metrics::Metrics,
    pool::{Pool, Server},
    routes::{Route, RoutePattern, RouteTable},
    state::Desired,
    tls,
    xdp::XdpState,
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
    pub fn retry_after(&self, pool: usize) -> u64 {
        let ms = self.pools[pool].check.interval.0.as_millis() as u64;
        ms.div_ceil(1000).max(1)
    }
}

/// Everything the daemon's tasks share.
#[derive(Debug)]
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    pub certs: Arc<CertStore>,
    pub xdp: XdpState,
    /// Signalled when a server's state or capacity may have changed.
    pub changed: Arc<Notify>,
    pub conn_limit: Arc<Semaphore>,
    conn_limit_size: std::sync::atomic::AtomicUsize,
    /// The front's TLS config (versions, ALPN, SNI resolver); swapped by a reload.
    pub tls: ArcSwap<rustls::ServerConfig>,
    next_server_id: AtomicU32,
}

impl Shared {
    pub fn new(
        runtime: Runtime,
        certs: Arc<CertStore>,
        tls: Arc<rustls::ServerConfig>,
        max_connections: usize,
        next_server_id: u32,
    ) -> Self {
        Self {
            runtime: ArcSwap::from_pointee(runtime),
            metrics: Metrics::default(),
            certs,
            xdp: XdpState::default(),
            changed: Arc::new(Notify::new()),
            conn_limit: Arc::new(Semaphore::new(max_connections)),
            conn_limit_size: std::sync::atomic::AtomicUsize::new(max_connections),
            tls: ArcSwap::new(tls),
            next_server_id: AtomicU32::new(next_server_id),
        }
    }

    /// Applies a new `max_connections` (live connections keep their permits).
    pub fn resize_conn_limit(&self, size: usize) {
        let old = self.conn_limit_size.swap(size, std::sync::atomic::Ordering::Relaxed);
        if size > old {
            self.conn_limit.add_permits(size - old);
        } else if size < old {
            self.conn_limit.forget_permits(old - size);
        }
    }

    /// Front connections holding a `max_connections` slot (calls included).
    pub fn connections_open(&self) -> usize {
        self.conn_limit_size
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(self.conn_limit.available_permits())
    }

    pub fn next_server_id(&self) -> u32 {
        self.next_server_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Builds pools and routes from a config and the desired server set.
/// Servers of `previous` with the same pool, name and definition are carried
/// over (same `Arc`, so live counters and tunnels are untouched); new ones
/// get ids from `next_id`.
pub fn build(
    config: &Config,
    desired: &Desired,
    previous: Option<&Runtime>,
    generation: u64,
    mut next_id: impl FnMut() -> u32,
) -> Result<Runtime, ConfigError> {
    let mut pools = Vec::new();
    for (index, (name, pcfg)) in config.pools.iter().enumerate() {
        let key = format!("pools.{name}");
        let tls_settings = pcfg.tls.settings();
        let client = tls_settings
            .as_ref()
            .map(tls::client_config)
            .transpose()
            .map_err(|e| ConfigError::Invalid {
                key: format!("{key}.tls"),
                reason: e.to_string(),
            })?;
        let pool_name: Arc<str> = Arc::from(name.as_str());
        let old_pool = previous.and_then(|rt| rt.pools.iter().find(|p| *p.name == **name));
        let old_servers = old_pool.map(|p| p.servers.load_full());
        let capacity_aware = !pcfg.check.capacity.is_empty();
        let mut servers = Vec::new();
        let entries = desired
            .pools
            .get(name)
            .map(|p| p.servers.as_slice())
            .unwrap_or_default();
        for entry in entries {
            let def = &entry.def;
            let sni = def
                .sni
                .as_deref()
                .or(tls_settings.as_ref().and_then(|t| t.sni.as_deref()));
            let server_name = tls::server_name(sni, &def.host).map_err(|reason| ConfigError::Invalid {
                key: format!("{key}.servers"),
                reason,
            })?;
            let maxconn = def.maxconn.unwrap_or(pcfg.maxconn);
            let reused = old_servers.as_ref().and_then(|old| {
                old.iter()
                    .find(|s| {
                        s.def == *def
                            && s.maxconn == maxconn
                            && s.server_name == server_name
                            && s.capacity_aware == capacity_aware
                    })
                    .cloned()
            });
            let same_name = old_servers
                .as_ref()
                .and_then(|old| old.iter().find(|s| s.def.name == def.name).cloned());
            let server = match (reused, same_name) {
                (Some(same), _) => same,
                // Same name, new definition: keep its live counters and health.
                (None, Some(old)) => Arc::new(Server::replacing(
                    &old,
                    def.clone(),
                    maxconn,
                    server_name,
                    capacity_aware,
                )),
                (None, None) => Arc::new(Server::new(
                    next_id(),
                    Arc::clone(&pool_name),
                    def.clone(),
                    maxconn,
                    server_name,
                    capacity_aware,
                )),
            };
            server.set_admin_state(entry.admin);
            servers.push(server);
        }
        let pool = Pool::new(index, pool_name, pcfg, servers, client);
        if let Some(old) = old_pool {
            pool.carry_counters(old);
        }
        pools.push(Arc::new(pool));
    }
    let routes = config
        .routes
        .iter()
        .map(|r| {
            let pool = pools.iter().position(|p| *p.name == r.pool).unwrap_or_default();
            RoutePattern::parse(&r.path)
                .map(|pattern| Route {
                    pattern,
                    path: r.path.clone(),
                    pool,
                    kind: r.kind,
                    host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                })
                .map_err(|reason| ConfigError::Invalid {
                    key: "routes".to_owned(),
                    reason,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Runtime {
        generation,
        routes: RouteTable {
            health_path: config.listen.health_path.clone(),
            routes,
        },
        pools,
        limits: config.limits.clone(),
        timeouts: config.timeouts.clone(),
        acme_upstream: config.listen.acme_upstream.clone(),
    })
}
