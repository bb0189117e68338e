//! `http1::read_request` on arbitrary bytes (an in-memory reader), then
//! `websocket_upgrade_error` and `upstream_request` on what parses. The head
//! sent upstream must parse again, carry the same request line and exactly one
//! set of our X-Forwarded-* headers.
#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use bytes::BytesMut;
use ingress_user::data::{
    forward::upstream_request,
    http1::{HeadLimits, read_request, websocket_upgrade_error},
};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
}

/// The defaults of `[limits]`.
const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 16_384,
    max_headers: 100,
};

fuzz_target!(|data: &[u8]| {
    let mut reader: &[u8] = data;
    let head = RT.with(|rt| {
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            read_request(&mut reader, BytesMut::new(), LIMITS, deadline).await
        })
    });
    let Ok(head) = head else {
        return;
    };
    let _ = websocket_upgrade_error(&head);
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let out = upstream_request(&head, ip, "https", 443);
    let mut headers = vec![httparse_header(); LIMITS.max_headers + 3];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "bytes after the forwarded head"),
        other => panic!(
            "the forwarded head does not parse: {other:?}\n{:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(req.method, Some(head.method.as_str()));
    assert_eq!(req.path, Some(head.target.as_str()));
    let xff = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        .count();
    assert_eq!(xff, 1, "X-Forwarded-For must be ours alone");
});

fn httparse_header() -> httparse::Header<'static> {
    httparse::EMPTY_HEADER
}
