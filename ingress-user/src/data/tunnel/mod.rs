//! Data path: after a 101, copies bytes both ways until one side closes or
//! nothing moved for the idle timeout. For a WebSocket call each direction
//! is followed frame by frame (headers only, see [`super::frames`]), so the
//! ingress can end it cleanly: a Close 1001 to each side between two
//! messages, then the replies awaited briefly, then TLS close_notify.
//!
//! One call is one future polled by hand: both directions, the idle clock
//! and the ending asked for live in it as plain fields (no channel, no
//! future per read), so a quiet call costs its two streams and little else.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{Instant, Sleep},
};

use self::direction::{Direction, Framing};
use super::frames::FrameCursor;

mod direction;
#[cfg(test)]
mod tests;

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
    /// Cut by the ingress: a byte tunnel asked to end, or a side that did
    /// not finish its message or answer our Close in time.
    Cut,
    /// Ended by the ingress with a Close 1001 to both sides.
    GoingAway,
}

/// How the ingress wants a tunnel to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Close both connections now.
    Cut,
    /// A WebSocket Close 1001 to each side at its next message boundary
    /// (a byte tunnel is cut).
    GoingAway,
}

/// From a Close 1001 being asked for: how long a message in flight may take
/// to finish and the sides to answer, before the connections close.
const CLOSE_REPLY: Duration = Duration::from_secs(2);

/// From a Close 1001 being asked for to every tunnel having ended, at most.
pub const CLOSE_WINDOW: Duration = Duration::from_secs(3);

