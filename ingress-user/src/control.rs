//! Control path: the one owner of mutable running state. Admin calls and
//! reloads lock it, turn their request into [`Command`]s, apply them to the
//! desired state (pure), rebuild the runtime snapshot (servers carried over
//! by key, so tunnels are untouched), restart health loops, and persist
//! `servers_file`s atomically. Listeners and certificates follow a reload.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::{
    sync::{Mutex, watch},
    task::JoinHandle,
};

use crate::{
    certs,
    config::{self, Config, ServerDef},
    front, health,
    pool::{AdminState, Pool, Server, State},
    runtime::{self, Shared},
    state::{Command, Desired, Origin, StateError},
    tls,
};

/// The outcome of the last reload, for `/api/status`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReloadStatus {
    pub ok: Option<bool>,
    pub error: Option<String>,
    /// Seconds since the Unix epoch.
    pub at: Option<f64>,
    pub commands: usize,
}

/// A refused admin or reload request: HTTP status and reason.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

impl Refusal {
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }
}

impl From<StateError> for Refusal {
    fn from(e: StateError) -> Self {
        let status = match e {
            StateError::NoPool(_) | StateError::NoServer { .. } => 404,
            _ => 409,
        };
        Refusal::new(status, e.to_string())
    }
}

/// A listener's accept loop and the switch that stops it.
struct Listener {
    stop: watch::Sender<bool>,
}

/// The mutable control state.
pub struct Control {
    pub shared: Arc<Shared>,
    config_path: PathBuf,
    pub config: Config,
    pub desired: Desired,
    health: HashMap<u32, JoinHandle<()>>,
    listeners: HashMap<(bool, SocketAddr), Listener>,
    cert_watcher: Option<notify::RecommendedWatcher>,
    pub last_reload: ReloadStatus,
    stop: watch::Receiver<bool>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("config_path", &self.config_path)
            .finish()
    }
}

