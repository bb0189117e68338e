//! Shared by both paths: a server's live state (atomics the data path reads
//! and updates without locks; the health checker writes reports) and the
//! capacity-aware pick. The pick is synchronous and never waits on the
//! control path.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::{Instant, SystemTime},
};

use rustls::pki_types::ServerName;
use serde::Serialize;

use crate::config::{Balance, CheckConfig, RetryOn, ServerDef};

/// A server's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Healthy with at least one free worker.
    Up,
    /// Healthy, no free worker (reported 0, used up by our routing, or at maxconn).
    Full,
    /// Failed `fall` checks in a row (or not checked yet).
    Down,
    /// Set by an operator: no new calls, live ones continue.
    Drain,
    /// Set by an operator: out of service.
    Maint,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "UP",
            State::Full => "FULL",
            State::Down => "DOWN",
            State::Drain => "DRAIN",
            State::Maint => "MAINT",
        }
    }

    /// The value stored in the BPF `FLEETS` map.
    pub fn bpf_code(self) -> u32 {
        use ingress_common::fleet_state as s;
        match self {
            State::Up => s::UP,
            State::Full => s::FULL,
            State::Down => s::DOWN,
            State::Drain => s::DRAIN,
            State::Maint => s::MAINT,
        }
    }

    pub const ALL: [State; 5] = [State::Up, State::Full, State::Down, State::Drain, State::Maint];
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Operator-set state, independent of health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminState {
    Ready = 0,
    Drain = 1,
    Maint = 2,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ready" => Some(AdminState::Ready),
            "drain" => Some(AdminState::Drain),
            "maint" => Some(AdminState::Maint),
            _ => None,
        }
    }
}

/// The last health check as shown by `stat`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckStatus {
    pub ok: bool,
    pub reason: String,
    pub latency_ms: Option<f64>,
    /// Seconds since the Unix epoch.
    pub at: Option<f64>,
}

impl Default for CheckStatus {
    fn default() -> Self {
        Self {
            ok: false,
            reason: "not checked yet".to_owned(),
            latency_ms: None,
            at: None,
        }
    }
}

const NONE: u32 = u32::MAX;

/// One fleet server of one pool.
pub struct Server {
    /// Unique across the daemon's life (also the key in the BPF `FLEETS` map).
    pub id: u32,
    pub pool: Arc<str>,
    pub def: ServerDef,
    pub maxconn: u32,
    /// TLS server name sent to it.
    pub server_name: ServerName<'static>,
    /// Whether the pool reads capacity from the health body.
    pub capacity_aware: bool,
    /// Opaque stable id used as the sticky cookie's value.
    pub cookie_id: String,
    /// Counters and health, shared with the server this one replaced on a
    /// reload (same pool and name), so live calls stay counted.
    live: Arc<Live>,
}

/// The live part of a server: carried over by key across reloads.
pub struct Live {
    /// Tunnels held (and upgrade attempts in flight).
    active: AtomicU32,
    /// Calls routed since the last capacity report.
    routed_since_report: AtomicU32,
    /// Last reported spare capacity, or `NONE`.
    reported: AtomicU32,
    healthy: AtomicU8,
    admin: AtomicU8,
    /// Calls ever routed here.
    pub sessions_total: AtomicU64,
    /// 429s this server answered.
    pub answered_429: AtomicU64,
    /// TLS handshakes with the server: full, and resumed from a session it issued.
    pub tls_full: AtomicU64,
    pub tls_resumed: AtomicU64,
    pub check: Mutex<CheckStatus>,
    pub last_report: Mutex<Option<Instant>>,
    /// Fired to cut this server's tunnels (removal with `--now`, shutdown-sessions).
    pub cut: tokio::sync::Notify,
    /// Health-check latency, seconds.
    pub check_latency: prometheus_client::metrics::histogram::Histogram,
    /// When the server last came back UP after being DOWN (slowstart).
    pub recovered_at: Mutex<Option<Instant>>,
    /// Idle keep-alive connections for `http` routes.
    pub idle_http: Mutex<Vec<hyper::client::conn::http1::SendRequest<hyper::body::Incoming>>>,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live")
            .field("active", &self.active)
            .field("reported", &self.reported)
            .finish()
    }
}

impl std::ops::Deref for Server {
    type Target = Live;
    fn deref(&self) -> &Live {
        &self.live
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("pool", &self.pool)
            .field("name", &self.def.name)
            .finish()
    }
}

