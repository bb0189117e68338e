//! Wires the daemon together: load config and certs, bind listeners (or
//! take them from the process this one replaces), start the data path
//! (fronts) and the control path (health checks, admin API, cert watcher,
//! XDP sync), print one `ready` line (and tell systemd), then run the one
//! loop that owns the process's life: SIGHUP reloads; SIGTERM or `ctl
//! stop` stops gracefully, SIGINT at once; SIGUSR2 or `ctl upgrade`
//! replaces the binary.

use std::{
    io::Write as _,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicU32},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::SignalKind,
    sync::{Mutex, mpsc, watch},
};

use crate::{
    admin, bpf,
    config::Config,
    control::{
        self, Control, Shared, build,
        certs::CertStore,
        handover::{self, Inherited, Message},
        lifecycle::{self, Upgraded},
        sdnotify, tls,
    },
    data::DataCtx,
    lifecycle::{
        announce::{Announcer, Announcing},
        stop::{self, Signals, wind_down},
        upgrade::{self, Handover, NewProcess},
    },
    model::{VERSION, monotonic_ns},
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

/// The path this binary was started as (absolute; symlinks kept, so that a
/// deploy that moves a link upgrades to what the link names then).
pub fn started_as() -> anyhow::Result<PathBuf> {
    let argv0 = std::env::args_os().next().map(PathBuf::from).unwrap_or_default();
    if argv0.is_absolute() {
        return Ok(argv0);
    }
    if argv0.components().count() > 1 {
        return Ok(std::env::current_dir()?.join(argv0));
    }
    // A bare name: where PATH found it.
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(&argv0))
        .find(|p| p.is_file());
    match found {
        Some(p) if p.is_absolute() => Ok(p),
        _ => std::env::current_exe().context("the path of this binary"),
    }
}

/// `ingress run --config FILE`; `inherited` is what the process this one
/// replaces handed over ([`Inherited::from_env`], read before the runtime
/// started). Started by an upgrade, tells the old process why it could not
/// start.
pub async fn run(config_path: &Path, exe: PathBuf, inherited: Option<Inherited>) -> anyhow::Result<()> {
    let channel = inherited
        .as_ref()
        .and_then(|i| i.channel.as_ref())
        .and_then(|c| c.try_clone().ok());
    let result = serve(config_path, exe, inherited).await;
    if let (Err(e), Some(mut c)) = (&result, channel) {
        let _ = c.write_all(
            Message::Failed {
                error: format!("{e:#}"),
            }
            .line()
            .as_bytes(),
        );
    }
    result
}

/// How the loop ended.
enum End {
    Stop { graceful: bool },
    Upgraded(NewProcess),
}

