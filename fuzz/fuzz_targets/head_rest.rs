//! A request head with bytes behind it, read the way a socket delivers it:
//! in pieces (the first input byte picks their size). Differential against
//! one `httparse` parse of the whole input: the head read is the same one,
//! `rest` and what was left unread are exactly the bytes behind it (never
//! lost, never part of the head, whatever the split), and `target::settle` leaves an origin-form
//! target without dot segments that settles again to itself.
#![no_main]

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::BytesMut;
use ingress_user::data::{
    http1::{HeadLimits, read_request},
    target,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
}

const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 16_384,
    max_headers: 100,
};

/// Hands out `piece` bytes per read.
struct Pieces<'a> {
    data: &'a [u8],
    piece: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let n = self.piece.min(self.data.len()).min(buf.remaining());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let piece = usize::from(first % 64) + 1;
    let mut reader = Pieces { data, piece };
    let read = RT.with(|rt| {
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            read_request(&mut reader, BytesMut::new(), LIMITS, deadline).await
        })
    });
    let mut headers = vec![httparse::EMPTY_HEADER; LIMITS.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let whole = req.parse(data);
    let Ok(mut head) = read else {
        // Refused in pieces: refused whole too, or incomplete, or too large.
        if let Ok(httparse::Status::Complete(len)) = whole {
            assert!(len > LIMITS.max_bytes, "a head httparse completes in {len} bytes was refused");
        }
        return;
    };
    let Ok(httparse::Status::Complete(len)) = whole else {
        panic!("read in pieces of {piece} but not whole: {whole:?}");
    };
    assert_eq!(head.method, req.method.unwrap_or_default());
    assert_eq!(head.target, req.path.unwrap_or_default());
    assert_eq!(head.headers.len(), req.headers.len());
    // What was read past the head, then what was never read: the bytes behind it, once each.
    let mut behind = head.rest.to_vec();
    behind.extend_from_slice(reader.data);
    assert_eq!(&behind[..], &data[len..], "the bytes behind the head, split in pieces of {piece}");

    if target::settle(&mut head).is_ok() {
        assert!(head.target.starts_with('/'), "{:?}", head.target);
        let path = head.target.split('?').next().unwrap_or_default();
        assert!(
            !path.split('/').any(|s| matches!(s.to_ascii_lowercase().replace("%2e", ".").as_str(), "." | "..")),
            "a dot segment survived: {path:?}"
        );
        assert_eq!(target::normalize(&head.target).map(|n| n.origin), Ok(head.target.clone()));
        let hosts = head.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("host")).count();
        assert!(hosts == 1 || (hosts == 0 && head.minor_version == 0));
    }
});
