//! The bench's results, typed: what each figure measured per proxy (built
//! from `loadgen`'s reports, `fleet_sim::report`), written to
//! `results.json` and read back by the report. A figure or a proxy's run
//! that could not be measured is `{"missing": reason}`.

use fleet_sim::report::{Echo, Outcomes, Percentiles, S4};
use serde::Serialize;
use serde_json::Value;

use super::proxies::Kind;

/// A measurement, or why there is none.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Figure<T> {
    Missing { missing: String },
    Done(T),
}

impl<T> Figure<T> {
    pub fn missing(reason: impl Into<String>) -> Self {
        Self::Missing { missing: reason.into() }
    }

    /// The measurement, or the reason it is missing.
    pub fn get(&self) -> Result<&T, &str> {
        match self {
            Self::Done(t) => Ok(t),
            Self::Missing { missing } => Err(missing),
        }
    }
}

/// One figure for each proxy under test.
#[derive(Debug, Serialize)]
pub struct PerProxy<T> {
    pub ingress: Figure<T>,
    pub haproxy: Figure<T>,
    pub nginx: Figure<T>,
}

impl<T> PerProxy<T> {
    /// Measures each proxy in [`Kind::ALL`] order.
    pub fn measure(mut f: impl FnMut(Kind) -> Figure<T>) -> Self {
        Self {
            ingress: f(Kind::Ingress),
            haproxy: f(Kind::Haproxy),
            nginx: f(Kind::Nginx),
        }
    }

    pub fn get(&self, kind: Kind) -> &Figure<T> {
        match kind {
            Kind::Ingress => &self.ingress,
            Kind::Haproxy => &self.haproxy,
            Kind::Nginx => &self.nginx,
        }
    }
}

/// `results.json`.
#[derive(Debug, Serialize)]
pub struct Results {
    pub meta: Meta,
    pub setups: Figure<PerProxy<SetupsResult>>,
    /// The same with every proxy on TLS 1.2 to the fleets (`[pools.X.tls] versions`).
    pub setups_tls12: Figure<PerProxy<SetupsResult>>,
    /// Carriers that resume their TLS session (a reconnect).
    pub setups_resumed: Figure<PerProxy<SetupsResult>>,
    pub echo: Figure<EchoFigure>,
    pub perf: Figure<Perf>,
    pub perf_echo: Figure<Perf>,
    pub idle: Figure<IdleFigure>,
    pub s4: Figure<PerProxy<S4>>,
    pub storm: Figure<Storm>,
    pub growth: Figure<Growth>,
}

/// The machine and the run.
#[derive(Debug, Serialize)]
pub struct Meta {
    pub quick: bool,
    pub sizes: String,
    pub kernel: String,
    pub cpu: Option<String>,
    pub cores: usize,
    pub haproxy: String,
    pub nginx: String,
    pub rustc: String,
    pub git: String,
    pub unix_time: u64,
    pub elapsed_s: Option<u64>,
}

/// Figure 1, one repetition.
#[derive(Debug, Serialize)]
pub struct SetupsRun {
    pub cpu_ms: f64,
    pub ok: u64,
    pub outcomes: Outcomes,
    pub cpu_ms_per_setup: Option<f64>,
    pub setups_per_s: f64,
    pub setup_ms: Percentiles,
}

/// Figure 1 for one proxy: medians of the repetitions.
#[derive(Debug, Serialize)]
pub struct SetupsResult {
    pub cpu_ms_per_setup: Option<f64>,
    pub setups_per_s: Option<f64>,
    pub failed: u64,
    pub runs: Vec<SetupsRun>,
}

/// Figure 2, one repetition: loadgen's report and the proxy's CPU meanwhile.
#[derive(Debug, Serialize)]
pub struct EchoRun {
    #[serde(flatten)]
    pub load: Echo,
    pub proxy_cpu_ms: f64,
}

/// Figure 2 for one proxy.
#[derive(Debug, Serialize)]
pub struct EchoResult {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub lost: u64,
    pub sent: u64,
    pub proxy_cpu_ms: Option<f64>,
    pub runs: Vec<EchoRun>,
}

/// Figure 2: the offered load and each proxy's round trips.
#[derive(Debug, Serialize)]
pub struct EchoFigure {
    pub offered: String,
    #[serde(flatten)]
    pub proxies: PerProxy<EchoResult>,
}

