//! Control path: the desired server set as a pure state machine. Every change
//! to running state is a [`Command`] applied here — admin calls, config
//! reloads (the difference between two configs becomes commands) and the
//! `servers_file` contents (derived from this state) all take one path.
//! Nothing here touches sockets or files, so it is tested on its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use serde::Serialize;

use crate::{
    config::{Config, ConfigError, FileServers},
    model::{AdminState, Origin, ServerDef},
};

/// One server as desired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    pub def: ServerDef,
    pub origin: Origin,
    pub admin: AdminState,
}

/// One pool's servers as desired.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolEntry {
    pub servers: Vec<ServerEntry>,
    pub servers_file: Option<PathBuf>,
}

impl PoolEntry {
    fn find(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.def.name == name)
    }

    /// The `servers_file` lines this pool's state implies.
    pub fn file_servers(&self) -> Vec<(ServerDef, AdminState)> {
        self.servers
            .iter()
            .filter(|s| s.origin == Origin::File)
            .map(|s| (s.def.clone(), s.admin))
            .collect()
    }
}

/// The whole desired server set, by pool name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    pub pools: BTreeMap<String, PoolEntry>,
}

/// A change to running state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    AddPool {
        pool: String,
        servers_file: Option<PathBuf>,
    },
    RemovePool {
        pool: String,
    },
    AddServer {
        pool: String,
        #[serde(serialize_with = "ser_def")]
        def: ServerDef,
        origin: Origin,
    },
    /// Same name, new address, SNI or maxconn.
    UpdateServer {
        pool: String,
        #[serde(serialize_with = "ser_def")]
        def: ServerDef,
    },
    RemoveServer {
        pool: String,
        name: String,
    },
    SetAdminState {
        pool: String,
        name: String,
        #[serde(serialize_with = "ser_admin")]
        state: AdminState,
    },
}

fn ser_def<S: serde::Serializer>(def: &ServerDef, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{} ({})", def.name, def.addr()))
}

fn ser_admin<S: serde::Serializer>(a: &AdminState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(a.as_str())
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("no pool named `{0}`")]
    NoPool(String),
    #[error("pool `{0}` exists already")]
    PoolExists(String),
    #[error("no server `{name}` in pool `{pool}`")]
    NoServer { pool: String, name: String },
    #[error("pool `{pool}` already has a server named `{name}`")]
    ServerExists { pool: String, name: String },
    #[error("pool `{pool}` already has a server at {addr} (`{name}`)")]
    AddrExists { pool: String, addr: String, name: String },
}

impl Desired {
    /// The desired state a config describes, with the pools' `servers_file`
    /// contents as read by the caller (`files`, by pool name). A pool with a
    /// `servers_file` missing from `files` is an error, not an empty file
    /// (which the next persist would write back).
    pub fn from_config(config: &Config, files: &BTreeMap<String, FileServers>) -> Result<Self, ConfigError> {
        let mut pools = BTreeMap::new();
        for (name, pcfg) in &config.pools {
            let mut entry = PoolEntry {
                servers: Vec::new(),
                servers_file: pcfg.servers_file.clone(),
            };
            let inline = config.inline_servers(name, pcfg)?.into_iter().map(|def| ServerEntry {
                def,
                origin: Origin::Inline,
                admin: AdminState::Ready,
            });
            let file_servers = match (&pcfg.servers_file, files.get(name)) {
                (Some(path), None) => {
                    return Err(ConfigError::Invalid {
                        key: format!("pools.{name}.servers_file"),
                        reason: format!("{} was not read", path.display()),
                    });
                }
                (_, found) => found,
            };
            let from_file = file_servers.into_iter().flatten().map(|(def, admin)| ServerEntry {
                def: def.clone(),
                origin: Origin::File,
                admin: *admin,
            });
            let mut names = BTreeSet::new();
            for server in inline.chain(from_file) {
                if !names.insert(server.def.name.clone()) {
                    return Err(ConfigError::Invalid {
                        key: format!("pools.{name}.servers"),
                        reason: format!("server name `{}` is used twice", server.def.name),
                    });
                }
                entry.servers.push(server);
            }
            pools.insert(name.clone(), entry);
        }
        Ok(Self { pools })
    }

