//! Data path: accept, TLS, read the head, route, pick, connect, upgrade,
//! tunnel. Reads the [`Runtime`] snapshot and atomics through [`DataCtx`]
//! and never waits on, or imports, the control side (`control`, `bpf`,
//! `admin`); the control side hands it listeners and swaps snapshots.

pub mod calllog;
pub mod exchange;
pub mod forward;
pub mod frames;
pub mod http;
pub mod http1;
pub mod keepalive;
pub mod listener;
pub mod target;
pub mod tunnel;
pub mod upgrade;
pub mod upstream;

use std::sync::{
    Arc,
    atomic::{
        AtomicUsize,
        Ordering::{Relaxed, SeqCst},
    },
};

use arc_swap::ArcSwap;
use tokio::sync::{Semaphore, watch};

use crate::{snapshot::Runtime, telemetry::Metrics};

/// What the data path reads and bumps; the control side swaps `runtime`
/// and `tls` and resizes the connection limit.
#[derive(Debug)]
pub struct DataCtx {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    /// Signalled when a server's state or capacity may have changed: the
    /// data path on every upgrade, tunnel end, 429 and passive failure, the
    /// health checks on state changes, the control side on every commit;
    /// the BPF sync and the add/remove workflows listen.
    pub changed: Changes,
    conn_limit: Arc<Semaphore>,
    /// Slots for loopback peers once `conn_limit` has none.
    local_reserve: Arc<Semaphore>,
    conn_limit_size: AtomicUsize,
    /// Permits a lowered `max_connections` could not take back yet (they
    /// were held by live connections): taken as they come back.
    conn_limit_debt: AtomicUsize,
    /// The front's TLS config (versions, ALPN, SNI resolver); swapped by a reload.
    pub tls: ArcSwap<rustls::ServerConfig>,
    /// WebSocket calls past their 101 (see [`Self::count_call`]).
    calls_open: AtomicUsize,
    /// Front connections accepted and not yet a call or an http route's
    /// keep-alive connection (TLS, head, routing, waiting for a 101).
    setups: AtomicUsize,
    /// Set when the ingress ends every live call (the grace of a stop or
    /// an upgrade is over): each gets a Close 1001.
    calls_ending: std::sync::atomic::AtomicBool,
    /// Wakes the calls when `calls_ending` is set.
    end_calls: tokio::sync::Notify,
    /// How far a graceful stop has left the group: 1, new carrier SYNs
    /// dropped by the BPF sync; 2, withdrawn too (the health path answers 503).
    leaving: std::sync::atomic::AtomicU8,
    /// Idle keep-alive connections to fleets, for `http` routes.
    pub idle: Arc<exchange::IdleConns>,
}

impl DataCtx {
    pub fn new(runtime: Runtime, tls: Arc<rustls::ServerConfig>, max_connections: usize) -> Self {
        let local_reserve = runtime.limits.local_reserve;
        Self {
            runtime: ArcSwap::from_pointee(runtime),
            metrics: Metrics::default(),
            changed: Changes::default(),
            conn_limit: Arc::new(Semaphore::new(max_connections)),
            local_reserve: Arc::new(Semaphore::new(local_reserve)),
            conn_limit_size: AtomicUsize::new(max_connections),
            conn_limit_debt: AtomicUsize::new(0),
            tls: ArcSwap::new(tls),
            calls_ending: std::sync::atomic::AtomicBool::new(false),
            end_calls: tokio::sync::Notify::new(),
            leaving: std::sync::atomic::AtomicU8::new(0),
            calls_open: AtomicUsize::new(0),
            setups: AtomicUsize::new(0),
            idle: Arc::default(),
        }
    }

    /// Applies a new `max_connections`. Live connections keep their slots;
    /// when lowered below what they hold, the slots they free are retired
    /// as they come back, so no new connection is let in until fewer than
    /// the new limit are open.
    pub fn resize_conn_limit(&self, size: usize) {
        let old = self.conn_limit_size.swap(size, Relaxed);
        if size > old {
            let grow = size - old;
            // What is still owed is cancelled first; the rest becomes new slots.
            let owed = self
                .conn_limit_debt
                .fetch_update(Relaxed, Relaxed, |debt| Some(debt.saturating_sub(grow)))
                .unwrap_or(0);
            self.conn_limit.add_permits(grow - owed.min(grow));
        } else if size < old {
            let want = old - size;
            let taken = self.conn_limit.forget_permits(want);
            self.conn_limit_debt.fetch_add(want - taken, Relaxed);
        }
    }

