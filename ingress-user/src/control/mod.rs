//! Control path: the one owner of mutable running state. Admin calls and
//! reloads lock it, turn their request into [`Command`]s, apply them to the
//! desired state (pure, [`desired`]), rebuild the runtime snapshot
//! ([`build`]: servers carried over by key, so tunnels are untouched),
//! keep one health loop per server ([`health`]) and persist `servers_file`s atomically.
//! Listeners ([`listeners`]) and certificates ([`certs`], [`tls`]) follow a
//! reload; [`servers`] holds the add/remove workflows.

pub mod build;
pub mod certs;
pub mod desired;
pub mod handover;
pub mod health;
pub mod lifecycle;
pub mod listeners;
pub mod sdnotify;
pub mod servers;
pub mod tls;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering::Relaxed},
    },
    time::SystemTime,
};

use serde::Serialize;
use tokio::{sync::watch, task::JoinHandle};

use self::{
    certs::CertStore,
    desired::{Command, Desired, StateError},
    listeners::Listeners,
};
use crate::{
    balance::{Pool, Server},
    bpf::XdpStatus,
    config::{self, Config, ConfigError},
    data::DataCtx,
    model::{AdminState, Origin},
    snapshot::Runtime,
};

/// What the control side shares with the admin API and the BPF sync: the
/// data path's context plus what only the control side needs.
#[derive(Debug)]
pub struct Shared {
    pub data: Arc<DataCtx>,
    pub certs: Arc<CertStore>,
    pub xdp: Arc<XdpStatus>,
    /// The last reload was refused (`/metrics`; `/api/status` has the reason).
    pub last_reload_failed: std::sync::atomic::AtomicBool,
    /// `[admin] token` and `pick_token` in force: a reload rotates them.
    pub admin_tokens: arc_swap::ArcSwap<AdminTokens>,
    next_server_id: AtomicU32,
}

/// The admin API's bearer tokens (`[admin] token`, `pick_token`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminTokens {
    pub token: Option<String>,
    pub pick_token: Option<String>,
}

impl AdminTokens {
    pub fn of(admin: &crate::config::AdminConfig) -> Self {
        Self {
            token: admin.token.clone(),
            pick_token: admin.pick_token.clone(),
        }
    }
}

impl Shared {
    pub fn new(data: Arc<DataCtx>, certs: Arc<CertStore>, next_server_id: u32) -> Self {
        Self {
            data,
            certs,
            xdp: Arc::default(),
            last_reload_failed: std::sync::atomic::AtomicBool::new(false),
            admin_tokens: arc_swap::ArcSwap::default(),
            next_server_id: AtomicU32::new(next_server_id),
        }
    }

    pub fn next_server_id(&self) -> u32 {
        self.next_server_id.fetch_add(1, Relaxed)
    }
}

/// Why a change was refused. The admin API turns the kind into a status.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A command did not fit the desired state (unknown or duplicate names).
    #[error(transparent)]
    State(#[from] StateError),
    /// No such pool or server.
    #[error("{0}")]
    NotFound(String),
    /// The request or the new configuration is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A candidate server failed its pre-checks, or never came UP.
    #[error("{0}")]
    Unhealthy(String),
    /// Writing a file failed, or something that validation rules out did happen.
    #[error("{0}")]
    Internal(String),
}

impl From<ConfigError> for ControlError {
    fn from(e: ConfigError) -> Self {
        ControlError::Invalid(e.to_string())
    }
}

/// The outcome of the last reload, for `/api/status`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReloadStatus {
    pub ok: Option<bool>,
    pub error: Option<String>,
    /// Seconds since the Unix epoch.
    pub at: Option<f64>,
    pub commands: usize,
}

/// What a reload changed.
#[derive(Debug, Serialize)]
pub struct Reloaded {
    pub generation: u64,
    pub commands: Vec<Command>,
    /// Sections the new file changes that a reload does not apply (an
    /// upgrade or a restart does): `xdp`, `group`, `admin`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_applied: Vec<&'static str>,
}

/// What `drain`, `ready` and `maint` changed.
#[derive(Debug, Serialize)]
pub struct StateSet {
    pub pool: String,
    pub server: String,
    pub state: &'static str,
    pub persisted: Option<PathBuf>,
    pub note: Option<&'static str>,
}

/// Reads the config's `servers_file`s and builds the desired state.
pub fn load_desired(config: &Config) -> Result<Desired, ConfigError> {
    Desired::from_config(config, &config::read_servers_files(config)?)
}

fn now_secs() -> Option<f64> {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64())
}

/// The mutable control state.
pub struct Control {
    pub shared: Arc<Shared>,
    config_path: PathBuf,
    pub config: Config,
    pub desired: Desired,
    health: HashMap<u32, JoinHandle<()>>,
    pub listeners: Listeners,
    cert_watcher: Option<certs::watch::CertWatcher>,
    pub last_reload: ReloadStatus,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("config_path", &self.config_path)
            .finish()
    }
}