    fn pool_mut(&mut self, pool: &str) -> Result<&mut PoolEntry, StateError> {
        self.pools
            .get_mut(pool)
            .ok_or_else(|| StateError::NoPool(pool.to_owned()))
    }

    /// Applies one command; on error nothing changed.
    pub fn apply(&mut self, cmd: &Command) -> Result<(), StateError> {
        match cmd {
            Command::AddPool { pool, servers_file } => {
                if self.pools.contains_key(pool) {
                    return Err(StateError::PoolExists(pool.clone()));
                }
                self.pools.insert(
                    pool.clone(),
                    PoolEntry {
                        servers: Vec::new(),
                        servers_file: servers_file.clone(),
                    },
                );
            }
            Command::RemovePool { pool } => {
                self.pools
                    .remove(pool)
                    .ok_or_else(|| StateError::NoPool(pool.clone()))?;
            }
            Command::AddServer { pool, def, origin } => {
                let p = self.pool_mut(pool)?;
                if p.find(&def.name).is_some() {
                    return Err(StateError::ServerExists {
                        pool: pool.clone(),
                        name: def.name.clone(),
                    });
                }
                if let Some(other) = p.servers.iter().find(|s| s.def.addr() == def.addr()) {
                    return Err(StateError::AddrExists {
                        pool: pool.clone(),
                        addr: def.addr(),
                        name: other.def.name.clone(),
                    });
                }
                p.servers.push(ServerEntry {
                    def: def.clone(),
                    origin: *origin,
                    admin: AdminState::Ready,
                });
            }
            Command::UpdateServer { pool, def } => {
                let p = self.pool_mut(pool)?;
                let i = p.find(&def.name).ok_or_else(|| StateError::NoServer {
                    pool: pool.clone(),
                    name: def.name.clone(),
                })?;
                p.servers[i].def = def.clone();
            }
            Command::RemoveServer { pool, name } => {
                let p = self.pool_mut(pool)?;
                let i = p.find(name).ok_or_else(|| StateError::NoServer {
                    pool: pool.clone(),
                    name: name.clone(),
                })?;
                p.servers.remove(i);
            }
            Command::SetAdminState { pool, name, state } => {
                let p = self.pool_mut(pool)?;
                let i = p.find(name).ok_or_else(|| StateError::NoServer {
                    pool: pool.clone(),
                    name: name.clone(),
                })?;
                p.servers[i].admin = *state;
            }
        }
        Ok(())
    }