impl CloseReason {
    /// The name in the call log and `ingress_tunnel_closed_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ServerClosed => "server_closed",
            CloseReason::Idle => "idle_timeout",
            CloseReason::ClientError => "client_error",
            CloseReason::ServerError => "server_error",
            CloseReason::Cut => "cut",
            CloseReason::GoingAway => "ingress_1001",
        }
    }

    /// Who ended the call: `carrier`, `fleet`, `ingress_1001`, `cut` or `idle`.
    pub fn closed_by(self) -> &'static str {
        match self {
            CloseReason::ClientClosed | CloseReason::ClientError => "carrier",
            CloseReason::ServerClosed | CloseReason::ServerError => "fleet",
            CloseReason::Idle => "idle",
            CloseReason::Cut => "cut",
            CloseReason::GoingAway => "ingress_1001",
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

impl TunnelStats {
    /// A call that ended before its tunnel ran (the 101 or the early bytes failed).
    pub fn early(reason: CloseReason) -> Self {
        Self {
            to_server: 0,
            to_client: 0,
            reason,
        }
    }
}

/// Where each direction of a WebSocket call is, frame-wise, as its tunnel
/// starts: past the bytes relayed before it (those behind the carrier's
/// upgrade head, those behind the fleet's 101).
#[derive(Debug, Clone, Default)]
pub struct Frames {
    to_server: FrameCursor,
    to_client: FrameCursor,
}

impl Frames {
    /// After `to_server` and `to_client` went their ways already.
    pub fn after(to_server: &[u8], to_client: &[u8]) -> Self {
        let mut f = Self::default();
        f.to_server.advance(to_server, false);
        f.to_client.advance(to_client, false);
        f
    }
}

/// Wakes a call's task when its ending may have come, and remembers that
/// it did: the ending (notifications every call shares) is polled only
/// then, not on every read.
struct EndWake {
    woken: std::sync::atomic::AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for EndWake {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.woken.store(true, std::sync::atomic::Ordering::Release);
        self.task.wake();
    }
}

/// A masking key for our Close to the fleet (a client's frames must be
/// masked with a key the server cannot predict).
fn mask() -> [u8; 4] {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    (h.finish() as u32).to_be_bytes()
}

/// Runs the tunnel until a side closes, the idle timeout, or `end`. With
/// `frames` (a WebSocket call), both directions are followed frame by
/// frame and [`Ending::GoingAway`] closes each side with a Close 1001 at
/// its next message boundary (then waits up to [`CLOSE_REPLY`] for the
/// replies); without, a byte tunnel is cut.
pub async fn run<C, S>(
    client: C,
    server: S,
    idle: Duration,
    end: impl Future<Output = Ending>,
    frames: Option<Frames>,
) -> TunnelStats
where
    C: AsyncRead + AsyncWrite,
    S: AsyncRead + AsyncWrite,
{
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    let start = Instant::now();
    let websocket = frames.is_some();
    // The carrier gets the server's Close (unmasked), the fleet a client's (masked).
    let (up_frames, down_frames) = match frames {
        Some(f) => (
            Some(Framing::new(f.to_server, Some(mask()))),
            Some(Framing::new(f.to_client, None)),
        ),
        None => (None, None),
    };
    let mut up = Direction::new(cr, sw, up_frames);
    let mut down = Direction::new(sr, cw, down_frames);
    let mut end = std::pin::pin!(end);
    let end_wake = std::sync::Arc::new(EndWake {
        woken: std::sync::atomic::AtomicBool::new(true),
        task: futures_util::task::AtomicWaker::new(),
    });
    let end_waker = std::task::Waker::from(std::sync::Arc::clone(&end_wake));
    // One clock: the idle timeout while both sides are open, then the
    // linger after one closed, or the reply window once ending.
    let mut clock: Pin<&mut Sleep> = std::pin::pin!(tokio::time::sleep(idle));
    let mut last = start;
    let (mut client_done, mut server_done, mut ending, mut lingering) = (false, false, false, false);
    // Who closed first: the first Close frame seen, or the first EOF.
    let mut first: Option<CloseReason> = None;
    let reason = std::future::poll_fn(|cx| {
        if !ending {
            end_wake.task.register(cx.waker());
        }
        if !ending
            && end_wake.woken.swap(false, std::sync::atomic::Ordering::AcqRel)
            && let Poll::Ready(how) = end.as_mut().poll(&mut Context::from_waker(&end_waker))
        {
            if how == Ending::Cut || !websocket {
                return Poll::Ready(CloseReason::Cut);
            }
            ending = true;
            up.go_away();
            down.go_away();
            // A message that does not end, or a side that does not answer,
            // within the reply window is cut.
            clock.as_mut().reset(Instant::now() + CLOSE_REPLY);
        }
        let moved = up.bytes + down.bytes;
        if !client_done {
            match up.poll(cx) {
                Poll::Ready(Ok(())) => client_done = true,
                // After our Close, a side that drops the connection has answered.
                Poll::Ready(Err(_)) if ending => client_done = true,
                Poll::Ready(Err(f)) => return Poll::Ready(f.blame(CloseReason::ClientError, CloseReason::ServerError)),
                Poll::Pending => {}
            }
        }
        if !server_done {
            match down.poll(cx) {
                Poll::Ready(Ok(())) => server_done = true,
                Poll::Ready(Err(_)) if ending => server_done = true,
                Poll::Ready(Err(f)) => return Poll::Ready(f.blame(CloseReason::ServerError, CloseReason::ClientError)),
                Poll::Pending => {}
            }
        }
        if first.is_none() && !ending {
            first = if up.saw_close() || (client_done && !down.saw_close()) {
                Some(CloseReason::ClientClosed)
            } else if down.saw_close() || server_done {
                Some(CloseReason::ServerClosed)
            } else {
                None
            };
        }
        if !lingering && !ending && (client_done || server_done) {
            // A side closed: the other has the linger to finish.
            lingering = true;
            clock.as_mut().reset(Instant::now() + LINGER);
        }
        let finished = || {
            if !ending || !(up.sent_close() || down.sent_close()) {
                // Not ended by us (both sides were closing already).
                first.unwrap_or(CloseReason::ClientClosed)
            } else if up.closed() && down.closed() {
                CloseReason::GoingAway
            } else {
                CloseReason::Cut
            }
        };
        if client_done && server_done {
            return Poll::Ready(finished());
        }
        if up.bytes + down.bytes != moved {
            last = Instant::now();
        }
        while clock.as_mut().poll(cx).is_ready() {
            if ending || lingering {
                return Poll::Ready(finished());
            }
            let quiet_until = last + idle;
            if Instant::now() >= quiet_until {
                return Poll::Ready(CloseReason::Idle);
            }
            clock.as_mut().reset(quiet_until);
        }
        Poll::Pending
    })
    .await;
    TunnelStats {
        to_server: up.bytes,
        to_client: down.bytes,
        reason,
    }
}
