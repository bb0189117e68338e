//! The ingress's own lifecycle with calls up: a graceful stop closes the
//! listeners at once, keeps live calls for `limits.shutdown_grace`, then
//! ends each with a WebSocket Close 1001 to both sides; a binary upgrade
//! keeps every call and refuses no connection (or is abandoned when the new
//! binary cannot start); a server's calls end with 1001 on `drain
//! --close-after`, `remove --now` and shutdown-sessions, at a message
//! boundary.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use ingress_tests::{Fleet, Ingress, Pki, TestDir, client, config, echo, install_binary};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

/// A fleet and an ingress in front of it with `shutdown_grace = grace`, UP.
async fn with_grace(name: &str, grace: &str) -> (TestDir, Pki, Fleet, Ingress) {
    let dir = TestDir::new(name);
    let pki = Pki::new(&dir);
    let fleet = Fleet::start(&dir, &pki, "fleet1", 16);
    let limits = format!("[limits]\nshutdown_grace = \"{grace}\"\n");
    let cfg = config(&dir, &pki, &[("fleet1", fleet.https)], "", &limits);
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1"], "UP").await;
    (dir, pki, fleet, ingress)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_keeps_calls_for_the_grace_then_closes_both_sides_with_1001() {
    let (_dir, pki, fleet, mut ingress) = with_grace("stop", "2s").await;
    let mut calls = Vec::new();
    for i in 0..8 {
        calls.push(
            client::connect(ingress.https, "localhost", &format!("/ws/stop-{i}"), pki.client_tls())
                .await
                .unwrap(),
        );
    }
    let stopped = Instant::now();
    ingress.proc.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    // New connections are refused at once.
    while tokio::net::TcpStream::connect(ingress.https).await.is_ok() {
        assert!(stopped.elapsed() < Duration::from_secs(1), "the listener still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Live calls go on through the grace.
    for (i, ws) in calls.iter_mut().enumerate() {
        echo(ws, "still here")
            .await
            .unwrap_or_else(|e| panic!("call {i} dropped in the grace: {e}"));
    }
    // Then every carrier hears "going away", and so does every fleet worker.
    for (i, ws) in calls.iter_mut().enumerate() {
        expect_going_away(ws, &format!("call {i}")).await;
    }
    assert!(stopped.elapsed() >= Duration::from_secs(2), "closed before the grace");
    assert_eq!(close_codes(&fleet, 8).await, [1001; 8], "the fleet's close codes");
    eprintln!("closed on both sides {:?} after the signal", stopped.elapsed());
    let exited = ingress.proc.stop();
    eprintln!("exited {:?} after the signal", stopped.elapsed());
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(2 + 1),
        "exit within the grace and a second:\n{}",
        ingress.proc.log_tail(30)
    );
}

/// `ctl stop` is the first SIGTERM: the grace begins; a SIGTERM then ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_stop_begins_the_grace_and_a_sigterm_ends_it_at_once() {
    let (_dir, pki, _fleet, mut ingress) = with_grace("stop2", "60s").await;
    let mut ws = client::connect(ingress.https, "localhost", "/ws/twice", pki.client_tls())
        .await
        .unwrap();
    let stopped = Instant::now();
    let (code, out, err) = ingress.ctl(&["stop"]).await;
    assert_eq!(code, 0, "{out}{err}");
    // The grace has begun.
    while tokio::net::TcpStream::connect(ingress.https).await.is_ok() {
        assert!(stopped.elapsed() < Duration::from_secs(1), "the listener still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    echo(&mut ws, "in the grace").await.unwrap();
    ingress.proc.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    expect_going_away(&mut ws, "the call, after the SIGTERM").await;
    let exited = ingress.proc.stop();
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}\n{}",
        stopped.elapsed(),
        ingress.proc.log_tail(8)
    );
}

/// Echoes on `ws` every 100 ms until `stop`; returns how many came back,
/// or the first failure.
async fn keep_echoing(
    mut ws: client::Wss,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (client::Wss, Result<usize, String>) {
    let mut n = 0;
    loop {
        if *stop.borrow() {
            return (ws, Ok(n));
        }
        if let Err(e) = echo(&mut ws, &format!("echo {n}")).await {
            return (ws, Err(format!("after {n} echoes: {e}")));
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_new_build_keeps_every_call_and_refuses_no_connection() {
    let dir = TestDir::new("upgrade");
    let pki = Pki::new(&dir);
    // 30 workers for 20 calls: the new process must not count the old
    // process's calls against a report that already saw them (10 left).
    let fleet = Fleet::start(&dir, &pki, "fleet1", 30);
    let exe = dir.path("ingress");
    install_binary(&exe, None);
    let cfg = config(&dir, &pki, &[("fleet1", fleet.https)], "", "").replace("maxconn = 16", "maxconn = 40");
    let mut ingress = Ingress::start_exe(&dir, &cfg, &exe, &[], &[]);
    ingress.wait_state(&["fleet1"], "UP").await;
    let old_pid = ingress.proc.pid();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut echoing = Vec::new();
    for i in 0..20 {
        let ws = client::connect(ingress.https, "localhost", &format!("/ws/up-{i}"), pki.client_tls())
            .await
            .unwrap();
        echoing.push(tokio::spawn(keep_echoing(ws, stopped.clone())));
    }
    // New calls throughout: each a full TLS + upgrade + echo + close.
    let (https, tls) = (ingress.https, pki.client_tls());
    let mut until = stopped.clone();
    let dialing = tokio::spawn(async move {
        let (mut ok, mut failed) = (0usize, Vec::new());
        while !*until.borrow_and_update() {
            match client::connect(https, "localhost", "/ws/dialer", tls.clone()).await {
                Ok(mut ws) => match echo(&mut ws, "new").await {
                    Ok(()) => {
                        ok += 1;
                        let _ = ws.close(None).await;
                    }
                    Err(e) => failed.push(format!("echo: {e}")),
                },
                Err(e) => failed.push(format!("connect: {e}")),
            }
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A package upgrade: a new build at the same path, then `ctl upgrade`.
    install_binary(&exe, Some("1111111111111111"));
    let asked = Instant::now();
    let (up, successor) = ingress.upgrade().await;
    eprintln!("ctl upgrade answered in {:?}: {up}", asked.elapsed());
    let new_pid = successor.0;
    assert_ne!(new_pid, old_pid);
    assert_eq!(up["old_pid"], old_pid);
    assert!(
        up["version"].as_str().unwrap().ends_with("build:1111111111111111"),
        "{up}"
    );
    // Its 20 calls, and a dialer's call that was being set up then.
    let kept = up["calls_kept"].as_u64().unwrap();
    assert!((20..=21).contains(&kept), "{up}");
    // The admin socket is the new process's now.
    let (_, status) = ingress.admin_get("/api/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["pid"], new_pid, "{status}");
    // Across both processes: the old one's 20 calls still take slots.
    let s = ingress.server("fleet1").await;
    let inherited = s["inherited"].as_u64().unwrap();
    assert!((20..=21).contains(&inherited), "{s}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = stop.send(true);
    let (ok, failed) = dialing.await.unwrap();
    assert!(failed.is_empty(), "connections failed during the upgrade: {failed:?}");
    assert!(ok >= 5, "only {ok} new calls during the upgrade");
    let mut calls = Vec::new();
    for (i, t) in echoing.into_iter().enumerate() {
        let (ws, echoed) = t.await.unwrap();
        let n = echoed.unwrap_or_else(|e| panic!("call {i} dropped: {e}"));
        assert!(n >= 8, "call {i} echoed only {n} times");
        calls.push(ws);
    }
    eprintln!("{ok} new calls during the upgrade; 20 old calls echoed throughout");
    // The old process is still there for its calls, and leaves after the last.
    assert!(
        ingress.proc.child.try_wait().unwrap().is_none(),
        "the old process left its calls"
    );
    for mut ws in calls {
        let _ = ws.close(None).await;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    }
    let left = Instant::now();
    let exited = loop {
        if let Some(s) = ingress.proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            left.elapsed() < Duration::from_secs(5),
            "the old process stayed after its last call"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exited.success(), "{exited:?}");
    // The new process serves on, its fleet no longer holding old calls.
    ingress
        .wait_servers("no inherited calls", Duration::from_secs(5), |s| s[0]["inherited"] == 0)
        .await;
    let mut ws = client::connect(ingress.https, "localhost", "/ws/after", pki.client_tls())
        .await
        .expect("a call after the old process left");
    echo(&mut ws, "after").await.unwrap();
    assert!(successor.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_binary_that_cannot_start_is_abandoned_and_the_old_process_serves_on() {
    let dir = TestDir::new("upgrade-bad");
    let pki = Pki::new(&dir);
    let fleet = Fleet::start(&dir, &pki, "fleet1", 8);
    let exe = dir.path("ingress");
    install_binary(&exe, None);
    let cfg = config(&dir, &pki, &[("fleet1", fleet.https)], "", "");
    let ingress = Ingress::start_exe(&dir, &cfg, &exe, &[], &[]);
    ingress.wait_state(&["fleet1"], "UP").await;
    let mut ws = client::connect(ingress.https, "localhost", "/ws/kept", pki.client_tls())
        .await
        .unwrap();
    // The new "binary" exits at start.
    let tmp = dir.write("ingress.broken", "#!/bin/sh\necho 'cannot start' >&2\nexit 3\n");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &exe).unwrap();
    let (code, out, err) = ingress.ctl(&["upgrade"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("exited before it was ready") && err.contains('3'),
        "the reason: {err}"
    );
    // Nothing changed: the same process serves old and new calls, admin included.
    echo(&mut ws, "still up").await.unwrap();
    let mut fresh = client::connect(ingress.https, "localhost", "/ws/fresh", pki.client_tls())
        .await
        .expect("new calls after a failed upgrade");
    echo(&mut fresh, "new").await.unwrap();
    let (_, status) = ingress.admin_get("/api/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["pid"], ingress.proc.pid(), "{status}");
}

/// The carrier's next message (pongs aside) is a Close 1001; then the
/// library's reply and the end are read.
async fn expect_going_away(ws: &mut client::Wss, what: &str) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Pong(_)))) => {}
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(frame.code, CloseCode::Away, "{what}");
                break;
            }
            other => panic!("{what} ended without a Close 1001: {other:?}"),
        }
    }
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
}

/// Waits until `fleet` recorded `n` close codes; returns them.
async fn close_codes(fleet: &Fleet, n: usize) -> Vec<u64> {
    let started = Instant::now();
    loop {
        let codes: Vec<u64> = fleet.state().await["close_codes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .collect();
        if codes.len() >= n || started.elapsed() > Duration::from_secs(5) {
            return codes;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` calls that all land on `to` (the pool's other server drained meanwhile).
async fn calls_on(ingress: &Ingress, pki: &Pki, to: &str, other: &str, n: usize) -> Vec<client::Wss> {
    let (code, out, err) = ingress.ctl(&["drain", &format!("fleets/{other}")]).await;
    assert_eq!(code, 0, "{out}{err}");
    let mut calls = Vec::new();
    for i in 0..n {
        calls.push(
            client::connect(ingress.https, "localhost", &format!("/ws/{to}-{i}"), pki.client_tls())
                .await
                .unwrap(),
        );
    }
    assert_eq!(ingress.server(to).await["active"], n, "the calls are on {to}");
    let (code, out, err) = ingress.ctl(&["ready", &format!("fleets/{other}")]).await;
    assert_eq!(code, 0, "{out}{err}");
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_close_after_remove_now_and_shutdown_sessions_end_a_servers_calls_with_1001() {
    let dir = TestDir::new("end-calls");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let f2 = Fleet::start(&dir, &pki, "fleet2", 16);
    let cfg = config(
        &dir,
        &pki,
        &[("fleet1", f1.https), ("fleet2", f2.https)],
        "on_marked_down = \"shutdown-sessions\"",
        "",
    );
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    let mut on1 = calls_on(&ingress, &pki, "fleet1", "fleet2", 3).await;
    let mut on2 = calls_on(&ingress, &pki, "fleet2", "fleet1", 3).await;

    // drain --close-after: the calls go on until then, then hear 1001.
    let drained = Instant::now();
    let (code, out, err) = ingress.ctl(&["drain", "fleets/fleet1", "--close-after", "1s"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for ws in &mut on1 {
        echo(ws, "draining")
            .await
            .expect("a drained call goes on until close-after");
    }
    for (i, ws) in on1.iter_mut().enumerate() {
        expect_going_away(ws, &format!("drained call {i}")).await;
    }
    assert!(drained.elapsed() >= Duration::from_secs(1), "closed before close-after");
    assert_eq!(close_codes(&f1, 3).await, [1001; 3], "fleet1 heard 1001");
    for ws in &mut on2 {
        echo(ws, "untouched").await.expect("calls on the other server go on");
    }

    // remove --now.
    let (code, out, err) = ingress.ctl(&["ready", "fleets/fleet1"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let mut again = calls_on(&ingress, &pki, "fleet1", "fleet2", 2).await;
    let (code, out, err) = ingress.ctl(&["remove", "fleets/fleet1", "--now"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for (i, ws) in again.iter_mut().enumerate() {
        expect_going_away(ws, &format!("removed server's call {i}")).await;
    }
    assert_eq!(close_codes(&f1, 5).await, [1001; 5], "fleet1 heard 1001");
    for ws in &mut on2 {
        echo(ws, "untouched").await.expect("calls on the other server go on");
    }

    // shutdown-sessions: fleet2 marked down.
    f2.control("/health?mode=500").await;
    for (i, ws) in on2.iter_mut().enumerate() {
        expect_going_away(ws, &format!("call {i} of the server marked down")).await;
    }
    assert_eq!(close_codes(&f2, 3).await, [1001; 3], "fleet2 heard 1001");
    // A tunnel counts its ending once both sides are done, just after the
    // carrier read its Close: wait for the eighth, then check there are no more.
    ingress
        .wait_metric(
            "ingress_calls_closed_total",
            &[("closed_by", "ingress_1001")],
            Duration::from_secs(5),
            |v| v >= 8.0,
        )
        .await;
    let m = ingress.metrics().await;
    assert_eq!(
        ingress_tests::metric(&m, "ingress_calls_closed_total", &[("closed_by", "ingress_1001")]),
        Some(8.0),
        "closed_by in /metrics"
    );
    // The log line follows the counter.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut log = ingress.proc.logs();
    while log.matches("closed_by=\"ingress_1001\"").count() < 8 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        log = ingress.proc.logs();
    }
    assert_eq!(
        log.matches("closed_by=\"ingress_1001\"").count(),
        8,
        "closed_by in the call log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_due_in_the_middle_of_a_fragmented_1_mib_message_waits_for_its_last_frame() {
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let dir = TestDir::new("fragments");
    let pki = Pki::new(&dir);
    let fleet = Fleet::start(&dir, &pki, "fleet1", 16);
    let cfg = config(&dir, &pki, &[("fleet1", fleet.https)], "", "");
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1"], "UP").await;
    let mut ws = client::connect(ingress.https, "localhost", "/ws/big", pki.client_tls())
        .await
        .unwrap();
    // 1 MiB in 64 fragments of 16 KiB, a ping between each two.
    let chunk: Vec<u8> = (0..16 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sum = chunk
        .iter()
        .fold(0u32, |a, b| a.wrapping_add(u32::from(*b)))
        .wrapping_mul(64);
    for i in 0..63 {
        let opcode = if i == 0 { Data::Binary } else { Data::Continue };
        ws.send(Message::Frame(Frame::message(
            chunk.clone(),
            OpCode::Data(opcode),
            false,
        )))
        .await
        .unwrap();
        ws.send(Message::Ping(vec![i as u8].into())).await.unwrap();
    }
    // The Close is due now, with the message's last frame still to come.
    let (code, out, err) = ingress.ctl(&["remove", "fleets/fleet1", "--now"]).await;
    assert_eq!(code, 0, "{out}{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(Message::Frame(Frame::message(
        chunk.clone(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    expect_going_away(&mut ws, "the call").await;
    assert_eq!(close_codes(&fleet, 1).await, [1001], "the fleet heard 1001");
    let messages = fleet.state().await["messages"].clone();
    assert_eq!(
        messages.as_array().unwrap().last().unwrap(),
        &serde_json::json!([1024 * 1024, sum]),
        "the fleet got the whole message, then the Close: {messages}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_still_being_set_up_when_the_upgrade_lands_is_kept_by_the_old_process() {
    let dir = TestDir::new("upgrade-setup");
    let pki = Pki::new(&dir);
    let fleet = Fleet::start(&dir, &pki, "fleet1", 8);
    let cfg = config(&dir, &pki, &[("fleet1", fleet.https)], "", "");
    let mut ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1"], "UP").await;
    // The old process has no call, only one waiting a second for its 101.
    fleet.control("/upgrade?mode=slow&count=1").await;
    let (https, tls) = (ingress.https, pki.client_tls());
    let dialing = tokio::spawn(async move { client::connect(https, "localhost", "/ws/slow", tls).await });
    while fleet.state().await["calls_total"] == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, _successor) = ingress.upgrade().await;
    let mut ws = dialing
        .await
        .unwrap()
        .expect("the call being set up is answered by the old process");
    echo(&mut ws, "kept").await.expect("and kept by it");
    assert!(ingress.proc.alive(), "the old process stays for the call");
    let _ = ws.close(None).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    let exited = tokio::task::spawn_blocking(move || ingress.proc.child.wait())
        .await
        .unwrap();
    assert!(exited.unwrap().success());
}
