//! Balance modes and server lifecycle options from the seeds' other
//! deployments: roundrobin, sticky cookie, uri-hash, shutdown-sessions, and a
//! plain-HTTP backend checked like the Forgejo one (`expect_status ^[23]`,
//! explicit Host header, liveness only).

use std::{sync::Arc, time::Duration};

use ingress_tests::{Fleet, Ingress, Pki, TestDir, client, config, echo, set_cookie, upgrade_head};

async fn start(dir: &TestDir, pki: &Pki, n: usize, pool_extra: &str) -> (Vec<Fleet>, Ingress) {
    let fleets: Vec<Fleet> = (1..=n)
        .map(|i| Fleet::start(dir, pki, &format!("fleet{i}"), 1000))
        .collect();
    let names: Vec<String> = (1..=n).map(|i| format!("fleet{i}")).collect();
    let servers: Vec<(&str, std::net::SocketAddr)> = names
        .iter()
        .map(String::as_str)
        .zip(fleets.iter().map(|f| f.https))
        .collect();
    let ingress = Ingress::start(
        dir,
        &config(dir, pki, &servers, pool_extra, "").replace("maxconn = 16", "maxconn = 1000"),
    );
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    ingress.wait_state(&refs, "UP").await;
    (fleets, ingress)
}

async fn totals(fleets: &[Fleet]) -> Vec<u64> {
    let mut out = Vec::new();
    for f in fleets {
        out.push(f.state().await["calls_total"].as_u64().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundrobin_spreads_300_calls_evenly() {
    let dir = TestDir::new("rr");
    let pki = Pki::new(&dir);
    let (fleets, ingress) = start(&dir, &pki, 3, "balance = \"roundrobin\"").await;
    for i in 0..300 {
        let mut ws = client::connect(ingress.https, "localhost", &format!("/ws/rr-{i}"), pki.client_tls())
            .await
            .unwrap();
        ws.close(None).await.ok();
    }
    assert_eq!(totals(&fleets).await, vec![100, 100, 100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_keeps_clients_and_moves_them_when_their_server_stops() {
    let dir = TestDir::new("sticky");
    let pki = Pki::new(&dir);
    let (mut fleets, ingress) = start(&dir, &pki, 3, "balance = \"cookie\"\ncookie = \"SERVERID\"").await;
    let tls = pki.client_tls();
    let mut cookies = Vec::new();
    let mut per_cookie = std::collections::BTreeMap::<String, u64>::new();
    for c in 0..50 {
        let head = upgrade_head(&ingress, Arc::clone(&tls), &format!("/ws/client-{c}"), None).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let cookie = set_cookie(&head).expect("a new client is pinned");
        assert!(cookie.starts_with("SERVERID="), "{cookie}");
        for r in 1..10 {
            let again = upgrade_head(
                &ingress,
                Arc::clone(&tls),
                &format!("/ws/client-{c}-{r}"),
                Some(&cookie),
            )
            .await;
            assert!(again.starts_with("HTTP/1.1 101"), "{again}");
            assert_eq!(set_cookie(&again), None, "client {c} kept its server (no new cookie)");
        }
        *per_cookie.entry(cookie.clone()).or_default() += 10;
        cookies.push(cookie);
    }
    let mut by_cookie: Vec<u64> = per_cookie.values().copied().collect();
    let mut by_fleet = totals(&fleets).await;
    by_cookie.sort_unstable();
    by_fleet.sort_unstable();
    assert_eq!(by_cookie, by_fleet, "every pinned request reached its server");
    assert_eq!(by_fleet.iter().sum::<u64>(), 500);

    // Stop client 0's server: its next request lands elsewhere with a new cookie.
    let before = totals(&fleets).await;
    let probe = upgrade_head(&ingress, Arc::clone(&tls), "/ws/find", Some(&cookies[0])).await;
    assert!(probe.starts_with("HTTP/1.1 101"));
    let after = totals(&fleets).await;
    let pinned = (0..3).find(|i| after[*i] > before[*i]).unwrap();
    fleets[pinned].proc.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = fleets[pinned].proc.child.wait();
    let moved = upgrade_head(&ingress, Arc::clone(&tls), "/ws/moved", Some(&cookies[0])).await;
    assert!(
        moved.starts_with("HTTP/1.1 101"),
        "no error for the moved client: {moved}"
    );
    let new_cookie = set_cookie(&moved).expect("a new pin");
    assert_ne!(new_cookie, cookies[0]);
    fleets.remove(pinned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_hash_keeps_a_bot_on_one_fleet() {
    let dir = TestDir::new("hash");
    let pki = Pki::new(&dir);
    let (fleets, ingress) = start(&dir, &pki, 3, "balance = \"uri-hash\"\nhash_key = \"bot_id\"").await;
    let mut owner = std::collections::HashMap::new();
    let mut held = Vec::new();
    for round in 0..2 {
        for bot in 0..20 {
            let before = totals(&fleets).await;
            // Different paths, same bot: the key is the bot_id, not the path.
            let path = if round == 0 {
                format!("/ws/bot-{bot}")
            } else {
                format!("/exotel/bot-{bot}")
            };
            held.push(
                client::connect(ingress.https, "localhost", &path, pki.client_tls())
                    .await
                    .unwrap(),
            );
            let after = totals(&fleets).await;
            let fleet = (0..3).find(|i| after[*i] > before[*i]).unwrap();
            assert_eq!(*owner.entry(bot).or_insert(fleet), fleet, "bot {bot} moved");
        }
    }
    let used: std::collections::HashSet<_> = owner.values().collect();
    assert!(used.len() >= 2, "keys spread over fleets: {owner:?}");
}

async fn shutdown_case(on_marked_down: &str) -> usize {
    let dir = TestDir::new("shutdown");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let cfg = config(
        &dir,
        &pki,
        &[("fleet1", f1.https)],
        &format!("on_marked_down = \"{on_marked_down}\""),
        "",
    );
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1"], "UP").await;
    let mut calls = Vec::new();
    for i in 0..10 {
        calls.push(
            client::connect(ingress.https, "localhost", &format!("/ws/s-{i}"), pki.client_tls())
                .await
                .unwrap(),
        );
    }
    f1.control("/health?mode=500").await;
    ingress.wait_state(&["fleet1"], "DOWN").await;
    // One check interval (200 ms) after DOWN, count the calls still carrying echoes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut alive = 0;
    for ws in &mut calls {
        if echo(ws, "ping").await.is_ok() {
            alive += 1;
        }
    }
    alive
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sessions_cuts_tunnels_of_a_server_marked_down() {
    assert_eq!(shutdown_case("shutdown-sessions").await, 0, "all 10 tunnels cut");
    assert_eq!(shutdown_case("keep").await, 10, "by default they stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_backend_checked_like_forgejo() {
    let dir = TestDir::new("plain");
    let pki = Pki::new(&dir);
    let mut cmd = std::process::Command::new(ingress_tests::bin("fleet-sim"));
    cmd.arg("--cert")
        .arg(&pki.fleet_bundle)
        .args(["--plain", "--threads", "1"]);
    let proc = ingress_tests::start_proc("forgejo", cmd, &dir.path("forgejo.log"));
    let addr: std::net::SocketAddr = proc.ready["https"].as_str().unwrap().parse().unwrap();
    let control: std::net::SocketAddr = proc.ready["control"].as_str().unwrap().parse().unwrap();
    let (status, _) = ingress_tests::http_get(control, "/health?mode=redirect").await;
    assert_eq!(status, 200);
    let cfg = config(&dir, &pki, &[("forgejo", addr)], "tls = false", "")
        .replace(&format!("[pools.fleets.tls]\nca = \"{}\"\n", pki.ca_path.display()), "")
        .replace(
            "[pools.fleets.check]\n",
            "[pools.fleets.check]\npath = \"/\"\nhost = \"forgejo.talas.group\"\nexpect_status = \"^[23]\"\ncapacity = \"\"\n",
        );
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["forgejo"], "UP").await;
    let s = ingress.server("forgejo").await;
    assert_eq!(s["check"]["reason"], "alive", "a 302 passes ^[23]: {s}");
    let (_, state) = ingress_tests::http_get(control, "/state").await;
    assert!(
        state.contains("\"last_health_host\":\"forgejo.talas.group\""),
        "the check sends the Host header: {state}"
    );
    let mut ws = client::connect(ingress.https, "localhost", "/ws/over-plain-tcp", pki.client_tls())
        .await
        .expect("call");
    echo(&mut ws, "plain").await.unwrap();
}

/// `POST /api/pick/{pool}` holds what it hands out: 20 dialers asking at
/// once, two fleets with 10 free workers each, get 10 and 10 (a read-only
/// pick would send all 20 to one); the holds show in `ctl stat` and
/// `/metrics`, and a pick token may pick and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_dialers_picking_at_once_are_spread_by_held_slots() {
    use ingress_tests::{admin_listen, admin_tcp, admin_tcp_answer, metric_sum};
    let dir = TestDir::new("hold");
    let pki = Pki::new(&dir);
    let (f1, f2) = (
        Fleet::start(&dir, &pki, "fleet1", 10),
        Fleet::start(&dir, &pki, "fleet2", 10),
    );
    // Reports 30 s apart: every hold lasts to its end while the test looks.
    let cfg = config(&dir, &pki, &[("fleet1", f1.https), ("fleet2", f2.https)], "", "")
        .replace("interval = \"200ms\"", "interval = \"30s\"")
        .replacen("[admin]\n", "[admin]\npick_token = \"dial-0nly\"\n", 1);
    assert!(
        cfg.contains("interval = \"30s\"") && cfg.contains("pick_token"),
        "{cfg}"
    );
    let ingress = Ingress::start(&dir, &admin_listen(&cfg, "127.0.0.1:0", Some("4dmin")));
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    let admin: std::net::SocketAddr = ingress.proc.ready["admin"].as_str().unwrap().parse().unwrap();

    let (code, body) = ingress.admin_get("/api/pick/fleets").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        ingress.servers().await.iter().all(|s| s["held"] == 0),
        "GET holds nothing"
    );

    let picks = futures_util::future::join_all(
        (0..20).map(|_| admin_tcp_answer(admin, "POST", "/api/pick/fleets?hold=20s", Some("dial-0nly"))),
    )
    .await;
    let mut got = std::collections::BTreeMap::<String, u32>::new();
    for (code, body) in &picks {
        assert_eq!(*code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(
            v["hold_until"].is_string() && v["url"].as_str().unwrap().starts_with("wss://"),
            "{v}"
        );
        *got.entry(v["name"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    eprintln!("20 dialers at once: {got:?}");
    assert_eq!(got.values().copied().collect::<Vec<_>>(), [10, 10], "{got:?}");
    let servers = ingress.servers().await;
    assert!(
        servers.iter().all(|s| s["held"] == 10 && s["effective"] == 0),
        "{servers:#?}"
    );
    let (code, stat, err) = ingress.ctl(&["stat"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(stat.contains("HELD"), "{stat}");
    assert_eq!(metric_sum(&ingress.metrics().await, "ingress_server_held", &[]), 20.0);
    // Every slot is held: the next dialer is told so.
    assert_eq!(
        admin_tcp(admin, "POST", "/api/pick/fleets", Some("dial-0nly")).await,
        503
    );
    // The pick token picks, and does nothing else.
    assert_eq!(admin_tcp(admin, "GET", "/api/status", Some("dial-0nly")).await, 403);
    assert_eq!(
        admin_tcp(admin, "POST", "/api/servers/fleets/fleet1/state", Some("dial-0nly")).await,
        403
    );
    assert_eq!(
        admin_tcp(admin, "POST", "/api/pick/fleets?hold=2h", Some("dial-0nly")).await,
        400
    );
    // Without it, a loopback reader may look but not hold.
    assert_eq!(admin_tcp(admin, "POST", "/api/pick/fleets", None).await, 403);

    // A reload rotates the tokens: the old pick token stops at once.
    let text = std::fs::read_to_string(&ingress.config).unwrap();
    std::fs::write(&ingress.config, text.replace("dial-0nly", "dial-2nd")).unwrap();
    let (code, out, err) = ingress.ctl(&["reload"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        admin_tcp(admin, "POST", "/api/pick/fleets", Some("dial-0nly")).await,
        403,
        "the old token holds nothing"
    );
    assert_eq!(
        admin_tcp(admin, "GET", "/api/status", Some("dial-2nd")).await,
        403,
        "the new one is the pick token: picks only"
    );
}

/// Holds go to the fleet with the most capacity (12 and 8 free: 10 picks
/// leave both at 5) and end by themselves at their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_go_to_the_most_capacity_and_end_at_their_deadline() {
    let dir = TestDir::new("hold2");
    let pki = Pki::new(&dir);
    let (f1, f2) = (
        Fleet::start(&dir, &pki, "fleet1", 12),
        Fleet::start(&dir, &pki, "fleet2", 8),
    );
    let cfg = config(&dir, &pki, &[("fleet1", f1.https), ("fleet2", f2.https)], "", "")
        .replace("interval = \"200ms\"", "interval = \"30s\"");
    assert!(cfg.contains("interval = \"30s\""), "{cfg}");
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    let mut got = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..10 {
        let (code, body) = ingress.admin_request("POST", "/api/pick/fleets?hold=2s", "").await;
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        *got.entry(v["name"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(got.get("fleet1"), Some(&7), "{got:?}");
    assert_eq!(got.get("fleet2"), Some(&3), "{got:?}");
    let servers = ingress.servers().await;
    assert!(servers.iter().all(|s| s["effective"] == 5), "{servers:#?}");
    // No report comes for 30 s: the 2 s deadline ends them.
    let started = std::time::Instant::now();
    loop {
        if ingress.servers().await.iter().all(|s| s["held"] == 0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "holds outlived their deadline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "ended before the deadline"
    );
}
