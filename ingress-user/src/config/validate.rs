//! Configuration: checks of values that parse but cannot work, each naming
//! the key and the reason. Pure: nothing here reads a file (a pool's
//! `servers_file` is read by [`super::servers_file::read_all`], which the
//! control side calls, and checked by the desired state it feeds).

use std::{collections::BTreeSet, time::Duration};

use super::{Config, ConfigError, PoolConfig, ServerSpec, invalid};
use crate::model::{
    Balance, ServerDef, XdpMode,
    addr::{parse_host_port, parse_prefix},
    route::RoutePattern,
};

impl Config {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.group.validate()?;
        if let Some(pick) = &self.admin.pick_token {
            if pick.is_empty() {
                return Err(invalid("admin.pick_token", "empty: remove the key, or set a token"));
            }
            if self.admin.token.as_ref() == Some(pick) {
                return Err(invalid(
                    "admin.pick_token",
                    "the same as admin.token: a dialer would hold the admin's rights",
                ));
            }
        }
        if self.listen.https.0.is_empty() {
            return Err(invalid("listen.https", "at least one address is needed"));
        }
        if !self.listen.health_path.starts_with('/') {
            return Err(invalid("listen.health_path", "must start with /"));
        }
        parse_host_port(&self.listen.acme_upstream).map_err(|e| invalid("listen.acme_upstream", e))?;
        if self.limits.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if self.limits.max_header_bytes < 256 {
            return Err(invalid("limits.max_header_bytes", "must be at least 256"));
        }
        if self.limits.max_headers == 0 {
            return Err(invalid("limits.max_headers", "must be at least 1"));
        }
        for (key, d) in [
            ("limits.header_timeout", self.limits.header_timeout),
            ("timeouts.connect", self.timeouts.connect),
            ("timeouts.upgrade_response", self.timeouts.upgrade_response),
            ("timeouts.tunnel_idle", self.timeouts.tunnel_idle),
            ("timeouts.keepalive_idle", self.timeouts.keepalive_idle),
        ] {
            if d.0.is_zero() {
                return Err(invalid(key, "must be more than 0"));
            }
        }
        let mut seen_paths = BTreeSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            RoutePattern::parse(&route.path).map_err(|e| invalid(format!("{key}.path"), e))?;
            if !seen_paths.insert((route.host.clone(), route.path.clone())) {
                return Err(invalid(
                    format!("{key}.path"),
                    format!("`{}` is listed twice", route.path),
                ));
            }
            if !self.pools.contains_key(&route.pool) {
                return Err(invalid(
                    format!("{key}.pool"),
                    format!("no pool named `{}`", route.pool),
                ));
            }
        }
        for (name, pool) in &self.pools {
            self.validate_pool(name, pool)?;
        }
        if let Some(a) = self.admin.listen
            && !a.ip().is_loopback()
            && self.admin.token.as_deref().is_none_or(str::is_empty)
        {
            return Err(invalid(
                "admin.listen",
                format!("{a} is not a loopback address: set admin.token to expose the read-only API there"),
            ));
        }
        if self.xdp.mode != XdpMode::Off && self.xdp.interface.is_none() {
            return Err(invalid("xdp.interface", "required unless mode = \"off\""));
        }
        for (i, c) in self.xdp.carriers.iter().enumerate() {
            parse_prefix(c).map_err(|e| invalid(format!("xdp.carriers[{i}]"), e))?;
        }
        if self.xdp.lease.0 < Duration::from_millis(500) {
            return Err(invalid("xdp.lease", "must be at least 500ms"));
        }
        Ok(())
    }

    fn validate_pool(&self, name: &str, pool: &PoolConfig) -> Result<(), ConfigError> {
        let key = format!("pools.{name}");
        if pool.maxconn == 0 {
            return Err(invalid(format!("{key}.maxconn"), "must be at least 1"));
        }
        if pool.tls.settings().is_some_and(|t| t.versions.is_empty()) {
            return Err(invalid(
                format!("{key}.tls.versions"),
                "offers no version: \"1.3\", \"1.2\" or both",
            ));
        }
        if pool.servers_seed.is_some() && pool.servers_file.is_none() {
            return Err(invalid(
                format!("{key}.servers_seed"),
                "needs servers_file: the file the list is kept in once it changes at runtime",
            ));
        }
        if pool.cookie.is_empty()
            || !pool
                .cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                format!("{key}.cookie"),
                "a cookie name: letters, digits, _ or -",
            ));
        }
        if pool.balance == Balance::UriHash && pool.hash_key != "path" {
            let used = self
                .routes
                .iter()
                .filter(|r| r.pool == name)
                .all(|r| r.path.contains(&format!("{{{}}}", pool.hash_key)));
            if !used {
                return Err(invalid(
                    format!("{key}.hash_key"),
                    format!(
                        "`{}` is neither \"path\" nor a parameter of every route to this pool",
                        pool.hash_key
                    ),
                ));
            }
        }
        let check = &pool.check;
        if check.fall == 0 || check.rise == 0 {
            return Err(invalid(format!("{key}.check"), "fall and rise must be at least 1"));
        }
        if check.interval.0.is_zero() || check.timeout.0.is_zero() {
            return Err(invalid(
                format!("{key}.check"),
                "interval and timeout must be more than 0",
            ));
        }
        if !check.path.starts_with('/') {
            return Err(invalid(format!("{key}.check.path"), "must start with /"));
        }
        if check.method.is_empty() || !check.method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid(
                format!("{key}.check.method"),
                "must be an upper-case HTTP method",
            ));
        }
        regex::Regex::new(&check.expect_status)
            .map_err(|e| invalid(format!("{key}.check.expect_status"), e.to_string()))?;
        if !check.capacity.is_empty() && !check.capacity.starts_with('/') {
            return Err(invalid(
                format!("{key}.check.capacity"),
                "a JSON pointer starts with / (or is \"\" for liveness-only)",
            ));
        }
        // Names across inline and file servers are checked by the desired state.
        let servers = self.inline_servers(name, pool)?;
        let mut names = BTreeSet::new();
        for s in &servers {
            if !names.insert(s.name.clone()) {
                return Err(invalid(
                    format!("{key}.servers"),
                    format!("server name `{}` is used twice", s.name),
                ));
            }
        }
        Ok(())
    }

    /// The servers written inline in a pool's table (its `servers_file` is
    /// read by the control side).
    pub fn inline_servers(&self, name: &str, pool: &PoolConfig) -> Result<Vec<ServerDef>, ConfigError> {
        let key = format!("pools.{name}");
        let mut out = Vec::new();
        for (i, spec) in pool.servers.iter().enumerate() {
            let def = match spec {
                ServerSpec::Addr(a) => {
                    let (host, port) = parse_host_port(a).map_err(|e| invalid(format!("{key}.servers[{i}]"), e))?;
                    ServerDef {
                        name: a.clone(),
                        host,
                        port,
                        sni: None,
                        maxconn: None,
                    }
                }
                ServerSpec::Table(t) => {
                    let (host, port) =
                        parse_host_port(&t.addr).map_err(|e| invalid(format!("{key}.servers[{i}].addr"), e))?;
                    if t.maxconn == Some(0) {
                        return Err(invalid(format!("{key}.servers[{i}].maxconn"), "must be at least 1"));
                    }
                    ServerDef {
                        name: t.name.clone().unwrap_or_else(|| t.addr.clone()),
                        host,
                        port,
                        sni: t.sni.clone(),
                        maxconn: t.maxconn,
                    }
                }
            };
            out.push(def);
        }
        Ok(out)
    }
}
