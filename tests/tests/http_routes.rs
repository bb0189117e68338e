//! Routes of kind `http`: ordinary requests over keep-alive connections,
//! spread by the pool's balance mode, sticky by cookie, routed by Host, with
//! streamed bodies and request-smuggling attempts refused.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use ingress_tests::{
    Fleet, Ingress, Pki, TestDir, config, echo, https_raw, parse_response, read_answer, set_cookie, tls_connect,
    upgrade_head,
};

/// A WebSocket over an upgraded keep-alive connection.
type Upgraded = tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// One keep-alive HTTPS connection to the ingress.
struct Conn(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Conn {
    async fn open(ingress: &Ingress, tls: Arc<rustls::ClientConfig>) -> Self {
        let tcp = tokio::net::TcpStream::connect(ingress.https).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let s = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn.with_upgrades());
        Self(sender)
    }

    /// A WebSocket upgrade on this connection: the response, and the
    /// WebSocket after a 101.
    async fn upgrade(&mut self, path: &str, cookie: Option<&str>) -> (http::response::Parts, Option<Upgraded>) {
        let mut req = http::Request::builder()
            .uri(path)
            .header("host", "localhost")
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        self.0.ready().await.expect("connection ready");
        let resp = self
            .0
            .send_request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .expect("response");
        let (parts, body) = resp.into_parts();
        if parts.status != 101 {
            let _ = body.collect().await;
            return (parts, None);
        }
        let upgraded = hyper::upgrade::on(http::Response::from_parts(parts.clone(), body))
            .await
            .expect("upgraded");
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        (parts, Some(ws))
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        host: &str,
        cookie: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, http::HeaderMap, serde_json::Value) {
        let mut req = http::Request::builder().method(method).uri(path).header("host", host);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        self.0.ready().await.expect("connection ready");
        let resp = self
            .0
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .expect("response");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            headers,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }
}

async fn setup(dir: &TestDir, pki: &Pki, pool_extra: &str, host: Option<&str>, workers: u32) -> (Vec<Fleet>, Ingress) {
    setup_with(dir, pki, pool_extra, host, workers, "").await
}

/// [`setup`] with more tables (`extra`) in the config.
async fn setup_with(
    dir: &TestDir,
    pki: &Pki,
    pool_extra: &str,
    host: Option<&str>,
    workers: u32,
    extra: &str,
) -> (Vec<Fleet>, Ingress) {
    let fleets: Vec<Fleet> = (1..=3)
        .map(|i| Fleet::start(dir, pki, &format!("fleet{i}"), workers))
        .collect();
    let servers: Vec<(String, std::net::SocketAddr)> = fleets
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("api{}", i + 1), f.https))
        .collect();
    let refs: Vec<(&str, std::net::SocketAddr)> = servers.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let host_line = host.map(|h| format!("host = \"{h}\"\n")).unwrap_or_default();
    let cfg = config(dir, pki, &refs, pool_extra, extra).replacen(
        "[[routes]]\n",
        &format!("[[routes]]\npath = \"/api/*\"\npool = \"fleets\"\nkind = \"http\"\n{host_line}\n[[routes]]\n"),
        1,
    );
    let ingress = Ingress::start(dir, &cfg);
    ingress.wait_state(&["api1", "api2", "api3"], "UP").await;
    (fleets, ingress)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundrobin_spreads_300_keepalive_requests_100_100_100() {
    let dir = TestDir::new("httprr");
    let pki = Pki::new(&dir);
    // Ten call workers per fleet, 100 requests each: plain requests are not
    // calls and do not use up what the fleet reports between two checks.
    let (fleets, ingress) = setup(&dir, &pki, "balance = \"roundrobin\"", None, 10).await;
    let mut conn = Conn::open(&ingress, pki.client_tls()).await;
    for i in 0..300 {
        let (status, _, v) = conn
            .send("GET", &format!("/api/item/{i}?x=1"), "localhost", None, Vec::new())
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["xff"], "127.0.0.1", "X-Forwarded-For set: {v}");
    }
    let mut counts = Vec::new();
    for f in &fleets {
        counts.push(f.state().await["http_requests"].as_u64().unwrap());
    }
    assert_eq!(counts, vec![100, 100, 100]);
    // A streamed 1 MB body arrives whole.
    let (status, _, v) = conn
        .send("POST", "/api/upload", "localhost", None, vec![7u8; 1 << 20])
        .await;
    assert_eq!((status, v["body_len"].as_u64()), (200, Some(1 << 20)));
}