    /// A `max_connections` slot for a new connection, or None at the limit.
    /// [`Self::connection_slot`], or for a loopback peer (a local health
    /// check, keepalived's tracked one among them) one of the
    /// `limits.local_reserve` slots of its own: remote peers that take
    /// every slot never fail the local check (which would move a VRRP
    /// address and cut every call here).
    pub fn connection_slot_for(&self, peer: &std::net::SocketAddr) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.connection_slot().or_else(|| {
            let local = match peer.ip() {
                std::net::IpAddr::V4(v4) => v4.is_loopback(),
                std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
            };
            local
                .then(|| Arc::clone(&self.local_reserve).try_acquire_owned().ok())
                .flatten()
        })
    }

    pub fn connection_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        loop {
            let permit = Arc::clone(&self.conn_limit).try_acquire_owned().ok()?;
            let owed = self
                .conn_limit_debt
                .fetch_update(Relaxed, Relaxed, |d| d.checked_sub(1))
                .is_ok();
            if !owed {
                return Some(permit);
            }
            permit.forget();
        }
    }

    /// WebSocket calls past their 101.
    pub fn calls_open(&self) -> usize {
        self.calls_open.load(Relaxed)
    }

    /// Calls and connections on their way to being one: what a stopping
    /// process waits for.
    pub fn in_flight(&self) -> usize {
        // Setups first: one that became a call was counted as a call
        // before it stopped being a setup (both sequentially consistent).
        let setups = self.setups.load(SeqCst);
        setups + self.calls_open.load(SeqCst)
    }

    /// Counts a call from its 101 until the guard drops (then signals a change).
    pub fn count_call(self: &Arc<Self>) -> Counted {
        self.calls_open.fetch_add(1, SeqCst);
        Counted(Arc::clone(self), true)
    }

    /// Counts a connection being set up until the guard drops.
    pub fn count_setup(self: &Arc<Self>) -> Counted {
        self.setups.fetch_add(1, SeqCst);
        Counted(Arc::clone(self), false)
    }

    /// Ends every live call, and any that starts from now, with a Close 1001.
    pub fn end_calls(&self) {
        self.calls_ending.store(true, std::sync::atomic::Ordering::Release);
        self.end_calls.notify_waiters();
    }

    /// This process leaves its group (see `[group] leave`): no new carrier
    /// connection from now on.
    pub fn leave(&self) {
        self.leaving.fetch_max(1, std::sync::atomic::Ordering::AcqRel);
        self.changed.signal();
    }

    /// Leaving, and the traffic given up: the health path answers 503.
    pub fn withdraw(&self) {
        self.leaving.store(2, std::sync::atomic::Ordering::Release);
        self.changed.signal();
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.load(std::sync::atomic::Ordering::Acquire) >= 1
    }

    pub fn is_withdrawn(&self) -> bool {
        self.leaving.load(std::sync::atomic::Ordering::Acquire) >= 2
    }

    /// Resolves once [`Self::end_calls`] has been called.
    pub async fn ending(&self) -> tunnel::Ending {
        let mut notified = std::pin::pin!(self.end_calls.notified());
        notified.as_mut().enable();
        if !self.calls_ending.load(std::sync::atomic::Ordering::Acquire) {
            notified.await;
        }
        tunnel::Ending::GoingAway
    }

    /// Front connections holding a `max_connections` slot (calls included).
    pub fn connections_open(&self) -> usize {
        (self.conn_limit_size.load(Relaxed) + self.conn_limit_debt.load(Relaxed))
            .saturating_sub(self.conn_limit.available_permits())
    }
}

/// One call (true) or one connection being set up, counted while it lives.
#[derive(Debug)]
pub struct Counted(Arc<DataCtx>, bool);

impl Drop for Counted {
    fn drop(&mut self) {
        if self.1 {
            self.0.calls_open.fetch_sub(1, SeqCst);
            // A stopping process counts open calls when woken.
            self.0.changed.signal();
        } else {
            self.0.setups.fetch_sub(1, SeqCst);
        }
    }
}

/// A change counter that never loses a wake-up: a listener wakes at least
/// once after any signals that came since it last looked (a `watch` of a
/// version number; signals in between merge into one wake-up).
#[derive(Debug)]
pub struct Changes(watch::Sender<u64>);

impl Default for Changes {
    fn default() -> Self {
        Self(watch::Sender::new(0))
    }
}

impl Changes {
    /// Something may have changed.
    pub fn signal(&self) {
        self.0.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A listener: `changed().await` returns once any signal came since it last looked.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}