fn now_secs() -> Option<f64> {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64())
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
            shared,
            config_path,
            config,
            desired,
            health: HashMap::new(),
            listeners: HashMap::new(),
            cert_watcher: None,
            last_reload: ReloadStatus::default(),
            stop,
        }
    }

    /// Binds the configured listeners that are not bound yet and stops the
    /// ones no longer configured (their live connections carry on).
    pub async fn sync_listeners(&mut self) -> std::io::Result<Vec<(bool, SocketAddr)>> {
        let mut wanted: Vec<(bool, SocketAddr)> = self.config.listen.https.0.iter().map(|a| (true, *a)).collect();
        if let Some(http) = &self.config.listen.http {
            wanted.extend(http.0.iter().map(|a| (false, *a)));
        }
        // Bind everything new first: a reload that cannot bind changes nothing.
        let mut fresh = Vec::new();
        for key in &wanted {
            if !self.listeners.contains_key(key) {
                let l = front::bind_all(&[key.1])
                    .await?
                    .pop()
                    .ok_or_else(|| std::io::Error::other("no listener"))?;
                fresh.push((*key, l));
            }
        }
        let stale: Vec<_> = self.listeners.keys().filter(|k| !wanted.contains(k)).copied().collect();
        for key in stale {
            if let Some(l) = self.listeners.remove(&key) {
                let _ = l.stop.send(true);
                tracing::info!(addr = %key.1, "listener closed");
            }
        }
        let mut bound = Vec::new();
        for ((tls, configured), listener) in fresh {
            let actual = listener.local_addr()?;
            let (stop_tx, stop_rx) = watch::channel(false);
            let mut global = self.stop.clone();
            let mut own = stop_rx;
            let merged = {
                let (tx, rx) = watch::channel(false);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = global.wait_for(|s| *s) => {}
                        _ = own.wait_for(|s| *s) => {}
                    }
                    let _ = tx.send(true);
                });
                rx
            };
            tokio::spawn(front::serve(listener, Arc::clone(&self.shared), tls, merged));
            self.listeners.insert((tls, configured), Listener { stop: stop_tx });
            bound.push((tls, actual));
        }
        Ok(bound)
    }

    /// Watches the certificate directory (again, after a retarget).
    pub fn watch_certs(&mut self) {
        self.cert_watcher = None;
        match certs::spawn_watcher(Arc::clone(&self.shared.certs)) {
            Ok(w) => self.cert_watcher = Some(w),
            Err(e) => {
                tracing::error!(error = %e, dir = %self.shared.certs.dir().display(), "cannot watch the certificate directory; SIGHUP still reloads")
            }
        }
    }

    /// Applies commands to a copy of the desired state; commits (rebuild,
    /// health loops) only when every one applied.
    pub fn apply(&mut self, cmds: &[Command]) -> Result<(), Refusal> {
        let mut next = self.desired.clone();
        for c in cmds {
            next.apply(c)?;
        }
        self.commit(&self.config.clone(), next)
    }

    fn commit(&mut self, config: &Config, desired: Desired) -> Result<(), Refusal> {
        let shared = Arc::clone(&self.shared);
        let previous = shared.runtime.load_full();
        let generation = previous.generation + 1;
        let rt = runtime::build(config, &desired, Some(&previous), generation, || {
            shared.next_server_id()
        })
        .map_err(|e| Refusal::new(400, e.to_string()))?;
        // Servers that left the runtime have their tunnels cut only when asked; here they just stop being picked.
        self.shared.runtime.store(Arc::new(rt));
        self.desired = desired;
        self.restart_health();
        self.shared.changed.notify_one();
        Ok(())
    }

    /// One health loop per server of the current runtime (loops are cheap;
    /// restarting them keeps each one's pool settings current).
    fn restart_health(&mut self) {
        for (_, t) in self.health.drain() {
            t.abort();
        }
        let rt = self.shared.runtime.load();
        for pool in &rt.pools {
            for server in pool.servers.load().iter() {
                let task = tokio::spawn(health::run(
                    Arc::clone(server),
                    Arc::clone(pool),
                    Arc::clone(&self.shared.changed),
                ));
                self.health.insert(server.id, task);
            }
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

    pub fn find(&self, pool: &str, name: &str) -> Result<(Arc<Pool>, Arc<Server>), Refusal> {
        let rt = self.shared.runtime.load();
        let p = rt
            .pools
            .iter()
            .find(|p| *p.name == *pool)
            .cloned()
            .ok_or_else(|| Refusal::new(404, format!("no pool named `{pool}`")))?;
        let s = p
            .servers
            .load()
            .iter()
            .find(|s| s.name() == name)
            .cloned()
            .ok_or_else(|| Refusal::new(404, format!("no server `{name}` in pool `{pool}`")))?;
        Ok((p, s))
    }

    /// Rewrites a pool's `servers_file` from the desired state (temp file,
    /// fsync, rename). Returns the path, or None for pools without one.
    pub fn persist(&self, pool: &str) -> Result<Option<PathBuf>, Refusal> {
        let Some(entry) = self.desired.pools.get(pool) else {
            return Ok(None);
        };
        let Some(path) = &entry.servers_file else {
            return Ok(None);
        };
        let body = config::render_servers_file(&entry.file_servers());
        write_atomically(path, body.as_bytes())
            .map_err(|e| Refusal::new(500, format!("writing {}: {e}", path.display())))?;
        Ok(Some(path.clone()))
    }

    pub fn pool_has_file(&self, pool: &str) -> bool {
        self.desired.pools.get(pool).is_some_and(|p| p.servers_file.is_some())
    }

    /// `drain`, `ready`, `maint`.
    pub fn set_state(&mut self, pool: &str, name: &str, state: AdminState) -> Result<serde_json::Value, Refusal> {
        self.apply(&[Command::SetAdminState {
            pool: pool.to_owned(),
            name: name.to_owned(),
            state,
        }])?;
        let persisted = self.persist_if_file_server(pool, name)?;
        tracing::info!(pool, server = name, state = state.as_str(), "operator set server state");
        Ok(
            serde_json::json!({ "pool": pool, "server": name, "state": state.as_str(), "persisted": persisted, "note": self.inline_note(pool) }),
        )
    }

    fn persist_if_file_server(&self, pool: &str, name: &str) -> Result<Option<PathBuf>, Refusal> {
        let from_file = self
            .desired
            .pools
            .get(pool)
            .and_then(|p| p.servers.iter().find(|s| s.def.name == name))
            .is_some_and(|s| s.origin == Origin::File);
        if from_file { self.persist(pool) } else { Ok(None) }
    }

    fn inline_note(&self, pool: &str) -> Option<&'static str> {
        (!self.pool_has_file(pool)).then_some("pool has inline servers: this change lasts until the next reload")
    }

    /// Parses and validates the config file and applies the difference.
    pub async fn reload(&mut self) -> Result<serde_json::Value, Refusal> {
        let result = self.reload_inner().await;
        self.last_reload = match &result {
            Ok(v) => ReloadStatus {
                ok: Some(true),
                error: None,
                at: now_secs(),
                commands: v["commands"].as_array().map_or(0, Vec::len),
            },
            Err(r) => ReloadStatus {
                ok: Some(false),
                error: Some(r.reason.clone()),
                at: now_secs(),
                commands: 0,
            },
        };
        match &result {
            Ok(_) => tracing::info!(
                generation = self.shared.runtime.load().generation,
                "configuration reloaded"
            ),
            Err(r) => tracing::error!(reason = %r.reason, "reload refused; the running configuration stays"),
        }
        result
    }

    async fn reload_inner(&mut self) -> Result<serde_json::Value, Refusal> {
        let config = Config::load(&self.config_path).map_err(|e| Refusal::new(400, e.to_string()))?;
        let new_desired = Desired::from_config(&config).map_err(|e| Refusal::new(400, e.to_string()))?;
        let cmds = self.desired.diff(&new_desired);
        let mut next = self.desired.clone();
        for c in &cmds {
            next.apply(c).map_err(|e| Refusal::new(400, e.to_string()))?;
        }
        // Everything that can fail is checked before anything changes.
        let server_tls = tls::server_config(Arc::clone(&self.shared.certs), config.listen.tls_min_version)
            .map_err(|e| Refusal::new(400, e.to_string()))?;
        let old_config = std::mem::replace(&mut self.config, config.clone());
        if let Err(e) = self.sync_listeners().await {
            self.config = old_config;
            return Err(Refusal::new(400, format!("listeners: {e}")));
        }
        if let Err(r) = self.commit(&config, next) {
            self.config = old_config;
            return Err(r);
        }
        self.shared.tls.store(server_tls);
        if config.listen.certs != old_config.listen.certs
            || config.listen.default_cert != old_config.listen.default_cert
        {
            self.shared
                .certs
                .retarget(&config.listen.certs, config.listen.default_cert.clone());
            self.watch_certs();
        } else {
            self.shared.certs.reload();
        }
        self.shared.resize_conn_limit(config.limits.max_connections);
        Ok(serde_json::json!({
            "generation": self.shared.runtime.load().generation,
            "commands": cmds,
        }))
    }
}

