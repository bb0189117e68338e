//! Wires the daemon together: load config and certs, bind listeners, start
//! the data path (fronts) and the control path (health checks, admin API,
//! cert watcher, XDP sync), print one `ready` line (and tell systemd), and
//! stop cleanly on SIGINT/SIGTERM. SIGHUP reloads config and certificates.

use std::{
    io::Write as _,
    path::Path,
    sync::{Arc, atomic::AtomicU32},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::SignalKind,
    sync::{Mutex, watch},
};

use crate::{
    admin, bpf,
    config::Config,
    control::{self, Control, Shared, build, certs::CertStore, sdnotify, tls},
    data::{DataCtx, tunnel},
    model::monotonic_ns,
};

/// Raises the soft open-files limit to the hard one and warns when even that
/// cannot hold `max_connections` calls (two descriptors each).
fn raise_fd_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit");
    }
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map(|(s, _)| s).unwrap_or(soft);
    let needed = (max_connections as u64) * 2 + 256;
    if limit < needed {
        tracing::warn!(
            open_files_limit = limit,
            max_connections,
            "the open-files limit cannot hold max_connections calls (2 descriptors each); new connections beyond it are refused at accept"
        );
    }
}

/// `ingress run --config FILE`.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let desired = control::load_desired(&config)?;
    raise_fd_limit(config.limits.max_connections);
    let provider = tls::provider();
    let certs = CertStore::load(
        &config.listen.certs,
        config.listen.default_cert.clone(),
        Arc::clone(&provider),
    )?;
    let ids = AtomicU32::new(1);
    let rt = build::build(&config, &desired, None, 1, || {
        ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    })?;
    let server_tls = tls::server_config(Arc::clone(&certs), config.listen.tls_min_version)?;
    let data = Arc::new(DataCtx::new(rt, server_tls, config.limits.max_connections));
    let shared = Arc::new(Shared::new(
        Arc::clone(&data),
        Arc::clone(&certs),
        ids.load(std::sync::atomic::Ordering::Relaxed),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);

    let admin_group = match &config.admin.group {
        Some(g) => Some(admin::access::resolve_group(g).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let unix = admin::bind_unix(&config.admin.socket, admin_group)
        .with_context(|| format!("admin socket {}", config.admin.socket.display()))?;
    let admin_tcp = match config.admin.listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("admin listen {a}"))?,
        ),
        None => None,
    };
    let mut control = Control::new(
        Arc::clone(&shared),
        config_path.to_owned(),
        config.clone(),
        desired,
        stop_rx.clone(),
    );
    let bound = control.listeners.sync(&config.listen).await?;
    control.listeners.start();
    control.start();
    control.watch_certs();
    let control = Arc::new(Mutex::new(control));

    let https: Vec<String> = bound.iter().filter(|(t, _)| *t).map(|(_, a)| a.to_string()).collect();
    let http: Vec<String> = bound.iter().filter(|(t, _)| !*t).map(|(_, a)| a.to_string()).collect();
    let mut ready = serde_json::json!({
        "ready": true,
        "https": https,
        "http": http,
        "admin_socket": config.admin.socket.display().to_string(),
        "admin": admin_tcp.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
    });
    let admin = admin::Admin {
        shared: Arc::clone(&shared),
        control: Arc::clone(&control),
        policy: admin::access::Policy {
            token: config.admin.token.clone(),
            group: admin_group,
        },
    };
    tokio::spawn(admin::serve_unix(unix, admin.clone(), stop_rx.clone()));
    if let Some(l) = admin_tcp {
        tokio::spawn(admin::serve_tcp(l, admin, stop_rx.clone()));
    }

    // Ports as bound (a configured port 0 becomes the real one).
    let xdp_ports: Vec<u16> = if config.xdp.ports.is_empty() {
        bound.iter().filter(|(t, _)| *t).map(|(_, a)| a.port()).collect()
    } else {
        config.xdp.ports.clone()
    };
    let xdp_task = match bpf::sync::start(&config, &xdp_ports) {
        Ok(handle) => {
            tracing::info!(interface = %handle.interface, mode = handle.mode, pins = %config.xdp.pin_path.display(), "XDP program attached");
            shared.xdp.update(|s| {
                s.attached = true;
                s.interface = Some(handle.interface.clone());
                s.mode = Some(handle.mode.to_owned());
            });
            Some(tokio::spawn(bpf::sync::run_sync(
                Arc::clone(&data),
                Arc::clone(&shared.xdp),
                handle,
                config.xdp.lease.0,
                stop_rx.clone(),
            )))
        }
        Err(reason) => {
            tracing::warn!("################################################################");
            tracing::warn!(
                %reason,
                "XDP is NOT attached: no kernel shedding; when every fleet is full, carriers get 503 from userspace after a full TLS handshake"
            );
            tracing::warn!("################################################################");
            shared.xdp.update(|s| s.error = Some(reason));
            None
        }
    };
    ready["xdp"] = serde_json::to_value(shared.xdp.view()).unwrap_or_default();
    // Handlers first: a SIGHUP right after "ready" must reload, not kill us.
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{ready}");
        let _ = out.flush();
    }
    sdnotify::notify("READY=1\nSTATUS=serving");
    tracing::info!(config = %config_path.display(), "ingress running");

    // SIGTERM stops gracefully; SIGINT (an operator at a terminal) at once.
    let graceful = loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading configuration and certificates");
                sdnotify::notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_ns() / 1000));
                let outcome = control.lock().await.reload().await;
                let status = match &outcome {
                    Ok(_) => "STATUS=serving (reloaded)".to_owned(),
                    Err(e) => format!("STATUS=serving (reload refused: {})", e.to_string().replace('\n', " ")),
                };
                sdnotify::notify(&format!("READY=1\n{status}"));
            }
            _ = term.recv() => break true,
            _ = int.recv() => break false,
        }
    };
    // Graceful stop: no new connection (listeners closed, so a VRRP or ECMP
    // peer takes new calls), live calls go on for the grace, then each gets
    // a Close 1001 at its next message boundary. Another signal ends the grace.
    let grace = if graceful {
        config.limits.shutdown_grace.0
    } else {
        Duration::ZERO
    };
    tracing::info!(calls = data.calls_open.load(std::sync::atomic::Ordering::Relaxed), grace = %humantime::format_duration(grace), "stopping: listeners closed, live calls keep their grace");
    sdnotify::notify("STOPPING=1");
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + grace;
    let mut changes = data.changed.subscribe();
    // Woken when a call ends (the tick is a backstop). Connections that are
    // not calls (a handshake, an http route's) are not waited for.
    while data.calls_open.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = tokio::time::sleep_until(deadline) => break,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let left = data.calls_open.load(std::sync::atomic::Ordering::Relaxed);
    if left > 0 {
        tracing::info!(calls = left, "closing the calls left with 1001 (going away)");
        data.end_calls();
        let closing = tokio::time::Instant::now() + tunnel::CLOSE_WINDOW;
        while data.calls_open.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = tokio::time::sleep_until(closing) => break,
            }
        }
    }
    control.lock().await.stop_health();
    if let Some(t) = xdp_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}