impl Control {
    pub fn new(
        shared: Arc<Shared>,
        config_path: PathBuf,
        config: Config,
        desired: Desired,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            listeners: Listeners::new(Arc::clone(&shared.data), stop),
            shared,
            config_path,
            config,
            desired,
            health: HashMap::new(),
            cert_watcher: None,
            last_reload: ReloadStatus::default(),
        }
    }

    /// Watches the certificate directory (again, after a retarget).
    pub fn watch_certs(&mut self) {
        self.cert_watcher = Some(certs::watch::spawn(Arc::clone(&self.shared.certs)));
    }

    /// Applies commands to a copy of the desired state; commits (rebuild,
    /// health loops) only when every one applied.
    pub fn apply(&mut self, cmds: &[Command]) -> Result<(), ControlError> {
        let mut next = self.desired.clone();
        for c in cmds {
            next.apply(c)?;
        }
        self.commit(&self.config.clone(), next)
    }

    fn commit(&mut self, config: &Config, desired: Desired) -> Result<(), ControlError> {
        let rt = self.prepare(config, &desired)?;
        self.install(rt, desired);
        Ok(())
    }

    /// The next snapshot, built but not in force: nothing changes yet.
    fn prepare(&self, config: &Config, desired: &Desired) -> Result<Runtime, ControlError> {
        let shared = Arc::clone(&self.shared);
        let previous = shared.data.runtime.load_full();
        let generation = previous.generation + 1;
        Ok(build::build(config, desired, Some(&previous), generation, || {
            shared.next_server_id()
        })?)
    }

    /// Puts a prepared snapshot in force. Servers that left it have their
    /// tunnels cut only when asked; here they just stop being picked.
    fn install(&mut self, rt: Runtime, desired: Desired) {
        self.shared.data.runtime.store(Arc::new(rt));
        self.desired = desired;
        self.restart_health();
        self.shared.data.changed.signal();
    }

    /// One health loop per server of the current runtime: loops of servers
    /// that left it are stopped, new servers get one, the others carry on
    /// (each reads its settings from the snapshot in force at every probe).
    fn restart_health(&mut self) {
        let rt = self.shared.data.runtime.load();
        let ids: std::collections::BTreeSet<u32> = rt
            .pools
            .iter()
            .flat_map(|p| p.servers.load().iter().map(|s| s.id).collect::<Vec<_>>())
            .collect();
        self.health.retain(|id, task| {
            let keep = ids.contains(id) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for id in ids {
            self.health
                .entry(id)
                .or_insert_with(|| tokio::spawn(health::run(id, Arc::clone(&self.shared.data))));
        }
    }

    pub fn stop_health(&mut self) {
        for (_, t) in self.health.drain() {
            t.abort();
        }
    }

    /// Starts the health loops of the initial runtime.
    pub fn start(&mut self) {
        self.restart_health();
    }

    pub fn find_pool(&self, pool: &str) -> Result<Arc<Pool>, ControlError> {
        self.shared
            .data
            .runtime
            .load()
            .pools
            .iter()
            .find(|p| *p.name == *pool)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("no pool named `{pool}`")))
    }

    pub fn find(&self, pool: &str, name: &str) -> Result<(Arc<Pool>, Arc<Server>), ControlError> {
        let p = self.find_pool(pool)?;
        let s = p
            .servers
            .load()
            .iter()
            .find(|s| s.name() == name)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("no server `{name}` in pool `{pool}`")))?;
        Ok((p, s))
    }

    /// Rewrites a pool's `servers_file` from the desired state (temp file,
    /// fsync, rename). Returns the path, or None for pools without one.
    pub fn persist(&self, pool: &str) -> Result<Option<PathBuf>, ControlError> {
        let Some(entry) = self.desired.pools.get(pool) else {
            return Ok(None);
        };
        let Some(path) = &entry.servers_file else {
            return Ok(None);
        };
        let body = config::render_servers_file(&entry.file_servers());
        config::write_atomically(path, body.as_bytes())
            .map_err(|e| ControlError::Internal(format!("writing {}: {e}", path.display())))?;
        Ok(Some(path.clone()))
    }

    pub fn pool_has_file(&self, pool: &str) -> bool {
        self.desired.pools.get(pool).is_some_and(|p| p.servers_file.is_some())
    }

    /// `drain`, `ready`, `maint`; a drain with `close_after` ends the
    /// server's calls with a Close 1001 after that long (unless it is made
    /// ready again before).
    pub fn set_state(
        &mut self,
        pool: &str,
        name: &str,
        state: AdminState,
        close_after: Option<std::time::Duration>,
    ) -> Result<StateSet, ControlError> {
        self.apply(&[Command::SetAdminState {
            pool: pool.to_owned(),
            name: name.to_owned(),
            state,
        }])?;
        let persisted = self.persist_if_file_server(pool, name)?;
        tracing::info!(pool, server = name, state = state.as_str(), close_after = ?close_after, "operator set server state");
        let server = self.shared.data.runtime.load().server(pool, name);
        if let Some(s) = &server {
            s.admin_set_again();
        }
        if let Some(after) = close_after
            && let Some(server) = server
        {
            // Fires only if the server is still in this drain by then.
            let set = server.admin_changes();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if server.admin_changes() == set {
                    tracing::info!(pool = %server.pool, server = server.name(), calls = server.active(), "drain: closing the calls left with 1001");
                    server.end_calls();
                }
            });
        }
        Ok(StateSet {
            pool: pool.to_owned(),
            server: name.to_owned(),
            state: state.as_str(),
            persisted,
            note: self.inline_note(pool),
        })
    }

    fn persist_if_file_server(&self, pool: &str, name: &str) -> Result<Option<PathBuf>, ControlError> {
        let from_file = self
            .desired
            .pools
            .get(pool)
            .and_then(|p| p.servers.iter().find(|s| s.def.name == name))
            .is_some_and(|s| s.origin == Origin::File);
        if from_file { self.persist(pool) } else { Ok(None) }
    }

    pub fn inline_note(&self, pool: &str) -> Option<&'static str> {
        (!self.pool_has_file(pool)).then_some("pool has inline servers: this change lasts until the next reload")
    }

    /// Parses and validates the config file and applies the difference.
    pub async fn reload(&mut self) -> Result<Reloaded, ControlError> {
        let result = self.reload_inner().await;
        self.shared.last_reload_failed.store(result.is_err(), Relaxed);
        self.last_reload = match &result {
            Ok(r) => ReloadStatus {
                ok: Some(true),
                error: None,
                at: now_secs(),
                commands: r.commands.len(),
            },
            Err(e) => ReloadStatus {
                ok: Some(false),
                error: Some(e.to_string()),
                at: now_secs(),
                commands: 0,
            },
        };
        match &result {
            Ok(r) => tracing::info!(generation = r.generation, "configuration reloaded"),
            Err(e) => tracing::error!(reason = %e, "reload refused; the running configuration stays"),
        }
        result
    }

    async fn reload_inner(&mut self) -> Result<Reloaded, ControlError> {
        let config = Config::load(&self.config_path)?;
        let new_desired = load_desired(&config)?;
        let commands = self.desired.diff(&new_desired);
        let mut next = self.desired.clone();
        for c in &commands {
            next.apply(c).map_err(|e| ControlError::Invalid(e.to_string()))?;
        }
        // Everything that can fail is checked before anything changes.
        let retarget = config.listen.certs != self.config.listen.certs
            || config.listen.default_cert != self.config.listen.default_cert;
        if retarget {
            self.shared
                .certs
                .check_dir(&config.listen.certs, config.listen.default_cert.as_deref())
                .map_err(|e| ControlError::Invalid(format!("listen.certs: {e}")))?;
        }
        let server_tls = tls::server_config(Arc::clone(&self.shared.certs), config.listen.tls_min_version)
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        let rt = self.prepare(&config, &next)?;
        // Listeners last of what can fail: binding is the only step with an
        // effect outside, and nothing after it is refused.
        self.listeners
            .sync(&config.listen)
            .await
            .map_err(|e| ControlError::Invalid(format!("listeners: {e}")))?;
        let mut not_applied = Vec::new();
        if config.xdp != self.config.xdp {
            not_applied.push("xdp");
            tracing::warn!(
                "[xdp] changed: not applied by a reload; an upgrade applies action, ports, carriers and lease, a restart everything (an upgrade keeps the attached link: its interface and mode)"
            );
        }
        if config.group != self.config.group {
            not_applied.push("group");
            tracing::warn!("[group] changed: not applied by a reload; an upgrade or a restart applies it");
        }
        let (old, new) = (&self.config.admin, &config.admin);
        if (&old.socket, old.listen, &old.group) != (&new.socket, new.listen, &new.group) {
            not_applied.push("admin");
            tracing::warn!(
                "[admin] socket, listen or group changed: not applied by a reload; an upgrade or a restart applies them (the tokens are applied now)"
            );
        }
        // Rotated at once: an old token stops working with this reload.
        self.shared.admin_tokens.store(Arc::new(AdminTokens::of(new)));
        self.config = config.clone();
        self.install(rt, next);
        self.listeners.start();
        self.shared.data.tls.store(server_tls);
        if retarget {
            self.shared
                .certs
                .retarget(&config.listen.certs, config.listen.default_cert.clone());
            self.watch_certs();
        } else {
            self.shared.certs.reload();
        }
        self.shared.data.resize_conn_limit(config.limits.max_connections);
        Ok(Reloaded {
            generation: self.shared.data.runtime.load().generation,
            commands,
            not_applied,
        })
    }
}

/// Server counts by pool (for `ingress check`).
pub fn server_counts(desired: &Desired) -> BTreeMap<String, usize> {
    desired
        .pools
        .iter()
        .map(|(k, p)| (k.clone(), p.servers.len()))
        .collect()
}
