//! Health checks end to end: bodies parsed (never matched), and probes
//! that keep their connection (`reuse_connection`) only when asked, that
//! fall back to a new one within the same probe, and that never hide a
//! fleet that refuses new connections or hangs.

use std::time::{Duration, Instant};

use ingress_tests::{Fleet, Ingress, Pki, TestDir, config, metric_sum};
use testbed::{
    IngressConfig,
    config::{Check, Pool, Server, Xdp},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_keep_their_connection_only_when_asked_and_never_to_hide_a_failure() {
    let dir = TestDir::new("reusecheck");
    let pki = Pki::new(&dir);
    let (f1, f2) = (
        Fleet::start(&dir, &pki, "fleet1", 16),
        Fleet::start(&dir, &pki, "fleet2", 16),
    );
    // fleet1 in a pool whose probes keep their connection (and one failed
    // probe takes the server DOWN), fleet2 in one whose probes do not.
    let pool = |name: &str, server: &str, f: &Fleet, check: Check| {
        Pool::new(name)
            .maxconn(16)
            .server(Server::new(server, f.https))
            .tls_ca(&pki.ca_path)
            .retries(0)
            .check(check.interval("200ms"))
    };
    let kept = Check::default().timeout("1s").fall(1).reuse_connection(true);
    let fresh = Check::default().timeout("500ms");
    let cfg = IngressConfig::new("127.0.0.1:0", &pki.certs_dir, dir.path("admin.sock"))
        .http("127.0.0.1:0")
        .call_routes("kept")
        .pool(pool("kept", "fleet1", &f1, kept))
        .pool(pool("fresh", "fleet2", &f2, fresh))
        .xdp(Xdp::off())
        .render();
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    let checks = async |f: &Fleet| f.state().await["health_checks"].as_u64().unwrap();
    // Full and resumed, either version: one per connection made.
    let handshakes =
        |m: &str, server: &str| metric_sum(m, "ingress_server_tls_handshakes_total", &[("server", server)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while checks(&f1).await < 10 || checks(&f2).await < 10 {
        assert!(Instant::now() < deadline, "ten checks each");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The fleets' counts first: a probe after the metrics only widens the margin.
    let (n1, n2) = (checks(&f1).await as f64, checks(&f2).await as f64);
    let m = ingress.metrics().await;
    let (h1, h2) = (handshakes(&m, "fleet1"), handshakes(&m, "fleet2"));
    // (Two: a kept probe slower than half the timeout on a loaded machine.)
    assert!(h1 <= 2.0, "{n1} kept probes: {h1} handshakes");
    assert!(h2 >= n2 - 1.0, "{n2} fresh probes: {h2} handshakes");

    // A fleet that stops taking new connections: a call's connect fails and
    // takes it out, and a probe on the old connection must not bring it back.
    f1.control("/accept?mode=refuse").await;
    let refused = ingress.call(&pki, "/ws/refused").await;
    assert!(refused.is_err(), "the only fleet refuses new connections");
    // One probe may have been on its way when the call failed; its answer
    // must not count either.
    let before = checks(&f1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = ingress.server("fleet1").await;
        assert_ne!(s["state"], "UP", "only a new connection may bring it back: {s}");
        let reason = s["check"]["reason"].as_str().unwrap_or_default();
        if s["check"]["ok"] == false && !reason.starts_with("connection failed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed probe after the passive failure: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        checks(&f1).await <= before + 1,
        "no probe reached the fleet on the old connection"
    );
    f1.control("/accept?mode=normal").await;
    ingress.wait_state(&["fleet1"], "UP").await;

    // No answer on the kept connection within half the timeout: the same
    // probe goes on a new one and succeeds (with fall = 1, a failed probe
    // would show as DOWN).
    let h_before = handshakes(&ingress.metrics().await, "fleet1");
    f1.control("/health?mode=slow&delay_ms=800&count=1").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while handshakes(&ingress.metrics().await, "fleet1") == h_before {
        let s = ingress.server("fleet1").await;
        assert_eq!(s["state"], "UP", "{s}");
        assert!(Instant::now() < deadline, "no new connection after the slow answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = checks(&f1).await;
    while checks(&f1).await < c + 2 {
        assert!(Instant::now() < deadline, "two more probes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = ingress.server("fleet1").await;
    assert_eq!(s["state"], "UP", "{s}");
    assert_eq!(s["check"]["ok"], true, "{s}");
    assert_eq!(
        handshakes(&ingress.metrics().await, "fleet1"),
        h_before + 1.0,
        "one new connection, kept in turn"
    );

    // A hung fleet still goes DOWN: a kept connection with no answer within
    // half the timeout gives way to a new one, and that one's failure counts.
    f1.control("/health?mode=slow&delay_ms=1500&count=4").await;
    ingress.wait_state(&["fleet1"], "DOWN").await;
    ingress.wait_state(&["fleet1"], "UP").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_bodies_are_parsed_not_matched() {
    let dir = TestDir::new("bodies");
    let pki = Pki::new(&dir);
    let names = [
        "first",
        "decoy",
        "truncated",
        "garbage",
        "error500",
        "missing",
        "twenty",
    ];
    let fleets: Vec<Fleet> = names
        .iter()
        .map(|n| Fleet::start(&dir, &pki, n, if *n == "twenty" { 20 } else { 16 }))
        .collect();
    let servers: Vec<(&str, std::net::SocketAddr)> = names.iter().zip(&fleets).map(|(n, f)| (*n, f.https)).collect();
    let ingress = Ingress::start(&dir, &config(&dir, &pki, &servers, "", ""));
    ingress.wait_state(&names, "UP").await;
    fleets[0].control("/order?available_first=1").await;
    fleets[1].control("/decoy?on=1").await;
    fleets[1].control("/occupy?n=11").await;
    fleets[2].control("/health?mode=truncated").await;
    fleets[3].control("/health?mode=garbage").await;
    fleets[4].control("/health?mode=500").await;
    fleets[5].control("/health?mode=missing").await;
    ingress
        .wait_state(&["truncated", "garbage", "error500", "missing"], "DOWN")
        .await;
    ingress
        .wait_servers("the decoy fleet's real capacity", Duration::from_secs(5), |s| {
            s.iter().any(|s| s["name"] == "decoy" && s["reported"] == 5)
        })
        .await;
    let servers = ingress.servers().await;
    let by = |n: &str| servers.iter().find(|s| s["name"] == n).unwrap().clone();
    assert_eq!(by("first")["state"], "UP");
    assert_eq!(by("first")["reported"], 16);
    assert_eq!(by("decoy")["state"], "UP");
    assert_eq!(by("twenty")["state"], "UP", "20 available with maxconn 16 is UP");
    assert_eq!(by("twenty")["reported"], 20);
    assert_eq!(by("twenty")["effective"], 16);
    for (name, reason) in [
        ("truncated", "not valid JSON"),
        ("garbage", "not valid JSON"),
        ("error500", "status 500"),
        ("missing", "no `/fleet_available`"),
    ] {
        let s = by(name);
        let got = s["check"]["reason"].as_str().unwrap_or_default();
        assert!(got.contains(reason), "{name}: {s}");
        assert_eq!(s["check"]["ok"], false);
    }
    // A valid 0 is FULL at once, not DOWN.
    fleets[0].control("/occupy?n=16").await;
    ingress.wait_state(&["first"], "FULL").await;
}
