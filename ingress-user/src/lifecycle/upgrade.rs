//! Lifecycle: the old process's side of a binary upgrade — start the binary
//! at the path this process was started from, with the listening sockets,
//! the admin sockets and the XDP link offered as inherited descriptors
//! (see [`crate::control::handover`]), and wait until it says ready; a new
//! process that fails, exits or is not ready in time is stopped and the
//! reason returned (this process serves on as before). After the handover,
//! tells the new process how many calls this one still holds. [`Handover`]
//! holds what is offered and runs one attempt.

use std::{
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use tokio::sync::{Mutex, mpsc};

use crate::{
    bpf,
    control::{
        Control,
        handover::{self, Message, Offer},
    },
    data::DataCtx,
};

/// What this process offers the new one.
#[derive(Debug, Default)]
pub struct Offered<'a> {
    pub listeners: Vec<((bool, SocketAddr), BorrowedFd<'a>)>,
    pub admin_unix: Option<(PathBuf, BorrowedFd<'a>)>,
    pub admin_tcp: Option<(SocketAddr, BorrowedFd<'a>)>,
    pub xdp_link: Option<(PathBuf, String)>,
}

/// A new process that said ready.
#[derive(Debug)]
pub struct NewProcess {
    pub pid: u32,
    pub version: String,
    /// Calls routed per server when it was started.
    pub routed_before: handover::Routed,
    /// Our end of the channel: the calls this process holds go there.
    pub channel: tokio::net::UnixStream,
}

fn dup(fd: BorrowedFd<'_>, what: &str) -> Result<OwnedFd, String> {
    fd.try_clone_to_owned().map_err(|e| format!("duplicating {what}: {e}"))
}

/// Starts `exe run --config <config>` with `offered`, and waits up to
/// `timeout` for it to say ready.
pub async fn start(
    exe: &Path,
    config: &Path,
    offered: Offered<'_>,
    timeout: Duration,
    data: &DataCtx,
) -> Result<NewProcess, String> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| format!("socket pair: {e}"))?;
    // Duplicates (close-on-exec) made for the child: it gets them by their
    // numbers, close-on-exec cleared between fork and exec.
    let mut keep: Vec<OwnedFd> = Vec::new();
    let mut offer = Offer {
        channel: theirs.as_raw_fd(),
        xdp_link: offered.xdp_link,
        ..Default::default()
    };
    for ((tls, addr), fd) in offered.listeners {
        let d = dup(fd, &format!("listener {addr}"))?;
        offer.listeners.push((tls, addr, d.as_raw_fd()));
        keep.push(d);
    }
    if let Some((path, fd)) = offered.admin_unix {
        let d = dup(fd, "the admin socket")?;
        offer.admin_unix = Some((path, d.as_raw_fd()));
        keep.push(d);
    }
    if let Some((addr, fd)) = offered.admin_tcp {
        let d = dup(fd, "the admin listener")?;
        offer.admin_tcp = Some((addr, d.as_raw_fd()));
        keep.push(d);
    }
    let mut inherit: Vec<i32> = keep.iter().map(|d| d.as_raw_fd()).collect();
    inherit.push(theirs.as_raw_fd());
    let offer = serde_json::to_string(&offer).map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .env(handover::ENV, offer)
        .stdin(std::process::Stdio::null());
    // SAFETY: between fork and exec only fcntl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &inherit {
                if libc::fcntl(*fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let routed_before = handover::routed(data);
    let mut child = cmd.spawn().map_err(|e| format!("starting {}: {e}", exe.display()))?;
    drop(keep);
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    tracing::info!(exe = %exe.display(), pid, "upgrade: new process started");
    ours.set_nonblocking(true).map_err(|e| e.to_string())?;
    let ours = tokio::net::UnixStream::from_std(ours).map_err(|e| e.to_string())?;
    let failed = {
        let mut lines = tokio::io::BufReader::new(ours).lines();
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => match (serde_json::from_str::<Message>(&line), handover::healthy(data)) {
                    // A new process that sees no healthy fleet where this one
                    // does has a config or checks that do not work: not ready.
                    (Ok(Message::Ready { healthy: 0, .. }), ours) if ours > 0 => format!(
                        "the new process sees no healthy server (this one sees {ours}): its configuration or its checks do not work"
                    ),
                    (Ok(Message::Ready { pid: said, version, .. }), _) => {
                        let mut channel = lines.into_inner().into_inner();
                        match channel.write_all(Message::Go.line().as_bytes()).await {
                            Ok(()) => return Ok(NewProcess { pid: said, version, routed_before, channel }),
                            Err(e) => format!("telling the new process to go: {e}"),
                        }
                    }
                    (Ok(Message::Failed { error }), _) => format!("the new process could not start: {error}"),
                    _ => format!("the new process said something unexpected: {line}"),
                },
                // It closed the channel without a word: its exit says the rest.
                Ok(None) | Err(_) => match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                    Ok(Ok(status)) => format!("the new process exited before it was ready ({status})"),
                    _ => "the new process closed the handover channel before it was ready".to_owned(),
                },
            },
            status = child.wait() => match status {
                Ok(status) => format!("the new process exited before it was ready ({status})"),
                Err(e) => format!("waiting for the new process: {e}"),
            },
            () = tokio::time::sleep(timeout) => format!(
                "the new process was not ready within {}",
                humantime::format_duration(timeout)
            ),
        }
        // The channel closes here: never told go, the new process takes
        // nothing over and exits; it is also asked to stop (SIGINT), then killed.
    };
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT);
    }
    if tokio::time::timeout(Duration::from_secs(2), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
    tracing::error!(pid, reason = %failed, "upgrade abandoned: this process serves on");
    Err(failed)
}

