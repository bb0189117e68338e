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
    io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf},
    time::{Instant, Sleep},
};

use super::frames::{self, FrameCursor};

/// Largest read per poll. Reads land in a per-thread scratch buffer that
/// exists only during the poll, and are written on at once; only bytes the
/// other side cannot take yet are copied to the heap. An idle call (most
/// of them, most of the time) holds no buffer at all.
const READ_MAX: usize = 16 * 1024;

/// Reads one direction makes in one poll before letting the other side
/// and the timers have their turn.
const READS_PER_POLL: usize = 16;

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<[u8; READ_MAX]>> = std::cell::RefCell::new(Box::new([0; READ_MAX]));
}

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

/// One direction's frame state for a WebSocket call.
struct Framing {
    cursor: FrameCursor,
    /// Our Close is due at the next message boundary.
    close_due: bool,
    /// The boundary was reached inside a read (the bytes after it were
    /// followed, not passed): our Close goes next.
    boundary_reached: bool,
    /// Nothing more is passed on (our Close queued, or the source's own
    /// already passed); the source's own Close (its reply) is awaited.
    closed: bool,
    /// Our Close was actually sent this way.
    sent: bool,
    /// This direction runs to the fleet: its Close is masked (as a client's
    /// must be) with this key; to the carrier it is not (None).
    mask: Option<[u8; 4]>,
}

impl Framing {
    fn new(cursor: FrameCursor, mask: Option<[u8; 4]>) -> Self {
        Self {
            cursor,
            close_due: false,
            boundary_reached: false,
            closed: false,
            sent: false,
            mask,
        }
    }

    /// The Close 1001 this direction sends (built only when it is sent).
    fn close(&self) -> Vec<u8> {
        const REASON: &str = "ingress going away";
        match self.mask {
            Some(k) => frames::close_to_server(frames::GOING_AWAY, REASON, k),
            None => frames::close_to_client(frames::GOING_AWAY, REASON),
        }
    }

    /// Follows `read`; returns how many of its bytes are passed on (all,
    /// those up to the message boundary with a Close due, none after ours).
    fn pass(&mut self, read: &[u8]) -> usize {
        if self.closed {
            self.cursor.advance(read, false);
            return 0;
        }
        let pass = self.cursor.advance(read, self.close_due);
        if self.close_due && self.cursor.at_message_boundary() {
            // Our Close goes right behind what was passed; the rest of the
            // read is followed, not passed on.
            self.boundary_reached = true;
            self.cursor.advance(&read[pass..], false);
        }
        pass
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

/// What went wrong in one direction: reading its source, or writing to
/// its destination (whose fault it is), or a source that closed TCP
/// without TLS close_notify (which still closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Read,
    Write,
    Eof,
}

impl Fault {
    /// The reason: `source` when reading failed, else `destination`.
    fn blame(self, source: CloseReason, destination: CloseReason) -> CloseReason {
        if self == Fault::Write { destination } else { source }
    }
}

/// One direction of a tunnel: what `from` sends goes to `to`.
struct Direction<R, W> {
    from: ReadHalf<R>,
    to: WriteHalf<W>,
    /// Bytes `to` could not take yet (at most one read), or our Close.
    pending: Vec<u8>,
    /// How much of `pending` has been written.
    written: usize,
    /// Frame state of a WebSocket call (None: a byte tunnel).
    framing: Option<Framing>,
    /// The source ended (EOF, or its reply to our Close): `to` is shut down.
    ended: bool,
    /// Bytes read from `from`.
    bytes: u64,
}

impl<R: AsyncRead, W: AsyncWrite> Direction<R, W> {
    fn new(from: ReadHalf<R>, to: WriteHalf<W>, framing: Option<Framing>) -> Self {
        Self {
            from,
            to,
            pending: Vec::new(),
            written: 0,
            framing,
            ended: false,
            bytes: 0,
        }
    }

    /// Asks for our Close at the next message boundary (a WebSocket call).
    /// A source whose own Close has passed already is closing: nothing more
    /// of it is passed on, and no second Close goes that way.
    fn go_away(&mut self) {
        if let Some(f) = self.framing.as_mut()
            && !f.closed
        {
            if f.cursor.saw_close {
                f.closed = true;
            } else {
                f.close_due = true;
            }
        }
    }

    /// The source's Close frame has passed (or, after ours, arrived).
    fn saw_close(&self) -> bool {
        self.framing.as_ref().is_some_and(|f| f.cursor.saw_close)
    }

    /// Nothing more is passed on this way.
    fn closed(&self) -> bool {
        self.framing.as_ref().is_some_and(|f| f.closed)
    }

