//! Leaf: the counters and histograms the data path bumps (plain atomics
//! inside prometheus-client families), their label types, the histogram
//! buckets and the counts by HTTP status. Rendering them, with the
//! per-server figures, is `admin::prometheus`'s job. Imports nothing from
//! the crate.

mod limit;
pub use limit::LogLimiter;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Who ended a call: `carrier`, `fleet`, `ingress_1001`, `cut`, `idle`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedByLabel {
    pub closed_by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub pool: String,
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerStatusLabels {
    pub pool: String,
    pub server: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStatusLabels {
    pub pool: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsLabels {
    pub pool: String,
    pub server: String,
    /// `full` or `resumed`.
    pub kind: String,
    /// `1.3` or `1.2`.
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub pool: String,
    pub server: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BundleLabel {
    pub bundle: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

/// Buckets for health-check latency: 1 ms to ~8 s.
pub fn check_latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 14,
    ))
}

/// Buckets for a step of a call's set-up (handshake, connect, the fleet's
/// answer): 250 µs to ~8 s.
pub fn setup_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_25, 2.0, 16,
    ))
}

/// Buckets for a call's length: 1 s to 4 h.
pub fn duration_histogram() -> Histogram {
    Histogram::new([
        1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0,
    ])
}

/// Counts by HTTP status (a fleet's answers, what was handed on), one
/// atomic per code, as the data path bumps them: 100–599, and slot 0
/// (`other`) for a code outside them, which a fleet may send.
#[derive(Debug)]
pub struct StatusCounts(Box<[std::sync::atomic::AtomicU64]>);

impl Default for StatusCounts {
    fn default() -> Self {
        Self((0..=500).map(|_| std::sync::atomic::AtomicU64::new(0)).collect())
    }
}

impl StatusCounts {
    /// The slot of a status: 1–500 for 100–599, 0 for anything else.
    fn slot(status: u16) -> usize {
        if (100..=599).contains(&status) {
            usize::from(status - 99)
        } else {
            0
        }
    }

