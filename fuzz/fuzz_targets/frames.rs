//! A relayed WebSocket byte stream followed frame by frame, as the tunnel
//! does: the same stream fed whole and fed in pieces (the first input byte
//! picks their size) must reach the same message boundaries at the same
//! offsets, and end in the same state; stopping at a boundary never takes
//! a byte past what it was given.
#![no_main]

use ingress_user::data::frames::FrameCursor;
use libfuzzer_sys::fuzz_target;

/// Every offset at which `c` stands at a message boundary after taking
/// bytes, reading `wire` in pieces of `piece` and stopping at each.
fn boundaries(wire: &[u8], piece: usize) -> (Vec<usize>, FrameCursor) {
    let mut c = FrameCursor::default();
    let mut at = 0;
    let mut found = Vec::new();
    while at < wire.len() {
        let end = (at + piece).min(wire.len());
        let took = c.advance(&wire[at..end], true);
        assert!(took <= end - at, "took more than it was given");
        if took == 0 {
            // At a boundary already: step over one byte without stopping.
            let one = c.advance(&wire[at..at + 1], false);
            assert_eq!(one, 1, "a plain advance takes everything");
            at += 1;
            continue;
        }
        at += took;
        if c.at_message_boundary() {
            found.push(at);
        }
    }
    (found, c)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, wire)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first % 64) + 1;
    let (whole, a) = boundaries(wire, wire.len().max(1));
    let (pieces, b) = boundaries(wire, piece);
    let (bytes, c) = boundaries(wire, 1);
    assert_eq!(pieces, bytes, "boundaries depend on how the stream was cut ({piece})");
    assert_eq!(whole, bytes, "boundaries depend on how the stream was cut (whole)");
    for other in [&a, &b] {
        assert_eq!(other.at_message_boundary(), c.at_message_boundary());
        assert_eq!(other.saw_close, c.saw_close);
    }
});
