//! Data-path hardening end to end: what a client may smuggle past an upgrade
//! to a fleet that refuses it, what a request names, and pooled connections
//! to a web tier that streams slowly or drops a reused connection.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ingress_tests::{Ingress, Pki, TestDir, config, https_raw, upgrade_request};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A TLS "fleet" that reports capacity on `/health/fleet`, answers every
/// other request with `answer` while keeping the connection open, and
/// records every byte each such connection receives (sent on `seen` when
/// the connection has been watched for a while after the answer).
struct RecordingFleet {
    addr: SocketAddr,
    seen: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
}

impl RecordingFleet {
    async fn start(pki: &Pki, answer: &'static str) -> Self {
        let acceptor = pki.fleet_acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (record, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, record) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    if got.starts_with(b"GET /health/fleet ") {
                        let body = r#"{"fleet_available":16}"#;
                        let _ = tls
                            .write_all(
                                format!(
                                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                    body.len()
                                )
                                .as_bytes(),
                            )
                            .await;
                        let _ = tls.shutdown().await;
                        return;
                    }
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.flush().await;
                    // Keep the connection and record whatever else arrives on it.
                    let _ = tokio::time::timeout(Duration::from_millis(700), async {
                        loop {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                    })
                    .await;
                    let _ = record.send(got);
                });
            }
        });
        Self { addr, seen }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_behind_an_upgrade_never_reach_a_fleet_that_refuses_it() {
    for answer in [
        "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
    ] {
        let dir = TestDir::new("smuggle");
        let pki = Pki::new(&dir);
        let mut fleet = RecordingFleet::start(&pki, answer).await;
        let ingress = Ingress::start(&dir, &config(&dir, &pki, &[("rec", fleet.addr)], "", ""));
        ingress.wait_state(&["rec"], "UP").await;
        // A valid upgrade and, in the same write, a request of its own.
        let mut wire = upgrade_request("/ws/x").into_bytes();
        wire.extend_from_slice(b"GET /internal/secret HTTP/1.1\r\nHost: fleet.internal\r\n\r\n");
        let raw = https_raw(ingress.https, pki.client_tls(), &wire).await;
        let text = String::from_utf8_lossy(&raw);
        let status = &answer[..12];
        assert!(text.starts_with(status), "the fleet's answer is relayed: {text}");
        let got = tokio::time::timeout(Duration::from_secs(5), fleet.seen.recv())
            .await
            .expect("the upgrade reached the fleet")
            .expect("recorder running");
        let text = String::from_utf8_lossy(&got);
        let end = text.find("\r\n\r\n").expect("a head") + 4;
        assert!(
            end == got.len() && !text.contains("/internal"),
            "after a {status}, the fleet saw bytes past the upgrade head: {text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_with_the_upgrade_reaches_the_fleet_after_its_101() {
    let dir = TestDir::new("early-frame");
    let pki = Pki::new(&dir);
    let fleet = ingress_tests::Fleet::start(&dir, &pki, "fleet1", 4);
    let ingress = Ingress::start(&dir, &config(&dir, &pki, &[("fleet1", fleet.https)], "", ""));
    ingress.wait_state(&["fleet1"], "UP").await;
    // The upgrade and a masked text frame "hello" in one write.
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut wire = upgrade_request("/ws/early").into_bytes();
    wire.extend_from_slice(&[0x81, 0x80 | 5]);
    wire.extend_from_slice(&mask);
    wire.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let tcp = tokio::net::TcpStream::connect(ingress.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(pki.client_tls())
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(&wire).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let echoed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            if got.windows(7).any(|w| w == b"\x81\x05hello") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(echoed.is_ok(), "the early frame was echoed after the 101: {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarding_headers_and_connection_named_ones_never_reach_a_fleet() {
    let dir = TestDir::new("spoof");
    let pki = Pki::new(&dir);
    let mut fleet = RecordingFleet::start(&pki, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n").await;
    let ingress = Ingress::start(&dir, &config(&dir, &pki, &[("rec", fleet.addr)], "", ""));
    ingress.wait_state(&["rec"], "UP").await;
    let wire = upgrade_request("/ws/x").replace(
        "Connection: Upgrade\r\n",
        "Connection: Upgrade, X-Secret, Host, X-Forwarded-For\r\nX-Secret: 1\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n",
    );
    let raw = https_raw(ingress.https, pki.client_tls(), wire.as_bytes()).await;
    assert!(raw.starts_with(b"HTTP/1.1 403"), "{}", String::from_utf8_lossy(&raw));
    let got = tokio::time::timeout(Duration::from_secs(5), fleet.seen.recv())
        .await
        .expect("the upgrade reached the fleet")
        .expect("recorder running");
    let head = String::from_utf8_lossy(&got);
    for gone in ["6.6.6.6", "evil.example", "X-Secret: 1"] {
        assert!(!head.contains(gone), "{gone} reached the fleet:\n{head}");
    }
    assert!(head.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{head}");
    assert!(head.contains("Upgrade: websocket\r\n"), "{head}");
    assert!(
        head.contains("Host: localhost\r\n"),
        "Host cannot be named away: {head}"
    );
    assert!(
        head.contains("Connection: Upgrade\r\n") && !head.contains("X-Secret, Host"),
        "the fleet gets our Connection, not one naming our headers away: {head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_429_is_retried_at_once_and_interim_answers_are_not_final() {
    // The first fleet answers an interim 103 and then a chunked 429 and keeps
    // the connection: its answer is complete at the last chunk, so the retry
    // on the real fleet must not wait for the 5 s upgrade_response timeout.
    let dir = TestDir::new("chunked-429");
    let pki = Pki::new(&dir);
    let refusing = RecordingFleet::start(
        &pki,
        "HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfull\r\n0\r\n\r\n",
    )
    .await;
    let fleet = ingress_tests::Fleet::start(&dir, &pki, "fleet1", 4);
    // Round-robin from the refusing fleet: the first call tries it first.
    let cfg = config(
        &dir,
        &pki,
        &[("refusing", refusing.addr), ("fleet1", fleet.https)],
        "balance = \"roundrobin\"",
        "",
    );
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["refusing", "fleet1"], "UP").await;
    let started = std::time::Instant::now();
    let call = ingress_tests::client::connect(ingress.https, "localhost", "/ws/c0", pki.client_tls()).await;
    let took = started.elapsed();
    assert!(
        call.is_ok(),
        "the 103 is not the answer and the 429 is retried: {:?}",
        call.err()
    );
    assert!(
        took < Duration::from_secs(2),
        "the retry waited {took:?} for a body that had ended"
    );
    let m = ingress.metrics().await;
    assert_eq!(
        ingress_tests::metric(&m, "ingress_pool_retries_total", &[("pool", "fleets")]),
        Some(1.0),
        "the refusing fleet was tried first: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_are_settled_before_routing_and_a_fleet_sees_what_was_routed() {
    let dir = TestDir::new("targets");
    let pki = Pki::new(&dir);
    let mut fleet = RecordingFleet::start(&pki, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n").await;
    let cfg = config(&dir, &pki, &[("rec", fleet.addr)], "", "").replacen(
        "[[routes]]\n",
        "[[routes]]\npath = \"/api/*\"\npool = \"fleets\"\nkind = \"http\"\n\n[[routes]]\n",
        1,
    );
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["rec"], "UP").await;
    let (addr, tls) = (ingress.https, pki.client_tls());
    let send = |wire: String| {
        let tls = Arc::clone(&tls);
        async move { https_raw(addr, tls, wire.as_bytes()).await }
    };
    let status = |raw: Vec<u8>| ingress_tests::parse_response(&raw).0;

    // Absolute form with dot segments: routed and forwarded as /exotel/x for the URI's host.
    let wire = upgrade_request("http://localhost/ws/%2e%2e/exotel/x")
        .replace("Host: localhost\r\n", "Host: other.example\r\n");
    assert_eq!(status(send(wire).await), 403, "the fleet's answer");
    let got = tokio::time::timeout(Duration::from_secs(5), fleet.seen.recv())
        .await
        .expect("the upgrade reached the fleet")
        .expect("recorder running");
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("GET /exotel/x HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains("Host: localhost\r\n") && !head.contains("other.example"),
        "{head}"
    );

    // Ambiguous Host, and a path that leaves its route: refused by the ingress.
    let twice = upgrade_request("/ws/x").replace("Host: localhost\r\n", "Host: localhost\r\nHost: evil\r\n");
    assert_eq!(status(send(twice).await), 400);
    let none = upgrade_request("/ws/x").replace("Host: localhost\r\n", "");
    assert_eq!(status(send(none).await), 400);
    let above = upgrade_request("/ws/../../x");
    assert_eq!(status(send(above).await), 400);
    let escape = "GET /api/../internal HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_owned();
    assert_eq!(
        status(send(escape).await),
        404,
        "/api/../internal is /internal: no route"
    );

    // A later keep-alive request in absolute form reaches the fleet in origin form.
    let later = "GET /api/a HTTP/1.1\r\nHost: localhost\r\n\r\nGET http://localhost/api/./b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let raw = send(later.to_owned()).await;
    assert!(raw.starts_with(b"HTTP/1.1 403"), "{}", String::from_utf8_lossy(&raw));
    let mut seen = String::new();
    while !seen.contains("/api/b") {
        let got = tokio::time::timeout(Duration::from_secs(5), fleet.seen.recv())
            .await
            .unwrap_or_else(|_| panic!("the later request never reached the fleet: {seen}"))
            .expect("recorder running");
        seen.push_str(&String::from_utf8_lossy(&got));
    }
    assert!(
        seen.contains("GET /api/b HTTP/1.1\r\n") && !seen.contains("http://"),
        "{seen}"
    );
}

/// A fleet's web tier played by hand over TLS: `/api/slow` streams a first
/// chunk and the rest only when `release` is notified; `/api/fast` answers
/// at once; `/api/flaky` answers on a new connection but drops a reused one
/// without answering (as a server closing an idle connection does when a
/// request arrives at that moment). Every connection is kept alive.
struct WebTier {
    addr: SocketAddr,
    release: Arc<tokio::sync::Notify>,
}

impl WebTier {
    async fn start(pki: &Pki) -> Self {
        let acceptor = pki.fleet_acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let release = Arc::new(tokio::sync::Notify::new());
        let notified = Arc::clone(&release);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, release) = (acceptor.clone(), Arc::clone(&notified));
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut answered = 0;
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&got[..end]).into_owned();
                        got.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                        let wrote = match path.as_str() {
                            "/health/fleet" => {
                                let body = r#"{"fleet_available":16}"#;
                                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                                tls.write_all(answer.as_bytes()).await
                            }
                            "/api/slow" => {
                                let start = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nstart\r\n";
                                let _ = tls.write_all(start).await;
                                let _ = tls.flush().await;
                                release.notified().await;
                                tls.write_all(b"3\r\nend\r\n0\r\n\r\n").await
                            }
                            "/api/flaky" if answered > 0 => return,
                            _ => tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await,
                        };
                        if wrote.is_err() || tls.flush().await.is_err() {
                            return;
                        }
                        answered += 1;
                    }
                });
            }
        });
        Self { addr, release }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_never_stalls_other_requests_and_a_dropped_reused_connection_is_retried() {
    let dir = TestDir::new("web-tier");
    let pki = Pki::new(&dir);
    let web = WebTier::start(&pki).await;
    let cfg = config(
        &dir,
        &pki,
        &[("web", web.addr)],
        "",
        "[timeouts]\nkeepalive_idle = \"2s\"\n",
    )
    .replacen(
        "[[routes]]\n",
        "[[routes]]\npath = \"/api/*\"\npool = \"fleets\"\nkind = \"http\"\n\n[[routes]]\n",
        1,
    );
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["web"], "UP").await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes();

    // A fast answer leaves one pooled connection; a slow download then takes it.
    let mut downloader = ingress_tests::tls_connect(ingress.https, pki.client_tls()).await;
    downloader.write_all(&get("/api/fast")).await.unwrap();
    assert_eq!(ingress_tests::read_answer(&mut downloader).await.0, 200);
    downloader.write_all(&get("/api/slow")).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(5).any(|w| w == b"start") {
        let n = downloader.read(&mut buf).await.unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    // While that body is still streaming, another client is answered.
    let mut other = ingress_tests::tls_connect(ingress.https, pki.client_tls()).await;
    other.write_all(&get("/api/fast")).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), ingress_tests::read_answer(&mut other)).await;
    assert!(
        matches!(answered, Ok((200, _))),
        "a request waited behind another's unfinished body: {answered:?}"
    );
    web.release.notify_one();
    while !got.windows(5).any(|w| w == b"0\r\n\r\n") {
        let n = downloader.read(&mut buf).await.unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("end"));

    // Every pooled connection has answered before: the web tier drops the
    // one this request is sent on, and it is sent again on a new one.
    other.write_all(&get("/api/flaky")).await.unwrap();
    let (status, raw) = ingress_tests::read_answer(&mut other).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));

    // A body that stops for longer than keepalive_idle: the request is cut,
    // its slot and the fleet connection freed.
    downloader.write_all(&get("/api/slow")).await.unwrap();
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(10), downloader.read_to_end(&mut rest)).await;
    assert!(cut.is_ok(), "a stalled request held its connection");
    assert!(!String::from_utf8_lossy(&rest).contains("end"));
    ingress
        .wait_metric(
            "ingress_keepalive_closed_total",
            &[("reason", "stalled")],
            Duration::from_secs(5),
            |v| v == 1.0,
        )
        .await;
}