    /// Our Close went this way.
    fn sent_close(&self) -> bool {
        self.framing.as_ref().is_some_and(|f| f.sent)
    }

    /// Moves bytes until nothing can move; `Ready(Ok)` once the source has
    /// ended and `to` is shut down.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Fault>> {
        for _ in 0..READS_PER_POLL {
            while self.written < self.pending.len() {
                match Pin::new(&mut self.to).poll_write(cx, &self.pending[self.written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(Fault::Write)),
                    Poll::Ready(Ok(n)) => self.written += n,
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(Fault::Write)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !self.pending.is_empty() {
                // Given back: a call that is quiet again holds no buffer.
                self.pending = Vec::new();
                self.written = 0;
            }
            if let Some(f) = self.framing.as_mut()
                && f.close_due
                && (f.boundary_reached || f.cursor.at_message_boundary())
            {
                self.pending = f.close();
                f.close_due = false;
                f.closed = true;
                f.sent = true;
                continue;
            }
            // After our Close, the source's own ends the direction (it may
            // have come in the read that reached the boundary).
            if self.closed() && self.saw_close() {
                self.ended = true;
            }
            if self.ended {
                return Pin::new(&mut self.to).poll_shutdown(cx).map(|_| Ok(()));
            }
            match self.poll_relay(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => self.ended = true,
                // A peer that closes TCP without TLS close_notify has still closed.
                Poll::Ready(Err(Fault::Eof)) => self.ended = true,
                Poll::Ready(Err(f)) => return Poll::Ready(Err(f)),
                Poll::Ready(Ok(n)) => self.bytes += n as u64,
            }
        }
        // A busy direction yields so the other one and the clock get a turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One read from `from`, written to `to` in the same poll as far as it
    /// goes (what `to` does not take waits in `pending`); with nothing to
    /// read, flushes `to` (a TLS writer keeps records it could not send;
    /// they must not wait for the next bytes this way). Returns the bytes read.
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, Fault>> {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut rb = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut self.from).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    return match Pin::new(&mut self.to).poll_flush(cx) {
                        Poll::Ready(Err(_)) => Poll::Ready(Err(Fault::Write)),
                        _ => Poll::Pending,
                    };
                }
                Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Err(Fault::Eof));
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Err(Fault::Read)),
                Poll::Ready(Ok(())) => {}
            }
            let read = rb.filled();
            let pass = match self.framing.as_mut() {
                None => read.len(),
                Some(f) => f.pass(read),
            };
            let out = &read[..pass];
            let mut written = 0;
            while written < out.len() {
                match Pin::new(&mut self.to).poll_write(cx, &out[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(Fault::Write)),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(Fault::Write)),
                    Poll::Pending => break,
                }
            }
            self.pending.extend_from_slice(&out[written..]);
            Poll::Ready(Ok(read.len()))
        })
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// 1 MB each way through pipes of 1 KiB, read in odd-sized bites on the
    /// far side: writes go pending all the time, and every byte still
    /// arrives once and in order.
    #[tokio::test]
    async fn bytes_cross_intact_when_the_far_side_is_slow() {
        let (client, mut carrier) = tokio::io::duplex(1024);
        let (server, fleet) = tokio::io::duplex(1024);
        let tunnel = tokio::spawn(run(
            client,
            server,
            Duration::from_secs(30),
            std::future::pending(),
            Some(Frames::default()),
        ));
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let read_all = |mut side: tokio::io::DuplexStream, total: usize| async move {
            let mut got = Vec::with_capacity(total);
            let mut bite = [0u8; 333];
            while got.len() < total {
                let n = side.read(&mut bite).await.unwrap();
                assert!(n > 0, "closed early after {} bytes", got.len());
                got.extend_from_slice(&bite[..n]);
                tokio::task::yield_now().await;
            }
            (side, got)
        };
        let send_up = {
            let data = data.clone();
            async move {
                carrier.write_all(&data).await.unwrap();
                carrier
            }
        };
        let (carrier, (fleet, got_up)) = tokio::join!(send_up, read_all(fleet, data.len()));
        assert!(got_up == expected, "client → server bytes differ");
        // And back, the other way.
        let mut fleet = fleet;
        let send_down = async move {
            fleet.write_all(&data).await.unwrap();
            fleet.shutdown().await.unwrap();
            fleet
        };
        let (fleet, (mut carrier, got_down)) = tokio::join!(send_down, read_all(carrier, expected.len()));
        assert!(got_down == expected, "server → client bytes differ");
        carrier.shutdown().await.unwrap();
        drop((fleet, carrier));
        let stats = tunnel.await.unwrap();
        assert_eq!((stats.to_server, stats.to_client), (1_000_000, 1_000_000));
    }

    /// A writer that holds bytes until flushed (as a TLS stream can hold
    /// records): a short message must not wait for the next one.
    #[tokio::test]
    async fn a_holding_writer_is_flushed_when_the_reader_goes_quiet() {
        let (client, mut carrier) = tokio::io::duplex(1024);
        let (server, mut fleet) = tokio::io::duplex(1024);
        let server = tokio::io::BufWriter::new(server);
        let _tunnel = tokio::spawn(run(
            client,
            server,
            Duration::from_secs(30),
            std::future::pending(),
            None,
        ));
        carrier.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), fleet.read_exact(&mut got))
            .await
            .expect("the writer was flushed")
            .unwrap();
        assert_eq!(&got, b"hello");
    }

    /// A Close 1001 asked for while the carrier is in the middle of a
    /// fragmented message: the fleet gets the whole message and then a
    /// masked Close 1001; the carrier gets an unmasked one at once (nothing
    /// was in flight its way); both replies end the tunnel as `GoingAway`.
    #[tokio::test]
    async fn going_away_closes_each_side_at_its_next_message_boundary() {
        let (client, mut carrier) = tokio::io::duplex(64 * 1024);
        let (server, mut fleet) = tokio::io::duplex(64 * 1024);
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let end = async move {
            let _ = end_rx.await;
            Ending::GoingAway
        };
        let tunnel = tokio::spawn(run(
            client,
            server,
            Duration::from_secs(30),
            end,
            Some(Frames::default()),
        ));
        let mask = [1u8, 2, 3, 4];
        let frame = |fin: bool, opcode: u8, payload: &[u8]| {
            let mut f = vec![if fin { 0x80 } else { 0 } | opcode, 0x80 | payload.len() as u8];
            f.extend_from_slice(&mask);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            f
        };
        // First fragment and a ping inside the message, then the Close is due.
        let first = frame(false, 0x1, b"hello ");
        let ping = frame(true, 0x9, b"p");
        carrier.write_all(&first).await.unwrap();
        carrier.write_all(&ping).await.unwrap();
        let mut got = vec![0u8; first.len() + ping.len()];
        fleet.read_exact(&mut got).await.unwrap();
        end_tx.send(()).unwrap();
        // The carrier hears first: its direction was at a boundary.
        let mut close = [0u8; 4];
        carrier.read_exact(&mut close).await.unwrap();
        assert_eq!(close[..2], [0x88, 20], "an unmasked Close with its reason");
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1001);
        let mut reason = [0u8; 18];
        carrier.read_exact(&mut reason).await.unwrap();
        // The message's last fragment, then the fleet's Close.
        let last = frame(true, 0x0, b"world");
        carrier.write_all(&last).await.unwrap();
        let mut tail = vec![0u8; last.len()];
        fleet.read_exact(&mut tail).await.unwrap();
        assert_eq!(tail, last, "the message is finished before the Close");
        let mut head = [0u8; 6];
        fleet.read_exact(&mut head).await.unwrap();
        assert_eq!((head[0], head[1] & 0x80), (0x88, 0x80), "a masked Close");
        let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
        fleet.read_exact(&mut payload).await.unwrap();
        let code = u16::from_be_bytes([payload[0] ^ head[2], payload[1] ^ head[3]]);
        assert_eq!(code, 1001);
        // Both reply; the carrier's reply is not passed on.
        fleet.write_all(&[0x88, 0x02, 0x03, 0xe9]).await.unwrap();
        carrier.write_all(&frame(true, 0x8, &[0x03, 0xe9])).await.unwrap();
        let stats = tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .expect("tunnel ended")
            .unwrap();
        assert_eq!(stats.reason, CloseReason::GoingAway);
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(1), fleet.read_to_end(&mut rest)).await;
        assert!(rest.is_empty(), "nothing after our Close reached the fleet: {rest:?}");
    }

    /// A carrier whose own Close has passed is already closing: going away
    /// sends the fleet no second Close (it has the carrier's) and ends that
    /// direction at once; the carrier gets our Close as its reply.
    #[tokio::test]
    async fn a_side_already_closing_gets_no_second_close() {
        let (client, mut carrier) = tokio::io::duplex(64 * 1024);
        let (server, mut fleet) = tokio::io::duplex(64 * 1024);
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let end = async move {
            let _ = end_rx.await;
            Ending::GoingAway
        };
        let tunnel = tokio::spawn(run(
            client,
            server,
            Duration::from_secs(30),
            end,
            Some(Frames::default()),
        ));
        let close = [0x88u8, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2];
        carrier.write_all(&close).await.unwrap();
        let mut got = [0u8; 8];
        fleet.read_exact(&mut got).await.unwrap();
        assert_eq!(got, close);
        end_tx.send(()).unwrap();
        let mut reply = [0u8; 4];
        carrier.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[..2], [0x88, 20], "our Close answers the carrier");
        // The fleet's side ends with nothing more: no second Close.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(1), fleet.read_to_end(&mut rest))
            .await
            .expect("the fleet's side is shut down at once")
            .unwrap();
        assert!(rest.is_empty(), "a second Close reached the fleet: {rest:?}");
        fleet.write_all(&[0x88, 0x02, 0x03, 0xe8]).await.unwrap();
        let stats = tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stats.reason, CloseReason::GoingAway);
    }

    /// Bytes relayed before the tunnel ran (behind the 101) leave the
    /// cursor mid-frame: the Close waits for that frame's end.
    #[tokio::test]
    async fn frames_begun_before_the_tunnel_are_followed() {
        let (client, mut carrier) = tokio::io::duplex(64 * 1024);
        let (server, mut fleet) = tokio::io::duplex(64 * 1024);
        // The fleet's greeting: a 10-byte text frame, 4 bytes of it sent with the 101.
        let greeting = [0x81u8, 8, b'h', b'e', b'l', b'l', b'o', b'!', b'!', b'!'];
        let frames = Frames::after(&[], &greeting[..4]);
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let end = async move {
            let _ = end_rx.await;
            Ending::GoingAway
        };
        let _tunnel = tokio::spawn(run(client, server, Duration::from_secs(30), end, Some(frames)));
        end_tx.send(()).unwrap();
        tokio::task::yield_now().await;
        fleet.write_all(&greeting[4..]).await.unwrap();
        let mut got = [0u8; 6];
        carrier.read_exact(&mut got).await.unwrap();
        assert_eq!(got, greeting[4..], "the frame is finished first");
        let mut close = [0u8; 2];
        carrier.read_exact(&mut close).await.unwrap();
        assert_eq!(close, [0x88, 20], "then our Close");
    }

    /// A fleet gone while the carrier sends: writing to it fails, and the
    /// fleet is blamed, not the carrier whose bytes could not be written.
    #[tokio::test]
    async fn a_failed_write_blames_the_side_written_to() {
        let (client, mut carrier) = tokio::io::duplex(1024);
        let (server, fleet) = tokio::io::duplex(1024);
        let tunnel = tokio::spawn(run(
            client,
            server,
            Duration::from_secs(30),
            std::future::pending(),
            None,
        ));
        drop(fleet);
        let _ = carrier.write_all(b"are you there").await;
        let stats = tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stats.reason, CloseReason::ServerError);
        assert_eq!(stats.reason.closed_by(), "fleet");
    }

    /// A Close due in the middle of a frame, then one read holding that
    /// frame's end, a whole frame and half of another: the fleet gets the
    /// first frame's end and our Close, nothing of the frames after it.
    #[tokio::test]
    async fn a_close_at_a_boundary_inside_a_read_goes_right_behind_it() {
        let (client, mut carrier) = tokio::io::duplex(64 * 1024);
        let (server, mut fleet) = tokio::io::duplex(64 * 1024);
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let end = async move {
            let _ = end_rx.await;
            Ending::GoingAway
        };
        let _tunnel = tokio::spawn(run(
            client,
            server,
            Duration::from_secs(30),
            end,
            Some(Frames::default()),
        ));
        let mask = [9u8, 9, 9, 9];
        let frame = |payload: &[u8]| {
            let mut f = vec![0x82, 0x80 | payload.len() as u8];
            f.extend_from_slice(&mask);
            f.extend(payload.iter().map(|b| b ^ 9));
            f
        };
        let (f1, f2, f3) = (frame(b"first"), frame(b"second"), frame(b"third"));
        carrier.write_all(&f1[..4]).await.unwrap();
        let mut got = vec![0u8; 4];
        fleet.read_exact(&mut got).await.unwrap();
        end_tx.send(()).unwrap();
        // The carrier's side was at a boundary: its Close comes at once.
        let mut close = [0u8; 2];
        carrier.read_exact(&mut close).await.unwrap();
        let rest: Vec<u8> = [&f1[4..], &f2[..], &f3[..5]].concat();
        carrier.write_all(&rest).await.unwrap();
        let mut tail = vec![0u8; f1.len() - 4];
        fleet.read_exact(&mut tail).await.unwrap();
        assert_eq!(tail, f1[4..]);
        let mut head = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(1), fleet.read_exact(&mut head))
            .await
            .expect("our Close comes (before the reply window cuts the call)")
            .unwrap();
        assert_eq!(
            (head[0], head[1] & 0x80),
            (0x88, 0x80),
            "our Close right behind the frame: {head:?}"
        );
    }
}
