//! Data path: one direction of a tunnel — reads from one side written on
//! to the other in the same poll (a per-thread scratch buffer; only what
//! the other side cannot take yet is held), and for a WebSocket call its
//! frame state: where the next message boundary is, and our Close 1001.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};

use super::CloseReason;
use crate::data::frames::{self, FrameCursor};

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

/// One direction's frame state for a WebSocket call.
pub(super) struct Framing {
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
    pub(super) fn new(cursor: FrameCursor, mask: Option<[u8; 4]>) -> Self {
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

/// What went wrong in one direction: reading its source, or writing to
/// its destination (whose fault it is), or a source that closed TCP
/// without TLS close_notify (which still closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    Read,
    Write,
    Eof,
}

impl Fault {
    /// The reason: `source` when reading failed, else `destination`.
    pub(super) fn blame(self, source: CloseReason, destination: CloseReason) -> CloseReason {
        if self == Fault::Write { destination } else { source }
    }
}

/// One direction of a tunnel: what `from` sends goes to `to`.
pub(super) struct Direction<R, W> {
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
    pub(super) bytes: u64,
}

impl<R: AsyncRead, W: AsyncWrite> Direction<R, W> {
    pub(super) fn new(from: ReadHalf<R>, to: WriteHalf<W>, framing: Option<Framing>) -> Self {
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
    pub(super) fn go_away(&mut self) {
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
    pub(super) fn saw_close(&self) -> bool {
        self.framing.as_ref().is_some_and(|f| f.cursor.saw_close)
    }

    /// Nothing more is passed on this way.
    pub(super) fn closed(&self) -> bool {
        self.framing.as_ref().is_some_and(|f| f.closed)
    }

    /// Our Close went this way.
    pub(super) fn sent_close(&self) -> bool {
        self.framing.as_ref().is_some_and(|f| f.sent)
    }

    /// Moves bytes until nothing can move; `Ready(Ok)` once the source has
    /// ended and `to` is shut down.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Fault>> {
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