/// Figure 3 for one proxy: RSS with idle calls held open.
#[derive(Debug, Serialize)]
pub struct IdleResult {
    pub base_kb: u64,
    pub rss_low_kb: u64,
    pub rss_high_kb: u64,
    /// At the third point (full runs).
    pub rss_top_kb: Option<u64>,
    pub kb_per_call: f64,
    pub kb_per_call_from_base: f64,
    pub mb_per_1000_calls: f64,
    /// The kernel's slab and TCP buffer pages per call over the same
    /// slope, system-wide: all four sockets of a call (the carrier's, the
    /// proxy's two, the fleet's), which RSS does not show.
    pub kernel_kb_per_call: f64,
}

/// Figure 3: the two call counts and each proxy's RSS.
#[derive(Debug, Serialize)]
pub struct IdleFigure {
    pub low: u32,
    pub high: u32,
    pub top: Option<u32>,
    #[serde(flatten)]
    pub proxies: PerProxy<IdleResult>,
}

/// One frame of the profile, by self time.
#[derive(Debug, Serialize)]
pub struct Frame {
    pub percent: f64,
    pub symbol: String,
    pub kernel: bool,
}

/// Self time by kind of frame, percent.
#[derive(Debug, Default, Serialize)]
pub struct Split {
    pub crypto: f64,
    pub kernel: f64,
    pub allocator: f64,
    pub other: f64,
}

/// Figure 6: where our CPU goes while setting calls up.
#[derive(Debug, Serialize)]
pub struct Perf {
    pub top: Vec<Frame>,
    pub split_percent: Split,
    /// Self time in `FrameCursor` (the tunnel's WebSocket frame tracking).
    pub frame_tracking_percent: f64,
    /// What ran while perf recorded.
    #[serde(rename = "while")]
    pub during: String,
}

/// Figure 5a for one proxy configuration.
#[derive(Debug, Serialize)]
pub struct StormRun {
    pub name: String,
    pub attempts: u32,
    pub proxy_cpu_ms: f64,
    pub proxy_idle_cpu_ms_per_s: f64,
    pub cpu_ms_per_attempt: f64,
    pub softirq_ms_per_attempt: f64,
    pub carrier_sees: Outcomes,
    pub answer_p50_ms: Option<f64>,
    pub elapsed_s: f64,
    /// The daemon's ready line's `xdp` (null for the other proxies).
    pub xdp: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp_shed_drop: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp_shed_rst: Option<u64>,
}

/// Figure 5b for one path.
#[derive(Debug, Serialize)]
pub struct Flood {
    pub tool: String,
    pub sent: u64,
    pub elapsed_s: f64,
    pub syn_per_s: f64,
    pub reached_tcp: u64,
    pub softirq_ms: f64,
    pub proxy_cpu_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp_dropped: Option<u64>,
    /// Dropped by a full per-CPU backlog before XDP (SKB mode) or TCP saw them.
    pub backlog_dropped: u64,
    pub absorbed_per_s: f64,
}

/// Figure 5b: the flood with XDP dropping and with the kernel stack taking it.
#[derive(Debug, Default, Serialize)]
pub struct Floods {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp_drop: Option<Figure<Flood>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_stack: Option<Figure<Flood>>,
    /// 5c: the same with the receive side on the proxy's core (RPS), XDP in SKB mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp_drop_steered: Option<Figure<Flood>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_stack_steered: Option<Figure<Flood>>,
}

/// Figure 5.
#[derive(Debug, Serialize)]
pub struct Storm {
    pub runs: Vec<Figure<StormRun>>,
    pub flood: Floods,
}

/// Figure 7, one proxy configuration with one fleet count.
#[derive(Debug, Serialize)]
pub struct GrowthRun {
    pub fleets: usize,
    pub name: String,
    pub check_interval_ms: u64,
    pub idle_cpu_ms_per_s: f64,
    pub cpu_ms_per_setup: Option<f64>,
}

/// Figure 7: how cost grows with the fleets behind one pool.
#[derive(Debug, Serialize)]
pub struct Growth {
    pub setups: u32,
    pub idle_s: u64,
    pub runs: Vec<Figure<GrowthRun>>,
}