fn pin(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_keep_their_server_and_move_when_it_stops() {
    let dir = TestDir::new("httpsticky");
    let pki = Pki::new(&dir);
    let (mut fleets, ingress) = setup(&dir, &pki, "balance = \"cookie\"", None, 100).await;
    let tls = pki.client_tls();
    let mut owners = BTreeMap::new();
    let mut jars = Vec::new();
    for c in 0..50 {
        let mut conn = Conn::open(&ingress, Arc::clone(&tls)).await;
        let (status, headers, v) = conn
            .send("GET", "/api/login", "localhost", Some("theme=dark"), Vec::new())
            .await;
        assert_eq!(status, 200);
        let jar = pin(&headers).expect("pinned");
        let server = v["server"].as_str().unwrap().to_owned();
        assert_eq!(
            v["cookie"], "theme=dark",
            "the ingress's cookie never reaches the server: {v}"
        );
        for r in 0..9 {
            let (status, headers, v) = conn
                .send(
                    "GET",
                    &format!("/api/page/{r}"),
                    "localhost",
                    Some(&format!("theme=dark; {jar}")),
                    Vec::new(),
                )
                .await;
            assert_eq!(status, 200);
            assert_eq!(pin(&headers), None);
            assert_eq!(v["server"].as_str().unwrap(), server, "client {c} moved");
        }
        // The client's WebSocket upgrade on the same route lands where it logged in.
        let head = upgrade_head(&ingress, Arc::clone(&tls), &format!("/api/ws/{c}"), Some(&jar)).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert_eq!(set_cookie(&head), None, "client {c}'s upgrade kept its server");
        owners.insert(c, server);
        jars.push(jar);
    }
    let used: std::collections::BTreeSet<_> = owners.values().collect();
    assert!(used.len() >= 2, "new clients spread: {used:?}");
    let gone = owners[&0].clone();
    let idx = fleets.iter().position(|f| f.https.to_string() == gone).unwrap();
    fleets[idx].proc.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = fleets[idx].proc.child.wait();
    let mut conn = Conn::open(&ingress, Arc::clone(&tls)).await;
    let mut moved = None;
    // The first request may meet the dead server once (then it is out of rotation); none errors after.
    for _ in 0..2 {
        let (status, headers, v) = conn
            .send("GET", "/api/again", "localhost", Some(&jars[0]), Vec::new())
            .await;
        if status == 200 {
            moved = Some((pin(&headers), v["server"].as_str().unwrap().to_owned()));
            break;
        }
    }
    let (new_pin, server) = moved.expect("the client lands elsewhere");
    assert_ne!(server, gone);
    assert!(new_pin.is_some_and(|p| p != jars[0]), "with a new cookie");
    fleets.remove(idx);
}

/// An upgrade after other requests on the same keep-alive connection is a
/// call like a first-request one: sticky to the client's server, echoed, and
/// refused with 503 (the connection staying usable) when no fleet has a worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_later_on_a_keepalive_connection_is_a_call() {
    let dir = TestDir::new("httplater");
    let pki = Pki::new(&dir);
    let (fleets, ingress) = setup(&dir, &pki, "balance = \"cookie\"", None, 4).await;
    let mut conn = Conn::open(&ingress, pki.client_tls()).await;
    let (status, headers, v) = conn.send("GET", "/api/login", "localhost", None, Vec::new()).await;
    assert_eq!(status, 200);
    let jar = pin(&headers).expect("pinned");
    let server = v["server"].as_str().unwrap().to_owned();
    for i in 0..3 {
        let (status, _, v) = conn
            .send("GET", &format!("/api/page/{i}"), "localhost", Some(&jar), Vec::new())
            .await;
        assert_eq!((status, v["server"].as_str()), (200, Some(server.as_str())));
    }
    let (parts, ws) = conn.upgrade("/api/ws/later", Some(&jar)).await;
    assert_eq!(parts.status, 101, "{parts:?}");
    assert!(parts.headers.get("set-cookie").is_none(), "kept its server: {parts:?}");
    let mut ws = ws.unwrap();
    echo(&mut ws, "over the same connection").await.unwrap();
    let owner = fleets.iter().find(|f| f.https.to_string() == server).unwrap();
    assert_eq!(owner.state().await["calls"], 1, "the call is on the client's server");
    let open = |m: &str| ingress_tests::metric(m, "ingress_connections_open", &[]);
    assert_eq!(
        open(&ingress.metrics().await),
        Some(1.0),
        "the upgraded connection still holds its max_connections slot"
    );
    drop(ws);
    drop(conn);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while open(&ingress.metrics().await) != Some(0.0) {
        assert!(std::time::Instant::now() < deadline, "the slot was not given back");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Every worker busy: the upgrade is refused, the connection goes on.
    for f in &fleets {
        f.control("/occupy?n=4").await;
    }
    ingress.wait_state(&["api1", "api2", "api3"], "FULL").await;
    let mut conn = Conn::open(&ingress, pki.client_tls()).await;
    let (status, _, _) = conn.send("GET", "/api/before", "localhost", None, Vec::new()).await;
    assert_eq!(status, 200, "a FULL fleet still answers its API");
    let (parts, ws) = conn.upgrade("/api/ws/refused", None).await;
    assert_eq!(parts.status, 503, "{parts:?}");
    assert!(parts.headers.contains_key("retry-after") && ws.is_none());
    let (status, _, _) = conn.send("GET", "/api/after", "localhost", None, Vec::new()).await;
    assert_eq!(status, 200, "the connection is still usable");
}

/// Slowstart with real requests: a server back UP after being DOWN gets a
/// share of 1 000 requests spread over its 4 s window that grows from
/// quarter to quarter (the ramp is linear from 5 % of a full share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowstart_ramps_a_recovered_servers_share_of_1000_requests() {
    let dir = TestDir::new("httpslow");
    let pki = Pki::new(&dir);
    let (fleets, ingress) = setup(&dir, &pki, "balance = \"roundrobin\"\nslowstart = \"4s\"", None, 100).await;
    fleets[0].control("/health?mode=500").await;
    ingress.wait_state(&["api1"], "DOWN").await;
    fleets[0].control("/health?mode=normal").await;
    ingress.wait_state(&["api1"], "UP").await;
    let recovered = std::time::Instant::now();
    let mut conn = Conn::open(&ingress, pki.client_tls()).await;
    let mut share = Vec::new();
    for quarter in 1..=4u32 {
        let mut to_api1 = 0;
        for i in 0..250 {
            let (status, _, v) = conn
                .send(
                    "GET",
                    &format!("/api/ramp/{quarter}/{i}"),
                    "localhost",
                    None,
                    Vec::new(),
                )
                .await;
            assert_eq!(status, 200);
            to_api1 += u32::from(v["server"].as_str() == Some(fleets[0].https.to_string().as_str()));
        }
        share.push(f64::from(to_api1) / 250.0);
        // Pace the load over the window: each quarter of requests fills one second.
        tokio::time::sleep_until((recovered + std::time::Duration::from_secs(quarter.into())).into()).await;
    }
    eprintln!("api1's share per quarter of the slowstart window: {share:?}");
    assert!(
        share[0] < share[3] * 0.6 && share[0] < share[1].max(share[2]) && share[3] > 0.2,
        "api1's share per quarter of the window: {share:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_routing_and_smuggling_guards() {
    let dir = TestDir::new("httphost");
    let pki = Pki::new(&dir);
    let (_fleets, ingress) = setup(&dir, &pki, "balance = \"leastconn\"", Some("api.example.com"), 100).await;
    let mut conn = Conn::open(&ingress, pki.client_tls()).await;
    let (status, _, _) = conn
        .send("GET", "/api/x", "api.example.com:443", None, Vec::new())
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = conn.send("GET", "/api/x", "calls.example.com", None, Vec::new()).await;
    assert_eq!(status, 404, "another Host does not match the route");
    for bad in [
        "POST /api/x HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /api/x HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        "POST /api/x HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    ] {
        let (status, body) = parse_response(&https_raw(ingress.https, pki.client_tls(), bad.as_bytes()).await);
        assert_eq!(status, 400, "{bad:?} → {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_connections_are_closed_when_idle_when_a_later_head_stalls_and_431_when_it_grows() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = TestDir::new("httpidle");
    let pki = Pki::new(&dir);
    let extra = "[limits]\nheader_timeout = \"1s\"\n\n[timeouts]\nkeepalive_idle = \"2s\"\n";
    let (_fleets, ingress) = setup_with(&dir, &pki, "", None, 100, extra).await;
    const GET: &[u8] = b"GET /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let bad = |reason: &'static str| {
        let ingress = &ingress;
        async move {
            ingress
                .wait_metric(
                    "ingress_keepalive_closed_total",
                    &[("reason", reason)],
                    Duration::from_secs(10),
                    |v| v >= 1.0,
                )
                .await;
        }
    };
    let closed = |mut s: tokio_rustls::client::TlsStream<tokio::net::TcpStream>| async move {
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        assert!(r.is_ok(), "the connection is still open after 10 s");
        rest
    };

    // One request, then silence: a connection slot is not held forever.
    let mut idle = tls_connect(ingress.https, pki.client_tls()).await;
    idle.write_all(GET).await.unwrap();
    assert_eq!(read_answer(&mut idle).await.0, 200);
    assert_eq!(closed(idle).await, b"", "closed without another word");
    bad("idle").await;

    // A later head begun and never finished: closed after header_timeout.
    let mut stalled = tls_connect(ingress.https, pki.client_tls()).await;
    stalled.write_all(GET).await.unwrap();
    assert_eq!(read_answer(&mut stalled).await.0, 200);
    stalled.write_all(b"GET /api/x HTTP/1.1\r\nHost: loc").await.unwrap();
    closed(stalled).await;
    bad("header_timeout").await;

    // A later head trickled toward 300 KiB: 431 at max_header_bytes.
    let mut big = tls_connect(ingress.https, pki.client_tls()).await;
    big.write_all(GET).await.unwrap();
    assert_eq!(read_answer(&mut big).await.0, 200);
    let (mut rx, mut tx) = tokio::io::split(big);
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(&mut out)).await;
        out
    });
    let _ = tx.write_all(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\n").await;
    let pad = format!("X-Pad: {}\r\n", "a".repeat(4090));
    for _ in 0..75 {
        if reader.is_finished() || tx.write_all(pad.as_bytes()).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answer = reader.await.unwrap();
    assert_eq!(parse_response(&answer).0, 431, "{}", String::from_utf8_lossy(&answer));
}