    /// The commands that turn `self` into `new` (a reload).
    pub fn diff(&self, new: &Desired) -> Vec<Command> {
        let mut out = Vec::new();
        for (name, old_pool) in &self.pools {
            if !new.pools.contains_key(name) {
                out.push(Command::RemovePool { pool: name.clone() });
                continue;
            }
            let new_pool = &new.pools[name];
            for s in &old_pool.servers {
                if new_pool.find(&s.def.name).is_none() {
                    out.push(Command::RemoveServer {
                        pool: name.clone(),
                        name: s.def.name.clone(),
                    });
                }
            }
        }
        for (name, new_pool) in &new.pools {
            let old_pool = match self.pools.get(name) {
                Some(p) if p.servers_file == new_pool.servers_file => Some(p),
                Some(_) => {
                    // A different servers_file: the pool is replaced whole.
                    out.push(Command::RemovePool { pool: name.clone() });
                    None
                }
                None => None,
            };
            if old_pool.is_none() {
                out.push(Command::AddPool {
                    pool: name.clone(),
                    servers_file: new_pool.servers_file.clone(),
                });
            }
            for s in &new_pool.servers {
                match old_pool.and_then(|p| p.find(&s.def.name).map(|i| &p.servers[i])) {
                    None => {
                        out.push(Command::AddServer {
                            pool: name.clone(),
                            def: s.def.clone(),
                            origin: s.origin,
                        });
                        if s.admin != AdminState::Ready {
                            out.push(Command::SetAdminState {
                                pool: name.clone(),
                                name: s.def.name.clone(),
                                state: s.admin,
                            });
                        }
                    }
                    Some(old) => {
                        if old.def != s.def {
                            out.push(Command::UpdateServer {
                                pool: name.clone(),
                                def: s.def.clone(),
                            });
                        }
                        // Inline servers keep an operator's drain across reloads; file servers carry it in the file.
                        if s.origin == Origin::File && old.admin != s.admin {
                            out.push(Command::SetAdminState {
                                pool: name.clone(),
                                name: s.def.name.clone(),
                                state: s.admin,
                            });
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, addr: &str) -> ServerDef {
        let (host, port) = crate::model::addr::parse_host_port(addr).unwrap();
        ServerDef {
            name: name.into(),
            host,
            port,
            sni: None,
            maxconn: None,
        }
    }

    #[test]
    fn a_servers_file_that_was_not_read_is_an_error_not_an_empty_pool() {
        let config = Config::parse(
            r#"
            [listen]
            https = "127.0.0.1:8443"
            certs = "certs"
            [pools.fleets]
            servers = ["a.example:443"]
            servers_file = "fleet-servers.txt"
            [xdp]
            mode = "off"
        "#,
        )
        .unwrap();
        let err = Desired::from_config(&config, &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.starts_with("pools.fleets.servers_file:"), "{err}");
        let files = BTreeMap::from([(
            "fleets".to_owned(),
            vec![(def("a.example:443", "b.example"), AdminState::Ready)],
        )]);
        let err = Desired::from_config(&config, &files).unwrap_err().to_string();
        assert!(err.contains("server name `a.example:443` is used twice"), "{err}");
    }

    fn state() -> Desired {
        let mut d = Desired::default();
        d.apply(&Command::AddPool {
            pool: "fleets".into(),
            servers_file: Some("fleet-servers.txt".into()),
        })
        .unwrap();
        for (n, a) in [("fleet1", "10.0.0.1:443"), ("fleet2", "10.0.0.2:443")] {
            d.apply(&Command::AddServer {
                pool: "fleets".into(),
                def: def(n, a),
                origin: Origin::File,
            })
            .unwrap();
        }
        d
    }

    #[test]
    fn commands_change_state_or_fail_without_changing_it() {
        let mut d = state();
        let before = d.clone();
        let dup = Command::AddServer {
            pool: "fleets".into(),
            def: def("fleet1", "10.0.0.9:443"),
            origin: Origin::File,
        };
        assert!(matches!(d.apply(&dup), Err(StateError::ServerExists { .. })));
        let same_addr = Command::AddServer {
            pool: "fleets".into(),
            def: def("fleet9", "10.0.0.1:443"),
            origin: Origin::File,
        };
        assert!(matches!(d.apply(&same_addr), Err(StateError::AddrExists { .. })));
        assert!(matches!(
            d.apply(&Command::RemoveServer {
                pool: "nope".into(),
                name: "x".into()
            }),
            Err(StateError::NoPool(_))
        ));
        assert_eq!(d, before);
        d.apply(&Command::SetAdminState {
            pool: "fleets".into(),
            name: "fleet1".into(),
            state: AdminState::Drain,
        })
        .unwrap();
        assert_eq!(d.pools["fleets"].file_servers()[0].1, AdminState::Drain);
    }

    #[test]
    fn a_reload_is_the_diff_applied_as_commands() {
        let old = state();
        let mut new = state();
        new.apply(&Command::RemoveServer {
            pool: "fleets".into(),
            name: "fleet1".into(),
        })
        .unwrap();
        new.apply(&Command::AddServer {
            pool: "fleets".into(),
            def: def("fleet3", "10.0.0.3:443"),
            origin: Origin::File,
        })
        .unwrap();
        new.apply(&Command::UpdateServer {
            pool: "fleets".into(),
            def: ServerDef {
                maxconn: Some(20),
                ..def("fleet2", "10.0.0.2:443")
            },
        })
        .unwrap();
        new.apply(&Command::AddPool {
            pool: "api".into(),
            servers_file: None,
        })
        .unwrap();
        let cmds = old.diff(&new);
        assert_eq!(cmds.len(), 4, "{cmds:#?}");
        let mut replay = old;
        for c in &cmds {
            replay.apply(c).unwrap();
        }
        assert_eq!(replay, new);
        assert!(new.diff(&new).is_empty(), "no change, no command");
    }
}
