//! Control path: the binary upgrade's handover between two processes — what
//! the old one offers the new one (listening sockets and the admin
//! sockets as inherited descriptors, the XDP link's pin, a channel), read
//! by the new one from [`ENV`] at start, and the messages on the channel:
//! the new process says it is ready (or why it failed), the old one says
//! how many calls it still holds on each server until its last one ends.

use std::{
    io::BufRead as _,
    net::SocketAddr,
    os::fd::{FromRawFd as _, OwnedFd, RawFd},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use crate::data::DataCtx;

/// The environment variable that carries the [`Offer`] to the new process.
pub const ENV: &str = "INGRESS_HANDOVER";

/// What the old process hands the new one: descriptor numbers valid in
/// the new process (inherited across `exec`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Offer {
    /// The channel (one end of a unix socket pair).
    pub channel: RawFd,
    /// Front listeners by (TLS?, configured address).
    pub listeners: Vec<(bool, SocketAddr, RawFd)>,
    /// The admin unix socket: its path and descriptor.
    pub admin_unix: Option<(PathBuf, RawFd)>,
    /// The admin TCP listener: its configured address and descriptor.
    pub admin_tcp: Option<(SocketAddr, RawFd)>,
    /// Where the old process pinned its XDP link, and the link's mode.
    pub xdp_link: Option<(PathBuf, String)>,
}

/// What the new process took over from the old one.
#[derive(Debug, Default)]
pub struct Inherited {
    pub listeners: Vec<((bool, SocketAddr), std::net::TcpListener)>,
    pub admin_unix: Option<(PathBuf, std::os::unix::net::UnixListener)>,
    pub admin_tcp: Option<(SocketAddr, std::net::TcpListener)>,
    pub xdp_link: Option<(PathBuf, String)>,
    pub channel: Option<std::os::unix::net::UnixStream>,
}

/// One line on the channel (JSON; fields a build does not know are
/// ignored, so that two builds can hand over either way).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// New → old: ready to serve, with `healthy` servers; it accepts
    /// nothing, writes no map and tells systemd nothing until told go.
    Ready { pid: u32, version: String, healthy: usize },
    /// Old → new: take over (the old process stops accepting now).
    Go,
    /// New → old: could not start.
    Failed { error: String },
    /// Old → new: calls the old process holds, by (pool, server): all of
    /// them, and those it routed after the new process was started.
    Calls { servers: Vec<(String, String, u32, u32)> },
}

impl Message {
    /// The message as one line.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Takes a descriptor named in the offer; it must be open and a socket.
fn socket_fd(fd: RawFd, what: &str) -> anyhow::Result<OwnedFd> {
    let stat = nix::sys::stat::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
        .map_err(|e| anyhow::anyhow!("{ENV}: descriptor {fd} for {what}: {e}"))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        anyhow::bail!("{ENV}: descriptor {fd} for {what} is not a socket");
    }
    // SAFETY: the old process made `fd` for us alone and nothing else in
    // this process knows its number; checked open and a socket above.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|e| anyhow::anyhow!("{ENV}: descriptor {fd} for {what}: {e}"))?;
    Ok(owned)
}

impl Inherited {
    /// Reads (and clears) [`ENV`]: None when this process was not started
    /// by an upgrade.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let Some(raw) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        // SAFETY: called by `main` before the runtime (or any other thread) starts.
        unsafe { std::env::remove_var(ENV) };
        let offer: Offer = serde_json::from_str(&raw.to_string_lossy())
            .map_err(|e| anyhow::anyhow!("{ENV} is not a handover offer: {e}"))?;
        let mut got = Inherited {
            channel: Some(socket_fd(offer.channel, "the channel")?.into()),
            xdp_link: offer.xdp_link,
            ..Default::default()
        };
        for (tls, addr, fd) in offer.listeners {
            let l = std::net::TcpListener::from(socket_fd(fd, &format!("listener {addr}"))?);
            l.set_nonblocking(true)?;
            got.listeners.push(((tls, addr), l));
        }
        if let Some((path, fd)) = offer.admin_unix {
            let l = std::os::unix::net::UnixListener::from(socket_fd(fd, "the admin socket")?);
            l.set_nonblocking(true)?;
            got.admin_unix = Some((path, l));
        }
        if let Some((addr, fd)) = offer.admin_tcp {
            let l = std::net::TcpListener::from(socket_fd(fd, "the admin listener")?);
            l.set_nonblocking(true)?;
            got.admin_tcp = Some((addr, l));
        }
        Ok(Some(got))
    }
}

