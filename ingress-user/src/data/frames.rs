//! Data path: WebSocket frame boundaries in a relayed byte stream, read
//! from the frame headers only (RFC 6455 §5.2: FIN, opcode, mask bit,
//! payload length; payloads are skipped, never unmasked or copied), so that
//! the ingress can put a Close of its own between two messages, and the
//! Close frames it sends (1001 "going away").

/// Where a stream is, frame-wise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Reading a header: `have` of its bytes so far in `head`.
    Header { have: usize },
    /// Skipping `left` payload bytes of the current frame.
    Payload { left: u64 },
}

/// Follows one direction of a tunnel frame by frame.
#[derive(Debug, Clone)]
pub struct FrameCursor {
    at: At,
    head: [u8; 14],
    /// A fragmented data message has begun and its final frame not yet come.
    in_message: bool,
    /// The current frame's FIN and whether it is a data frame.
    fin: bool,
    data: bool,
    /// The current frame is a Close.
    close: bool,
    /// A whole Close frame passed (the stream is ending).
    pub saw_close: bool,
}

impl Default for FrameCursor {
    fn default() -> Self {
        Self {
            at: At::Header { have: 0 },
            head: [0; 14],
            in_message: false,
            fin: true,
            data: false,
            close: false,
            saw_close: false,
        }
    }
}

/// The length of a frame header from its first two bytes.
fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

impl FrameCursor {
    /// Between two messages: no frame half read, no fragmented message open.
    /// A control frame of the ingress's own may go here.
    pub fn at_message_boundary(&self) -> bool {
        self.at == At::Header { have: 0 } && !self.in_message
    }

    /// Follows `bytes`; with `stop_at_boundary`, stops right after the first
    /// message boundary reached within them (a boundary at the very start
    /// counts) and returns how many were taken, else takes them all.
    /// Kept out of line (one call per read, not per byte) so a profile
    /// shows what frame tracking costs (the bench's figure 6b).
    #[inline(never)]
    pub fn advance(&mut self, bytes: &[u8], stop_at_boundary: bool) -> usize {
        let mut i = 0;
        loop {
            if stop_at_boundary && self.at_message_boundary() {
                return i;
            }
            if i == bytes.len() {
                return i;
            }
            match self.at {
                At::Payload { left } => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    let left = left - take;
                    self.at = if left == 0 {
                        self.frame_done();
                        At::Header { have: 0 }
                    } else {
                        At::Payload { left }
                    };
                }
                At::Header { mut have } => {
                    let need = if have < 2 { 2 } else { header_len(self.head[1]) };
                    while have < need && i < bytes.len() {
                        self.head[have] = bytes[i];
                        have += 1;
                        i += 1;
                    }
                    // Short of the header (or of its extension and mask
                    // after the first two bytes): read on.
                    if have < need || (have == 2 && header_len(self.head[1]) > 2) {
                        self.at = At::Header { have };
                    } else {
                        self.header_done();
                    }
                }
            }
        }
    }

    fn header_done(&mut self) {
        let (b0, b1) = (self.head[0], self.head[1]);
        let len = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => u64::from_be_bytes(self.head[2..10].try_into().unwrap_or_default()),
            n => u64::from(n),
        };
        let opcode = b0 & 0x0f;
        self.fin = b0 & 0x80 != 0;
        self.data = opcode & 0x08 == 0;
        self.close = opcode == 0x8;
        if len == 0 {
            self.frame_done();
            self.at = At::Header { have: 0 };
        } else {
            self.at = At::Payload { left: len };
        }
    }

    fn frame_done(&mut self) {
        // Seen once whole: a Close cut before its payload is not one yet.
        self.saw_close |= self.close;
        if self.data {
            // A data frame (first or continuation): the message is open until FIN.
            self.in_message = !self.fin;
        }
    }
}

/// Close code 1001: the endpoint is going away (server shutdown, upgrade).
pub const GOING_AWAY: u16 = 1001;

