//! Data path: after a 101, copies bytes both ways until one side closes or
//! nothing moved for the idle timeout. No frame parsing.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf},
    time::Instant,
};

/// A fresh tunnel reads into a small buffer (an audio frame fits) and grows it
/// only when a read fills it: most calls are idle or trickle, so this keeps
/// memory per call low.
const BUF_START: usize = 2 * 1024;
const BUF_MAX: usize = 16 * 1024;
/// After one side closed, how long the other may take to finish.
const LINGER: Duration = Duration::from_secs(5);

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    ServerClosed,
    Idle,
    ClientError,
    ServerError,
    /// Cut by the ingress (server removed with --now, or marked down with shutdown-sessions).
    Cut,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ServerClosed => "server_closed",
            CloseReason::Idle => "idle_timeout",
            CloseReason::ClientError => "client_error",
            CloseReason::ServerError => "server_error",
            CloseReason::Cut => "cut",
        }
    }
}

/// Bytes moved and why it ended.
#[derive(Debug)]
pub struct TunnelStats {
    pub to_server: u64,
    pub to_client: u64,
    pub reason: CloseReason,
}

/// Milliseconds since `epoch`, as the shared last-activity stamp.
fn stamp(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// Copies one direction; returns `Ok(())` on EOF, `Err` on an I/O error.
async fn pump<R, W>(
    mut from: ReadHalf<R>,
    mut to: WriteHalf<W>,
    bytes: &AtomicU64,
    last: &AtomicU64,
    epoch: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead,
    W: AsyncWrite,
{
    let mut buf = vec![0u8; BUF_START];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) => n,
            // A peer that closes TCP without TLS close_notify has still closed.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        bytes.fetch_add(n as u64, Relaxed);
        if n == buf.len() && buf.len() < BUF_MAX {
            buf.resize(buf.len() * 2, 0);
        }
        last.store(stamp(epoch), Relaxed);
    }
}

/// Runs the tunnel. `client_first` is written to the server first (bytes the
/// client sent right behind its request head); `server_first` to the client.
pub async fn run<C, S>(
    client: C,
    server: S,
    idle: Duration,
    cancel: impl std::future::Future<Output = ()>,
) -> TunnelStats
where
    C: AsyncRead + AsyncWrite,
    S: AsyncRead + AsyncWrite,
{
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    let to_server = pump(cr, sw, &up, &last, epoch);
    let to_client = pump(sr, cw, &down, &last, epoch);
    tokio::pin!(to_server, to_client, cancel);
    let idle_ms = idle.as_millis() as u64;
    let watchdog = async {
        loop {
            let since = stamp(epoch).saturating_sub(last.load(Relaxed));
            if since >= idle_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(idle_ms - since)).await;
        }
    };
    let linger = tokio::time::sleep(idle);
    tokio::pin!(watchdog, linger);
    let (mut server_done, mut client_done) = (false, false);
    let reason = loop {
        tokio::select! {
            r = &mut to_server, if !client_done => match r {
                Ok(()) if server_done => break CloseReason::ClientClosed,
                Ok(()) => {
                    client_done = true;
                    linger.as_mut().reset(Instant::now() + LINGER);
                }
                Err(_) => break CloseReason::ClientError,
            },
            r = &mut to_client, if !server_done => match r {
                Ok(()) if client_done => break CloseReason::ServerClosed,
                Ok(()) => {
                    server_done = true;
                    linger.as_mut().reset(Instant::now() + LINGER);
                }
                Err(_) => break CloseReason::ServerError,
            },
            () = &mut linger, if client_done || server_done => {
                break if client_done { CloseReason::ClientClosed } else { CloseReason::ServerClosed };
            }
            () = &mut watchdog => break CloseReason::Idle,
            () = &mut cancel => break CloseReason::Cut,
        }
    };
    TunnelStats {
        to_server: up.load(Relaxed),
        to_client: down.load(Relaxed),
        reason,
    }
}
