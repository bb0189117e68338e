//! Wires the daemon together: load config and certs, bind listeners, start
//! the data path (fronts) and the control path (health checks, admin API,
//! cert watcher, XDP sync), print one `ready` line, and stop cleanly on
//! SIGINT/SIGTERM. SIGHUP reloads the certificates.

use std::{
    io::Write as _,
    path::Path,
    sync::{Arc, atomic::AtomicU32},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{signal::unix::SignalKind, sync::watch, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

use crate::{admin, certs::CertStore, config::Config, front, health, runtime, tls, xdp};

/// Starts one health loop per server of every pool.
fn spawn_health(shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
    let rt = shared.runtime.load();
    let mut tasks = Vec::new();
    for pool in &rt.pools {
        for server in pool.servers.load().iter() {
            tasks.push(tokio::spawn(health::run(
                Arc::clone(server),
                Arc::clone(pool),
                Arc::clone(&shared.changed),
            )));
        }
    }
    tasks
}

use crate::runtime::Shared;

/// `ingress run --config FILE`.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let provider = tls::provider();
    let certs = CertStore::load(
        &config.listen.certs,
        config.listen.default_cert.clone(),
        Arc::clone(&provider),
    )?;
    let ids = AtomicU32::new(1);
    let rt = runtime::build(&config, 1, || ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed))?;
    let shared = Arc::new(Shared::new(
        rt,
        Arc::clone(&certs),
        config.limits.max_connections,
        ids.load(std::sync::atomic::Ordering::Relaxed),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);

    let acceptor = TlsAcceptor::from(tls::server_config(Arc::clone(&certs), config.listen.tls_min_version)?);
    let https = front::bind_all(&config.listen.https.0).await?;
    let http = match &config.listen.http {
        Some(a) => front::bind_all(&a.0).await?,
        None => Vec::new(),
    };
    let unix = admin::bind_unix(&config.admin.socket)
        .with_context(|| format!("admin socket {}", config.admin.socket.display()))?;
    let admin_tcp = match config.admin.listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("admin listen {a}"))?,
        ),
        None => None,
    };

    // Ports as bound (a configured port 0 becomes the real one).
    let bound_https_ports: Vec<u16> = https
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.port())
        .collect();
    let mut ready = serde_json::json!({
        "ready": true,
        "https": https.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.to_string()).collect::<Vec<_>>(),
        "http": http.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.to_string()).collect::<Vec<_>>(),
        "admin_socket": config.admin.socket.display().to_string(),
        "admin": admin_tcp.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
    });

    for l in https {
        tokio::spawn(front::serve(
            l,
            Arc::clone(&shared),
            Some(acceptor.clone()),
            stop_rx.clone(),
        ));
    }
    for l in http {
        tokio::spawn(front::serve(l, Arc::clone(&shared), None, stop_rx.clone()));
    }
    tokio::spawn(admin::serve_unix(unix, Arc::clone(&shared), stop_rx.clone()));
    if let Some(l) = admin_tcp {
        tokio::spawn(admin::serve_tcp(l, Arc::clone(&shared), stop_rx.clone()));
    }
    let health_tasks = spawn_health(&shared);
    let _watcher = match certs::spawn_watcher(Arc::clone(&certs)) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, dir = %certs.dir().display(), "cannot watch the certificate directory; SIGHUP still reloads");
            None
        }
    };

    let xdp_ports = if config.xdp.ports.is_empty() {
        bound_https_ports
    } else {
        config.xdp.ports.clone()
    };
    let xdp_task = match xdp::start(&config, &xdp_ports) {
        Ok(handle) => {
            tracing::info!(interface = %handle.interface, mode = handle.mode, pins = %config.xdp.pin_path.display(), "XDP program attached");
            shared.xdp.update(|s| {
                s.attached = true;
                s.interface = Some(handle.interface.clone());
                s.mode = Some(handle.mode.to_owned());
            });
            let warmup = warmup(&config);
            Some(tokio::spawn(xdp::run_sync(
                Arc::clone(&shared),
                handle,
                config.xdp.lease.0,
                warmup,
                stop_rx.clone(),
            )))
        }
        Err(reason) => {
            tracing::warn!("################################################################");
            tracing::warn!(%reason, "XDP is NOT attached: no kernel shedding; when every fleet is full, carriers get 503 from userspace after a full TLS handshake");
            tracing::warn!("################################################################");
            shared.xdp.update(|s| s.error = Some(reason));
            None
        }
    };
    ready["xdp"] = serde_json::to_value(shared.xdp.snapshot()).unwrap_or_default();
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{ready}");
        let _ = out.flush();
    }
    tracing::info!(config = %config_path.display(), "ingress running");

    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading certificates");
                let c = Arc::clone(&certs);
                let _ = tokio::task::spawn_blocking(move || c.reload()).await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    for t in health_tasks {
        t.abort();
    }
    if let Some(t) = xdp_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}

/// Shedding waits until every server had its first check answered or timed out.
fn warmup(config: &Config) -> Duration {
    config
        .pools
        .values()
        .map(|p| p.check.timeout.0 + Duration::from_millis(200))
        .max()
        .unwrap_or_default()
}

use crate::certs;
