//! The data path end to end: routes, capacity-aware picking, 503 when full,
//! retries past a 429 and past dead or hung fleets, TLS
//! versions, certificate replacement under live calls, ACME on :80, limits.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ingress_tests::{
    Fleet, Ingress, Pki, TestDir, client, config, echo, http_raw, https_raw, metric, parse_response, upgrade_request,
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn two_fleets(dir: &TestDir, pki: &Pki, pool_extra: &str, extra: &str) -> (Fleet, Fleet, Ingress) {
    let f1 = Fleet::start(dir, pki, "fleet1", 16);
    let f2 = Fleet::start(dir, pki, "fleet2", 16);
    let ingress = Ingress::start(
        dir,
        &config(
            dir,
            pki,
            &[("fleet1", f1.https), ("fleet2", f2.https)],
            pool_extra,
            extra,
        ),
    );
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    (f1, f2, ingress)
}

/// Two fleets of 16 whose reports come once a second, as the seeds' checks do.
async fn two_fleets_reporting_every_second(dir: &TestDir, pki: &Pki) -> (Fleet, Fleet, Ingress) {
    let f1 = Fleet::start(dir, pki, "fleet1", 16);
    let f2 = Fleet::start(dir, pki, "fleet2", 16);
    let cfg = config(dir, pki, &[("fleet1", f1.https), ("fleet2", f2.https)], "", "")
        .replace("interval = \"200ms\"", "interval = \"1s\"");
    let ingress = Ingress::start(dir, &cfg);
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    (f1, f2, ingress)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_table_and_local_answers() {
    let dir = TestDir::new("routes");
    let pki = Pki::new(&dir);
    let (_f1, _f2, ingress) = two_fleets(&dir, &pki, "", "").await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    for (request, want_status, want_body) in [
        (get("/haproxy-health"), 200, "ok"),
        (get("/ws/bot-1"), 400, "Upgrade"),
        (get("/exotel/bot-1"), 400, "Upgrade"),
        (get("/attach"), 404, "not found"),
        (get("/livekit/dialout"), 404, "not found"),
        (get("/livekit/widget"), 404, "not found"),
        (get("/ws/"), 404, "not found"),
        (get("/"), 404, "not found"),
        (upgrade_request("/attach"), 404, "not found"),
        (
            upgrade_request("/ws/a").replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            400,
            "Sec-WebSocket-Key",
        ),
        (
            upgrade_request("/ws/a").replace("HTTP/1.1", "HTTP/1.0"),
            400,
            "HTTP/1.1",
        ),
        (upgrade_request("/ws/a").replace("GET", "POST"), 400, "GET"),
    ] {
        let (status, body) = parse_response(&https_raw(ingress.https, pki.client_tls(), request.as_bytes()).await);
        assert_eq!(status, want_status, "{request:?} → {body}");
        assert!(body.contains(want_body), "{request:?} → {body}");
    }
    // Both route patterns reach a fleet.
    for path in ["/ws/bot-7", "/exotel/bot-8"] {
        let mut ws = ingress.call(&pki, path).await.unwrap_or_else(|e| panic!("{path}: {e}"));
        echo(&mut ws, path).await.unwrap();
    }
    let m = ingress.metrics().await;
    assert_eq!(
        metric(&m, "ingress_responses_total", &[("status", "404")]),
        Some(6.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_challenges_on_port_80_reach_the_acme_upstream() {
    let dir = TestDir::new("acme");
    let pki = Pki::new(&dir);
    let certbot = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let certbot_addr = certbot.local_addr().unwrap();
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let cfg = config(&dir, &pki, &[("fleet1", f1.https)], "", "").replace(
        "default_cert = \"localhost\"",
        &format!("default_cert = \"localhost\"\nacme_upstream = \"{certbot_addr}\""),
    );
    let ingress = Ingress::start(&dir, &cfg);
    let http = ingress.http.expect("http listener");
    let responder = tokio::spawn(async move {
        let (mut s, _) = certbot.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\ntoken.thumb")
            .await
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let raw = http_raw(
        http,
        b"GET /.well-known/acme-challenge/abc123 HTTP/1.1\r\nHost: calls.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(parse_response(&raw), (200, "token.thumb".to_owned()));
    let seen = responder.await.unwrap();
    assert!(
        seen.starts_with("GET /.well-known/acme-challenge/abc123 HTTP/1.1\r\n"),
        "{seen}"
    );
    assert!(seen.contains("X-Forwarded-Proto: http"), "{seen}");
    let (status, _) = parse_response(&http_raw(http, b"GET /ws/bot HTTP/1.1\r\nHost: x\r\n\r\n").await);
    assert_eq!(status, 404, "everything else on :80 is 404");
    // The prefix is checked on the path as the responder reads it.
    let climb = b"GET /.well-known/acme-challenge/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n";
    let (status, _) = parse_response(&http_raw(http, climb).await);
    assert_eq!(status, 404, "a path out of the challenge directory is not forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_by_capacity_and_the_33rd_gets_503_at_once() {
    let dir = TestDir::new("spread");
    let pki = Pki::new(&dir);
    let (f1, f2, ingress) = two_fleets(&dir, &pki, "", "").await;
    let mut calls = Vec::new();
    for i in 0..20 {
        calls.push(ingress.call(&pki, &format!("/ws/bot-{i}")).await.expect("call"));
    }
    assert_eq!(
        (f1.state().await["calls"].as_u64(), f2.state().await["calls"].as_u64()),
        (Some(10), Some(10))
    );
    for i in 20..32 {
        calls.push(
            ingress
                .call(&pki, &format!("/ws/bot-{i}"))
                .await
                .unwrap_or_else(|e| panic!("call {i}: {e}")),
        );
    }
    let started = Instant::now();
    let raw = https_raw(
        ingress.https,
        pki.client_tls(),
        upgrade_request("/ws/bot-33").as_bytes(),
    )
    .await;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains("Retry-After: 1\r\n"),
        "Retry-After is the check interval rounded up: {text}"
    );
    eprintln!("33rd call answered 503 in {took:?} (TLS handshake included)");
    assert!(
        took < Duration::from_secs(1),
        "503 must not wait for anything: {took:?}"
    );
    for ws in &mut calls {
        echo(ws, "still here").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_filled_directly_hands_no_429_to_carriers() {
    // The seeds' S4: fleet 1 fills up behind the ingress's back, then 8 calls
    // arrive 100 ms apart, faster than the 1 s health check notices.
    let dir = TestDir::new("s4");
    let pki = Pki::new(&dir);
    let (f1, f2, ingress) = two_fleets_reporting_every_second(&dir, &pki).await;
    f1.control("/occupy?n=16").await;
    let mut held = Vec::new();
    let mut statuses = Vec::new();
    for i in 0..8 {
        match ingress.call(&pki, &format!("/ws/s4-{i}")).await {
            Ok(ws) => {
                statuses.push(101);
                held.push(ws);
            }
            Err(e) => statuses.push(e.status().unwrap_or(0)),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        statuses,
        vec![101; 8],
        "no carrier may see a 429 while fleet 2 has room"
    );
    assert_eq!(f2.state().await["calls"], 8);
    assert_eq!(f1.state().await["calls"], 0);
    let m = ingress.metrics().await;
    assert_eq!(
        metric(
            &m,
            "ingress_pool_passed_answers_total",
            &[("pool", "fleets"), ("status", "429")]
        ),
        Some(0.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_short_calls_never_makes_fleets_look_full() {
    // A reconnect storm: 20 carriers each open and close 5 calls in a row,
    // faster than the 1 s health check reports. Calls that ended hold no
    // worker, so every one must land (HAProxy answers all 100 with 101).
    use futures_util::StreamExt as _;
    let dir = TestDir::new("short-calls");
    let pki = Pki::new(&dir);
    let (f1, f2, ingress) = two_fleets_reporting_every_second(&dir, &pki).await;
    let (https, tls) = (ingress.https, pki.client_tls());
    let carriers: Vec<_> = (0..20)
        .map(|c| {
            let tls = Arc::clone(&tls);
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..5 {
                    match client::connect(https, "localhost", &format!("/ws/burst-{c}-{i}"), Arc::clone(&tls)).await {
                        Ok(mut ws) => {
                            statuses.push(101);
                            let _ = ws.close(None).await;
                            while let Some(Ok(_)) = ws.next().await {}
                        }
                        Err(e) => statuses.push(e.status().unwrap_or(0)),
                    }
                }
                statuses
            })
        })
        .collect();
    let started = Instant::now();
    let mut statuses = Vec::new();
    for c in carriers {
        statuses.extend(c.await.expect("carrier task"));
    }
    eprintln!("100 short calls in {:?}", started.elapsed());
    let refused: Vec<_> = statuses.iter().filter(|s| **s != 101).collect();
    assert!(refused.is_empty(), "{} of 100 refused: {refused:?}", refused.len());
    for f in [&f1, &f2] {
        assert_eq!(
            f.state().await["answered_429"],
            0,
            "a fleet was sent more calls than it had workers"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_fleet_ends_its_calls_and_new_calls_never_fail() {
    let dir = TestDir::new("kill");
    let pki = Pki::new(&dir);
    let (mut f1, f2, ingress) = two_fleets(&dir, &pki, "", "").await;
    let mut calls = Vec::new();
    for i in 0..4 {
        calls.push(ingress.call(&pki, &format!("/ws/k-{i}")).await.unwrap());
    }
    assert_eq!(f1.state().await["calls"], 2);
    f1.proc.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = f1.proc.child.wait();
    let mut ended = 0;
    for ws in &mut calls {
        if echo(ws, "ping").await.is_err() {
            ended += 1;
        }
    }
    assert_eq!(ended, 2, "the calls on the killed fleet end, the others go on");
    let mut failures = 0;
    for i in 0..10 {
        match ingress.call(&pki, &format!("/ws/after-{i}")).await {
            Ok(mut ws) => echo(&mut ws, "ok").await.unwrap(),
            Err(e) => {
                eprintln!("call {i} failed: {e}");
                failures += 1;
            }
        }
    }
    assert_eq!(failures, 0);
    assert_eq!(f2.state().await["calls_total"], 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_fleet_costs_at_most_one_call_one_connect_timeout() {
    let dir = TestDir::new("hung");
    let pki = Pki::new(&dir);
    let (f1, _f2, ingress) = two_fleets(&dir, &pki, "", "[timeouts]\nconnect = \"2s\"\n").await;
    f1.proc.signal(nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mut slow = 0;
    for i in 0..6 {
        let started = Instant::now();
        let mut ws = ingress
            .call(&pki, &format!("/ws/h-{i}"))
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        echo(&mut ws, "ok").await.unwrap();
        if started.elapsed() >= Duration::from_millis(1900) {
            slow += 1;
        }
    }
    f1.proc.signal(nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(slow <= 1, "{slow} calls paid a connect timeout");
    let s = ingress.server("fleet1").await;
    assert_ne!(s["state"], "UP", "{s}");
}

/// Both fleets answer to the same name (127.0.0.1) but issue their own TLS
/// sessions: each is resumed against the fleet that issued it, so after the
/// first handshake with a fleet (a call's or a check's) the rest resume, in
/// the version the pool offers (`versions = ["1.2"]`: from a ticket, with no
/// key exchange).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_tls_sessions_resume_per_fleet() {
    for (versions, want) in [(None, "1.3"), (Some(r#"["1.2"]"#), "1.2")] {
        let dir = TestDir::new("resume");
        let pki = Pki::new(&dir);
        let (f1, f2) = (
            Fleet::start(&dir, &pki, "fleet1", 16),
            Fleet::start(&dir, &pki, "fleet2", 16),
        );
        let mut cfg = config(&dir, &pki, &[("fleet1", f1.https), ("fleet2", f2.https)], "", "");
        if let Some(v) = versions {
            assert!(cfg.contains("[pools.fleets.tls]\n"), "{cfg}");
            cfg = cfg.replace("[pools.fleets.tls]\n", &format!("[pools.fleets.tls]\nversions = {v}\n"));
        }
        let ingress = Ingress::start(&dir, &cfg);
        ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
        for i in 0..20 {
            let mut ws = ingress.call(&pki, &format!("/ws/resume-{i}")).await.unwrap();
            echo(&mut ws, "hi").await.unwrap();
        }
        let m = ingress.metrics().await;
        for fleet in ["fleet1", "fleet2"] {
            let count = |kind, version| {
                metric(
                    &m,
                    "ingress_server_tls_handshakes_total",
                    &[("server", fleet), ("kind", kind), ("version", version)],
                )
                .unwrap_or(0.0)
            };
            let (full, resumed) = (count("full", want), count("resumed", want));
            let other = if want == "1.3" { "1.2" } else { "1.3" };
            // Full: the first call's or check's, and one more when a check and a call race to be first.
            assert!(
                full <= 2.0 && resumed >= 8.0,
                "{fleet} on TLS {want}: {full} full and {resumed} resumed handshakes"
            );
            assert_eq!(
                count("full", other) + count("resumed", other),
                0.0,
                "{fleet}: nothing on TLS {other}"
            );
        }
    }
}

fn versioned_client(pki: &Pki, version: &'static rustls::SupportedProtocolVersion) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject as _;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(pki.ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A minimal ClientHello offering only `version` (0x0301 = TLS 1.0, 0x0302 = TLS 1.1).
fn legacy_client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    // Suites rustls has (so only the version can be the reason to refuse).
    body.extend_from_slice(&[0, 6, 0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x2f]);
    body.extend_from_slice(&[1, 0]); // null compression
    let mut hs = vec![1, 0, 0, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, 0, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_floor_is_1_2() {
    let dir = TestDir::new("tls");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let ingress = Ingress::start(&dir, &config(&dir, &pki, &[("fleet1", f1.https)], "", ""));
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let tcp = tokio::net::TcpStream::connect(ingress.https).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let s = tokio_rustls::TlsConnector::from(versioned_client(&pki, version))
            .connect(name, tcp)
            .await
            .expect("handshake");
        assert_eq!(s.get_ref().1.protocol_version(), Some(want));
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let suite = s.get_ref().1.negotiated_cipher_suite().map(|c| c.suite());
        assert!(
            matches!(
                suite,
                Some(
                    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                        | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                )
            ),
            "the server prefers AES-128-GCM over the client's AES-256 first: {suite:?}"
        );
    }
    for version in [[3, 1], [3, 2]] {
        let raw = http_raw(ingress.https, &legacy_client_hello(version)).await;
        assert_eq!(
            raw.first(),
            Some(&0x15),
            "TLS {version:?} must get an alert, got {raw:?}"
        );
        assert_eq!(raw.get(5), Some(&2), "a fatal alert");
        assert!(
            matches!(raw.get(6), Some(&40) | Some(&70)),
            "handshake_failure or protocol_version: {raw:?}"
        );
    }
    // The same real client, only the version differs: OpenSSL (security level 0 so it may offer 1.0/1.1).
    let openssl = |flag: &str| {
        let out = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &ingress.https.to_string(),
                "-servername",
                "localhost",
                flag,
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl (installed by cargo xtask setup)");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    for flag in ["-tls1", "-tls1_1"] {
        let out = openssl(flag);
        assert!(
            out.contains("alert") || out.contains("no protocols"),
            "{flag} must be refused: {out}"
        );
        assert!(
            !out.contains("BEGIN CERTIFICATE") && !out.contains("Server certificate"),
            "{flag} got a handshake: {out}"
        );
    }
    let out = openssl("-tls1_2");
    assert!(
        out.contains("Server certificate") && out.contains("TLSv1.2"),
        "TLS 1.2 accepted: {out}"
    );

    // Raised to 1.3, a 1.2-only client is refused.
    let dir13 = TestDir::new("tls13");
    let cfg = config(&dir13, &pki, &[("fleet1", f1.https)], "", "").replace(
        "default_cert = \"localhost\"",
        "default_cert = \"localhost\"\ntls_min_version = \"1.3\"",
    );
    let ingress13 = Ingress::start(&dir13, &cfg);
    let tcp = tokio::net::TcpStream::connect(ingress13.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let r = tokio_rustls::TlsConnector::from(versioned_client(&pki, &rustls::version::TLS12))
        .connect(name, tcp)
        .await;
    assert!(r.is_err(), "TLS 1.2 must be refused with tls_min_version = 1.3");
    let m = ingress.metrics().await;
    assert!(
        ingress_tests::metric_sum(&m, "ingress_tls_handshake_errors_total", &[]) >= 2.0,
        "{m}"
    );
}

async fn peer_cert(ingress: &Ingress, pki: &Pki) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(ingress.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let s = tokio_rustls::TlsConnector::from(pki.client_tls())
        .connect(name, tcp)
        .await
        .expect("handshake");
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_replaced_under_20_live_calls() {
    let dir = TestDir::new("certswap");
    let pki = Pki::new(&dir);
    let (_f1, _f2, ingress) = two_fleets(&dir, &pki, "", "").await;
    let mut calls = Vec::new();
    for i in 0..20 {
        calls.push(ingress.call(&pki, &format!("/ws/c-{i}")).await.unwrap());
    }
    let old = peer_cert(&ingress, &pki).await;
    // A broken file first: refused, the old certificate keeps serving.
    std::fs::write(
        pki.certs_dir.join("broken.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    // Then the real renewal: written aside, renamed into place (what a deploy hook does).
    let renewed = pki.ca.issue(&["localhost", "127.0.0.1"]).unwrap();
    let tmp = dir.path("renewed.pem.tmp");
    std::fs::write(&tmp, renewed.bundle()).unwrap();
    std::fs::rename(&tmp, pki.certs_dir.join("localhost.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = peer_cert(&ingress, &pki).await;
        if now != old {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, ws) in calls.iter_mut().enumerate() {
        echo(ws, "after renewal")
            .await
            .unwrap_or_else(|e| panic!("call {i} dropped: {e}"));
    }
    let m = ingress.metrics().await;
    assert!(
        metric(&m, "ingress_cert_errors_total", &[]).unwrap_or(0.0) >= 1.0,
        "the broken bundle is counted: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_with_proper_statuses() {
    let dir = TestDir::new("limits");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let cfg = config(
        &dir,
        &pki,
        &[("fleet1", f1.https)],
        "",
        "[limits]\nmax_header_bytes = 1024\nmax_headers = 10\nheader_timeout = \"1s\"\nmax_connections = 3\n",
    );
    let ingress = Ingress::start(&dir, &cfg);
    let big = format!(
        "GET /ws/a HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    assert_eq!(
        parse_response(&https_raw(ingress.https, pki.client_tls(), big.as_bytes()).await).0,
        431
    );
    let many: String = (0..20).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET /ws/a HTTP/1.1\r\nHost: localhost\r\n{many}\r\n");
    assert_eq!(
        parse_response(&https_raw(ingress.https, pki.client_tls(), many.as_bytes()).await).0,
        431
    );
    // Slowloris: half a head, then nothing → 408 at the header timeout.
    assert_eq!(
        parse_response(&https_raw(ingress.https, pki.client_tls(), b"GET /ws/a HTTP/1.1\r\nHost: loc").await).0,
        408
    );
    // Connected but silent: closed without an answer.
    let mut silent = tokio::net::TcpStream::connect(ingress.https).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf))
        .await
        .expect("closed by the header timeout");
    assert_eq!(n.unwrap_or(0), 0);
    // max_connections = 3: the fourth is closed at once.
    let accepted = |m: &str| metric(m, "ingress_connections_accepted_total", &[("listener", "https")]).unwrap_or(0.0);
    let before = accepted(&ingress.metrics().await);
    let held: Vec<_> =
        futures_util::future::join_all((0..3).map(|_| tokio::net::TcpStream::connect(ingress.https))).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while accepted(&ingress.metrics().await) < before + 3.0 {
        assert!(Instant::now() < deadline, "the three connections were not accepted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut fourth = tokio::net::TcpStream::connect(ingress.https).await.unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_millis(900), fourth.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "the fourth connection must be closed at once: {r:?}"
    );
    drop(held);
    let m = ingress.metrics().await;
    assert_eq!(
        metric(
            &m,
            "ingress_connections_refused_total",
            &[("reason", "max_connections")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "ingress_bad_requests_total", &[("reason", "header_timeout")]),
        Some(1.0),
        "{m}"
    );
}