/// A Close frame as a server sends it (unmasked), to the carrier.
pub fn close_to_client(code: u16, reason: &str) -> Vec<u8> {
    let payload = close_payload(code, reason);
    let mut out = Vec::with_capacity(2 + payload.len());
    out.push(0x88);
    out.push(payload.len() as u8);
    out.extend_from_slice(&payload);
    out
}

/// A Close frame as a client must send it (masked with `mask`), to the fleet.
pub fn close_to_server(code: u16, reason: &str, mask: [u8; 4]) -> Vec<u8> {
    let payload = close_payload(code, reason);
    let mut out = Vec::with_capacity(6 + payload.len());
    out.push(0x88);
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Code and reason, the reason cut to fit a control frame (125 bytes) on a
/// character boundary.
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n <= 0xffff => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if let Some(k) = mask {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    /// Feeds `wire` in pieces of `piece`, stopping at the first boundary
    /// after `from`; returns the offset.
    fn boundary_after(wire: &[u8], from: usize, piece: usize) -> usize {
        let mut c = FrameCursor::default();
        assert_eq!(c.advance(&wire[..from], false), from);
        let mut at = from;
        while at < wire.len() {
            let end = (at + piece).min(wire.len());
            at += c.advance(&wire[at..end], true);
            if c.at_message_boundary() {
                return at;
            }
        }
        at
    }

    #[test]
    fn a_close_waits_for_the_last_fragment_of_a_message_with_pings_between() {
        // A 1 MiB binary message in 64 masked fragments, a ping between each.
        let chunk = vec![7u8; 16 * 1024];
        let mut wire = Vec::new();
        let mut message_end = 0;
        for i in 0..64 {
            let opcode = if i == 0 { 0x2 } else { 0x0 };
            wire.extend(frame(i == 63, opcode, &chunk, Some([1, 2, 3, 4])));
            if i == 63 {
                message_end = wire.len();
            } else {
                wire.extend(frame(true, 0x9, b"ping", Some([5, 6, 7, 8])));
            }
        }
        wire.extend(frame(true, 0x1, b"next", Some([1, 1, 1, 1])));
        for piece in [1, 3, 1000, 70_000, wire.len()] {
            for from in [1, 5, 20_000, 500_000] {
                assert_eq!(
                    boundary_after(&wire, from, piece),
                    message_end,
                    "from {from} in pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn boundaries_follow_every_header_size_and_control_frames() {
        let mut c = FrameCursor::default();
        assert!(c.at_message_boundary());
        assert_eq!(c.advance(&[], true), 0);
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 200_000] {
            for mask in [None, Some([9, 9, 9, 9])] {
                let f = frame(true, 0x2, &vec![0; len], mask);
                // Half the header, then the rest byte by byte.
                assert_eq!(c.advance(&f[..1], false), 1);
                assert!(!c.at_message_boundary());
                let mut at = 1;
                while at < f.len() {
                    at += c.advance(&f[at..(at + 1).min(f.len())], true);
                }
                assert!(c.at_message_boundary(), "{len} bytes, mask {mask:?}");
            }
        }
        // A control frame alone is a whole message; a Close is seen.
        c.advance(&frame(true, 0x8, &[0x03, 0xe9], None), false);
        assert!(c.saw_close && c.at_message_boundary());
    }

    #[test]
    fn close_frames_are_well_formed_each_way() {
        assert_eq!(
            close_to_client(GOING_AWAY, "bye"),
            [0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']
        );
        let masked = close_to_server(GOING_AWAY, "", [1, 2, 3, 4]);
        assert_eq!(masked, [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe9 ^ 2]);
        let long = "é".repeat(100);
        let f = close_to_client(GOING_AWAY, &long);
        assert!(f[1] <= 125 && std::str::from_utf8(&f[4..]).is_ok());
        let mut c = FrameCursor::default();
        assert_eq!(c.advance(&masked, false), masked.len());
        assert!(c.saw_close && c.at_message_boundary());
    }
}
