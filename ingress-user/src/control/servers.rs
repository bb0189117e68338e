//! Control path: the `add` and `remove` workflows. `add` pre-checks a
//! candidate with the pool's settings (DNS, TLS, a health body the capacity
//! pointer can read), applies it, waits — woken by the change signal, not by
//! polling — for its first good checks, and rolls back on failure; `remove`
//! drains a server with live calls and removes it when the last one ends.

use std::{path::PathBuf, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::sync::Mutex;

use super::{Control, ControlError, desired::Command, health, tls};
use crate::{
    balance::{Pool, Server},
    model::{AdminState, Origin, ServerDef, ServerState, addr::parse_host_port},
};

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

/// The server an add would create, as `ctl add` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub pool: String,
    pub name: String,
    pub addr: String,
    pub maxconn: u32,
    pub sni: Option<String>,
    pub check: String,
    pub capacity: String,
    pub servers_file: Option<PathBuf>,
}

/// What an add did (or, with `dry_run`, would do).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Added {
    DryRun {
        dry_run: bool,
        prechecks: String,
        would_add: Change,
    },
    Done {
        added: Change,
        state: ServerState,
        prechecks: String,
        persisted: Option<PathBuf>,
        note: Option<&'static str>,
    },
}

/// What a remove did.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Removed {
    Draining {
        pool: String,
        server: String,
        draining: bool,
        active: u32,
        note: &'static str,
    },
    Done {
        pool: String,
        server: String,
        removed: bool,
        cut_calls: u32,
        persisted: Option<PathBuf>,
        note: Option<&'static str>,
    },
}

/// Pre-checks a candidate server with the pool's settings: DNS, TLS, and a
/// health body the pool's capacity pointer can read.
async fn precheck(pool: &Pool, server: &Server) -> Result<String, ControlError> {
    let addr = server.def.addr();
    let resolved = tokio::net::lookup_host(&addr)
        .await
        .map_err(|e| ControlError::Unhealthy(format!("{addr} does not resolve: {e}")))?
        .next()
        .ok_or_else(|| ControlError::Unhealthy(format!("{addr} resolves to nothing")))?;
    let failed = |e: &dyn std::fmt::Display| ControlError::Unhealthy(format!("health check of {addr} failed: {e}"));
    let (status, body) = health::probe(server, pool).await.map_err(|e| failed(&e))?;
    let expect = regex::Regex::new(&pool.check.expect_status).map_err(|e| ControlError::Internal(e.to_string()))?;
    let capacity = health::evaluate(status, &expect, &body, &pool.check.capacity).map_err(|e| failed(&e))?;
    Ok(match capacity {
        Some(n) => format!("{resolved}: TLS ok, status {status}, {} reads {n}", pool.check.capacity),
        None => format!("{resolved}: TLS ok, status {status} (liveness only)"),
    })
}

