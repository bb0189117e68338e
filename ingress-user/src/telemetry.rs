//! Leaf: the counters the data path bumps (plain atomics inside
//! prometheus-client families), their label types and the histogram buckets.
//! Rendering them, with the per-server figures, is `admin::prometheus`'s job.
//! Imports nothing from the crate.

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
pub struct TlsLabels {
    pub pool: String,
    pub server: String,
    /// `full` or `resumed`.
    pub kind: String,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Counters the data path bumps.
#[derive(Debug, Default)]
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
    pub tunnel_bytes_to_server: Counter,
    pub tunnel_bytes_to_client: Counter,
    pub acme_forwarded: Counter,
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
        r.register(
            "ingress_tunnel_bytes_to_server",
            "Bytes copied from clients to fleets",
            self.tunnel_bytes_to_server.clone(),
        );
        r.register(
            "ingress_tunnel_bytes_to_client",
            "Bytes copied from fleets to clients",
            self.tunnel_bytes_to_client.clone(),
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