async fn serve(config_path: &Path, exe: PathBuf, mut inherited: Option<Inherited>) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let desired = control::load_desired(&config)?;
    raise_fd_limit(config.limits.max_connections);
    let provider = tls::provider();
    let certs = CertStore::load(
        &config.listen.certs,
        config.listen.default_cert.clone(),
        Arc::clone(&provider),
        config.listen.http.is_some(),
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
    shared
        .admin_tokens
        .store(Arc::new(crate::control::AdminTokens::of(&config.admin)));
    let (stop_tx, stop_rx) = watch::channel(false);

    let admin_group = match &config.admin.group {
        Some(g) => Some(admin::access::resolve_group(g).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let taken_unix = inherited
        .as_mut()
        .and_then(|i| i.admin_unix.take())
        .filter(|(p, _)| *p == config.admin.socket);
    let unix = match taken_unix {
        Some((_, l)) => tokio::net::UnixListener::from_std(l)?,
        None => admin::bind_unix(&config.admin.socket, admin_group)
            .with_context(|| format!("admin socket {}", config.admin.socket.display()))?,
    };
    let taken_tcp = inherited
        .as_mut()
        .and_then(|i| i.admin_tcp.take())
        .filter(|(a, _)| Some(*a) == config.admin.listen);
    let admin_tcp = match (config.admin.listen, taken_tcp) {
        (Some(_), Some((_, l))) => Some(tokio::net::TcpListener::from_std(l)?),
        (Some(a), None) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("admin listen {a}"))?,
        ),
        (None, _) => None,
    };
    let admin_unix_fd = (config.admin.socket.clone(), unix.as_fd().try_clone_to_owned()?);
    let admin_tcp_fd = match (&admin_tcp, config.admin.listen) {
        (Some(l), Some(a)) => Some((a, l.as_fd().try_clone_to_owned()?)),
        _ => None,
    };
    let mut control = Control::new(
        Arc::clone(&shared),
        config_path.to_owned(),
        config.clone(),
        desired,
        stop_rx.clone(),
    );
    if let Some(i) = inherited.as_mut() {
        control.listeners.inherit(std::mem::take(&mut i.listeners));
    }
    // Bound (or taken over) now, accepting once this process is ready.
    let bound = control.listeners.sync(&config.listen).await?;
    control.start();
    control.watch_certs();
    let control = Arc::new(Mutex::new(control));

    let https: Vec<String> = bound.iter().filter(|(t, _)| *t).map(|(_, a)| a.to_string()).collect();
    let http: Vec<String> = bound.iter().filter(|(t, _)| !*t).map(|(_, a)| a.to_string()).collect();
    let mut ready = serde_json::json!({
        "ready": true,
        "pid": std::process::id(),
        "version": VERSION,
        "https": https,
        "http": http,
        "admin_socket": config.admin.socket.display().to_string(),
        "admin": admin_tcp.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
    });
    let (lifecycle_tx, mut requests) = mpsc::channel::<lifecycle::Request>(4);
    let admin_open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let admin = admin::Admin {
        shared: Arc::clone(&shared),
        control: Arc::clone(&control),
        group: admin_group,
        lifecycle: lifecycle_tx,
        open: Arc::clone(&admin_open),
    };

    // Ports as bound (a configured port 0 becomes the real one).
    let xdp_ports: Vec<u16> = if config.xdp.ports.is_empty() {
        bound.iter().filter(|(t, _)| *t).map(|(_, a)| a.port()).collect()
    } else {
        config.xdp.ports.clone()
    };
    let inherited_link = inherited.as_mut().and_then(|i| i.xdp_link.take());
    let (handed_over, handed_over_rx) = watch::channel(false);
    let (pins, pins_rx) = mpsc::channel(1);
    let (go_tx, go_rx) = watch::channel(inherited.as_ref().is_none_or(|i| i.channel.is_none()));
    let mut xdp_pin = None;
    shared
        .xdp
        .update(|s| s.configured = config.xdp.mode != crate::model::XdpMode::Off);
    let xdp_task = match bpf::sync::start(&config, &xdp_ports, inherited_link.as_ref()) {
        Ok(handle) => {
            xdp_pin = Some((config.xdp.pin_path.join("link"), pins));
            tracing::info!(
                interface = %handle.interface,
                mode = handle.mode,
                mode_reason = handle.mode_reason.as_deref().unwrap_or("as configured"),
                pins = %config.xdp.pin_path.display(),
                "XDP program attached"
            );
            shared.xdp.update(|s| {
                s.attached = true;
                s.interface = Some(handle.interface.clone());
                s.mode = Some(handle.mode.to_owned());
                s.mode_reason.clone_from(&handle.mode_reason);
            });
            Some(tokio::spawn(bpf::sync::run_sync(
                Arc::clone(&data),
                Arc::clone(&shared.xdp),
                handle,
                config.xdp.lease.0,
                stop_rx.clone(),
                bpf::sync::Upgrades {
                    handed_over: handed_over_rx,
                    pins: pins_rx,
                    inherited: inherited_link.is_some(),
                    go: go_rx,
                },
            )))
        }
        // Offered the old process's link and unable to take it: not ready
        // (the old process keeps it and serves on).
        Err(reason) if inherited_link.is_some() && config.xdp.mode != crate::model::XdpMode::Off => {
            anyhow::bail!("taking over the XDP program: {reason}");
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
    let mut usr2 = tokio::signal::unix::signal(SignalKind::user_defined2())?;
    // Started by an upgrade: the old process serves until this one has its
    // fleets' reports (no call is refused for want of one), says ready and
    // is told go; only then does this one accept, write the XDP maps and
    // name itself to systemd. Not told go, it leaves without a trace.
    let followed = match inherited.as_mut().and_then(|i| i.channel.take()) {
        Some(channel) => {
            handover::first_checks(&data, config.limits.upgrade_timeout.0 / 2).await;
            let said = Message::Ready {
                pid: std::process::id(),
                version: VERSION.to_owned(),
                healthy: handover::healthy(&data),
            };
            (&channel)
                .write_all(said.line().as_bytes())
                .context("telling the old process we are ready")?;
            let limit = config.limits.upgrade_timeout.0;
            let reader = tokio::task::spawn_blocking(move || handover::wait_for_go(channel, limit)).await??;
            Some(reader)
        }
        None => None,
    };
    let _ = go_tx.send(true);
    control.lock().await.listeners.start();
    // Announced once the fleets had their first checks (calls routed at
    // once; an upgrade's new process had them before it said ready),
    // renewed until this process leaves or hands over.
    let mut announcing = Announcer::from_config(&config.group).map(|a| {
        let wait = (followed.is_none()).then_some(config.limits.upgrade_timeout.0 / 2);
        Announcing::start(a, Arc::clone(&data), wait)
    });
    tokio::spawn(admin::serve_unix(unix, admin.clone(), stop_rx.clone()));
    if let Some(l) = admin_tcp {
        tokio::spawn(admin::serve_tcp(l, admin, stop_rx.clone()));
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{ready}");
        let _ = out.flush();
    }
    match followed {
        Some(channel) => {
            sdnotify::notify(&format!(
                "MAINPID={}\nREADY=1\nSTATUS=serving (upgraded)",
                std::process::id()
            ));
            let data = Arc::clone(&data);
            tokio::task::spawn_blocking(move || handover::follow_calls(channel, &data));
        }
        None => sdnotify::notify("READY=1\nSTATUS=serving"),
    }
    tracing::info!(config = %config_path.display(), version = VERSION, "ingress running");
    let handover = Handover {
        data: Arc::clone(&data),
        exe,
        config_path: config_path.to_owned(),
        admin_unix: admin_unix_fd,
        admin_tcp: admin_tcp_fd,
        xdp: xdp_pin,
    };

    let end = loop {
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
            _ = usr2.recv() => {
                tracing::info!(exe = %handover.exe.display(), "SIGUSR2: upgrading to the binary on disk");
                if let Ok(p) = handover.upgrade(&control).await {
                    break End::Upgraded(p);
                }
            }
            Some(request) = requests.recv() => match request {
                lifecycle::Request::Stop => break End::Stop { graceful: true },
                lifecycle::Request::Upgrade(reply) => {
                    tracing::info!(exe = %handover.exe.display(), "ctl upgrade: upgrading to the binary on disk");
                    match handover.upgrade(&control).await {
                        Ok(p) => {
                            let _ = reply.send(Ok(Upgraded {
                                pid: p.pid,
                                version: p.version.clone(),
                                old_pid: std::process::id(),
                                calls_kept: data.calls_open(),
                            }));
                            break End::Upgraded(p);
                        }
                        Err(why) => {
                            let _ = reply.send(Err(why));
                        }
                    }
                }
            },
            _ = term.recv() => break End::Stop { graceful: true },
            _ = int.recv() => break End::Stop { graceful: false },
        }
    };
    // Requests from now on: a stop is a SIGTERM to this process (it ends or
    // shortens the grace); an upgrade is refused.
    tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            match request {
                lifecycle::Request::Stop => {
                    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM);
                }
                lifecycle::Request::Upgrade(reply) => {
                    let _ = reply.send(Err("this process is stopping or has been replaced".to_owned()));
                }
            }
        }
    });
    let mut signals = Signals {
        term: &mut term,
        int: &mut int,
    };
    match end {
        End::Upgraded(p) => {
            // The new process renews the announced addresses from now on.
            if let Some(a) = announcing.take() {
                a.stop_renewing().await;
            }
            // The new process serves: the XDP sync lets go of the maps
            // (nothing cleared), then this one stops accepting and keeps
            // its calls, telling the new one how many it holds.
            let report = tokio::spawn(upgrade::report_calls(p.channel, Arc::clone(&data), p.routed_before));
            let _ = handed_over.send(true);
            let mut xdp_task = xdp_task;
            if let Some(mut t) = xdp_task.take()
                && tokio::time::timeout(Duration::from_secs(5), &mut t).await.is_err()
            {
                // Never let it run on to the stop, which clears CONTROL.
                t.abort();
            }
            let _ = stop_tx.send(true);
            control.lock().await.listeners.close_all();
            tracing::info!(pid = p.pid, version = %p.version, calls = data.calls_open(), grace = %humantime::format_duration(config.limits.upgrade_grace.0), "upgraded: the new process takes every new call; this one keeps its calls");
            wind_down(
                &data,
                config.limits.upgrade_grace.0,
                Some(config.limits.shutdown_grace.0),
                signals,
            )
            .await;
            stop::admin_answered(&admin_open).await;
            report.abort();
            control.lock().await.stop_health();
            return Ok(());
        }
        End::Stop { graceful } => {
            // Graceful stop: no new connection (listeners closed, so a VRRP
            // or ECMP peer takes new calls), live calls go on for the grace,
            // then each gets a Close 1001 at its next message boundary.
            // Another signal ends the grace.
            let grace = if graceful {
                config.limits.shutdown_grace.0
            } else {
                Duration::ZERO
            };
            sdnotify::notify("STOPPING=1");
            let leave_grace = if graceful { config.group.leave.0 } else { Duration::ZERO };
            stop::leave(&data, &shared.xdp, announcing.take(), leave_grace, &mut signals).await;
            tracing::info!(calls = data.calls_open(), grace = %humantime::format_duration(grace), "stopping: listeners closed, live calls keep their grace");
            let _ = stop_tx.send(true);
            control.lock().await.listeners.close_all();
            wind_down(&data, grace, None, signals).await;
        }
    }
    control.lock().await.stop_health();
    if let Some(t) = xdp_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}
