//! The bench's output from its typed results: the main Markdown table
//! (stdout and `README-performance.md`) with the sections below it (see
//! [`sections`]), `results.json`, and `chart.svg` (see [`super::chart`]).

mod sections;

use std::{fmt::Write as _, path::Path};

use super::{
    chart::{Chart, svg},
    proxies::Kind,
    results::{PerProxy, Results},
};

/// A goal check: ingress's value and the better anchor's.
type Check = Box<dyn Fn(f64, Option<f64>) -> bool>;

/// `missing: ` and the first line of the reason, shortened.
pub(super) fn missing(reason: &str) -> String {
    let first = reason.lines().next().unwrap_or_default();
    let short: String = first.chars().take(90).collect();
    format!("missing: {short}")
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "missing".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(a / b),
        _ => None,
    }
}

fn better(a: Option<f64>, b: Option<f64>, lower_is_better: bool) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if lower_is_better { a.min(b) } else { a.max(b) }),
        (x, None) | (None, x) => x,
    }
}

struct Row {
    figure: String,
    vals: [String; 3],
    ratios: [String; 2],
    goal: String,
    met: String,
}

/// A row from one number per proxy; `sec` is the figure's per-proxy
/// results, or why the whole figure is missing.
fn row<T>(
    sec: Result<&PerProxy<T>, &str>,
    figure: &str,
    get: impl Fn(&T) -> Option<f64>,
    decimals: usize,
    goal: Option<(&str, Check)>,
    lower_is_better: bool,
) -> (Row, [Option<f64>; 2]) {
    let cell = |k: Kind| -> Result<&T, String> { sec.map_err(missing)?.get(k).get().map_err(missing) };
    let raw: Vec<Option<f64>> = Kind::ALL.iter().map(|k| cell(*k).ok().and_then(&get)).collect();
    let vals: Vec<String> = Kind::ALL
        .iter()
        .zip(&raw)
        .map(|(k, v)| cell(*k).map_or_else(|m| m, |_| fmt(*v, decimals)))
        .collect();
    let rh = ratio(raw[0], raw[1]);
    let rn = ratio(raw[0], raw[2]);
    let (goal_s, met) = match goal {
        None => (String::new(), String::new()),
        Some((text, check)) => {
            let met = match raw[0] {
                None if cell(Kind::Ingress).is_ok() => "**no**",
                Some(v) => {
                    if check(v, better(raw[1], raw[2], lower_is_better)) {
                        "yes"
                    } else {
                        "**no**"
                    }
                }
                None => "n/a",
            };
            (text.to_owned(), met.to_owned())
        }
    };
    (
        Row {
            figure: figure.to_owned(),
            vals: [vals[0].clone(), vals[1].clone(), vals[2].clone()],
            ratios: [1, 2].map(|i| match (raw[0], raw[i]) {
                (Some(a), Some(b)) if a == 0.0 && b == 0.0 => "equal (0)".to_owned(),
                (Some(_), Some(0.0)) => "— (anchor 0)".to_owned(),
                _ => fmt(ratio(raw[0], raw[i]), 2),
            }),
            goal: goal_s,
            met,
        },
        [rh, rn],
    )
}