impl Server {
    pub fn new(
        id: u32,
        pool: Arc<str>,
        def: ServerDef,
        maxconn: u32,
        server_name: ServerName<'static>,
        capacity_aware: bool,
    ) -> Self {
        Self {
            id,
            pool,
            def,
            maxconn,
            server_name,
            capacity_aware,
            live: Arc::new(Live {
                active: AtomicU32::new(0),
                routed_since_report: AtomicU32::new(0),
                reported: AtomicU32::new(NONE),
                healthy: AtomicU8::new(0),
                admin: AtomicU8::new(AdminState::Ready as u8),
                sessions_total: AtomicU64::new(0),
                answered_429: AtomicU64::new(0),
                tls_full: AtomicU64::new(0),
                tls_resumed: AtomicU64::new(0),
                check: Mutex::new(CheckStatus::default()),
                last_report: Mutex::new(None),
                cut: tokio::sync::Notify::new(),
                check_latency: crate::metrics::check_latency_histogram(),
                recovered_at: Mutex::new(None),
                idle_http: Mutex::new(Vec::new()),
            }),
            cookie_id: String::new(),
        }
        .with_cookie_id()
    }

    fn with_cookie_id(mut self) -> Self {
        self.cookie_id = format!(
            "{:016x}",
            stable_hash(&[self.pool.as_bytes(), self.def.name.as_bytes()])
        );
        self
    }

