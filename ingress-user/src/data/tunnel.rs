//! Data path: after a 101, copies bytes both ways until one side closes or
//! nothing moved for the idle timeout. No frame parsing.

use std::{
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf},
    time::Instant,
};

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

/// One read from `from`, written to `to` in the same poll as far as it
/// goes; what `to` did not take is appended to `pending`. Returns the bytes
/// read (0: EOF). While there is nothing to read, flushes `to`.
fn poll_relay<R, W>(
    cx: &mut Context<'_>,
    from: &mut ReadHalf<R>,
    to: &mut WriteHalf<W>,
    pending: &mut Vec<u8>,
) -> Poll<std::io::Result<usize>>
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
        let mut written = 0;
        while written < read.len() {
            match Pin::new(&mut *to).poll_write(cx, &read[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        pending.extend_from_slice(&read[written..]);
        Poll::Ready(Ok(read.len()))
    })
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
    let mut pending = Vec::new();
    loop {
        let n = match std::future::poll_fn(|cx| poll_relay(cx, &mut from, &mut to, &mut pending)).await {
            Ok(n) => n,
            // A peer that closes TCP without TLS close_notify has still closed.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
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
        let tunnel = tokio::spawn(run(client, server, Duration::from_secs(30), std::future::pending()));
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
        let _tunnel = tokio::spawn(run(client, server, Duration::from_secs(30), std::future::pending()));
        carrier.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), fleet.read_exact(&mut got))
            .await
            .expect("the writer was flushed")
            .unwrap();
        assert_eq!(&got, b"hello");
    }
}
