//! Unit tests of the tunnel: bytes both ways under backpressure, flushing,
//! and every way a WebSocket call is ended with a Close 1001.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

/// A WebSocket tunnel over two in-memory pipes starting at `frames`: the
/// carrier's end, the fleet's end, the sender that asks it to go away, and
/// the tunnel.
fn going_away_tunnel(
    frames: Frames,
) -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<TunnelStats>,
) {
    let (client, carrier) = tokio::io::duplex(64 * 1024);
    let (server, fleet) = tokio::io::duplex(64 * 1024);
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
    let end = async move {
        let _ = end_rx.await;
        Ending::GoingAway
    };
    let tunnel = tokio::spawn(run(client, server, Duration::from_secs(30), end, Some(frames)));
    (carrier, fleet, end_tx, tunnel)
}

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
    let (mut carrier, mut fleet, end_tx, tunnel) = going_away_tunnel(Frames::default());
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
    let (mut carrier, mut fleet, end_tx, tunnel) = going_away_tunnel(Frames::default());
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
    // The fleet's greeting: a 10-byte text frame, 4 bytes of it sent with the 101.
    let greeting = [0x81u8, 8, b'h', b'e', b'l', b'l', b'o', b'!', b'!', b'!'];
    let (mut carrier, mut fleet, end_tx, _tunnel) = going_away_tunnel(Frames::after(&[], &greeting[..4]));
    end_tx.send(()).unwrap();
    // The ending is in force once the fleet has our Close (its way was at a boundary).
    let mut ours = [0u8; 26];
    fleet.read_exact(&mut ours).await.unwrap();
    assert_eq!(ours[0], 0x88);
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
    let (mut carrier, mut fleet, end_tx, _tunnel) = going_away_tunnel(Frames::default());
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
