//! Control path: Prometheus text at `/metrics`. Front counters live in a
//! registry made once (the data path only bumps atomics); per-server and
//! XDP figures are read from live state at scrape time.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use std::sync::atomic::Ordering::Relaxed;

use crate::{
    control::Shared,
    model::ServerState,
    telemetry::{
        BundleLabel, OutcomeLabel, PoolLabel, PoolStatusLabels, ServerLabels, ServerStatusLabels, StateLabels,
        StatusCounts, TlsLabels, VersionLabel,
    },
};

/// Per-server histograms as one family (the histograms live in the
/// servers, and go with them): name, help, and each server's.
#[derive(Debug)]
struct ServerHistograms {
    name: &'static str,
    help: &'static str,
    series: Vec<(ServerLabels, Histogram)>,
}

impl Collector for ServerHistograms {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, MetricType::Histogram)?;
        for (labels, h) in &self.series {
            h.encode(metric.encode_family(labels)?)?;
        }
        Ok(())
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
    shared.data.metrics.register(&mut r);

    let rt = shared.data.runtime.load();
    let state = Family::<StateLabels, Gauge>::default();
    let active = Family::<ServerLabels, Gauge>::default();
    let maxconn = Family::<ServerLabels, Gauge>::default();
    let reported = Family::<ServerLabels, Gauge>::default();
    let effective = Family::<ServerLabels, Gauge>::default();
    let held = Family::<ServerLabels, Gauge>::default();
    let sessions = Family::<ServerLabels, Counter>::default();
    let answers = Family::<ServerStatusLabels, Counter>::default();
    let tls_handshakes = Family::<TlsLabels, Counter>::default();
    let check_ok = Family::<ServerLabels, Gauge>::default();
    let (mut latencies, mut connects, mut upgrades) = (Vec::new(), Vec::new(), Vec::new());
    let retries = Family::<PoolLabel, Counter>::default();
    let passed = Family::<PoolStatusLabels, Counter>::default();
    let no_capacity = Family::<PoolLabel, Counter>::default();
    let pool_capacity = Family::<PoolLabel, Gauge>::default();
    for pool in &rt.pools {
        let pl = PoolLabel {
            pool: pool.name.to_string(),
        };
        retries.get_or_create(&pl).inc_by(pool.retries_total.load(Relaxed));
        // 429 from the start, so that an alert's increase() sees the first one.
        let mut counts = pool.passed.snapshot();
        counts.entry(429).or_default();
        for (status, n) in counts {
            passed
                .get_or_create(&PoolStatusLabels {
                    pool: pl.pool.clone(),
                    status: StatusCounts::label(status),
                })
                .inc_by(n);
        }
        no_capacity
            .get_or_create(&pl)
            .inc_by(pool.no_capacity_total.load(Relaxed));
        pool_capacity.get_or_create(&pl).set(pool.total_effective() as i64);
    }
    for v in rt.server_views() {
        let l = ServerLabels {
            pool: v.pool.clone(),
            server: v.name.clone(),
        };
        for st in ServerState::ALL {
            state
                .get_or_create(&StateLabels {
                    pool: l.pool.clone(),
                    server: l.server.clone(),
                    state: st.as_str().to_owned(),
                })
                .set(i64::from(st == v.state));
        }
        active.get_or_create(&l).set(i64::from(v.active));
        maxconn.get_or_create(&l).set(i64::from(v.maxconn));
        // No series before the first report: absent, not a sentinel value.
        if let Some(r) = v.reported {
            reported.get_or_create(&l).set(i64::from(r));
        }
        effective.get_or_create(&l).set(i64::from(v.effective));
        held.get_or_create(&l).set(i64::from(v.held));
        let live = v.server.live();
        sessions.get_or_create(&l).inc_by(live.sessions_total.load(Relaxed));
        let mut counts = live.answers.snapshot();
        counts.entry(101).or_default();
        counts.entry(429).or_default();
        for (status, n) in counts {
            answers
                .get_or_create(&ServerStatusLabels {
                    pool: l.pool.clone(),
                    server: l.server.clone(),
                    status: StatusCounts::label(status),
                })
                .inc_by(n);
        }
        for (version, counts) in ["1.3", "1.2"].into_iter().zip(&live.tls_handshakes) {
            for (kind, n) in ["full", "resumed"].into_iter().zip(counts) {
                tls_handshakes
                    .get_or_create(&TlsLabels {
                        pool: l.pool.clone(),
                        server: l.server.clone(),
                        kind: kind.to_owned(),
                        version: version.to_owned(),
                    })
                    .inc_by(n.load(Relaxed));
            }
        }
        check_ok.get_or_create(&l).set(i64::from(v.check.ok));
        connects.push((l.clone(), live.connect_latency.clone()));
        upgrades.push((l.clone(), live.upgrade_latency.clone()));
        latencies.push((l, live.check_latency.clone()));
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
        "Capacity the fleet last reported (absent until its first report)",
        reported,
    );
    r.register(
        "ingress_server_effective_capacity",
        "min(maxconn - active, reported - routed since report)",
        effective,
    );
    r.register(
        "ingress_server_held",
        "Slots held for outbound dialers (POST /api/pick) until the next report or the hold's end",
        held,
    );
    r.register("ingress_server_sessions", "Calls routed to the server", sessions);
    r.register(
        "ingress_server_upgrade_answers",
        "The server's answers to upgrades (101 included), by status",
        answers,
    );
    r.register(
        "ingress_server_tls_handshakes",
        "TLS handshakes with the server (calls, requests and checks), full or resumed, by version",
        tls_handshakes,
    );
    r.register(
        "ingress_server_check_ok",
        "1 when the last health check passed",
        check_ok,
    );
    for (name, help, series) in [
        (
            "ingress_server_check_latency_seconds",
            "Latency of health checks",
            latencies,
        ),
        (
            "ingress_fleet_connect_seconds",
            "Calls' connects to the server (TCP and TLS)",
            connects,
        ),
        (
            "ingress_upgrade_response_seconds",
            "Upgrade sent to the server's answer head",
            upgrades,
        ),
    ] {
        r.register_collector(Box::new(ServerHistograms { name, help, series }));
    }
    r.register(
        "ingress_pool_retries",
        "Upgrade attempts redispatched to another server",
        retries,
    );
    r.register(
        "ingress_pool_passed_answers",
        "Fleets' answers to upgrades handed to carriers, by status (429: every candidate refused)",
        passed,
    );
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
        gauge(shared.data.connections_open() as i64),
    );
    r.register(
        "ingress_log_lines_suppressed",
        "Refusal and 503 log lines left out by the per-second budget",
        counter(shared.data.metrics.refusal_log.suppressed_total()),
    );
    r.register(
        "ingress_cert_reloads",
        "Certificate directory reloads that changed something",
        counter(shared.certs.reloads.load(Relaxed)),
    );
    r.register(
        "ingress_cert_errors",
        "Certificate bundles refused",
        counter(shared.certs.errors.load(Relaxed)),
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

    let xdp = shared.xdp.view();
    r.register(
        "ingress_xdp_attached",
        "1 while the XDP program is attached",
        gauge(i64::from(xdp.attached)),
    );
    r.register(
        "ingress_xdp_shedding",
        "1 while the XDP program sheds carrier SYNs for want of capacity",
        gauge(i64::from(xdp.shedding)),
    );
    r.register(
        "ingress_group_leaving",
        "1 while a graceful stop leaves the group (2 once withdrawn)",
        gauge(i64::from(shared.data.is_leaving()) + i64::from(shared.data.is_withdrawn())),
    );
    let packets = Family::<OutcomeLabel, Counter>::default();
    // Every outcome, 0 while nothing is attached: a rate over it reads 0, not "no data".
    for name in ingress_common::counter::NAMES {
        packets
            .get_or_create(&OutcomeLabel {
                outcome: name.to_owned(),
            })
            .inc_by(0);
    }
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

    r.register(
        "ingress_xdp_configured",
        "1 when [xdp] mode is not off: the program is expected attached",
        gauge(i64::from(xdp.configured)),
    );
    r.register(
        "ingress_config_last_reload_successful",
        "0 when the last reload was refused (the previous config serves on), else 1",
        gauge(i64::from(!shared.last_reload_failed.load(Relaxed))),
    );
    register_process(&mut r);

    let mut out = String::new();
    let _ = text::encode(&mut out, &r);
    to_prometheus_text(&out)
}

