//! Data path: the request head a fleet is sent: the client's, minus the
//! headers a client could only be lying in and those its `Connection`
//! names, plus the ingress's own forwarding headers. Shared by the upgrade
//! path and the `http` routes.

use super::http1::RequestHead;

/// Headers the ingress sets itself and never forwards from the client.
pub const OWN_HEADERS: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-port"];

/// Other headers that claim to say who the client is or what it asked for:
/// a client could only be lying in them, so none reaches a fleet.
const SPOOFABLE: [&str; 12] = [
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-prefix",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-original-url",
    "x-rewrite-url",
];

/// Whether `Connection` may name `name` away: never `Host` (the route was
/// chosen by it) nor what the upgrade itself needs.
pub fn may_be_connection_named(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !(lower == "host" || lower == "upgrade" || lower.starts_with("sec-websocket-"))
}

/// Whether a client's header `name` must not reach a fleet: ours, a
/// spoofable one, or either written with underscores (`X_Forwarded_For`,
/// which some servers read as the dashed name).
pub fn is_spoofable(name: &str) -> bool {
    let dashed = name.replace('_', "-");
    OWN_HEADERS
        .iter()
        .chain(&SPOOFABLE)
        .any(|h| dashed.eq_ignore_ascii_case(h))
}

/// The headers a `Connection` header names (RFC 9110 §7.6.1: hop-by-hop,
/// not to be forwarded), lower-cased, from every `Connection` header.
pub fn connection_named<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The forwarding headers the fleet gets (names as in [`OWN_HEADERS`]),
/// for both the upgrade path and the `http` routes.
pub fn forwarded_headers(client_ip: std::net::IpAddr, proto: &str, port: u16) -> [(&'static str, String); 3] {
    [
        ("X-Forwarded-For", client_ip.to_string()),
        ("X-Forwarded-Proto", proto.to_owned()),
        ("X-Forwarded-Port", port.to_string()),
    ]
}

/// The request head sent to a fleet: the client's, minus spoofable
/// forwarding headers and the headers its `Connection` names (but `Host`,
/// `Upgrade` and `Sec-WebSocket-*`), with our own `Connection: Upgrade`
/// (the client's could name our forwarding headers away further on), plus
/// our forwarding headers.
pub fn upstream_request(head: &RequestHead, client_ip: std::net::IpAddr, proto: &str, port: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(if head.minor_version == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    let named = connection_named(
        head.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .map(|(_, v)| v.as_slice()),
    );
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        if is_spoofable(name)
            || lower == "connection"
            || lower == "keep-alive"
            || (may_be_connection_named(name) && named.contains(&lower))
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: Upgrade\r\n");
    for (name, value) in forwarded_headers(client_ip, proto, port) {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;
    use tokio::time::Instant;

    use super::*;
    use crate::data::http1::{HeadError, HeadLimits, read_request, websocket_upgrade_error};

    async fn parse(bytes: &[u8]) -> Result<RequestHead, HeadError> {
        let mut io = bytes;
        let limits = HeadLimits {
            max_bytes: 1024,
            max_headers: 8,
        };
        read_request(
            &mut io,
            BytesMut::new(),
            limits,
            Instant::now() + Duration::from_secs(1),
        )
        .await
    }

    const UPGRADE: &[u8] = b"GET /ws/bot1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Forwarded-For: 6.6.6.6\r\n\r\nEXTRA";

    #[tokio::test]
    async fn valid_upgrade_keeps_bytes_after_the_head() {
        let head = parse(UPGRADE).await.unwrap();
        assert_eq!(head.target, "/ws/bot1");
        assert_eq!(websocket_upgrade_error(&head), None);
        assert_eq!(&head.rest[..], b"EXTRA");
        let up = String::from_utf8(upstream_request(&head, "10.1.2.3".parse().unwrap(), "https", 443)).unwrap();
        assert!(up.contains("X-Forwarded-For: 10.1.2.3\r\n"));
        assert!(!up.contains("6.6.6.6"), "client-sent forwarding headers are dropped");
    }

    #[tokio::test]
    async fn spoofable_and_connection_named_headers_never_reach_the_fleet() {
        let text = String::from_utf8_lossy(UPGRADE).replace(
            "Connection: keep-alive, Upgrade\r\n",
            "Connection: keep-alive, Upgrade, X-Secret, Host, Sec-WebSocket-Key, X-Forwarded-For\r\nX-Secret: 1\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nX_Forwarded_For: 6.6.6.6\r\nx-real_ip: 6.6.6.6\r\nKeep-Alive: timeout=5\r\n",
        );
        let mut io = text.as_bytes();
        let wide = HeadLimits {
            max_bytes: 4096,
            max_headers: 32,
        };
        let head = read_request(&mut io, BytesMut::new(), wide, Instant::now() + Duration::from_secs(1))
            .await
            .unwrap();
        let up = String::from_utf8(upstream_request(&head, "10.1.2.3".parse().unwrap(), "https", 443)).unwrap();
        for gone in ["6.6.6.6", "evil", "X-Secret: 1", "Keep-Alive:"] {
            assert!(!up.contains(gone), "{gone} reached the fleet:\n{up}");
        }
        assert!(
            !up.contains("Connection: keep-alive"),
            "the client's Connection is replaced:\n{up}"
        );
        for kept in [
            "Host: x\r\n",
            "Sec-WebSocket-Key: ",
            "Upgrade: websocket\r\n",
            "Connection: Upgrade\r\n",
            "X-Forwarded-For: 10.1.2.3\r\n",
        ] {
            assert!(up.contains(kept), "{kept} is missing:\n{up}");
        }
    }
}