/// The server an add request describes. Its name must survive being written
/// to a servers_file (one whitespace-separated line, `#` comments): no
/// whitespace, control characters or `#`; by default the trimmed address.
/// `maxconn = 0` is refused as the config and the servers_file refuse it.
pub fn server_def(req: &AddRequest) -> Result<ServerDef, ControlError> {
    let (host, port) = parse_host_port(&req.addr).map_err(|e| ControlError::Invalid(format!("addr: {e}")))?;
    let name = req.name.clone().unwrap_or_else(|| req.addr.trim().to_owned());
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '#') {
        return Err(ControlError::Invalid(format!(
            "name {name:?}: no spaces, control characters or `#`"
        )));
    }
    if req.maxconn == Some(0) {
        return Err(ControlError::Invalid("maxconn must be at least 1".to_owned()));
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
pub async fn add_server(control: &Mutex<Control>, pool_name: &str, req: AddRequest) -> Result<Added, ControlError> {
    let def = server_def(&req)?;
    let (pool, origin, file, ctx) = {
        let c = control.lock().await;
        let pool = c.find_pool(pool_name)?;
        // Refuse duplicates before any network work.
        c.desired.clone().apply(&Command::AddServer {
            pool: pool_name.to_owned(),
            def: def.clone(),
            origin: Origin::Inline,
        })?;
        let file = c.desired.pools.get(pool_name).and_then(|p| p.servers_file.clone());
        let origin = if file.is_some() { Origin::File } else { Origin::Inline };
        (pool, origin, file, Arc::clone(&c.shared.data))
    };
    let server_name =
        tls::server_name(def.sni.as_deref().or(pool.tls_sni.as_deref()), &def.host).map_err(ControlError::Invalid)?;
    let maxconn = def.maxconn.unwrap_or(pool.maxconn);
    let candidate = Server::new(
        0,
        Arc::clone(&pool.name),
        def.clone(),
        maxconn,
        server_name,
        !pool.check.capacity.is_empty(),
    );
    let prechecks = precheck(&pool, &candidate).await?;
    let change = Change {
        pool: pool_name.to_owned(),
        name: def.name.clone(),
        addr: def.addr(),
        maxconn,
        sni: Some(candidate.server_name.to_str().into_owned()),
        check: pool.check.path.clone(),
        capacity: pool.check.capacity.clone(),
        servers_file: file,
    };
    if req.dry_run {
        return Ok(Added::DryRun {
            dry_run: true,
            prechecks,
            would_add: change,
        });
    }
    // Subscribed before the server exists: no state change can be missed.
    let mut changed = ctx.changed.subscribe();
    control.lock().await.apply(&[Command::AddServer {
        pool: pool_name.to_owned(),
        def: def.clone(),
        origin,
    }])?;
    let wait = pool.check.interval.0 * (pool.check.rise + 1) + pool.check.timeout.0 + Duration::from_secs(2);
    let deadline = tokio::time::Instant::now() + wait;
    // The server as the runtime holds it, found again only when a new
    // generation may have replaced it: a wake-up costs a few atomic reads,
    // however often the data path signals.
    let mut held: Option<(u64, Arc<Server>)> = None;
    let outcome = loop {
        let generation = ctx.runtime.load().generation;
        let server = match held.take() {
            Some((g, s)) if g == generation => Ok(s),
            _ => control.lock().await.find(pool_name, &def.name).map(|(_, s)| s),
        };
        match server {
            Ok(s) if matches!(s.state(), ServerState::Up | ServerState::Full) => break Ok(s.state()),
            Ok(s) => {
                let woke = tokio::time::timeout_at(deadline, changed.changed()).await;
                if woke.is_err() {
                    break Err(format!(
                        "not UP within {}: {}",
                        humantime::format_duration(wait),
                        s.check_status().reason
                    ));
                }
                held = Some((generation, s));
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    let mut c = control.lock().await;
    match outcome {
        Ok(state) => {
            let persisted = c.persist(pool_name)?;
            tracing::info!(pool = pool_name, server = %def.name, "server added");
            Ok(Added::Done {
                added: change,
                state,
                prechecks,
                persisted,
                note: c.inline_note(pool_name),
            })
        }
        Err(reason) => {
            let _ = c.apply(&[Command::RemoveServer {
                pool: pool_name.to_owned(),
                name: def.name.clone(),
            }]);
            tracing::warn!(pool = pool_name, server = %def.name, %reason, "add rolled back");
            Err(ControlError::Unhealthy(format!("rolled back: {reason}")))
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
) -> Result<Removed, ControlError> {
    let mut c = control.lock().await;
    let (_, server) = c.find(pool, name)?;
    let active = server.active();
    if active > 0 && !now {
        c.set_state(pool, name, AdminState::Drain, None)?;
        let control = Arc::clone(control);
        let mut changed = c.shared.data.changed.subscribe();
        let (pool_owned, name_owned) = (pool.to_owned(), name.to_owned());
        tokio::spawn(async move {
            let (pool, name) = (pool_owned, name_owned);
            // A call's end signals a change; a plain `http` request's does
            // not, so the wait is also bounded.
            while server.active() > 0 {
                let _ = tokio::time::timeout(Duration::from_millis(200), changed.changed()).await;
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
        return Ok(Removed::Draining {
            pool: pool.to_owned(),
            server: name.to_owned(),
            draining: true,
            active,
            note: "draining: removed when its last call ends (use --now to end them with a Close 1001)",
        });
    }
    c.apply(&[Command::RemoveServer {
        pool: pool.to_owned(),
        name: name.to_owned(),
    }])?;
    if now {
        // Out of service first: a retry reading an older snapshot does not
        // pick it again, then every call there (and on its way) ends.
        server.set_admin_state(AdminState::Maint);
        server.end_calls();
    }
    let persisted = c.persist(pool)?;
    tracing::info!(pool, server = name, cut = active, "server removed");
    Ok(Removed::Done {
        pool: pool.to_owned(),
        server: name.to_owned(),
        removed: true,
        cut_calls: if now { active } else { 0 },
        persisted,
        note: c.inline_note(pool),
    })
}
