//! The bench's output: a Markdown table (stdout and `README-performance.md`),
//! `results.json`, and `chart.svg` (the ratios, log scale).

use std::{fmt::Write as _, path::Path};

use serde_json::Value;

/// A goal check: ingress's value and the better anchor's.
type Check = Box<dyn Fn(f64, Option<f64>) -> bool>;
/// Chart bars: a label and the two ratios.
type Chart = Vec<(String, [Option<f64>; 2])>;

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn missing(v: &Value) -> Option<String> {
    v["missing"].as_str().map(|m| {
        let first = m.lines().next().unwrap_or_default();
        let short: String = first.chars().take(90).collect();
        format!("missing: {short}")
    })
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

/// A row from one number per proxy.
fn row(
    r: &Value,
    section: &str,
    figure: &str,
    get: impl Fn(&Value) -> Option<f64>,
    decimals: usize,
    goal: Option<(&str, Check)>,
    lower_is_better: bool,
) -> (Row, [Option<f64>; 2]) {
    let keys = ["ingress", "haproxy", "nginx"];
    let sec = &r[section];
    let raw: Vec<Option<f64>> = keys.iter().map(|k| get(&sec[*k])).collect();
    let vals: Vec<String> = keys
        .iter()
        .zip(&raw)
        .map(|(k, v)| {
            missing(sec)
                .or_else(|| missing(&sec[*k]))
                .unwrap_or_else(|| fmt(*v, decimals))
        })
        .collect();
    let rh = ratio(raw[0], raw[1]);
    let rn = ratio(raw[0], raw[2]);
    let (goal_s, met) = match goal {
        None => (String::new(), String::new()),
        Some((text, check)) => {
            let met = match raw[0] {
                None if sec["ingress"].is_object() && missing(&sec["ingress"]).is_none() && missing(sec).is_none() => {
                    "**no**"
                }
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

pub fn table(r: &Value) -> (String, Chart) {
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
    push(
        row(
            r,
            "setups",
            "1. proxy CPU ms per TLS + upgrade set-up",
            |v| num(&v["cpu_ms_per_setup"]),
            3,
            Some(("≤ 0.67× better", le(0.67))),
            true,
        ),
        Some("CPU/set-up"),
    );
    push(
        row(
            r,
            "setups",
            "1. set-ups/s (load on the other core)",
            |v| num(&v["setups_per_s"]),
            0,
            None,
            false,
        ),
        Some("set-ups/s"),
    );
    push(
        row(r, "echo", "2. echo p50 ms", |v| num(&v["p50_ms"]), 3, None, true),
        Some("echo p50"),
    );
    push(
        row(
            r,
            "echo",
            "2. echo p99 ms",
            |v| num(&v["p99_ms"]),
            3,
            Some(("≤ 1.0× better", le(1.0))),
            true,
        ),
        Some("echo p99"),
    );
    push(
        row(r, "echo", "2. echo p999 ms", |v| num(&v["p999_ms"]), 3, None, true),
        Some("echo p999"),
    );
    push(
        row(
            r,
            "echo",
            "2. messages lost",
            |v| num(&v["lost"]),
            0,
            Some(("0", zero())),
            true,
        ),
        None,
    );
    push(
        row(
            r,
            "idle",
            "3. RSS KB per idle WSS call (slope low→high)",
            |v| num(&v["kb_per_call"]),
            1,
            Some(("≤ 0.5× better", le(0.5))),
            true,
        ),
        Some("RSS/idle call"),
    );
    push(
        row(
            r,
            "idle",
            "3. RSS MB at the high count",
            |v| num(&v["rss_high_kb"]).map(|k| k / 1024.0),
            1,
            None,
            true,
        ),
        None,
    );
    push(
        row(
            r,
            "s4",
            "4. S4: 429s seen by carriers (of 8)",
            |v| num(&v["carrier_429"]),
            0,
            Some(("0", zero())),
            true,
        ),
        None,
    );
    push(
        row(
            r,
            "s4",
            "4. S4: ms from full to no call routed there",
            |v| num(&v["stop_ms"]),
            0,
            None,
            true,
        ),
        None,
    );
    push(
        row(
            r,
            "s4",
            "4. S4: calls that reached the full fleet",
            |v| num(&v["full_fleet_hits"]),
            0,
            None,
            true,
        ),
        None,
    );
    push(
        row(
            r,
            "s4",
            "4. S4: ms until the freed fleet is picked again",
            |v| num(&v["recover_ms"]),
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

fn storm_tables(r: &Value) -> (String, Option<[Option<f64>; 2]>) {
    let st = &r["storm"];
    let mut out = String::new();
    if let Some(m) = missing(st) {
        let _ = writeln!(out, "5. carrier storm: {m}");
        return (out, None);
    }
    let _ = writeln!(
        out,
        "5a. every fleet full; {} TLS + upgrade attempts from a carrier namespace over a veth, 50 at a time, 1 s each:\n",
        st["runs"][0]["attempts"].as_u64().unwrap_or(0)
    );
    let _ = writeln!(
        out,
        "| proxy | proxy CPU ms / attempt | softirq ms / attempt | what the carrier sees | answer p50 ms |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|---:|");
    let mut cpu = std::collections::BTreeMap::new();
    for run in st["runs"].as_array().into_iter().flatten() {
        if let Some(m) = missing(run) {
            let _ = writeln!(out, "| ? | {m} | | | |");
            continue;
        }
        let name = run["name"].as_str().unwrap_or("?");
        cpu.insert(name.to_owned(), run["cpu_ms_per_attempt"].as_f64());
        let sees = run["carrier_sees"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {sees} | {} |",
            fmt(run["cpu_ms_per_attempt"].as_f64(), 4),
            fmt(run["softirq_ms_per_attempt"].as_f64(), 4),
            fmt(run["answer_p50_ms"].as_f64(), 1)
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
    let fl = &st["flood"];
    let x = &fl["xdp_drop"];
    let k = &fl["kernel_stack"];
    let _ = writeln!(out, "5b. bounded SYN flood over the veth (every fleet full):\n");
    let _ = writeln!(
        out,
        "| path | SYNs sent | SYNs/s absorbed | reached TCP | softirq ms | proxy CPU ms | tool |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    for (name, v) in [("XDP drop", x), ("kernel stack (XDP off)", k)] {
        if let Some(m) = missing(v) {
            let _ = writeln!(out, "| {name} | {m} | | | | | |");
            continue;
        }
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            fmt(v["sent"].as_f64(), 0),
            fmt(v["absorbed_per_s"].as_f64(), 0),
            fmt(v["reached_tcp"].as_f64(), 0),
            fmt(v["softirq_ms"].as_f64(), 0),
            fmt(v["proxy_cpu_ms"].as_f64(), 1),
            v["tool"].as_str().unwrap_or("?")
        );
    }
    let fr = ratio(x["absorbed_per_s"].as_f64(), k["absorbed_per_s"].as_f64());
    let met = match fr {
        Some(f) if f >= 4.0 => "yes",
        Some(_) => "**no**",
        None => "n/a",
    };
    let _ = writeln!(out, "\nXDP / kernel stack = {}×; goal ≥ 4×: {met}\n", fmt(fr, 2));
    (out, Some([ratio(ours, h), ratio(ours, n)]))
}

fn perf_text(r: &Value) -> String {
    let p = &r["perf"];
    if let Some(m) = missing(p) {
        return format!("6. CPU profile: {m}\n");
    }
    let mut out = format!(
        "6. CPU profile of ours while setting calls up ({}), top five frames by self time:\n\n",
        p["while"].as_str().unwrap_or_default()
    );
    let sp = &p["split_percent"];
    let _ = writeln!(
        out,
        "Self time by kind: crypto (ring) {:.0}%, kernel {:.0}%, allocator and copies {:.0}%, everything else {:.0}%.\n",
        sp["crypto"].as_f64().unwrap_or(0.0),
        sp["kernel"].as_f64().unwrap_or(0.0),
        sp["allocator"].as_f64().unwrap_or(0.0),
        sp["other"].as_f64().unwrap_or(0.0)
    );
    for (i, f) in p["top"].as_array().into_iter().flatten().enumerate() {
        let _ = writeln!(
            out,
            "{}. {:.2}% `{}`{}",
            i + 1,
            f["percent"].as_f64().unwrap_or(0.0),
            f["symbol"].as_str().unwrap_or("?"),
            if f["kernel"] == true { " (kernel)" } else { "" }
        );
    }
    out
}

fn svg(chart: &Chart) -> String {
    // Log scale from 1/1000 to 10; a line at 1 (parity).
    let (w, h, left, top, bottom) = (900.0, 420.0, 70.0, 40.0, 70.0);
    let plot_h = h - top - bottom;
    let y = |v: f64| {
        let l = v.clamp(1e-3, 10.0).log10();
        top + plot_h * (1.0 - (l + 3.0) / 4.0)
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"22\" font-size=\"15\">ingress / HAProxy and ingress / nginx (log scale; below 1 = ingress lower)</text>\n"
    );
    for t in [0.001, 0.01, 0.1, 1.0, 10.0] {
        let yy = y(t);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"{}\" stroke-width=\"{}\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{t}</text>",
            w - 20.0,
            if t == 1.0 { "#333" } else { "#ddd" },
            if t == 1.0 { 1.5 } else { 1.0 },
            left - 6.0,
            yy + 4.0
        );
    }
    let n = chart.len().max(1) as f64;
    let group = (w - left - 30.0) / n;
    let bar = group * 0.32;
    for (i, (label, ratios)) in chart.iter().enumerate() {
        let gx = left + group * i as f64 + group * 0.15;
        for (j, (r, color)) in ratios.iter().zip(["#d9822b", "#2b7bd9"]).enumerate() {
            let x = gx + j as f64 * (bar + 4.0);
            match r {
                Some(v) => {
                    let (y1, y0) = (y(*v), y(1.0));
                    let (yt, hh) = if y1 < y0 { (y1, y0 - y1) } else { (y0, y1 - y0) };
                    let _ = writeln!(
                        s,
                        "<rect x=\"{x:.1}\" y=\"{yt:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{v:.2}</text>",
                        hh.max(1.0),
                        x + bar / 2.0,
                        if y1 < y0 { yt - 3.0 } else { yt + hh + 11.0 }
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">n/a</text>",
                        x + bar / 2.0,
                        y(1.0) - 3.0
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            gx + bar,
            h - bottom + 20.0
        );
    }
    let ly = h - 22.0;
    let _ = writeln!(
        s,
        "<rect x=\"{left}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"#d9822b\"/><text x=\"{}\" y=\"{ly}\">ingress / HAProxy</text><rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"#2b7bd9\"/><text x=\"{}\" y=\"{ly}\">ingress / nginx</text>\n</svg>",
        ly - 10.0,
        left + 16.0,
        left + 160.0,
        ly - 10.0,
        left + 176.0
    );
    s
}

pub fn write(dir: &Path, r: &Value) -> anyhow::Result<()> {
    let (main, mut chart) = table(r);
    let (storm, storm_ratios) = storm_tables(r);
    if let Some(x) = storm_ratios {
        chart.push(("storm CPU/attempt".into(), x));
    }
    let perf = perf_text(r);
    let meta = &r["meta"];
    let machine = format!(
        "{} cores ({}), kernel {}, {}, {}, {}; proxy pinned to core 1 with one worker, fleets and load generator on core 0; {} run{}.",
        meta["cores"],
        meta["cpu"].as_str().unwrap_or("?"),
        meta["kernel"].as_str().unwrap_or("?"),
        meta["haproxy"]
            .as_str()
            .unwrap_or("?")
            .split(" - ")
            .next()
            .unwrap_or("?"),
        meta["nginx"].as_str().unwrap_or("?"),
        meta["rustc"].as_str().unwrap_or("?"),
        if meta["quick"] == true { "quick" } else { "full" },
        meta["elapsed_s"]
            .as_u64()
            .map(|s| format!(" in {s} s"))
            .unwrap_or_default(),
    );
    let offered = r["echo"]["offered"].as_str().unwrap_or("?");
    let idle = format!("{} and {} idle calls", r["idle"]["low"], r["idle"]["high"]);
    let text = format!(
        "{machine}\nEcho load: {offered}. RSS slope between {idle}. Values are medians of the repetitions.\n\n{main}\n{storm}{perf}"
    );
    println!("\n{text}");
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("chart.svg"), svg(&chart))?;
    let md = format!(
        "## Performance\n\n`cargo xtask bench` (about 6 minutes after the release build; `--quick`: about 2) measures our `ingress` side by side with HAProxy and nginx from Debian's packages on the same machine, in one run: each proxy pinned to the same single core with one worker and an equivalent config (the generated configs are kept in `target/bench/`: `ingress-*.toml`, `haproxy-*.cfg`, `nginx-*.conf`), against the same Rust fleet simulators, driven by our load generator (`fleet-sim/src/bin/loadgen.rs`). Traffic stays on loopback or in two network namespaces the bench makes (deleted at the end); every load loop is bounded. It writes `target/bench/results.json`, `target/bench/chart.svg` and this section (`target/bench/README-performance.md`). A figure that cannot be measured prints `missing: reason`.\n\nLatest run: {machine}\nEcho load: {offered}. RSS slope between {idle}. Values are medians of the repetitions; CPU is the proxy process's utime + stime from `/proc`.\n\n{main}\n{storm}{perf}\n![ratios](target/bench/chart.svg)\n\nReproduce: `cargo xtask bench` (root; installs `haproxy`, `nginx`, `linux-perf`, `netsniff-ng`, `hping3` when absent; runs its own instances, never the system services).\n"
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