/// The `process_*` figures, as Prometheus client libraries name them.
fn register_process(r: &mut Registry) {
    use std::sync::atomic::AtomicU64;
    let p = super::process::read();
    let float = |v: f64| {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(v);
        g
    };
    if let Some(v) = p.open_fds {
        r.register("process_open_fds", "Number of open file descriptors", gauge(v as i64));
    }
    if let Some(v) = p.max_fds {
        r.register(
            "process_max_fds",
            "Maximum number of open file descriptors (the soft limit)",
            gauge(v as i64),
        );
    }
    if let Some(v) = p.resident_bytes {
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            gauge(v as i64),
        );
    }
    if let Some(v) = p.cpu_seconds {
        let c = Counter::<f64, AtomicU64>::default();
        c.inc_by(v);
        r.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            c,
        );
    }
    if let Some(v) = p.start_time_seconds {
        r.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            float(v),
        );
    }
}

/// The client crate writes OpenMetrics; `/metrics` serves the Prometheus
/// text format (0.0.4) that promtool and every scraper read: a counter's
/// HELP/TYPE name carries its `_total` suffix, and there is no `# EOF`.
fn to_prometheus_text(open_metrics: &str) -> String {
    let lines: Vec<&str> = open_metrics.lines().collect();
    let mut out = String::with_capacity(open_metrics.len());
    for (i, line) in lines.iter().enumerate() {
        // Units are in the names; the 0.0.4 format has no UNIT line.
        if *line == "# EOF" || line.starts_with("# UNIT ") {
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