/// Writes `path` so that a crash leaves either the old or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("servers");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The request body of `POST /api/pools/{pool}/servers`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    pub addr: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub maxconn: Option<u32>,
    #[serde(default)]
    pub dry_run: bool,
}

/// Pre-checks a candidate server with the pool's settings: DNS, TLS, and a
/// health body the pool's capacity pointer can read.
async fn precheck(pool: &Pool, server: &Server) -> Result<String, Refusal> {
    let addr = server.def.addr();
    let resolved = tokio::net::lookup_host(&addr)
        .await
        .map_err(|e| Refusal::new(422, format!("{addr} does not resolve: {e}")))?
        .next()
        .ok_or_else(|| Refusal::new(422, format!("{addr} resolves to nothing")))?;
    let (status, body) = health::probe(server, pool)
        .await
        .map_err(|e| Refusal::new(422, format!("health check of {addr} failed: {e}")))?;
    let expect = regex::Regex::new(&pool.check.expect_status).map_err(|e| Refusal::new(500, e.to_string()))?;
    let capacity = health::evaluate(status, &expect, &body, &pool.check.capacity)
        .map_err(|e| Refusal::new(422, format!("health check of {addr} failed: {e}")))?;
    Ok(match capacity {
        Some(n) => format!("{resolved}: TLS ok, status {status}, {} reads {n}", pool.check.capacity),
        None => format!("{resolved}: TLS ok, status {status} (liveness only)"),
    })
}

/// The server an add request describes. Its name must survive being written
/// to a servers_file (one whitespace-separated line, `#` comments): no
/// whitespace, control characters or `#`; by default the trimmed address.
/// `maxconn = 0` is refused as the config and the servers_file refuse it.
pub fn server_def(req: &AddRequest) -> Result<ServerDef, Refusal> {
    let (host, port) = config::parse_host_port(&req.addr).map_err(|e| Refusal::new(400, format!("addr: {e}")))?;
    let name = req.name.clone().unwrap_or_else(|| req.addr.trim().to_owned());
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '#') {
        return Err(Refusal::new(
            400,
            format!("name {name:?}: no spaces, control characters or `#`"),
        ));
    }
    if req.maxconn == Some(0) {
        return Err(Refusal::new(400, "maxconn must be at least 1"));
    }
    Ok(ServerDef {
        name,
        host,
        port,
        sni: req.sni.clone(),
        maxconn: req.maxconn,
    })
}