/// `limits.local_reserve`: with every `max_connections` slot taken, a
/// loopback peer (keepalived's check of the health path) still gets one of
/// its own and is answered; past the reserve it is closed like the rest.
/// (The peers here are all loopback: that remote ones never use the
/// reserve is the `is_loopback` test in `DataCtx::connection_slot_for`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_front_still_answers_the_local_health_check_from_its_reserve() {
    use ingress_tests::{Fleet, metric, parse_response};
    let dir = TestDir::new("reserve");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let cfg = config(
        &dir,
        &pki,
        &[("fleet1", f1.https)],
        "",
        "[limits]\nmax_connections = 2\nlocal_reserve = 1\n",
    );
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1"], "UP").await;
    let accepted = |m: &str| metric(m, "ingress_connections_accepted_total", &[("listener", "https")]).unwrap_or(0.0);
    let before = accepted(&ingress.metrics().await);
    let held: Vec<_> =
        futures_util::future::join_all((0..2).map(|_| tokio::net::TcpStream::connect(ingress.https))).await;
    let https = [("listener", "https")];
    let limit = std::time::Duration::from_secs(5);
    ingress
        .wait_metric("ingress_connections_accepted_total", &https, limit, |v| {
            v >= before + 2.0
        })
        .await;
    // The reserve's one slot, held by this check while it is answered.
    let health = b"GET /haproxy-health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    assert_eq!(
        parse_response(&https_raw(ingress.https, pki.client_tls(), health).await).0,
        200
    );
    // The reserve taken by a held connection (counted, and kept open)...
    let mut third = tokio::net::TcpStream::connect(ingress.https).await.unwrap();
    ingress
        .wait_metric("ingress_connections_accepted_total", &https, limit, |v| {
            v >= before + 4.0
        })
        .await;
    let mut b = [0u8; 1];
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), third.read(&mut b))
            .await
            .is_err(),
        "the reserve's connection stays open"
    );
    // ...and past it, the next one is closed at once.
    let mut fourth = tokio::net::TcpStream::connect(ingress.https).await.unwrap();
    let r = tokio::time::timeout(std::time::Duration::from_millis(900), fourth.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "past the reserve: closed at once: {r:?}"
    );
    drop(held);
}