    /// Share of new calls this server takes, 0..=1, ramping over `window` after a recovery.
    pub fn slowstart_factor(&self, window: Option<std::time::Duration>) -> f64 {
        let Some(window) = window.filter(|w| !w.is_zero()) else {
            return 1.0;
        };
        match *self.recovered_at.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(at) => (at.elapsed().as_secs_f64() / window.as_secs_f64()).clamp(0.05, 1.0),
            None => 1.0,
        }
    }

    /// A new definition of `old` (same pool and name): same id, same live state.
    pub fn replacing(
        old: &Server,
        def: ServerDef,
        maxconn: u32,
        server_name: ServerName<'static>,
        capacity_aware: bool,
    ) -> Self {
        Self {
            id: old.id,
            pool: Arc::clone(&old.pool),
            def,
            maxconn,
            server_name,
            capacity_aware,
            cookie_id: old.cookie_id.clone(),
            live: Arc::clone(&old.live),
        }
    }

    pub fn name(&self) -> &str {
        &self.def.name
    }

    pub fn active(&self) -> u32 {
        self.active.load(Relaxed)
    }

    /// Last reported capacity, `None` before the first report (or liveness-only).
    pub fn reported(&self) -> Option<u32> {
        match self.reported.load(Relaxed) {
            NONE => None,
            n => Some(n),
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed) != 0
    }

    pub fn admin_state(&self) -> AdminState {
        match self.admin.load(Relaxed) {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }

    pub fn set_admin_state(&self, s: AdminState) {
        self.admin.store(s as u8, Relaxed);
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(u8::from(healthy), Relaxed);
    }

    /// `min(maxconn − active, reported − routed_since_report)`.
    pub fn effective(&self) -> u32 {
        let free = self.maxconn.saturating_sub(self.active.load(Relaxed));
        if !self.capacity_aware {
            return free;
        }
        match self.reported.load(Relaxed) {
            NONE => 0,
            r => free.min(r.saturating_sub(self.routed_since_report.load(Relaxed))),
        }
    }

    pub fn state(&self) -> State {
        match self.admin_state() {
            AdminState::Maint => State::Maint,
            AdminState::Drain => State::Drain,
            AdminState::Ready if !self.healthy() => State::Down,
            AdminState::Ready if self.effective() == 0 => State::Full,
            AdminState::Ready => State::Up,
        }
    }

    /// A fresh capacity report from the health checker.
    pub fn report_capacity(&self, available: u32) {
        self.reported.store(available.min(NONE - 1), Relaxed);
        self.routed_since_report.store(0, Relaxed);
        *self.last_report.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// The fleet answered 429: it has no free worker, whatever it reported.
    pub fn saw_429(&self) {
        self.answered_429.fetch_add(1, Relaxed);
        if self.capacity_aware {
            self.reported.store(0, Relaxed);
            self.routed_since_report.store(0, Relaxed);
        }
    }

    /// A connect or TLS failure seen by the data path: out of rotation at
    /// once, back with the next good health check (so a hung fleet costs at
    /// most one call one connect timeout).
    pub fn passive_failure(&self, reason: &str) {
        self.set_healthy(false);
        self.record_check(false, format!("connection failed: {reason}"), None);
    }

    /// Whether a new `demand` may go here: a call needs UP; a plain HTTP
    /// request needs a healthy, ready server with a free `maxconn` slot (a
    /// FULL fleet has no free call worker, but still answers its API).
    fn accepts(&self, demand: Demand) -> bool {
        match demand {
            Demand::Call => self.state() == State::Up,
            Demand::Request => {
                self.admin_state() == AdminState::Ready && self.healthy() && self.active() < self.maxconn
            }
        }
    }

    /// Takes one `maxconn` slot, and for a call one unit of reported
    /// capacity; false when there is none left.
    fn try_reserve(&self, demand: Demand) -> bool {
        let took_active = self
            .active
            .fetch_update(Relaxed, Relaxed, |a| (a < self.maxconn).then_some(a + 1))
            .is_ok();
        if !took_active {
            return false;
        }
        if self.capacity_aware && demand == Demand::Call {
            let took_capacity = self
                .routed_since_report
                .fetch_update(Relaxed, Relaxed, |r| match self.reported.load(Relaxed) {
                    NONE => None,
                    rep => (r < rep).then_some(r + 1),
                })
                .is_ok();
            if !took_capacity {
                self.active.fetch_sub(1, Relaxed);
                return false;
            }
        }
        self.sessions_total.fetch_add(1, Relaxed);
        true
    }

    /// Gives back a reservation whose call never reached the fleet's worker.
    fn unreserve(&self) {
        let _ = self
            .routed_since_report
            .fetch_update(Relaxed, Relaxed, |r| r.checked_sub(1));
        let _ = self.active.fetch_update(Relaxed, Relaxed, |a| a.checked_sub(1));
    }

    fn release(&self) {
        let _ = self.active.fetch_update(Relaxed, Relaxed, |a| a.checked_sub(1));
    }

    /// Check result for `stat`.
    pub fn record_check(&self, ok: bool, reason: String, latency_ms: Option<f64>) {
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .ok();
        *self.check.lock().unwrap_or_else(|e| e.into_inner()) = CheckStatus {
            ok,
            reason,
            latency_ms,
            at,
        };
    }

    pub fn check_status(&self) -> CheckStatus {
        self.check.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What is being placed. A call holds one of the fleet's workers, so it
/// takes reported capacity; a plain HTTP request (route kind `http`) is
/// answered by the fleet's web tier and only holds a `maxconn` slot while
/// it is in flight.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    #[default]
    Call,
    Request,
}

/// What a request tells the pick: the hash key (uri-hash), the sticky
/// cookie's value, and whether it is a call or a plain request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hints<'a> {
    pub hash_key: Option<&'a str>,
    pub sticky: Option<&'a str>,
    pub demand: Demand,
}

/// A hash that is the same in every process and release (rendezvous hashing, cookie ids).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    // FNV-1a, then a final mix so that similar keys spread.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A reserved slot on a server; dropping it releases the slot.
#[derive(Debug)]
pub struct Lease {
    pub server: Arc<Server>,
    /// Set once the fleet accepted the call (101): from then on dropping
    /// releases `active` only; before, it gives the capacity back too.
    accepted: bool,
    demand: Demand,
}

impl Lease {
    /// A lease on a slot `try_reserve` just took.
    fn new(server: &Arc<Server>, demand: Demand) -> Self {
        Self {
            server: Arc::clone(server),
            accepted: false,
            demand,
        }
    }

    pub fn accepted(&mut self) {
        self.accepted = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.accepted || self.demand == Demand::Request {
            self.server.release();
        } else {
            self.server.unreserve();
        }
    }
}

/// A pool as the data path sees it: settings plus its servers.
pub struct Pool {
    pub index: usize,
    pub name: Arc<str>,
    pub balance: Balance,
    pub retry_on: Vec<RetryOn>,
    pub retries: u32,
    pub check: CheckConfig,
    pub servers: arc_swap::ArcSwap<Vec<Arc<Server>>>,
    rotation: AtomicU32,
    /// Calls answered 503 because no server had capacity.
    pub no_capacity_total: AtomicU64,
    /// Upgrade attempts retried on another server.
    pub retries_total: AtomicU64,
    /// 429s handed to carriers (every candidate refused, or 429 not retried).
    pub passed_429_total: AtomicU64,
    /// TLS towards the servers; None for `tls = false`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Per server (by id): `tls` with a session cache of its own. rustls
    /// keys resumption by server name, and servers of a pool may share one
    /// (or an IP); a shared cache would offer one fleet's tickets to another
    /// and fall back to full handshakes. Built with the pool, so a reload
    /// (a changed `[tls]` included) never resumes old sessions.
    server_tls: std::collections::HashMap<u32, Arc<rustls::ClientConfig>>,
    pub hash_key: String,
    pub cookie: String,
    pub slowstart: Option<std::time::Duration>,
    pub on_marked_down: crate::config::OnMarkedDown,
    /// State of the slowstart coin (xorshift).
    coin: AtomicU64,
    /// The pool's `tls.sni` (servers without their own).
    pub tls_sni: Option<String>,
    /// The pool's default per-server `maxconn`.
    pub maxconn: u32,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).finish()
    }
}

