//! Fault injection and hostile clients: fleets that reset, send junk or stall,
//! health checks slow for one probe or two, certificates and servers files
//! broken under a running daemon, a SIGKILL and restart under live calls, TLS
//! garbage, vanishing carriers, unknown SNI, 5 000 connections at once, and
//! the memory that 800 hostile clients can make the daemon hold.

use std::time::{Duration, Instant};

use ingress_tests::{Fleet, Ingress, Pki, TestDir, config, echo, http_raw, metric, metric_sum};

async fn two(dir: &TestDir, pki: &Pki, extra: &str) -> (Fleet, Fleet, Ingress) {
    let f1 = Fleet::start(dir, pki, "fleet1", 16);
    let f2 = Fleet::start(dir, pki, "fleet2", 16);
    let ingress = Ingress::start(
        dir,
        &config(dir, pki, &[("fleet1", f1.https), ("fleet2", f2.https)], "", extra),
    );
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    (f1, f2, ingress)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_before_the_101_are_retried_on_another_fleet() {
    let dir = TestDir::new("upfaults");
    let pki = Pki::new(&dir);
    let (f1, f2, ingress) = two(&dir, &pki, "").await;
    for mode in ["reset", "malformed", "partial"] {
        f1.control(&format!("/upgrade?mode={mode}")).await;
        for i in 0..4 {
            let mut ws = ingress
                .call(&pki, &format!("/ws/{mode}-{i}"))
                .await
                .unwrap_or_else(|e| panic!("{mode} call {i}: {e}"));
            echo(&mut ws, mode).await.unwrap();
        }
        f1.control("/upgrade?mode=normal").await;
    }
    assert_eq!(
        f2.state().await["calls_total"],
        12,
        "every call ended on the healthy fleet"
    );
    let m = ingress.metrics().await;
    assert!(
        metric(&m, "ingress_pool_retries_total", &[("pool", "fleets")]).unwrap() >= 6.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_stalling_after_the_101_hits_the_idle_timeout() {
    let dir = TestDir::new("stall");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let ingress = Ingress::start(
        &dir,
        &config(
            &dir,
            &pki,
            &[("fleet1", f1.https)],
            "",
            "[timeouts]\ntunnel_idle = \"1s\"\n",
        ),
    );
    ingress.wait_state(&["fleet1"], "UP").await;
    f1.control("/upgrade?mode=stall").await;
    let mut ws = ingress.call(&pki, "/ws/stall").await.expect("the 101 arrives");
    let started = Instant::now();
    assert!(echo(&mut ws, "anyone?").await.is_err(), "no echo from a stalled fleet");
    use futures_util::StreamExt as _;
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the ingress closes the idle tunnel");
    assert!(
        matches!(
            end,
            None | Some(Err(_)) | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
        ),
        "{end:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    let m = ingress.metrics().await;
    assert_eq!(
        metric(&m, "ingress_tunnels_closed_total", &[("reason", "idle_timeout")]),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_probe_is_smoothed_two_eject() {
    let dir = TestDir::new("slowprobe");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let f2 = Fleet::start(&dir, &pki, "fleet2", 16);
    // A generous timeout, so only the injected slowness can fail a probe on a loaded machine.
    let cfg = config(&dir, &pki, &[("fleet1", f1.https), ("fleet2", f2.https)], "", "")
        .replace("timeout = \"500ms\"", "timeout = \"1500ms\"");
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    for (count, want_down) in [(1, false), (2, true)] {
        let start = f1.state().await["health_checks"].as_u64().unwrap();
        f1.control(&format!("/health?mode=slow&delay_ms=2500&count={count}"))
            .await;
        let mut saw_down = false;
        // Watch until three more probes were answered.
        let deadline = Instant::now() + Duration::from_secs(30);
        while f1.state().await["health_checks"].as_u64().unwrap() < start + 4 {
            assert!(Instant::now() < deadline);
            saw_down |= ingress.server("fleet1").await["state"] == "DOWN";
        }
        assert_eq!(saw_down, want_down, "{count} slow probe(s) with fall = 2");
        ingress.wait_state(&["fleet1"], "UP").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptied_or_missing_cert_directory_keeps_the_old_cert() {
    let dir = TestDir::new("certgone");
    let pki = Pki::new(&dir);
    let (_f1, _f2, ingress) = two(&dir, &pki, "").await;
    let errors = |m: &str| metric(m, "ingress_cert_errors_total", &[]).unwrap_or(0.0);
    let wait_errors = |above: f64| {
        let ingress = &ingress;
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if errors(&ingress.metrics().await) > above {
                    return;
                }
                assert!(Instant::now() < deadline, "the reload error was not counted");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let base = errors(&ingress.metrics().await);
    std::fs::remove_file(pki.certs_dir.join("localhost.pem")).unwrap();
    wait_errors(base).await;
    let mut ws = ingress
        .call(&pki, "/ws/after-empty")
        .await
        .expect("old cert still served");
    echo(&mut ws, "ok").await.unwrap();
    // SIGHUP with the directory gone altogether.
    let base = errors(&ingress.metrics().await);
    std::fs::rename(&pki.certs_dir, dir.path("certs-gone")).unwrap();
    ingress.proc.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_errors(base).await;
    let mut ws = ingress
        .call(&pki, "/ws/after-gone")
        .await
        .expect("old cert still served");
    echo(&mut ws, "ok").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_servers_file_is_refused_on_reload() {
    let dir = TestDir::new("garbagefile");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let file = dir.write("fleet-servers.txt", &format!("{} name=fleet1\n", f1.https));
    let ingress = Ingress::start(
        &dir,
        &config(&dir, &pki, &[], &format!("servers_file = \"{}\"", file.display()), ""),
    );
    ingress.wait_state(&["fleet1"], "UP").await;
    let mut live = ingress.call(&pki, "/ws/live").await.unwrap();
    std::fs::write(&file, "\u{0}\u{1}garbage ::: weight=??\n").unwrap();
    let (code, _, err) = ingress.ctl(&["reload"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("servers_file") && err.contains("line 1"), "{err}");
    assert_eq!(ingress.servers().await.len(), 1, "nothing lost");
    echo(&mut live, "still").await.unwrap();
    let mut ws = ingress.call(&pki, "/ws/new").await.unwrap();
    echo(&mut ws, "ok").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_under_20_live_calls() {
    let dir = TestDir::new("restart");
    let pki = Pki::new(&dir);
    let (_f1, _f2, mut ingress) = two(&dir, &pki, "").await;
    let mut calls = Vec::new();
    for i in 0..20 {
        calls.push(ingress.call(&pki, &format!("/ws/k-{i}")).await.unwrap());
    }
    let cfg = std::fs::read_to_string(&ingress.config).unwrap();
    ingress.proc.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = ingress.proc.child.wait();
    for ws in &mut calls {
        assert!(echo(ws, "gone?").await.is_err(), "calls on a killed ingress end");
    }
    drop(ingress);
    let restarted_at = Instant::now();
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    let mut ws = ingress.call(&pki, "/ws/after-restart").await.expect("new calls flow");
    echo(&mut ws, "ok").await.unwrap();
    eprintln!("restart → first new call after {:?}", restarted_at.elapsed());
    assert!(restarted_at.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tls_clients_are_refused_and_counted() {
    let dir = TestDir::new("hostiletls");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let ingress = Ingress::start(&dir, &config(&dir, &pki, &[("fleet1", f1.https)], "", ""));
    let before = metric_sum(&ingress.metrics().await, "ingress_tls_handshake_errors_total", &[]);
    // Garbage where a ClientHello belongs.
    let raw = http_raw(
        ingress.https,
        b"GET / HTTP/1.1\r\nHost: plain-http-on-the-tls-port\r\n\r\n",
    )
    .await;
    assert!(
        raw.is_empty() || raw[0] == 0x15,
        "an alert or a close, never an HTTP answer: {raw:?}"
    );
    // A carrier that vanishes mid-handshake.
    {
        use tokio::io::AsyncWriteExt as _;
        let mut s = tokio::net::TcpStream::connect(ingress.https).await.unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03])
            .await
            .unwrap();
    }
    // Unknown SNI gets the default certificate (like HAProxy's first cert).
    let addr = ingress.https.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("openssl")
            .args(["s_client", "-connect", &addr, "-servername", "unknown.example.net"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("CN = localhost") || text.contains("CN=localhost"),
        "{text}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = ingress.metrics().await;
        if metric_sum(&m, "ingress_tls_handshake_errors_total", &[]) >= before + 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "TLS errors not counted: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_connections_at_once() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 6000,
        "this test needs 6000 descriptors, the hard limit is {hard}"
    );
    let dir = TestDir::new("5k");
    let pki = Pki::new(&dir);
    let (_f1, _f2, ingress) = two(&dir, &pki, "").await;
    let conns = futures_util::future::join_all((0..5000).map(|_| tokio::net::TcpStream::connect(ingress.https))).await;
    let ok = conns.iter().filter(|c| c.is_ok()).count();
    assert_eq!(ok, 5000, "every connection accepted by the kernel");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = ingress.metrics().await;
        if metric(&m, "ingress_connections_accepted_total", &[("listener", "https")]).unwrap_or(0.0) >= 5000.0 {
            break;
        }
        assert!(Instant::now() < deadline, "not all accepted: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ws = ingress
        .call(&pki, "/ws/among-5000")
        .await
        .expect("a real call still goes through");
    echo(&mut ws, "ok").await.unwrap();
    drop(conns);
    let mut ws = ingress.call(&pki, "/ws/after-5000").await.unwrap();
    echo(&mut ws, "ok").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_surface_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TestDir::new("adminsurface");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let ingress = Ingress::start(&dir, &config(&dir, &pki, &[("fleet1", f1.https)], "", ""));
    let mode = std::fs::metadata(&ingress.admin).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin socket mode");
    let http = ingress.http.expect("http listener");
    for path in [
        "/api/servers",
        "/api/status",
        "/metrics",
        "/stats",
        "/stats.json",
        "/api/reload",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let (status, _) = ingress_tests::parse_response(
            &ingress_tests::https_raw(ingress.https, pki.client_tls(), req.as_bytes()).await,
        );
        assert_eq!(status, 404, "{path} on :443");
        let (status, _) = ingress_tests::parse_response(&http_raw(http, req.as_bytes()).await);
        assert_eq!(status, 404, "{path} on :80");
    }
    // A non-loopback admin listen without a token is refused at start.
    let cfg = config(&dir, &pki, &[("fleet1", f1.https)], "", "").replacen(
        "[admin]\n",
        "[admin]\nlisten = \"0.0.0.0:0\"\n",
        1,
    );
    let path = dir.write("open-admin.toml", &cfg);
    let out = std::process::Command::new(ingress_tests::bin("ingress"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin.listen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_refuses_new_connections_and_recovers() {
    let dir = TestDir::new("fdlimit");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let f2 = Fleet::start(&dir, &pki, "fleet2", 16);
    let cfg = config(&dir, &pki, &[("fleet1", f1.https), ("fleet2", f2.https)], "", "");
    let prefix = ["prlimit".to_owned(), "--nofile=64:64".to_owned(), "--".to_owned()];
    let ingress = Ingress::start_prefixed(&dir, &cfg, &prefix, &[]);
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    let mut live = Vec::new();
    for i in 0..4 {
        live.push(ingress.call(&pki, &format!("/ws/live-{i}")).await.unwrap());
    }
    // Exhaust the daemon's descriptors with idle connections.
    let flood = futures_util::future::join_all((0..80).map(|_| tokio::net::TcpStream::connect(ingress.https))).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = ingress.metrics().await;
        if metric(&m, "ingress_connections_refused_total", &[("reason", "accept_error")]).unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the descriptor limit was never hit: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for ws in &mut live {
        echo(ws, "unaffected").await.expect("live calls carry on at the limit");
    }
    drop(flood);
    // Once the idle connections are gone (header timeout or close), new calls flow again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Ok(mut ws)) = tokio::time::timeout(Duration::from_secs(2), ingress.call(&pki, "/ws/after")).await {
            echo(&mut ws, "ok").await.unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "no recovery after the flood closed");
    }
}

/// The daemon's resident and peak resident memory (KiB).
fn rss_and_peak_kib(ingress: &Ingress) -> (u64, u64) {
    let pid = ingress.proc.pid();
    let [rss, peak] = ["VmRSS", "VmHWM"].map(|f| testbed::proc::status_kib(pid, f));
    assert!(rss > 0 && peak > 0, "no memory figures for pid {pid}");
    (rss, peak)
}

/// Hostile clients cost bounded memory: 400 TLS clients each push 1 MiB of
/// header that never ends, and 400 more hold a head just under the limit
/// until the header timeout. Each gets its status (431, 408); the daemon's
/// peak memory over the whole run stays under 64 KiB per hostile connection,
/// where buffering what they sent would take 400 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_cost_bounded_memory() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const N: usize = 400;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let dir = TestDir::new("hostilemem");
    let pki = Pki::new(&dir);
    let (_f1, _f2, ingress) = two(
        &dir,
        &pki,
        "[limits]\nmax_header_bytes = 8192\nheader_timeout = \"4s\"\nmax_connections = 2000\n",
    )
    .await;
    // Warm up the allocator and the TLS path with one real call.
    let mut ws = ingress.call(&pki, "/ws/warm-up").await.unwrap();
    echo(&mut ws, "warm").await.unwrap();
    drop(ws);
    let (baseline, _) = rss_and_peak_kib(&ingress);
    let tls = pki.client_tls();
    let status_of = |raw: &[u8]| ingress_tests::parse_response(raw).0;
    let hostile = |body: Vec<u8>| {
        let tls = std::sync::Arc::clone(&tls);
        let addr = ingress.https;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut s = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
            // The ingress may answer and close before all of it is written.
            let _ = s.write_all(&body).await;
            let _ = s.flush().await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer)).await;
            answer
        }
    };
    let mut flood = b"GET /ws/a HTTP/1.1\r\nHost: localhost\r\nX-Flood: ".to_vec();
    flood.resize(1 << 20, b'a');
    let mut held = b"GET /ws/a HTTP/1.1\r\nHost: localhost\r\nX-Held: ".to_vec();
    held.resize(8000, b'b');
    let floods = futures_util::future::join_all((0..N).map(|_| hostile(flood.clone())));
    let holds = futures_util::future::join_all((0..N).map(|_| hostile(held.clone())));
    let (floods, holds) = tokio::join!(floods, holds);
    let flood_statuses: std::collections::BTreeSet<u16> = floods.iter().map(|a| status_of(a)).collect();
    let hold_statuses: std::collections::BTreeSet<u16> = holds.iter().map(|a| status_of(a)).collect();
    assert_eq!(flood_statuses, [431].into(), "every flooding client gets 431");
    assert_eq!(hold_statuses, [408].into(), "every holding client gets 408");
    let (after, peak) = rss_and_peak_kib(&ingress);
    let per_connection = (peak.saturating_sub(baseline)) as f64 / (2 * N) as f64;
    eprintln!(
        "baseline {baseline} KiB, peak {peak} KiB, after {after} KiB: {per_connection:.1} KiB per hostile connection"
    );
    assert!(
        per_connection < 64.0,
        "peak {peak} KiB from a baseline of {baseline} KiB is {per_connection:.1} KiB per hostile connection"
    );
    let m = ingress.metrics().await;
    for reason in ["header_too_large", "header_timeout"] {
        assert!(
            metric(&m, "ingress_bad_requests_total", &[("reason", reason)]).unwrap_or(0.0) >= N as f64,
            "{reason}: {m}"
        );
    }
    // And the door is still open.
    let mut ws = ingress.call(&pki, "/ws/after-the-hostiles").await.unwrap();
    echo(&mut ws, "ok").await.unwrap();
}
