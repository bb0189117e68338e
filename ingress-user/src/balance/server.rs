//! Balancer: one fleet server — its definition and the live counters the data
//! path reads and updates without locks (the health checker writes reports).
//! The live part is carried over by key across reloads.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

use super::CheckStatus;
use rustls::pki_types::ServerName;

use super::{Demand, stable_hash};
use crate::{
    model::{AdminState, ServerDef, ServerState},
    telemetry,
};

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
    /// Calls held here by the process this one replaced (a binary
    /// upgrade), as it last said: they take `maxconn` slots until they end.
    inherited: AtomicU32,
    /// Of those, the ones it routed after this process was started (the
    /// reports here may not have seen them), as it last said.
    inherited_fresh: AtomicU32,
    /// Calls routed since the last capacity report that are still open:
    /// the report's epoch in the high 32 bits, the count in the low ones,
    /// so that a call ending after the next report never touches its count.
    routed: AtomicU64,
    /// While a probe is out: the calls of the window before it was sent
    /// that are still open (same layout). The answer may have been written
    /// before or after they reached the fleet, so until it comes they
    /// count, and once it comes only the calls routed after the probe was
    /// sent still do (a report never over-states, at worst for one interval).
    carried: AtomicU64,
    /// A probe has been sent and its report not yet taken.
    probe_out: AtomicBool,
    /// Slots held for outbound dialers (`POST /api/pick`).
    pub(super) held: AtomicU32,
    /// When the outstanding probe was sent; and the probe the last report
    /// answered (a hold ends on a report that can show its dialer's call).
    probe_at: Mutex<Option<Instant>>,
    pub(super) reported_probe_at: Mutex<Option<Instant>>,
    /// Last reported spare capacity, or `NONE`.
    reported: AtomicU32,
    healthy: AtomicU8,
    admin: AtomicU8,
    /// Calls ever routed here.
    pub sessions_total: AtomicU64,
    /// Calls ever upgraded here (the fleet answered 101).
    upgraded_total: AtomicU64,
    /// The server's answers to upgrades (101 included), by status.
    pub answers: telemetry::StatusCounts,
    /// TLS handshakes with the server, by [TLS 1.3, 1.2] and [full,
    /// resumed from a session it issued].
    pub tls_handshakes: [[AtomicU64; 2]; 2],
    /// Passive failures so far (connect or TLS failures of calls): a kept
    /// health-check connection made before the latest one is not used.
    pub passive_failures: AtomicU64,
    pub check: Mutex<CheckStatus>,
    pub last_report: Mutex<Option<Instant>>,
    /// Bumped to end this server's calls with a Close 1001 (removal with
    /// `--now`, shutdown-sessions, `drain --close-after`): every call that
    /// began at an older one ends; `end_calls` wakes them.
    end_epoch: AtomicU64,
    end_calls: tokio::sync::Notify,
    /// Bumped on every admin state change (a `--close-after` timer fires
    /// only if none came since it was set).
    admin_changes: AtomicU64,
    /// Health-check latency, seconds.
    pub check_latency: prometheus_client::metrics::histogram::Histogram,
    /// Calls' connects (TCP and TLS) to the server, seconds.
    pub connect_latency: prometheus_client::metrics::histogram::Histogram,
    /// Upgrade sent to the server's answer head, seconds.
    pub upgrade_latency: prometheus_client::metrics::histogram::Histogram,
    /// When the server last came back UP after being DOWN (slowstart).
    pub recovered_at: Mutex<Option<Instant>>,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live")
            .field("active", &self.active)
            .field("reported", &self.reported)
            .finish()
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
                inherited: AtomicU32::new(0),
                inherited_fresh: AtomicU32::new(0),
                routed: AtomicU64::new(0),
                carried: AtomicU64::new(0),
                probe_out: AtomicBool::new(false),
                held: AtomicU32::new(0),
                probe_at: Mutex::new(None),
                reported_probe_at: Mutex::new(None),
                reported: AtomicU32::new(NONE),
                healthy: AtomicU8::new(0),
                admin: AtomicU8::new(AdminState::Ready as u8),
                sessions_total: AtomicU64::new(0),
                upgraded_total: AtomicU64::new(0),
                answers: telemetry::StatusCounts::default(),
                tls_handshakes: Default::default(),
                passive_failures: AtomicU64::new(0),
                check: Mutex::new(CheckStatus::default()),
                last_report: Mutex::new(None),
                end_epoch: AtomicU64::new(0),
                end_calls: tokio::sync::Notify::new(),
                admin_changes: AtomicU64::new(0),
                check_latency: telemetry::check_latency_histogram(),
                connect_latency: telemetry::setup_histogram(),
                upgrade_latency: telemetry::setup_histogram(),
                recovered_at: Mutex::new(None),
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
        match *self.live.recovered_at.lock().unwrap_or_else(|e| e.into_inner()) {
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

    /// The counters and health that survive a reload (shared with the
    /// server this one replaced).
    pub fn live(&self) -> &Live {
        &self.live
    }

    pub fn name(&self) -> &str {
        &self.def.name
    }

    pub fn active(&self) -> u32 {
        self.live.active.load(Relaxed)
    }

    /// Calls the replaced process still holds here.
    pub fn inherited(&self) -> u32 {
        self.live.inherited.load(Relaxed)
    }

    /// The replaced process says it holds `calls` here, `fresh` of them
    /// routed after this process started. Those take `maxconn` slots; fresh
    /// ones not counted before also count against the current report window
    /// (a report from before they reached the fleet does not include them;
    /// one from after does, and they leave the count with the next window).
    pub fn inherit(&self, calls: u32, fresh: u32) {
        self.live.inherited.store(calls, Relaxed);
        let before = self.live.inherited_fresh.swap(fresh, Relaxed);
        if self.capacity_aware && fresh > before {
            // The count is the low half; the window's epoch stays as it is.
            let add = fresh - before;
            let _ = self.live.routed.fetch_update(Relaxed, Relaxed, |r| {
                Some((r & !0xffff_ffff) | u64::from((r as u32).saturating_add(add)))
            });
        }
    }

    /// The fleet answered a call's upgrade with 101.
    pub fn call_upgraded(&self) {
        self.live.upgraded_total.fetch_add(1, Relaxed);
    }

    /// Calls ever upgraded here.
    pub fn calls_upgraded(&self) -> u64 {
        self.live.upgraded_total.load(Relaxed)
    }

    /// `maxconn` slots taken: this process's and the replaced one's.
    fn taken(&self) -> u32 {
        self.active().saturating_add(self.inherited())
    }

    /// Last reported capacity, `None` before the first report (or liveness-only).
    pub fn reported(&self) -> Option<u32> {
        match self.live.reported.load(Relaxed) {
            NONE => None,
            n => Some(n),
        }
    }

    pub fn healthy(&self) -> bool {
        self.live.healthy.load(Relaxed) != 0
    }

    pub fn admin_state(&self) -> AdminState {
        match self.live.admin.load(Relaxed) {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }

    pub fn set_admin_state(&self, s: AdminState) {
        if self.live.admin.swap(s as u8, Relaxed) != s as u8 {
            self.live.admin_changes.fetch_add(1, Relaxed);
        }
    }

    /// An operator set the state again (even to the same): a pending
    /// `--close-after` from before no longer applies.
    pub fn admin_set_again(&self) {
        self.live.admin_changes.fetch_add(1, Relaxed);
    }

    /// Admin state changes so far.
    pub fn admin_changes(&self) -> u64 {
        self.live.admin_changes.load(Relaxed)
    }

    /// Ends this server's calls — those open and those being set up — with
    /// a Close 1001.
    pub fn end_calls(&self) {
        self.live.end_epoch.fetch_add(1, Relaxed);
        self.live.end_calls.notify_waiters();
    }

    /// The epoch a call begins at (read when it is routed here).
    pub fn end_epoch(&self) -> u64 {
        self.live.end_epoch.load(Relaxed)
    }

    /// Resolves once [`Self::end_calls`] was called after `epoch` was read.
    pub async fn calls_ended(&self, epoch: u64) {
        let mut notified = std::pin::pin!(self.live.end_calls.notified());
        notified.as_mut().enable();
        if self.end_epoch() == epoch {
            notified.await;
        }
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.live.healthy.store(u8::from(healthy), Relaxed);
    }

    /// `min(maxconn − active, reported − routed_since_report) − held`.
    pub fn effective(&self) -> u32 {
        self.capacity_before_holds().saturating_sub(self.held())
    }

    /// [`Self::effective`] before the slots held for dialers.
    pub(super) fn capacity_before_holds(&self) -> u32 {
        let free = self.maxconn.saturating_sub(self.taken());
        if !self.capacity_aware {
            return free;
        }
        match self.live.reported.load(Relaxed) {
            NONE => 0,
            r => free.min(r.saturating_sub(self.routed_since_report())),
        }
    }

    pub fn state(&self) -> ServerState {
        match self.admin_state() {
            AdminState::Maint => ServerState::Maint,
            AdminState::Drain => ServerState::Drain,
            AdminState::Ready if !self.healthy() => ServerState::Down,
            AdminState::Ready if self.effective() == 0 => ServerState::Full,
            AdminState::Ready => ServerState::Up,
        }
    }

    /// Calls routed since the last report that are still open (those of
    /// the window before an outstanding probe included).
    pub fn routed_since_report(&self) -> u32 {
        (self.live.routed.load(Relaxed) as u32).saturating_add(self.live.carried.load(Relaxed) as u32)
    }

    /// A new report window: the count starts again at 0. Returns the old one.
    fn new_window(&self) -> u64 {
        self.live
            .routed
            .fetch_update(Relaxed, Relaxed, |r| {
                Some(u64::from(((r >> 32) as u32).wrapping_add(1)) << 32)
            })
            .unwrap_or_default()
    }

    /// The health checker is sending a capacity probe: calls routed from
    /// now on count against its answer, those before it until it comes.
    pub fn probe_sent(&self) {
        if !self.capacity_aware {
            return;
        }
        // Window first, carried after: a call ending in between is left in
        // `carried` until the answer (conservative), never lost.
        *self.live.probe_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let old = self.new_window();
        let earlier = if self.live.probe_out.swap(true, Relaxed) {
            // The last probe brought no report: its window stays counted.
            self.live.carried.load(Relaxed) as u32
        } else {
            0
        };
        let count = (old as u32).saturating_add(earlier);
        self.live
            .carried
            .store((old & !0xffff_ffff) | u64::from(count), Relaxed);
    }

    /// A fresh capacity report from the health checker: for the probe sent
    /// at [`Self::probe_sent`] (or, with none outstanding, as of now).
    pub fn report_capacity(&self, available: u32) {
        if self.live.probe_out.swap(false, Relaxed) {
            self.live.carried.store(0, Relaxed);
        } else {
            // Window first: a call reserved in between counts against the new
            // report (conservative), never in a window about to be dropped.
            self.new_window();
        }
        self.live.reported.store(available.min(NONE - 1), Relaxed);
        let now = Instant::now();
        let probe = self.live.probe_at.lock().unwrap_or_else(|e| e.into_inner()).take();
        *self.live.reported_probe_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(probe.unwrap_or(now));
        *self.live.last_report.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
    }

    /// The fleet answered 429: it has no free worker, whatever it reported.
    pub fn saw_429(&self) {
        if self.capacity_aware {
            self.new_window();
            self.live.probe_out.store(false, Relaxed);
            self.live.carried.store(0, Relaxed);
            self.live.reported.store(0, Relaxed);
        }
    }

    /// A connect or TLS failure seen by the data path: out of rotation at
    /// once, back with the next good health check (so a hung fleet costs at
    /// most one call one connect timeout).
    pub fn passive_failure(&self, reason: &str) {
        self.live.passive_failures.fetch_add(1, Relaxed);
        self.set_healthy(false);
        self.record_check(false, format!("connection failed: {reason}"), None);
    }

    /// Whether a new `demand` may go here: a call needs UP; a plain HTTP
    /// request needs a healthy, ready server with a free `maxconn` slot (a
    /// FULL fleet has no free call worker, but still answers its API).
    pub(super) fn accepts(&self, demand: Demand) -> bool {
        match demand {
            Demand::Call => self.state() == ServerState::Up,
            Demand::Request => self.admin_state() == AdminState::Ready && self.healthy() && self.taken() < self.maxconn,
        }
    }

    /// Takes one `maxconn` slot, and for a call one unit of reported
    /// capacity; None when there is none left, else the report window the
    /// call was counted in (None inside for no window: a plain request, or
    /// a liveness-only pool).
    pub(super) fn try_reserve(&self, demand: Demand) -> Option<Option<u32>> {
        let took_active = self
            .live
            .active
            .fetch_update(Relaxed, Relaxed, |a| {
                (a.saturating_add(self.inherited()) < self.maxconn).then_some(a + 1)
            })
            .is_ok();
        if !took_active {
            return None;
        }
        let mut window = None;
        if self.capacity_aware && demand == Demand::Call {
            let took = self.live.routed.fetch_update(Relaxed, Relaxed, |r| {
                let rep = self.live.reported.load(Relaxed);
                let counted = (r as u32)
                    .saturating_add(self.live.carried.load(Relaxed) as u32)
                    .saturating_add(self.held());
                (rep != NONE && counted < rep).then_some(r + 1)
            });
            match took {
                Ok(before) => window = Some((before >> 32) as u32),
                Err(_) => {
                    self.live.active.fetch_sub(1, Relaxed);
                    return None;
                }
            }
        }
        self.live.sessions_total.fetch_add(1, Relaxed);
        Some(window)
    }

    /// Gives back a slot: the call (or request) ended, or never reached the
    /// fleet. A call counted in the current report window leaves that count
    /// (it holds no worker any more); one counted before the last report
    /// does not (that report already saw it).
    pub(super) fn release(&self, window: Option<u32>) {
        if let Some(w) = window {
            let leave = |r: u64| ((r >> 32) as u32 == w && r as u32 > 0).then(|| r - 1);
            if self.live.routed.fetch_update(Relaxed, Relaxed, leave).is_err() {
                let _ = self.live.carried.fetch_update(Relaxed, Relaxed, leave);
            }
        }
        let _ = self.live.active.fetch_update(Relaxed, Relaxed, |a| a.checked_sub(1));
    }
}