impl Pool {
    pub fn new(
        index: usize,
        name: Arc<str>,
        cfg: &crate::config::PoolConfig,
        servers: Vec<Arc<Server>>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let server_tls = match &tls {
            Some(base) => servers
                .iter()
                .map(|s| {
                    let mut c = rustls::ClientConfig::clone(base);
                    // One server name per cache; rustls keeps up to 8 TLS 1.3 tickets per name.
                    c.resumption = rustls::client::Resumption::in_memory_sessions(4);
                    (s.id, Arc::new(c))
                })
                .collect(),
            None => std::collections::HashMap::new(),
        };
        Self {
            index,
            name,
            balance: cfg.balance,
            retry_on: cfg.retry_on.clone(),
            retries: cfg.retries,
            check: cfg.check.clone(),
            servers: arc_swap::ArcSwap::from_pointee(servers),
            rotation: AtomicU32::new(0),
            no_capacity_total: AtomicU64::new(0),
            retries_total: AtomicU64::new(0),
            passed_429_total: AtomicU64::new(0),
            tls,
            server_tls,
            hash_key: cfg.hash_key.clone(),
            cookie: cfg.cookie.clone(),
            slowstart: cfg.slowstart.map(|d| d.0),
            on_marked_down: cfg.on_marked_down,
            coin: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            tls_sni: cfg.tls.settings().and_then(|t| t.sni),
            maxconn: cfg.maxconn,
        }
    }

    /// Keeps the counters of the pool this one replaces (reload).
    pub fn carry_counters(&self, old: &Pool) {
        for (new, old) in [
            (&self.no_capacity_total, &old.no_capacity_total),
            (&self.retries_total, &old.retries_total),
            (&self.passed_429_total, &old.passed_429_total),
        ] {
            new.store(old.load(Relaxed), Relaxed);
        }
    }

    pub fn retries_on(&self, r: RetryOn) -> bool {
        self.retry_on.contains(&r)
    }

    /// Sum of effective capacity of servers that take new calls.
    pub fn total_effective(&self) -> u64 {
        self.servers
            .load()
            .iter()
            .filter(|s| s.state() == State::Up)
            .map(|s| u64::from(s.effective()))
            .sum()
    }

