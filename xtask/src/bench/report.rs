//! The bench's output from its typed results: a Markdown table (stdout and
//! `README-performance.md`), the storm and profile sections, `results.json`,
//! and `chart.svg` (see [`super::chart`]).

use std::{fmt::Write as _, path::Path};

use super::{
    chart::{Chart, svg},
    proxies::Kind,
    results::{PerProxy, Results},
};

/// A goal check: ingress's value and the better anchor's.
type Check = Box<dyn Fn(f64, Option<f64>) -> bool>;

/// `missing: ` and the first line of the reason, shortened.
fn missing(reason: &str) -> String {
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
            Some(("≤ 0.5× better", le(0.5))),
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

fn storm_tables(r: &Results) -> (String, Option<[Option<f64>; 2]>) {
    let mut out = String::new();
    let st = match r.storm.get() {
        Ok(st) => st,
        Err(m) => {
            let _ = writeln!(out, "5. carrier storm: {}", missing(m));
            return (out, None);
        }
    };
    let _ = writeln!(
        out,
        "5a. every fleet full; {} TLS + upgrade attempts from a carrier namespace over a veth, 50 at a time, 1 s each:\n",
        st.runs.first().and_then(|r| r.get().ok()).map_or(0, |r| r.attempts)
    );
    let _ = writeln!(
        out,
        "| proxy | proxy CPU ms / attempt | softirq ms / attempt | what the carrier sees | answer p50 ms |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|---:|");
    let mut cpu = std::collections::BTreeMap::new();
    for run in &st.runs {
        let run = match run.get() {
            Ok(run) => run,
            Err(m) => {
                let _ = writeln!(out, "| ? | {} | | | |", missing(m));
                continue;
            }
        };
        cpu.insert(run.name.clone(), finite(run.cpu_ms_per_attempt));
        let sees = run
            .carrier_sees
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {sees} | {} |",
            run.name,
            fmt(Some(run.cpu_ms_per_attempt), 4),
            fmt(Some(run.softirq_ms_per_attempt), 4),
            fmt(run.answer_p50_ms, 1)
        );
    }
    let ours = cpu.get("ours, XDP drop").copied().flatten();
    let h = cpu.get("HAProxy").copied().flatten();
    let n = cpu.get("nginx").copied().flatten();
    let best = better(h, n, true);
    let met = match (ours, best) {
        (Some(o), Some(b)) => {
            if o <= b / 100.0 {
                "yes"
            } else {
                "**no**"
            }
        }
        _ => "n/a",
    };
    let _ = writeln!(
        out,
        "\nours (XDP drop) / HAProxy = {}, / nginx = {}; goal ≤ 1/100 of the better anchor: {met}\n",
        fmt(ratio(ours, h), 4),
        fmt(ratio(ours, n), 4)
    );
    let x = st.flood.xdp_drop.as_ref();
    let k = st.flood.kernel_stack.as_ref();
    let _ = writeln!(out, "5b. bounded SYN flood over the veth (every fleet full):\n");
    let _ = writeln!(
        out,
        "| path | SYNs sent | SYNs/s absorbed | reached TCP | softirq ms | proxy CPU ms | tool |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    for (name, v) in [("XDP drop", x), ("kernel stack (XDP off)", k)] {
        match v.map(|f| f.get()) {
            Some(Err(m)) => {
                let _ = writeln!(out, "| {name} | {} | | | | | |", missing(m));
            }
            Some(Ok(f)) => {
                let _ = writeln!(
                    out,
                    "| {name} | {} | {} | {} | {} | {} | {} |",
                    f.sent,
                    fmt(Some(f.absorbed_per_s), 0),
                    f.reached_tcp,
                    fmt(Some(f.softirq_ms), 0),
                    fmt(Some(f.proxy_cpu_ms), 1),
                    f.tool
                );
            }
            None => {
                let _ = writeln!(out, "| {name} | missing | missing | missing | missing | missing | ? |");
            }
        }
    }
    let absorbed = |v: Option<&super::results::Figure<super::results::Flood>>| {
        v.and_then(|f| f.get().ok()).and_then(|f| finite(f.absorbed_per_s))
    };
    let fr = ratio(absorbed(x), absorbed(k));
    let met = match fr {
        Some(f) if f >= 4.0 => "yes",
        Some(_) => "**no**",
        None => "n/a",
    };
    let _ = writeln!(out, "\nXDP / kernel stack = {}×; goal ≥ 4×: {met}\n", fmt(fr, 2));
    (out, Some([ratio(ours, h), ratio(ours, n)]))
}

fn perf_text(r: &Results) -> String {
    let p = match r.perf.get() {
        Ok(p) => p,
        Err(m) => return format!("6. CPU profile: {}\n", missing(m)),
    };
    let mut out = format!(
        "6. CPU profile of ours while setting calls up ({}), top five frames by self time:\n\n",
        p.during
    );
    let sp = &p.split_percent;
    let _ = writeln!(
        out,
        "Self time by kind: crypto (ring) {:.0}%, kernel {:.0}%, allocator and copies {:.0}%, everything else {:.0}%.\n",
        sp.crypto, sp.kernel, sp.allocator, sp.other
    );
    for (i, f) in p.top.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}. {:.2}% `{}`{}",
            i + 1,
            f.percent,
            f.symbol,
            if f.kernel { " (kernel)" } else { "" }
        );
    }
    out
}

pub fn write(dir: &Path, r: &Results) -> anyhow::Result<()> {
    let (main, mut chart) = table(r);
    let (storm, storm_ratios) = storm_tables(r);
    if let Some(x) = storm_ratios {
        chart.push(("storm CPU/attempt".into(), x));
    }
    let perf = perf_text(r);
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
        "## Performance\n\n`cargo xtask bench` (about 6 minutes after the release build; `--quick`: about 2) measures our `ingress` side by side with HAProxy and nginx from Debian's packages on the same machine, in one run: each proxy pinned to the same single core with one worker and an equivalent config (the generated configs are kept in `target/bench/`: `ingress-*.toml`, `haproxy-*.cfg`, `nginx-*.conf`), against the same Rust fleet simulators, driven by our load generator (`fleet-sim/src/bin/loadgen/`). Traffic stays on loopback or in two network namespaces the bench makes (deleted at the end); every load loop is bounded. It writes `target/bench/results.json`, `target/bench/chart.svg` and this section (`target/bench/README-performance.md`). A figure that cannot be measured prints `missing: reason`.\n\nLatest run: {machine}\nEcho load: {offered}. RSS slope between {idle}. Values are medians of the repetitions; CPU is the proxy process's utime + stime from `/proc`.\n\n{main}\n{storm}{perf}\n![ratios](target/bench/chart.svg)\n\nReproduce: `cargo xtask bench` (root; installs `haproxy`, `nginx`, `linux-perf`, `netsniff-ng`, `hping3` when absent; runs its own instances, never the system services).\n"
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
