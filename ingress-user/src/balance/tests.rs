//! Unit tests of the balancer: capacity accounting, the four selection modes, slowstart, 429.

use std::sync::{Arc, atomic::Ordering::Relaxed};

use rustls::pki_types::ServerName;

use super::*;
use crate::model::{AdminState, ServerDef, ServerState};

use std::time::Instant;

fn server(id: u32, maxconn: u32) -> Arc<Server> {
    let def = ServerDef {
        name: format!("s{id}"),
        host: "127.0.0.1".into(),
        port: 443,
        sni: None,
        maxconn: None,
    };
    let s = Arc::new(Server::new(
        id,
        "p".into(),
        def,
        maxconn,
        ServerName::try_from("localhost").unwrap(),
        true,
    ));
    s.set_healthy(true);
    s
}

/// A pool from its config lines (TLS with no roots: never dialled here).
fn pool_from(lines: &str, servers: Vec<Arc<Server>>) -> Pool {
    let cfg: crate::config::PoolConfig = toml::from_str(lines).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Pool::new(0, "p".into(), &cfg, servers, Some(Arc::new(tls)))
}

fn pool(servers: Vec<Arc<Server>>) -> Pool {
    pool_from("", servers)
}

#[test]
fn effective_capacity_is_the_smaller_of_maxconn_and_report() {
    let s = server(1, 16);
    assert_eq!(s.state(), ServerState::Full, "no report yet means no capacity");
    s.report_capacity(20);
    assert_eq!(
        s.effective(),
        16,
        "a report above maxconn is capped by maxconn, not refused"
    );
    assert_eq!(s.state(), ServerState::Up);
    s.report_capacity(2);
    assert_eq!(s.effective(), 2);
    s.report_capacity(0);
    assert_eq!(s.state(), ServerState::Full, "a report of 0 is FULL at once");
}

#[test]
fn routing_uses_up_reported_capacity_before_the_next_report() {
    let s = server(1, 16);
    s.report_capacity(2);
    let p = pool(vec![Arc::clone(&s)]);
    let a = p.pick(&Hints::default(), &[]).unwrap();
    let b = p.pick(&Hints::default(), &[]).unwrap();
    assert!(
        p.pick(&Hints::default(), &[]).is_none(),
        "two reported, two routed: FULL"
    );
    assert_eq!(s.state(), ServerState::Full);
    drop(b); // never accepted: capacity comes back
    assert_eq!(s.effective(), 1);
    drop(a); // a call that ended holds no worker either
    assert_eq!(s.active(), 0);
    assert_eq!(s.effective(), 2);
}

#[test]
fn short_calls_never_use_up_a_report() {
    // 16 workers reported free; 100 calls open and end in a row before the
    // next report: each one finds the fleet UP (it never held more than one).
    let s = server(1, 16);
    s.report_capacity(16);
    let p = pool(vec![Arc::clone(&s)]);
    for i in 0..100 {
        let call = p
            .pick(&Hints::default(), &[])
            .unwrap_or_else(|| panic!("call {i} refused"));
        drop(call);
    }
    assert_eq!(s.routed_since_report(), 0);
    assert_eq!(s.effective(), 16);
}

#[test]
fn a_call_from_before_the_report_does_not_free_capacity_when_it_ends() {
    let s = server(1, 16);
    s.report_capacity(4);
    let p = pool(vec![Arc::clone(&s)]);
    let old = p.pick(&Hints::default(), &[]).unwrap();
    // The fleet's next report already counts that call as busy.
    s.report_capacity(3);
    let new = p.pick(&Hints::default(), &[]).unwrap();
    assert_eq!(s.routed_since_report(), 1);
    drop(old);
    assert_eq!(s.routed_since_report(), 1, "only calls of this window leave its count");
    drop(new);
    assert_eq!(s.routed_since_report(), 0);
    // A 429 is a report of 0: what was routed before it does not count against it later.
    let c = p.pick(&Hints::default(), &[]).unwrap();
    s.saw_429();
    drop(c);
    assert_eq!((s.routed_since_report(), s.effective()), (0, 0));
}

#[test]
fn leastconn_spreads_evenly_and_skips_full_servers() {
    let (a, b) = (server(1, 16), server(2, 16));
    a.report_capacity(16);
    b.report_capacity(16);
    let p = pool(vec![Arc::clone(&a), Arc::clone(&b)]);
    let leases: Vec<_> = (0..20).map(|_| p.pick(&Hints::default(), &[]).unwrap()).collect();
    assert_eq!((a.active(), b.active()), (10, 10));
    a.report_capacity(0);
    let more: Vec<_> = (0..3).map(|_| p.pick(&Hints::default(), &[]).unwrap()).collect();
    assert!(more.iter().all(|l| l.server.id == 2));
    drop(leases);
}