    /// A uniform draw in [0, 1) (xorshift; quality is irrelevant here).
    fn coin(&self) -> f64 {
        let next = self
            .coin
            .fetch_update(Relaxed, Relaxed, |mut x| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Some(x)
            })
            .unwrap_or(1);
        (next >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks and reserves a server that is UP and not in `exclude`, by the
    /// pool's balance mode (`hints` carries the hash key and the sticky
    /// cookie). Servers in slowstart are passed over with a probability that
    /// shrinks over the window, unless nothing else is left.
    pub fn pick(&self, hints: &Hints<'_>, exclude: &[u32]) -> Option<Lease> {
        let servers = self.servers.load();
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let mut skip: Vec<u32> = exclude.to_vec();
        if self.balance == Balance::Cookie
            && let Some(pin) = hints.sticky
            && let Some(s) = servers.iter().find(|s| s.cookie_id == pin && !skip.contains(&s.id))
            && s.accepts(hints.demand)
        {
            if s.try_reserve(hints.demand) {
                return Some(Lease::new(s, hints.demand));
            }
            skip.push(s.id);
        }
        let start = self.rotation.fetch_add(1, Relaxed) as usize % n;
        let mut passed_over: Option<&Arc<Server>> = None;
        // Bounded: each round removes one candidate.
        for _ in 0..n {
            let eligible = |s: &&Arc<Server>| !skip.contains(&s.id) && s.accepts(hints.demand);
            let chosen = match self.balance {
                Balance::Leastconn | Balance::Cookie => {
                    let mut best: Option<(&Arc<Server>, u32, u32)> = None;
                    for i in 0..n {
                        let s = &servers[(start + i) % n];
                        if !eligible(&s) {
                            continue;
                        }
                        let (active, eff) = (s.active(), s.effective());
                        if best.is_none_or(|(_, a, e)| active < a || (active == a && eff > e)) {
                            best = Some((s, active, eff));
                        }
                    }
                    best.map(|(s, _, _)| s)
                }
                Balance::Roundrobin => (0..n).map(|i| &servers[(start + i) % n]).find(eligible),
                Balance::UriHash => {
                    let key = hints.hash_key.unwrap_or("");
                    servers
                        .iter()
                        .filter(eligible)
                        .max_by_key(|s| stable_hash(&[key.as_bytes(), s.def.name.as_bytes()]))
                }
            };
            let server = chosen.or(passed_over.take())?;
            let factor = server.slowstart_factor(self.slowstart);
            if factor < 1.0 && self.balance != Balance::UriHash && passed_over.is_none() && self.coin() >= factor {
                passed_over = Some(server);
                skip.push(server.id);
                continue;
            }
            if server.try_reserve(hints.demand) {
                return Some(Lease::new(server, hints.demand));
            }
            skip.push(server.id);
        }
        passed_over
            .filter(|s| s.try_reserve(hints.demand))
            .map(|s| Lease::new(s, hints.demand))
    }

    /// The TLS config to reach `server` with (None for `tls = false`); a
    /// server not in the pool yet (an `add` being checked) gets the pool's.
    pub fn client_tls(&self, server: &Server) -> Option<Arc<rustls::ClientConfig>> {
        self.server_tls.get(&server.id).or(self.tls.as_ref()).cloned()
    }

    /// The server with the most effective capacity (for outbound dialers), without reserving.
    pub fn most_capacity(&self) -> Option<Arc<Server>> {
        self.servers
            .load()
            .iter()
            .filter(|s| s.state() == State::Up)
            .max_by_key(|s| s.effective())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.state(), State::Full, "no report yet means no capacity");
        s.report_capacity(20);
        assert_eq!(
            s.effective(),
            16,
            "a report above maxconn is capped by maxconn, not refused"
        );
        assert_eq!(s.state(), State::Up);
        s.report_capacity(2);
        assert_eq!(s.effective(), 2);
        s.report_capacity(0);
        assert_eq!(s.state(), State::Full, "a report of 0 is FULL at once");
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
        assert_eq!(s.state(), State::Full);
        drop(b); // never accepted: capacity comes back
        assert_eq!(s.effective(), 1);
        let mut a = a;
        a.accepted();
        drop(a);
        assert_eq!(s.active(), 0);
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
            let mut l = p.pick(&Hints::default(), &[]).unwrap();
            l.accepted();
        }
        assert!(servers.iter().all(|s| s.sessions_total.load(Relaxed) == 100));
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
        let mut call = p.pick(&Hints::default(), &[]).unwrap();
        call.accepted();
        assert_eq!(a.state(), State::Full);
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
        *servers[1].recovered_at.lock().unwrap() = Some(Instant::now() - std::time::Duration::from_secs(2));
        let share = |p: &Pool| {
            let mut n = 0;
            for _ in 0..1000 {
                let mut l = p.pick(&Hints::default(), &[]).unwrap();
                l.accepted();
                n += usize::from(l.server.id == 2);
            }
            n
        };
        let early = share(&p);
        *servers[1].recovered_at.lock().unwrap() = Some(Instant::now() - std::time::Duration::from_secs(8));
        let late = share(&p);
        *servers[1].recovered_at.lock().unwrap() = Some(Instant::now() - std::time::Duration::from_secs(20));
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
        assert_eq!(s.state(), State::Full);
    }
}
