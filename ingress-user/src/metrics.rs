//! Control path: Prometheus text at `/metrics`. Front counters live in a
//! registry made once (the data path only bumps atomics); per-server and
//! XDP figures are read from live state at scrape time.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, text},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{pool::State, runtime::Shared};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
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

/// Per-server check-latency histograms as one family (the histograms live in the servers).
#[derive(Debug)]
struct CheckLatency(Vec<(ServerLabels, Histogram)>);

impl Collector for CheckLatency {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "ingress_server_check_latency_seconds",
            "Latency of health checks",
            None,
            MetricType::Histogram,
        )?;
        for (labels, h) in &self.0 {
            h.encode(metric.encode_family(labels)?)?;
        }
        Ok(())
    }
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
    pub tunnel_bytes_to_server: Counter,
    pub tunnel_bytes_to_client: Counter,
    pub acme_forwarded: Counter,
}

impl Metrics {
    fn register(&self, r: &mut Registry) {
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
            "ingress_tunnels_closed",
            "Tunnels closed, by reason",
            self.tunnels_closed.clone(),
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
    pub fn tls_error(&self, reason: &str) {
        self.tls_errors.get_or_create(&label(reason)).inc();
    }
    pub fn tunnel_closed(&self, reason: &str) {
        self.tunnels_closed.get_or_create(&label(reason)).inc();
    }
}

fn gauge(v: i64) -> Gauge {
    let g = Gauge::default();
    g.set(v);
    g
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

/// Renders the whole exposition.
pub fn render(shared: &Shared) -> String {
    let mut r = Registry::default();
    shared.metrics.register(&mut r);

    let rt = shared.runtime.load();
    let state = Family::<StateLabels, Gauge>::default();
    let active = Family::<ServerLabels, Gauge>::default();
    let maxconn = Family::<ServerLabels, Gauge>::default();
    let reported = Family::<ServerLabels, Gauge>::default();
    let effective = Family::<ServerLabels, Gauge>::default();
    let sessions = Family::<ServerLabels, Counter>::default();
    let answered_429 = Family::<ServerLabels, Counter>::default();
    let tls_handshakes = Family::<TlsLabels, Counter>::default();
    let check_ok = Family::<ServerLabels, Gauge>::default();
    let mut latencies = Vec::new();
    let retries = Family::<PoolLabel, Counter>::default();
    let passed_429 = Family::<PoolLabel, Counter>::default();
    let no_capacity = Family::<PoolLabel, Counter>::default();
    let pool_capacity = Family::<PoolLabel, Gauge>::default();
    for pool in &rt.pools {
        let pl = PoolLabel {
            pool: pool.name.to_string(),
        };
        retries
            .get_or_create(&pl)
            .inc_by(pool.retries_total.load(std::sync::atomic::Ordering::Relaxed));
        passed_429
            .get_or_create(&pl)
            .inc_by(pool.passed_429_total.load(std::sync::atomic::Ordering::Relaxed));
        no_capacity
            .get_or_create(&pl)
            .inc_by(pool.no_capacity_total.load(std::sync::atomic::Ordering::Relaxed));
        pool_capacity.get_or_create(&pl).set(pool.total_effective() as i64);
        for s in pool.servers.load().iter() {
            let l = ServerLabels {
                pool: pool.name.to_string(),
                server: s.name().to_owned(),
            };
            let now = s.state();
            for st in State::ALL {
                state
                    .get_or_create(&StateLabels {
                        pool: l.pool.clone(),
                        server: l.server.clone(),
                        state: st.as_str().to_owned(),
                    })
                    .set(i64::from(st == now));
            }
            active.get_or_create(&l).set(i64::from(s.active()));
            maxconn.get_or_create(&l).set(i64::from(s.maxconn));
            reported.get_or_create(&l).set(s.reported().map_or(-1, i64::from));
            effective.get_or_create(&l).set(i64::from(s.effective()));
            sessions
                .get_or_create(&l)
                .inc_by(s.sessions_total.load(std::sync::atomic::Ordering::Relaxed));
            answered_429
                .get_or_create(&l)
                .inc_by(s.answered_429.load(std::sync::atomic::Ordering::Relaxed));
            for (kind, n) in [("full", &s.tls_full), ("resumed", &s.tls_resumed)] {
                tls_handshakes
                    .get_or_create(&TlsLabels {
                        pool: l.pool.clone(),
                        server: l.server.clone(),
                        kind: kind.to_owned(),
                    })
                    .inc_by(n.load(std::sync::atomic::Ordering::Relaxed));
            }
            let check = s.check_status();
            check_ok.get_or_create(&l).set(i64::from(check.ok));
            latencies.push((l.clone(), s.check_latency.clone()));
        }
    }
    r.register(
        "ingress_server_state",
        "1 for the server's current state (UP, FULL, DOWN, DRAIN, MAINT)",
        state,
    );
    r.register(
        "ingress_server_active",
        "Tunnels the ingress holds to the server",
        active,
    );
    r.register("ingress_server_maxconn", "Per-server connection limit", maxconn);
    r.register(
        "ingress_server_reported_capacity",
        "Capacity the fleet last reported (-1: none yet)",
        reported,
    );
    r.register(
        "ingress_server_effective_capacity",
        "min(maxconn - active, reported - routed since report)",
        effective,
    );
    r.register("ingress_server_sessions", "Calls routed to the server", sessions);
    r.register(
        "ingress_server_answered_429",
        "429 answers the server gave to upgrades",
        answered_429,
    );
    r.register(
        "ingress_server_tls_handshakes",
        "TLS handshakes with the server (calls, requests and checks), full or resumed",
        tls_handshakes,
    );
    r.register(
        "ingress_server_check_ok",
        "1 when the last health check passed",
        check_ok,
    );
    r.register_collector(Box::new(CheckLatency(latencies)));
    r.register(
        "ingress_pool_retries",
        "Upgrade attempts redispatched to another server",
        retries,
    );
    r.register("ingress_pool_passed_429", "429s handed to carriers", passed_429);
    r.register(
        "ingress_pool_no_capacity",
        "Calls answered 503 because no server had capacity",
        no_capacity,
    );
    r.register(
        "ingress_pool_effective_capacity",
        "Sum of effective capacity of UP servers",
        pool_capacity,
    );
    r.register(
        "ingress_connections_open",
        "Front connections holding a max_connections slot, calls included",
        gauge(shared.connections_open() as i64),
    );
    r.register(
        "ingress_cert_reloads",
        "Certificate directory reloads that changed something",
        counter(shared.certs.reloads.load(std::sync::atomic::Ordering::Relaxed)),
    );
    r.register(
        "ingress_cert_errors",
        "Certificate bundles refused",
        counter(shared.certs.errors.load(std::sync::atomic::Ordering::Relaxed)),
    );
    r.register(
        "ingress_config_generation",
        "Generation of the running configuration",
        gauge(rt.generation as i64),
    );
    let expiry = Family::<BundleLabel, Gauge>::default();
    for (bundle, not_after) in shared.certs.expiries() {
        expiry.get_or_create(&BundleLabel { bundle }).set(not_after);
    }
    r.register(
        "ingress_cert_expiry_timestamp_seconds",
        "notAfter of each serving certificate bundle",
        expiry,
    );
    let build = Family::<VersionLabel, Gauge>::default();
    build
        .get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .set(1);
    r.register("ingress_build_info", "Version of the running binary", build);

    let xdp = shared.xdp.snapshot();
    r.register(
        "ingress_xdp_attached",
        "1 while the XDP program is attached",
        gauge(i64::from(xdp.attached)),
    );
    r.register(
        "ingress_xdp_shedding",
        "1 while the XDP program sheds carrier SYNs",
        gauge(i64::from(xdp.shedding)),
    );
    let packets = Family::<OutcomeLabel, Counter>::default();
    for (name, v) in xdp.counters {
        packets
            .get_or_create(&OutcomeLabel {
                outcome: name.to_owned(),
            })
            .inc_by(v);
    }
    r.register(
        "ingress_xdp_packets",
        "Packets seen by the XDP program, by outcome",
        packets,
    );

    let mut out = String::new();
    let _ = text::encode(&mut out, &r);
    to_prometheus_text(&out)
}

/// The client crate writes OpenMetrics; `/metrics` serves the Prometheus
/// text format (0.0.4) that promtool and every scraper read: a counter's
/// HELP/TYPE name carries its `_total` suffix, and there is no `# EOF`.
fn to_prometheus_text(open_metrics: &str) -> String {
    let lines: Vec<&str> = open_metrics.lines().collect();
    let mut out = String::with_capacity(open_metrics.len());
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" {
            continue;
        }
        let counter_family = |name: &str| lines.get(i + 1).is_some_and(|n| *n == format!("# TYPE {name} counter"));
        if let Some(rest) = line.strip_prefix("# HELP ")
            && let Some((name, help)) = rest.split_once(' ')
            && counter_family(name)
        {
            out.push_str(&format!("# HELP {name}_total {help}\n"));
        } else if let Some(name) = line.strip_prefix("# TYPE ").and_then(|r| r.strip_suffix(" counter")) {
            out.push_str(&format!("# TYPE {name}_total counter\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