#[test]
fn drained_and_excluded_servers_are_not_picked() {
    let (a, b) = (server(1, 16), server(2, 16));
    a.report_capacity(5);
    b.report_capacity(5);
    a.set_admin_state(AdminState::Drain);
    let p = pool(vec![Arc::clone(&a), Arc::clone(&b)]);
    assert_eq!(p.pick(&Hints::default(), &[]).unwrap().server.id, 2);
    assert!(p.pick(&Hints::default(), &[2]).is_none());
}

fn pool_with(balance: &str, servers: Vec<Arc<Server>>) -> Pool {
    pool_from(&format!("balance = \"{balance}\"\nslowstart = \"10s\""), servers)
}

fn up(id: u32) -> Arc<Server> {
    let s = server(id, 1_000_000);
    s.report_capacity(1_000_000);
    s
}

#[test]
fn roundrobin_is_exact() {
    let servers: Vec<_> = (1..=3).map(up).collect();
    let p = pool_with("roundrobin", servers.clone());
    for _ in 0..300 {
        drop(p.pick(&Hints::default(), &[]).unwrap());
    }
    assert!(servers.iter().all(|s| s.live().sessions_total.load(Relaxed) == 100));
}

#[test]
fn plain_requests_hold_a_slot_but_take_no_reported_capacity() {
    let a = server(1, 2);
    a.report_capacity(1);
    let p = pool_with("roundrobin", vec![Arc::clone(&a)]);
    let request = Hints {
        demand: Demand::Request,
        ..Hints::default()
    };
    for _ in 0..500 {
        drop(
            p.pick(&request, &[])
                .expect("requests do not use up the fleet's workers"),
        );
    }
    assert_eq!(a.effective(), 1, "the one free worker is still there for a call");
    let held = [p.pick(&request, &[]).unwrap(), p.pick(&request, &[]).unwrap()];
    assert!(p.pick(&request, &[]).is_none(), "maxconn bounds requests in flight");
    assert!(p.pick(&Hints::default(), &[]).is_none(), "and calls");
    drop(held);
    let _call = p.pick(&Hints::default(), &[]).unwrap();
    assert_eq!(a.state(), ServerState::Full);
    assert!(
        p.pick(&Hints::default(), &[]).is_none(),
        "no second call on a FULL fleet"
    );
    let _r = p.pick(&request, &[]).expect("a FULL fleet still answers its API");
    a.set_healthy(false);
    assert!(p.pick(&request, &[]).is_none(), "a DOWN one does not");
}

fn owners(p: &Pool, keys: &[String]) -> Vec<u32> {
    keys.iter()
        .map(|k| {
            let hints = Hints {
                hash_key: Some(k),
                ..Hints::default()
            };
            p.pick(&hints, &[]).unwrap().server.id
        })
        .collect()
}

#[test]
fn consistent_hashing_moves_about_one_nth() {
    let keys: Vec<String> = (0..10_000).map(|i| format!("/stream/track-{i}")).collect();
    let five: Vec<_> = (1..=5).map(up).collect();
    let before = owners(&pool_with("uri-hash", five.clone()), &keys);
    let mut six = five.clone();
    six.push(up(6));
    let after = owners(&pool_with("uri-hash", six.clone()), &keys);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert!(
        moved as f64 <= 10_000.0 * (1.0 / 6.0 + 0.05),
        "{moved} of 10000 keys moved"
    );
    assert!(
        after.iter().zip(&before).all(|(a, b)| a == b || *a == 6),
        "keys only move to the new server"
    );
    assert_eq!(
        owners(&pool_with("uri-hash", five), &keys),
        before,
        "remove it: every key returns"
    );
    // A down server's keys go elsewhere and come back.
    six[0].set_healthy(false);
    let degraded = owners(&pool_with("uri-hash", six.clone()), &keys);
    assert!(degraded.iter().all(|o| *o != 1));
    six[0].set_healthy(true);
    assert_eq!(owners(&pool_with("uri-hash", six), &keys), after);
}