/// Tells the new process, on every change, how many calls this one holds on
/// each server, until the last has ended (then the channel closes).
pub async fn report_calls(mut channel: tokio::net::UnixStream, data: Arc<DataCtx>, since: handover::Routed) {
    let mut changes = data.changed.subscribe();
    let mut said = String::new();
    loop {
        let line = handover::calls_held(&data, &since).line();
        if line != said {
            if channel.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            said = line;
        }
        if data.calls_open() == 0 && said == (Message::Calls { servers: Vec::new() }).line() {
            return;
        }
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The sockets and the XDP link a new process would be offered.
pub struct Handover {
    pub data: Arc<DataCtx>,
    pub exe: PathBuf,
    pub config_path: PathBuf,
    pub admin_unix: (PathBuf, OwnedFd),
    pub admin_tcp: Option<(std::net::SocketAddr, OwnedFd)>,
    /// Where the XDP link is pinned for a new process, and the sync task's mailbox.
    pub xdp: Option<(PathBuf, mpsc::Sender<bpf::sync::LinkRequest>)>,
}

impl Handover {
    /// Starts the binary at `exe` with everything offered; on failure the
    /// XDP link's pin is taken away again (this process still holds the link).
    pub async fn upgrade(&self, control: &Mutex<Control>) -> Result<NewProcess, String> {
        let xdp_link = match &self.xdp {
            None => None,
            Some((path, tx)) => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                tx.send(bpf::sync::LinkRequest::Pin {
                    path: path.clone(),
                    reply,
                })
                .await
                .map_err(|_| "the XDP sync task is gone".to_owned())?;
                let mode = answer
                    .await
                    .map_err(|_| "the XDP sync task is gone".to_owned())?
                    .map_err(|e| format!("pinning the XDP link: {e}"))?;
                Some((path.clone(), mode))
            }
        };
        // The control lock is held throughout: no change races the handover.
        let control = control.lock().await;
        let timeout = control.config.limits.upgrade_timeout.0;
        let offered = Offered {
            listeners: control.listeners.offer(),
            admin_unix: Some((self.admin_unix.0.clone(), self.admin_unix.1.as_fd())),
            admin_tcp: self.admin_tcp.as_ref().map(|(a, fd)| (*a, fd.as_fd())),
            xdp_link,
        };
        let started = start(&self.exe, &self.config_path, offered, timeout, &self.data).await;
        drop(control);
        if started.is_ok()
            && let Some((path, _)) = &self.xdp
        {
            // The new process holds the link now: no pin left for another.
            let _ = std::fs::remove_file(path);
        }
        if started.is_err()
            && let Some((path, tx)) = &self.xdp
        {
            // The new process may have put its program on the link and its
            // ports and carriers in the maps: ours go back.
            let _ = std::fs::remove_file(path);
            let (reply, answer) = tokio::sync::oneshot::channel();
            if tx.send(bpf::sync::LinkRequest::Reclaim { reply }).await.is_ok()
                && let Ok(Err(e)) = answer.await
            {
                tracing::error!(error = %e, "taking the XDP link back after the abandoned upgrade");
            }
        }
        started
    }
}
