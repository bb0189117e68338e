//! Control path: snapshot building: a [`Runtime`] from a config and the
//! desired server set. Servers with the same pool, name and definition are
//! carried over (same `Arc`: live counters and tunnels untouched).

use std::sync::Arc;

use super::{desired::Desired, tls};
use crate::{
    balance::{Pool, Server},
    config::{Config, ConfigError},
    model::route::{Route, RoutePattern, RouteTable},
    snapshot::Runtime,
};

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
