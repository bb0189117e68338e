//! Data path: after a 101, copies bytes both ways until one side closes or
//! nothing moved for the idle timeout. For a WebSocket call each direction
//! is followed frame by frame (headers only, see [`super::frames`]), so the
//! ingress can end it cleanly: a Close 1001 to each side between two
//! messages, then the replies awaited briefly, then TLS close_notify.

use std::{
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf},
    sync::watch,
    time::Instant,
};

use super::frames::{self, FrameCursor};

/// Largest read per poll. Reads land in a per-thread scratch buffer that
/// exists only during the poll, and are written on at once; only bytes the
/// other side cannot take yet are copied to the heap. An idle call (most
/// of them, most of the time) holds no buffer at all.
const READ_MAX: usize = 16 * 1024;

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
    /// Cut by the ingress (server removed with --now, or marked down with shutdown-sessions).
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

/// What one relay poll did.
struct Relayed {
    /// Bytes read (0: EOF).
    read: usize,
    /// With a Close due: the message boundary was reached within them (the
    /// bytes after it were not passed on).
    at_boundary: bool,
}

/// One read from `from`, written to `to` in the same poll as far as it
/// goes; what `to` did not take is appended to `pending`. While there is
/// nothing to read, flushes `to`. With `frames`, the bytes are followed
/// frame by frame; with `close_due` too, only those up to the next message
/// boundary are passed on; once `closed` (our Close sent), none are.
fn poll_relay<R, W>(
    cx: &mut Context<'_>,
    from: &mut ReadHalf<R>,
    to: &mut WriteHalf<W>,
    pending: &mut Vec<u8>,
    frames: Option<&mut Framing>,
) -> Poll<std::io::Result<Relayed>>
where
    R: AsyncRead,
    W: AsyncWrite,
{
    SCRATCH.with_borrow_mut(|scratch| {
        let mut rb = ReadBuf::new(&mut scratch[..]);
        match Pin::new(&mut *from).poll_read(cx, &mut rb) {
            // Nothing to read: push out what the writer still holds (a TLS
            // writer keeps records it could not send; they must not wait for
            // the next bytes this way). Its waker is set too.
            Poll::Pending => {
                return match Pin::new(&mut *to).poll_flush(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    _ => Poll::Pending,
                };
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        let read = rb.filled();
        let (pass, at_boundary) = match frames {
            None => (read.len(), false),
            Some(f) if f.closed => {
                f.cursor.advance(read, false);
                (0, false)
            }
            Some(f) => {
                let pass = f.cursor.advance(read, f.close_due);
                let reached = f.close_due && f.cursor.at_message_boundary();
                if pass < read.len() {
                    // Stopped at the boundary: follow the rest, not passed on.
                    f.cursor.advance(&read[pass..], false);
                }
                (pass, reached)
            }
        };
        let out = &read[..pass];
        let mut written = 0;
        while written < out.len() {
            match Pin::new(&mut *to).poll_write(cx, &out[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        pending.extend_from_slice(&out[written..]);
        Poll::Ready(Ok(Relayed {
            read: read.len(),
            at_boundary,
        }))
    })
}

/// One direction's frame state for a WebSocket call.
struct Framing {
    cursor: FrameCursor,
    /// Our Close is due at the next message boundary.
    close_due: bool,
    /// Our Close has been sent: nothing more is passed on; the source's own
    /// Close (its reply) is awaited.
    closed: bool,
    /// This direction runs to the fleet: its Close is masked (as a client's
    /// must be) with this key; to the carrier it is not (None).
    mask: Option<[u8; 4]>,
}

impl Framing {
    fn new(mask: Option<[u8; 4]>) -> Self {
        Self {
            cursor: FrameCursor::default(),
            close_due: false,
            closed: false,
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
}

/// Copies one direction; returns `Ok(())` on EOF (or, after our Close, on
/// the source's reply), `Err` on an I/O error.
async fn pump<R, W>(
    mut from: ReadHalf<R>,
    mut to: WriteHalf<W>,
    bytes: &AtomicU64,
    last: &AtomicU64,
    epoch: Instant,
    mut framing: Option<Framing>,
    mut going_away: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    R: AsyncRead,
    W: AsyncWrite,
{
    let mut pending = Vec::new();
    loop {
        let due = framing.as_ref().is_some_and(|f| !f.close_due && !f.closed);
        let relayed = tokio::select! {
            r = std::future::poll_fn(|cx| poll_relay(cx, &mut from, &mut to, &mut pending, framing.as_mut())) => r,
            () = async { let _ = going_away.wait_for(|g| *g).await; }, if due => {
                if let Some(f) = framing.as_mut() {
                    f.close_due = true;
                    if f.cursor.at_message_boundary() {
                        send_close(&mut to, &mut pending, f).await?;
                    }
                }
                continue;
            }
        };
        let n = match relayed {
            Ok(r) => {
                if r.at_boundary
                    && let Some(f) = framing.as_mut()
                {
                    send_close(&mut to, &mut pending, f).await?;
                }
                r.read
            }
            // A peer that closes TCP without TLS close_notify has still closed.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        let replied = framing.as_ref().is_some_and(|f| f.closed && f.cursor.saw_close);
        if n == 0 || replied {
            let _ = to.shutdown().await;
            return Ok(());
        }
        if !pending.is_empty() {
            // The other side is slow: hold the rest (bounded by one read) until it takes it.
            to.write_all(&pending).await?;
            pending = Vec::new();
        }
        bytes.fetch_add(n as u64, Relaxed);
        last.store(stamp(epoch), Relaxed);
    }
}

/// Writes what is pending and then this direction's Close.
async fn send_close<W: AsyncWrite>(
    to: &mut WriteHalf<W>,
    pending: &mut Vec<u8>,
    f: &mut Framing,
) -> std::io::Result<()> {
    pending.extend_from_slice(&f.close());
    to.write_all(pending).await?;
    to.flush().await?;
    pending.clear();
    f.closed = true;
    f.close_due = false;
    Ok(())
}

/// Runs the tunnel until a side closes, the idle timeout, or `end`. With
/// `websocket`, both directions are followed frame by frame and
/// [`Ending::GoingAway`] closes each side with a Close 1001 at its next
/// message boundary (then waits up to [`CLOSE_REPLY`] for the replies).
pub async fn run<C, S>(
    client: C,
    server: S,
    idle: Duration,
    end: impl std::future::Future<Output = Ending>,
    websocket: bool,
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
    let (go, going_away) = watch::channel(false);
    // The carrier gets the server's Close (unmasked), the fleet a client's (masked).
    let mask = (epoch.elapsed().subsec_nanos() ^ 0x5a5a_a5a5).to_be_bytes();
    let to_server = pump(
        cr,
        sw,
        &up,
        &last,
        epoch,
        websocket.then(|| Framing::new(Some(mask))),
        going_away.clone(),
    );
    let to_client = pump(
        sr,
        cw,
        &down,
        &last,
        epoch,
        websocket.then(|| Framing::new(None)),
        going_away,
    );
    tokio::pin!(to_server, to_client, end);
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
    let (mut server_done, mut client_done, mut ending) = (false, false, false);
    let reason = loop {
        tokio::select! {
            r = &mut to_server, if !client_done => match r {
                Ok(()) if server_done => break if ending { CloseReason::GoingAway } else { CloseReason::ClientClosed },
                Ok(()) => {
                    client_done = true;
                    if !ending {
                        linger.as_mut().reset(Instant::now() + LINGER);
                    }
                }
                Err(_) => break CloseReason::ClientError,
            },
            r = &mut to_client, if !server_done => match r {
                Ok(()) if client_done => break if ending { CloseReason::GoingAway } else { CloseReason::ServerClosed },
                Ok(()) => {
                    server_done = true;
                    if !ending {
                        linger.as_mut().reset(Instant::now() + LINGER);
                    }
                }
                Err(_) => break CloseReason::ServerError,
            },
            () = &mut linger, if client_done || server_done || ending => {
                break if ending { CloseReason::GoingAway } else if client_done { CloseReason::ClientClosed } else { CloseReason::ServerClosed };
            }
            () = &mut watchdog, if !ending => break CloseReason::Idle,
            how = &mut end, if !ending => match how {
                Ending::GoingAway if websocket => {
                    ending = true;
                    let _ = go.send(true);
                    // Each side's Close goes at its next message boundary; a
                    // message that does not end, or a side that does not
                    // answer, within the reply window is cut.
                    linger.as_mut().reset(Instant::now() + CLOSE_REPLY);
                }
                _ => break CloseReason::Cut,
            },
        }
    };
    TunnelStats {
        to_server: up.load(Relaxed),
        to_client: down.load(Relaxed),
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
            true,
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
            false,
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
        let tunnel = tokio::spawn(run(client, server, Duration::from_secs(30), end, true));
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
}