pub fn table(r: &Results) -> (String, Chart) {
    let mut rows = Vec::new();
    let mut chart = Vec::new();
    let mut push = |(row, ratios): (Row, [Option<f64>; 2]), chart_label: Option<&str>| {
        if let Some(l) = chart_label {
            chart.push((l.to_owned(), ratios));
        }
        rows.push(row);
    };
    let le = |factor: f64| -> Check { Box::new(move |v, b| b.is_some_and(|b| v <= factor * b)) };
    let zero = || -> Check { Box::new(|v, _| v == 0.0) };
    let setups = r.setups.get();
    let echo = r.echo.get().map(|e| &e.proxies);
    let idle = r.idle.get().map(|i| &i.proxies);
    let s4 = r.s4.get();
    // Figure 1 and its two levers (1b, 1c): one row each, the goal and the chart on 1.
    for (i, (figure, label)) in [
        (&r.setups, "1. proxy CPU ms per TLS + upgrade set-up"),
        (&r.setups_tls12, "1b. the same, every proxy on TLS 1.2 to the fleets"),
        (
            &r.setups_resumed,
            "1c. the same for a carrier that resumes its TLS session",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let goal = (i == 0).then(|| ("≤ 0.4× better", le(0.4)));
        push(
            row(figure.get(), label, |v| v.cpu_ms_per_setup, 3, goal, true),
            (i == 0).then_some("CPU/set-up"),
        );
    }
    push(
        row(
            setups,
            "1. set-ups/s (load on the other core)",
            |v| v.setups_per_s,
            0,
            None,
            false,
        ),
        Some("set-ups/s"),
    );
    push(
        row(echo, "2. echo p50 ms", |v| v.p50_ms, 3, None, true),
        Some("echo p50"),
    );
    push(
        row(
            echo,
            "2. echo p99 ms",
            |v| v.p99_ms,
            3,
            Some(("≤ 1.0× better", le(1.0))),
            true,
        ),
        Some("echo p99"),
    );
    push(
        row(echo, "2. echo p999 ms", |v| v.p999_ms, 3, None, true),
        Some("echo p999"),
    );
    push(
        row(
            echo,
            "2. messages lost",
            |v| Some(v.lost as f64),
            0,
            Some(("0", zero())),
            true,
        ),
        None,
    );
    push(
        row(
            idle,
            "3. RSS KB per idle WSS call (slope low→high)",
            |v| finite(v.kb_per_call),
            1,
            Some(("≤ 6 KB", Box::new(|v, _| v <= 6.0))),
            true,
        ),
        Some("RSS/idle call"),
    );
    push(
        row(
            idle,
            "3. RSS MB at the high count",
            |v| Some(v.rss_high_kb as f64 / 1024.0),
            1,
            None,
            true,
        ),
        None,
    );
    let top = r.idle.get().ok().and_then(|i| i.top);
    if let Some(top) = top {
        push(
            row(
                idle,
                &format!("3. RSS MB at {top} idle calls (what 20 000 descriptors hold)"),
                |v| v.rss_top_kb.map(|kb| kb as f64 / 1024.0),
                1,
                None,
                true,
            ),
            None,
        );
    }
    push(
        row(
            idle,
            "3. kernel KB per idle call (slab + TCP pages, all four sockets)",
            |v| finite(v.kernel_kb_per_call),
            1,
            None,
            true,
        ),
        None,
    );
    push(
        row(
            s4,
            "4. S4: 429s seen by carriers (of 8)",
            |v| Some(v.carrier_429 as f64),
            0,
            Some(("0", zero())),
            true,
        ),
        None,
    );
    push(
        row(
            s4,
            "4. S4: ms from full to no call routed there",
            |v| v.stop_ms.map(|ms| ms as f64),
            0,
            None,
            true,
        ),
        None,
    );
    push(
        row(
            s4,
            "4. S4: calls that reached the full fleet",
            |v| Some(v.full_fleet_hits as f64),
            0,
            None,
            true,
        ),
        None,
    );
    push(
        row(
            s4,
            "4. S4: ms until the freed fleet is picked again",
            |v| v.recover_ms.map(|ms| ms as f64),
            0,
            Some(("picked again (not shunned)", Box::new(|_, _| true))),
            true,
        ),
        None,
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| figure | ingress | HAProxy | nginx | ingress / HAProxy | ingress / nginx | goal | met |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---|");
    for x in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            x.figure, x.vals[0], x.vals[1], x.vals[2], x.ratios[0], x.ratios[1], x.goal, x.met
        );
    }
    (out, chart)
}

pub fn write(dir: &Path, r: &Results) -> anyhow::Result<()> {
    let (main, mut chart) = table(r);
    let (storm, storm_ratios) = sections::storm_tables(r);
    if let Some(x) = storm_ratios {
        chart.push(("storm CPU/attempt".into(), x));
    }
    let perf = sections::perf_text(r);
    let main = format!("{main}\n{}", sections::echo_reps(r));
    let perf = format!("{perf}\n{}", super::growth::table(&r.growth));
    let meta = &r.meta;
    let machine = format!(
        "{} cores ({}), kernel {}, {}, {}, {}; proxy pinned to core 1 with one worker, fleets and load generator on core 0; {} run{}.",
        meta.cores,
        meta.cpu.as_deref().unwrap_or("?"),
        meta.kernel,
        meta.haproxy.split(" - ").next().unwrap_or("?"),
        meta.nginx,
        meta.rustc,
        if meta.quick { "quick" } else { "full" },
        meta.elapsed_s.map(|s| format!(" in {s} s")).unwrap_or_default(),
    );
    let offered = r.echo.get().map_or("?", |e| e.offered.as_str());
    let idle = r.idle.get().map_or_else(
        |_| "? and ? idle calls".to_owned(),
        |i| format!("{} and {} idle calls", i.low, i.high),
    );
    let text = format!(
        "{machine}\nEcho load: {offered}. RSS slope between {idle}. Values are medians of the repetitions.\n\n{main}\n{storm}{perf}"
    );
    println!("\n{text}");
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("chart.svg"), svg(&chart))?;
    let md = format!(
        "## Performance\n\n`cargo xtask bench` (about 9 minutes after the release build; `--quick`: about 4) measures our `ingress` side by side with HAProxy and nginx from Debian's packages on the same machine, in one run: each proxy pinned to the same single core with one worker and an equivalent config (the generated configs are kept in `target/bench/`: `ingress-*.toml`, `haproxy-*.cfg`, `nginx-*.conf`), against the same Rust fleet simulators, driven by our load generator (`fleet-sim/src/bin/loadgen/`). Traffic stays on loopback or in two network namespaces the bench makes (deleted at the end); every load loop is bounded. It writes `target/bench/results.json`, `target/bench/chart.svg` and this section (`target/bench/README-performance.md`). A figure that cannot be measured prints `missing: reason`.\n\nLatest run: {machine}\nEcho load: {offered}. RSS slope between {idle}. Values are medians of the repetitions; CPU is the proxy process's utime + stime from `/proc`.\n\n{main}\n{storm}{perf}\n![ratios](target/bench/chart.svg)\n\nReproduce: `cargo xtask bench` (root; installs `haproxy`, `nginx`, `linux-perf`, `netsniff-ng`, `hping3` when absent; runs its own instances, never the system services).\n"
    );
    std::fs::write(dir.join("README-performance.md"), md)?;
    eprintln!(
        "bench: wrote {}, {}, {}",
        dir.join("results.json").display(),
        dir.join("chart.svg").display(),
        dir.join("README-performance.md").display()
    );
    Ok(())
}
