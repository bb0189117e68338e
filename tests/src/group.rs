//! What the tests of more than one ingress share: a member's config (TLS on
//! 0.0.0.0:8443 in its namespace, fleets on another host of the lab, XDP
//! dropping on its carrier-facing interface, a `[group]` table), calls
//! from the carriers' namespace that record how they ended, and waits on
//! what the kernel shows (`ip addr`, `ip route`).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use testbed::config::{Check, IngressConfig, Pool, Server, Xdp};
use tokio_tungstenite::tungstenite::Message;

use crate::{Pki, TestDir, netns::call_from};

/// Where every member takes calls, in its own namespace.
pub const MEMBER_PORT: u16 = 8443;

/// A member of a group of ingresses.
pub struct Member<'a> {
    /// Pool `fleets`: `name`, address (SNI `localhost`).
    pub fleets: &'a [(&'a str, SocketAddr)],
    /// Each fleet's `maxconn`.
    pub maxconn: u32,
    /// XDP on this interface sheds `carriers` with DROP.
    pub interface: &'a str,
    pub carriers: &'a [&'a str],
    pub pins: &'a std::path::Path,
    /// A `[group]` table, or "".
    pub group: &'a str,
}

/// A member's config.
pub fn member_config(dir: &TestDir, pki: &Pki, m: &Member<'_>) -> String {
    let Member {
        fleets,
        maxconn,
        interface,
        carriers,
        pins,
        group,
    } = *m;
    let pool = fleets
        .iter()
        .fold(Pool::new("fleets").maxconn(maxconn), |p, (name, addr)| {
            p.server(Server::new(name, addr).sni("localhost"))
        })
        .tls_ca(&pki.ca_path)
        .check(Check::default().interval("200ms").timeout("500ms"));
    IngressConfig::new(format!("0.0.0.0:{MEMBER_PORT}"), &pki.certs_dir, dir.path("admin.sock"))
        .call_routes("fleets")
        .pool(pool)
        .xdp(Xdp::on(interface).carriers(carriers).lease("2s").pin_path(pins))
        .raw(group)
        .render()
}

/// How a call ended, as its carrier saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Still open (echoing) when asked.
    Open,
    /// A Close frame with this code came first.
    Closed(u16),
    /// The connection failed without a Close frame (reset, timeout).
    Broken(String),
}

/// A call from the carriers' namespace that sends a message every 100 ms,
/// reads all the time, and records how it ended.
pub struct Call {
    pub ended: Arc<Mutex<Ended>>,
    task: tokio::task::JoinHandle<()>,
}