#[test]
fn cookie_pins_and_ignores_a_down_pin() {
    let servers: Vec<_> = (1..=3).map(up).collect();
    let p = pool_with("cookie", servers.clone());
    let pin = servers[2].cookie_id.clone();
    let hints = Hints {
        sticky: Some(&pin),
        ..Hints::default()
    };
    for _ in 0..10 {
        assert_eq!(p.pick(&hints, &[]).unwrap().server.id, 3);
    }
    servers[2].set_admin_state(AdminState::Drain);
    assert_ne!(p.pick(&hints, &[]).unwrap().server.id, 3, "a drained pin is ignored");
    let unknown = Hints {
        sticky: Some("nonsense"),
        ..Hints::default()
    };
    assert!(p.pick(&unknown, &[]).is_some());
}

#[test]
fn slowstart_ramps_a_recovered_server() {
    let servers: Vec<_> = (1..=2).map(up).collect();
    let p = pool_with("roundrobin", servers.clone());
    *servers[1].live().recovered_at.lock().unwrap() = Some(Instant::now() - std::time::Duration::from_secs(2));
    let share = |p: &Pool| {
        let mut n = 0;
        for _ in 0..1000 {
            let l = p.pick(&Hints::default(), &[]).unwrap();
            n += usize::from(l.server.id == 2);
        }
        n
    };
    let early = share(&p);
    *servers[1].live().recovered_at.lock().unwrap() = Some(Instant::now() - std::time::Duration::from_secs(8));
    let late = share(&p);
    *servers[1].live().recovered_at.lock().unwrap() = Some(Instant::now() - std::time::Duration::from_secs(20));
    let done = share(&p);
    assert!(
        early < late && late < done,
        "share grows over the window: {early} < {late} < {done}"
    );
    assert!(
        early < 250,
        "20% into the window: about a fifth of its share, got {early}/1000"
    );
    assert!(
        (480..=520).contains(&done),
        "after the window: its full half, got {done}"
    );
}

#[test]
fn a_429_makes_the_server_full() {
    let s = server(1, 16);
    s.report_capacity(9);
    s.saw_429();
    assert_eq!(s.state(), ServerState::Full);
}

#[test]
fn calls_routed_while_a_probe_is_out_count_against_its_answer() {
    let s = server(1, 16);
    s.report_capacity(4);
    let before = Lease::take(&s, Demand::Call).unwrap();
    s.probe_sent();
    // Routed after the probe left: the fleet may have answered before they arrived.
    let during: Vec<Lease> = (0..2).map(|_| Lease::take(&s, Demand::Call).unwrap()).collect();
    assert_eq!(
        s.effective(),
        1,
        "until the answer, every call since the last report counts"
    );
    s.report_capacity(4); // written before the two calls reached the fleet, after the first
    assert_eq!(
        s.effective(),
        2,
        "the answer is short of the calls routed after the probe was sent"
    );
    drop(before);
    assert_eq!(s.effective(), 2, "a call the answer already saw leaves no count behind");
    drop(during);
    assert_eq!(s.effective(), 4);
    // A probe that brings no report leaves its window counted.
    let held = Lease::take(&s, Demand::Call).unwrap();
    s.probe_sent();
    s.probe_sent();
    assert_eq!(s.effective(), 3);
    drop(held);
    s.report_capacity(4);
    assert_eq!(s.effective(), 4);
}

#[test]
fn calls_held_by_the_replaced_process_take_maxconn_slots_and_fresh_ones_count_until_the_next_report() {
    let s = server(1, 10);
    // The report came after the new process started: it saw the old
    // process's calls, except one routed after it was taken.
    s.report_capacity(3);
    let p = pool(vec![Arc::clone(&s)]);
    // The old process holds 6 here, 1 of them routed since this process
    // started: 4 maxconn slots are left, and 2 of the report (3 − 1 fresh).
    s.inherit(6, 1);
    assert_eq!(s.effective(), 2);
    let held: Vec<_> = (0..2).map(|_| p.pick(&Hints::default(), &[]).unwrap()).collect();
    assert!(p.pick(&Hints::default(), &[]).is_none(), "report 3: 1 fresh + 2 routed");
    // The same count said again changes nothing; a call it was still
    // setting up counts against this report too.
    s.inherit(6, 1);
    assert_eq!(s.effective(), 0);
    s.inherit(7, 2);
    assert_eq!(
        s.effective(),
        0,
        "maxconn 10 − 7 inherited − 2 active = 1, report 3 − 2 − 2 < 0"
    );
    // A new report sees them all: only maxconn still counts the old calls.
    s.report_capacity(5);
    assert_eq!(s.effective(), 1, "min(10 − 7 − 2, 5)");
    // Old calls end: their slots come back.
    s.inherit(1, 0);
    assert_eq!(s.effective(), 5, "min(10 − 1 − 2, report 5)");
    s.inherit(0, 0);
    drop(held);
    assert_eq!(s.effective(), 5);
}
