//! The ingress's own lifecycle with calls up: a graceful stop closes the
//! listeners at once, keeps live calls for `limits.shutdown_grace`, then
//! ends each with a WebSocket Close 1001 to both sides.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use ingress_tests::{Fleet, Ingress, Pki, TestDir, client, config, echo};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_keeps_calls_for_the_grace_then_closes_both_sides_with_1001() {
    let dir = TestDir::new("stop");
    let pki = Pki::new(&dir);
    let fleet = Fleet::start(&dir, &pki, "fleet1", 16);
    let cfg = config(
        &dir,
        &pki,
        &[("fleet1", fleet.https)],
        "",
        "[limits]\nshutdown_grace = \"2s\"\n",
    );
    let mut ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1"], "UP").await;
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
    // Then every carrier hears "going away".
    for (i, ws) in calls.iter_mut().enumerate() {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        match msg {
            Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(frame.code, CloseCode::Away, "call {i}"),
            other => panic!("call {i} ended without a Close 1001: {other:?}"),
        }
        // Reading on sends the library's reply and sees the end.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    }
    assert!(stopped.elapsed() >= Duration::from_secs(2), "closed before the grace");
    // And so does every fleet worker.
    let started = Instant::now();
    loop {
        let codes: Vec<u64> = fleet.state().await["close_codes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c.as_u64())
            .collect();
        if codes.len() == 8 {
            assert!(codes.iter().all(|&c| c == 1001), "the fleet saw {codes:?}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the fleet saw {codes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("closed on both sides {:?} after the signal", stopped.elapsed());
    let exited = ingress.proc.stop();
    eprintln!("exited {:?} after the signal", stopped.elapsed());
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(2 + 3),
        "exit within the grace and the close window:\n{}",
        ingress.proc.log_tail(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_grace_at_once() {
    let dir = TestDir::new("stop2");
    let pki = Pki::new(&dir);
    let fleet = Fleet::start(&dir, &pki, "fleet1", 16);
    let cfg = config(
        &dir,
        &pki,
        &[("fleet1", fleet.https)],
        "",
        "[limits]\nshutdown_grace = \"60s\"\n",
    );
    let mut ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1"], "UP").await;
    let mut ws = client::connect(ingress.https, "localhost", "/ws/twice", pki.client_tls())
        .await
        .unwrap();
    let stopped = Instant::now();
    ingress.proc.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    // The grace has begun (two signals before it would be seen as one).
    while tokio::net::TcpStream::connect(ingress.https).await.is_ok() {
        assert!(stopped.elapsed() < Duration::from_secs(1), "the listener still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    echo(&mut ws, "in the grace").await.unwrap();
    ingress.proc.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("no Close 1001 after the second SIGTERM: {other:?}"),
    }
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    let exited = ingress.proc.stop();
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}\n{}",
        stopped.elapsed(),
        ingress.proc.log_tail(8)
    );
}