impl Call {
    /// Opens `wss://{dst}/ws/{bot}` from `ns`; `Err` when the call could
    /// not be set up within `timeout`.
    pub async fn open(
        ns: &str,
        dst: SocketAddr,
        bot: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let mut ws = call_from(ns, dst, &format!("/ws/{bot}"), tls, timeout)
            .await
            .map_err(|e| e.to_string())?;
        let ended = Arc::new(Mutex::new(Ended::Open));
        let record = Arc::clone(&ended);
        let task = tokio::spawn(async move {
            use futures_util::SinkExt as _;
            // Reads all the time, as a carrier does: a Close is seen the
            // moment it arrives, not at the next send.
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut last_echo = Instant::now();
            let end = loop {
                tokio::select! {
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Text(_))) => last_echo = Instant::now(),
                        Some(Ok(Message::Pong(_) | Message::Ping(_) | Message::Binary(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Close(frame))) => {
                            break Ended::Closed(frame.map_or(1005, |f| u16::from(f.code)));
                        }
                        other => break Ended::Broken(format!("{other:?}")),
                    },
                    _ = tick.tick() => {
                        if last_echo.elapsed() > Duration::from_secs(3) {
                            break Ended::Broken("no echo for 3 s".to_owned());
                        }
                        if let Err(e) = ws.send(Message::text("ping")).await {
                            break Ended::Broken(format!("send: {e}"));
                        }
                    }
                }
            };
            *record.lock().unwrap() = end;
        });
        Ok(Self { ended, task })
    }

    /// `n` calls to `dst` from `ns`, one after the other (`wss://…/ws/{prefix}-{i}`); panics if one is not set up within `timeout`.
    pub async fn open_many(
        ns: &str,
        dst: SocketAddr,
        prefix: &str,
        n: usize,
        tls: &Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Vec<Self> {
        let mut calls = Vec::new();
        for i in 0..n {
            calls.push(
                Self::open(ns, dst, &format!("{prefix}-{i}"), Arc::clone(tls), timeout)
                    .await
                    .unwrap_or_else(|e| panic!("{prefix} call {i}: {e}")),
            );
        }
        calls
    }

    pub fn ended(&self) -> Ended {
        self.ended.lock().unwrap().clone()
    }

    /// Waits (up to `limit`) for the call to end; how it ended.
    pub async fn wait_end(&mut self, limit: Duration) -> Ended {
        let _ = tokio::time::timeout(limit, &mut self.task).await;
        self.ended()
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The code of a Close 1001 ("going away").
pub const GOING_AWAY: u16 = 1001;

/// What a stream of new calls saw.
#[derive(Debug, Default)]
pub struct Stream {
    pub tried: usize,
    /// Calls not set up, or broken in their first second.
    pub failed: Vec<String>,
    /// Calls set up and then closed with 1001 in their first second: how
    /// long after the stream began each one started.
    pub going_away: Vec<Duration>,
    pub slowest: Duration,
}

impl Stream {
    /// No new call failed, and only one dialled as a member began to leave
    /// (its SYN in before the drop was written) was set up there and closed
    /// with 1001.
    pub fn assert_no_new_call_failed(&self) {
        assert!(self.failed.is_empty(), "new calls failed: {:?}", self.failed);
        assert!(
            self.going_away.iter().all(|at| *at < Duration::from_millis(100)),
            "calls set up by the leaving member well after the stop: {:?}",
            self.going_away
        );
    }
}

/// New calls to `dst` from `ns`, one every `every` until `done` says stop,
/// each given `timeout` to be set up (SYN retransmits included) and then
/// kept for a second (a call set up by a member that is leaving gets its
/// 1001 at once).
pub async fn stream_of_calls(
    ns: &str,
    dst: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    every: Duration,
    timeout: Duration,
    done: impl Fn() -> bool,
) -> Stream {
    let begun = Instant::now();
    let mut pending = Vec::new();
    while !done() {
        let (ns, tls, bot) = (ns.to_owned(), Arc::clone(tls), format!("stream-{}", pending.len()));
        pending.push(tokio::spawn(async move {
            let (started, offset) = (Instant::now(), begun.elapsed());
            let call = Call::open(&ns, dst, &bot, tls, timeout)
                .await
                .map_err(|e| format!("{bot} after {:?}: {e}", started.elapsed()))?;
            let took = started.elapsed();
            observe(Duration::from_secs(1)).await;
            Ok::<_, String>((took, offset, call.ended(), bot))
        }));
        tokio::time::sleep(every).await;
    }
    let mut out = Stream {
        tried: pending.len(),
        ..Stream::default()
    };
    for p in pending {
        match p.await.map_err(|e| e.to_string()) {
            Ok(Ok((took, _, Ended::Open, _))) => out.slowest = out.slowest.max(took),
            Ok(Ok((_, offset, Ended::Closed(GOING_AWAY), _))) => out.going_away.push(offset),
            Ok(Ok((took, _, ended, bot))) => out.failed.push(format!("{bot} set up in {took:?}, then {ended:?}")),
            Ok(Err(e)) | Err(e) => out.failed.push(e),
        }
    }
    out
}

/// Lets the calls run for `span` (10 messages a second each): a call whose
/// packets a route change sent to another member breaks within it. A
/// measuring window, not a wait for an event.
pub async fn observe(span: Duration) {
    tokio::time::sleep(span).await;
}

/// Sets up a call to `dst` from `ns` every 50 ms (each given 500 ms) until
/// one succeeds; how long after `from` that was. Panics after `limit`.
pub async fn first_call(
    ns: &str,
    dst: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    from: Instant,
    limit: Duration,
) -> Duration {
    loop {
        if Call::open(ns, dst, "probe", Arc::clone(tls), Duration::from_millis(500))
            .await
            .is_ok()
        {
            return from.elapsed();
        }
        assert!(from.elapsed() < limit, "no call to {dst} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `what` every 20 ms until it holds; how long it took. Panics after `limit`.
pub async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Whether `addr` (e.g. "10.80.0.100") is on `dev` in namespace `ns`.
pub fn has_address(ns: &str, dev: &str, addr: &str) -> bool {
    testbed::lab::ip_out(ns, &["-o", "-4", "addr", "show", "dev", dev])
        .is_ok_and(|out| out.split_whitespace().any(|w| w.split('/').next() == Some(addr)))
}