/// The new process's side after it said ready: waits (at most `limit`)
/// for the old one to say go; the channel, to follow, if it did.
pub fn wait_for_go(
    channel: std::os::unix::net::UnixStream,
    limit: std::time::Duration,
) -> anyhow::Result<std::io::BufReader<std::os::unix::net::UnixStream>> {
    channel.set_read_timeout(Some(limit))?;
    let mut reader = std::io::BufReader::new(channel);
    let mut line = String::new();
    let read = reader.read_line(&mut line);
    reader.get_ref().set_read_timeout(None)?;
    match (read, serde_json::from_str::<Message>(&line)) {
        (Ok(n), Ok(Message::Go)) if n > 0 => Ok(reader),
        (Ok(0), _) => anyhow::bail!("the old process did not hand over (it closed the channel)"),
        (Err(e), _) => anyhow::bail!("the old process did not hand over: {e}"),
        _ => anyhow::bail!("the old process said {line:?} instead of go"),
    }
}

/// Then: applies each count the old process sends to the servers of the
/// snapshot in force, and clears them all when it is gone (the channel
/// closes with it).
pub fn follow_calls(channel: std::io::BufReader<std::os::unix::net::UnixStream>, data: &DataCtx) {
    let mut lines = channel.lines();
    while let Some(Ok(line)) = lines.next() {
        let Ok(Message::Calls { servers }) = serde_json::from_str(&line) else {
            tracing::warn!(%line, "unexpected handover message");
            continue;
        };
        let rt = data.runtime.load();
        for pool in &rt.pools {
            for s in pool.servers.load().iter() {
                let (held, fresh) = servers
                    .iter()
                    .find(|(p, n, _, _)| **p == *pool.name && n == s.name())
                    .map_or((0, 0), |(_, _, c, f)| (*c, *f));
                s.inherit(held, fresh);
            }
        }
        data.changed.signal();
    }
    let rt = data.runtime.load();
    for pool in &rt.pools {
        for s in pool.servers.load().iter() {
            s.inherit(0, 0);
        }
    }
    data.changed.signal();
    tracing::info!("the replaced process is gone: its calls no longer count");
}

/// Servers whose checks pass (UP or FULL), in the snapshot in force.
pub fn healthy(data: &DataCtx) -> usize {
    data.runtime
        .load()
        .server_views()
        .iter()
        .filter(|v| v.server.healthy())
        .count()
}

/// Calls upgraded (101) on each server so far, by (pool, server): taken
/// when the new process is started.
pub type Routed = std::collections::HashMap<(String, String), u64>;

/// Calls upgraded so far, by (pool, server).
pub fn routed(data: &DataCtx) -> Routed {
    data.runtime
        .load()
        .server_views()
        .into_iter()
        .map(|v| ((v.pool, v.name), v.server.calls_upgraded()))
        .collect()
}

/// The old process's count of its calls (its own, and any it still holds
/// for the process it replaced), by (pool, server), and of those routed
/// since `since` (at most all it holds).
pub fn calls_held(data: &DataCtx, since: &Routed) -> Message {
    let servers = data
        .runtime
        .load()
        .server_views()
        .into_iter()
        .filter(|v| v.active + v.inherited > 0)
        .map(|v| {
            let before = since.get(&(v.pool.clone(), v.name.clone())).copied().unwrap_or(0);
            let fresh = u32::try_from(v.server.calls_upgraded().saturating_sub(before)).unwrap_or(u32::MAX);
            let held = v.active + v.inherited;
            (v.pool, v.name, held, fresh.min(held))
        })
        .collect();
    Message::Calls { servers }
}

/// Until every server had its first check (at most `limit`): a process
/// started by an upgrade says ready only then, so that it routes by the
/// fleets' reports from its first call.
pub async fn first_checks(data: &DataCtx, limit: std::time::Duration) {
    let until = tokio::time::Instant::now() + limit;
    let mut changes = data.changed.subscribe();
    while !data.runtime.load().server_views().iter().all(|v| v.check.at.is_some()) {
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            () = tokio::time::sleep_until(until) => return,
        }
    }
}