/// `ctl add`: pre-check, add, wait for the health check, roll back on
/// failure, persist on success.
pub async fn add_server(
    control: &Mutex<Control>,
    pool_name: &str,
    req: AddRequest,
) -> Result<serde_json::Value, Refusal> {
    let def = server_def(&req)?;
    let (pool, origin, file) = {
        let c = control.lock().await;
        let rt = c.shared.runtime.load();
        let pool = rt
            .pools
            .iter()
            .find(|p| *p.name == *pool_name)
            .cloned()
            .ok_or_else(|| Refusal::new(404, format!("no pool named `{pool_name}`")))?;
        // Refuse duplicates before any network work.
        c.desired.clone().apply(&Command::AddServer {
            pool: pool_name.to_owned(),
            def: def.clone(),
            origin: Origin::Inline,
        })?;
        let file = c.desired.pools.get(pool_name).and_then(|p| p.servers_file.clone());
        let origin = if file.is_some() { Origin::File } else { Origin::Inline };
        (pool, origin, file)
    };
    let pcfg_sni = pool.tls_sni.clone();
    let server_name =
        tls::server_name(def.sni.as_deref().or(pcfg_sni.as_deref()), &def.host).map_err(|e| Refusal::new(400, e))?;
    let maxconn = def.maxconn.unwrap_or(pool.maxconn);
    let candidate = Server::new(
        0,
        Arc::clone(&pool.name),
        def.clone(),
        maxconn,
        server_name,
        !pool.check.capacity.is_empty(),
    );
    let checks = precheck(&pool, &candidate).await?;
    let change = serde_json::json!({
        "pool": pool_name, "name": def.name, "addr": def.addr(), "maxconn": maxconn,
        "sni": candidate.server_name.to_str(), "check": pool.check.path, "capacity": pool.check.capacity,
        "servers_file": file,
    });
    if req.dry_run {
        return Ok(serde_json::json!({ "dry_run": true, "prechecks": checks, "would_add": change }));
    }
    {
        let mut c = control.lock().await;
        c.apply(&[Command::AddServer {
            pool: pool_name.to_owned(),
            def: def.clone(),
            origin,
        }])?;
    }
    let wait = pool.check.interval.0 * (pool.check.rise + 1) + pool.check.timeout.0 + Duration::from_secs(2);
    let deadline = tokio::time::Instant::now() + wait;
    let outcome = loop {
        let server = control.lock().await.find(pool_name, &def.name).map(|(_, s)| s);
        match server {
            Ok(s) if matches!(s.state(), State::Up | State::Full) => break Ok(s.state()),
            Ok(s) if tokio::time::Instant::now() >= deadline => {
                break Err(format!(
                    "not UP within {}: {}",
                    humantime::format_duration(wait),
                    s.check_status().reason
                ));
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(r) => break Err(r.reason),
        }
    };
    let mut c = control.lock().await;
    match outcome {
        Ok(state) => {
            let persisted = c.persist(pool_name)?;
            tracing::info!(pool = pool_name, server = %def.name, "server added");
            Ok(serde_json::json!({
                "added": change, "state": state, "prechecks": checks, "persisted": persisted,
                "note": c.inline_note(pool_name),
            }))
        }
        Err(reason) => {
            let _ = c.apply(&[Command::RemoveServer {
                pool: pool_name.to_owned(),
                name: def.name.clone(),
            }]);
            tracing::warn!(pool = pool_name, server = %def.name, %reason, "add rolled back");
            Err(Refusal::new(422, format!("rolled back: {reason}")))
        }
    }
}

/// `ctl remove`: a server with live calls is drained and removed when its
/// last call ends; `now` cuts them.
pub async fn remove_server(
    control: &Arc<Mutex<Control>>,
    pool: &str,
    name: &str,
    now: bool,
) -> Result<serde_json::Value, Refusal> {
    let mut c = control.lock().await;
    let (_, server) = c.find(pool, name)?;
    let active = server.active();
    if active > 0 && !now {
        c.set_state(pool, name, AdminState::Drain)?;
        let control = Arc::clone(control);
        let (pool_owned, name_owned) = (pool.to_owned(), name.to_owned());
        tokio::spawn(async move {
            let (pool, name) = (pool_owned, name_owned);
            while server.active() > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut c = control.lock().await;
            // Only if it is still the same server (not re-added meanwhile).
            if c.find(&pool, &name).is_ok_and(|(_, s)| Arc::ptr_eq(&s, &server)) {
                let removed = c.apply(&[Command::RemoveServer {
                    pool: pool.clone(),
                    name: name.clone(),
                }]);
                let persisted = c.persist(&pool);
                tracing::info!(%pool, server = %name, ok = removed.is_ok() && persisted.is_ok(), "drained server removed");
            }
        });
        return Ok(serde_json::json!({
            "pool": pool,
            "server": name, "draining": true, "active": active,
            "note": "draining: removed when its last call ends (use --now to cut the calls)",
        }));
    }
    c.apply(&[Command::RemoveServer {
        pool: pool.to_owned(),
        name: name.to_owned(),
    }])?;
    if now {
        server.cut.notify_waiters();
    }
    let persisted = c.persist(pool)?;
    tracing::info!(pool, server = name, cut = active, "server removed");
    Ok(
        serde_json::json!({ "pool": pool, "server": name, "removed": true, "cut_calls": if now { active } else { 0 }, "persisted": persisted, "note": c.inline_note(pool) }),
    )
}