    pub fn inc(&self, status: u16) {
        self.0[Self::slot(status)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A key's `status` label value.
    pub fn label(key: u16) -> String {
        if key == 0 { "other".to_owned() } else { key.to_string() }
    }
    pub fn get(&self, status: u16) -> u64 {
        self.0[Self::slot(status)].load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The codes seen so far, by key (0: `other`).
    pub fn snapshot(&self) -> std::collections::BTreeMap<u16, u64> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    if i == 0 { 0 } else { i as u16 + 99 },
                    n.load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Takes over another's counts (a reload's new pool keeps the old one's).
    pub fn carry(&self, old: &StatusCounts) {
        for (new, old) in self.0.iter().zip(old.0.iter()) {
            new.store(
                old.load(std::sync::atomic::Ordering::Relaxed),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `to_server` or `to_client`.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

type PoolHistograms = Family<PoolLabel, Histogram, fn() -> Histogram>;

/// Counters and histograms the data path bumps.
#[derive(Debug)]
pub struct Metrics {
    /// Client connections accepted, by listener.
    pub accepted: Family<ListenerLabel, Counter>,
    /// Client connections closed at once, by reason (max_connections, …).
    pub refused: Family<ReasonLabel, Counter>,
    pub tls_handshakes: Counter,
    /// Failed front handshakes, by reason.
    pub tls_errors: Family<ReasonLabel, Counter>,
    /// Answers to clients, by status (101 included).
    pub responses: Family<StatusLabel, Counter>,
    /// Requests refused before routing, by reason (header_timeout, too_large, …).
    pub bad_requests: Family<ReasonLabel, Counter>,
    /// Tunnels closed, by reason.
    pub tunnels_closed: Family<ReasonLabel, Counter>,
    /// Calls past their 101 ended, by who ended them.
    pub calls_closed: Family<ClosedByLabel, Counter>,
    /// Connections to fleets the ingress itself could not make (descriptors,
    /// local ports, memory, the resolver), by what they were for: `call`,
    /// `http`, `health`. Never counted against a fleet.
    pub local_errors: Family<ReasonLabel, Counter>,
    /// Keep-alive connections of `http` routes closed by their clock, by reason.
    pub keepalive_closed: Family<ReasonLabel, Counter>,
    /// Bytes copied through tunnels, by direction.
    pub tunnel_bytes: Family<DirectionLabel, Counter>,
    pub acme_forwarded: Counter,
    /// Front TLS handshakes that completed, seconds from accept.
    pub tls_handshake: Histogram,
    /// Accept to the 101 sent to the carrier, seconds.
    pub call_setup: Histogram,
    /// 101 to the call's end, seconds, by pool (a reload keeps them: by name).
    pub call_duration: PoolHistograms,
    /// Local refusals' log lines, at most a few a second.
    pub refusal_log: LogLimiter,
}

impl Default for Metrics {
    /// Every family whose label values are known up front has them at 0
    /// from the start: a rate over one reads 0, not "no data", and an
    /// alert's `increase()` sees the first event.
    fn default() -> Self {
        let m = Self::empty();
        for reason in ["max_connections", "accept_error"] {
            let _ = m.refused.get_or_create(&label(reason));
        }
        for what in ["call", "http", "health"] {
            let _ = m.local_errors.get_or_create(&label(what));
        }
        for why in ["idle", "header_timeout", "stalled"] {
            let _ = m.keepalive_closed.get_or_create(&label(why));
        }
        m
    }
}

impl Metrics {
    fn empty() -> Self {
        Self {
            accepted: Family::default(),
            refused: Family::default(),
            tls_handshakes: Counter::default(),
            tls_errors: Family::default(),
            responses: Family::default(),
            bad_requests: Family::default(),
            tunnels_closed: Family::default(),
            calls_closed: Family::default(),
            local_errors: Family::default(),
            keepalive_closed: Family::default(),
            tunnel_bytes: Family::default(),
            acme_forwarded: Counter::default(),
            tls_handshake: setup_histogram(),
            call_setup: setup_histogram(),
            call_duration: Family::new_with_constructor(duration_histogram),
            refusal_log: LogLimiter::new(10),
        }
    }
}

impl Metrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "ingress_connections_accepted",
            "Client connections accepted, by listener",
            self.accepted.clone(),
        );
        r.register(
            "ingress_connections_refused",
            "Client connections closed at accept, by reason",
            self.refused.clone(),
        );
        r.register(
            "ingress_tls_handshakes",
            "Completed front TLS handshakes",
            self.tls_handshakes.clone(),
        );
        r.register(
            "ingress_tls_handshake_errors",
            "Failed front TLS handshakes, by reason",
            self.tls_errors.clone(),
        );
        r.register(
            "ingress_responses",
            "Answers sent to clients, by status",
            self.responses.clone(),
        );
        r.register(
            "ingress_bad_requests",
            "Requests refused before routing, by reason",
            self.bad_requests.clone(),
        );
        r.register(
            "ingress_keepalive_closed",
            "Keep-alive connections of http routes closed by the ingress (idle, header_timeout, stalled)",
            self.keepalive_closed.clone(),
        );
        r.register(
            "ingress_local_errors",
            "Fleet connections the ingress could not make for lack of its own resources, by use",
            self.local_errors.clone(),
        );
        r.register(
            "ingress_tunnels_closed",
            "Tunnels closed, by reason",
            self.tunnels_closed.clone(),
        );
        r.register(
            "ingress_calls_closed",
            "Calls past their 101 ended, by who ended them (carrier, fleet, ingress_1001, cut, idle)",
            self.calls_closed.clone(),
        );
        r.register_with_unit(
            "ingress_tunnel",
            "Bytes copied through tunnels, by direction (to_server, to_client)",
            prometheus_client::registry::Unit::Bytes,
            self.tunnel_bytes.clone(),
        );
        r.register_with_unit(
            "ingress_tls_handshake",
            "Front TLS handshakes that completed, from accept",
            prometheus_client::registry::Unit::Seconds,
            self.tls_handshake.clone(),
        );
        r.register_with_unit(
            "ingress_call_setup",
            "Calls from accept to the 101 sent to the carrier",
            prometheus_client::registry::Unit::Seconds,
            self.call_setup.clone(),
        );
        r.register_with_unit(
            "ingress_call_duration",
            "Calls from their 101 to their end, by pool",
            prometheus_client::registry::Unit::Seconds,
            self.call_duration.clone(),
        );
        r.register(
            "ingress_acme_forwarded",
            "ACME HTTP-01 requests forwarded",
            self.acme_forwarded.clone(),
        );
    }

    pub fn response(&self, status: u16) {
        self.responses
            .get_or_create(&StatusLabel {
                status: status.to_string(),
            })
            .inc();
    }

    pub fn bad_request(&self, reason: &str) {
        self.bad_requests
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

fn label(s: &str) -> ReasonLabel {
    ReasonLabel { reason: s.to_owned() }
}

impl Metrics {
    pub fn refuse(&self, reason: &str) {
        self.refused.get_or_create(&label(reason)).inc();
    }
    pub fn accept(&self, listener: &str) {
        self.accepted
            .get_or_create(&ListenerLabel {
                listener: listener.to_owned(),
            })
            .inc();
    }
    pub fn keepalive_closed(&self, reason: &str) {
        self.keepalive_closed.get_or_create(&label(reason)).inc();
    }

    pub fn local_error(&self, what: &str) {
        self.local_errors.get_or_create(&label(what)).inc();
    }

    pub fn tls_error(&self, reason: &str) {
        self.tls_errors.get_or_create(&label(reason)).inc();
    }
    /// Bytes a tunnel copied, each way.
    pub fn tunnel_bytes(&self, to_server: u64, to_client: u64) {
        for (direction, n) in [("to_server", to_server), ("to_client", to_client)] {
            self.tunnel_bytes
                .get_or_create(&DirectionLabel {
                    direction: direction.to_owned(),
                })
                .inc_by(n);
        }
    }

    /// A call past its 101 ended: why, and who ended it.
    pub fn tunnel_closed(&self, reason: &str, closed_by: &str) {
        self.tunnels_closed.get_or_create(&label(reason)).inc();
        self.calls_closed
            .get_or_create(&ClosedByLabel {
                closed_by: closed_by.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counts_stay_bounded() {
        let c = StatusCounts::default();
        for s in [101, 429, 429, 0, 99, 600, 999] {
            c.inc(s);
        }
        let got: Vec<(String, u64)> = c
            .snapshot()
            .into_iter()
            .map(|(k, n)| (StatusCounts::label(k), n))
            .collect();
        assert_eq!(
            got,
            [("other".into(), 4), ("101".into(), 1), ("429".into(), 2)],
            "codes a fleet may send outside 100-599 share one series"
        );
    }
}
