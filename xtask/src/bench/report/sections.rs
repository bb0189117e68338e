//! The report's sections below the main table: figure 2 per repetition,
//! the storm and flood tables (figure 5), the CPU profile (figure 6).

use std::fmt::Write as _;

use fleet_sim::report::Percentiles;

use super::{better, finite, fmt, missing, ratio};
use crate::bench::{
    proxies::Kind,
    results::{Figure, Flood, Results},
};

/// Figure 2 per repetition (they alternate between the proxies): each
/// proxy's p99 and p999, and whether ours was at or below the better
/// anchor's at both in that repetition (#17: in every one).
pub(super) fn echo_reps(r: &Results) -> String {
    let Ok(e) = r.echo.get() else {
        return String::new();
    };
    let runs = |k: Kind| e.proxies.get(k).get().map_or(&[][..], |x| x.runs.as_slice());
    let n = Kind::ALL.iter().map(|k| runs(*k).len()).max().unwrap_or(0);
    let mut out = String::from(
        "2b. echo per repetition (alternated, each repetition starting with the next proxy), p99 / p999 ms:\n\n\
         | repetition | ingress | HAProxy | nginx | ours ≤ better at both |\n|---|---:|---:|---:|---|\n",
    );
    let tails: [fn(&Percentiles) -> Option<f64>; 2] = [|p| p.p99, |p| p.p999];
    let mut ahead = 0;
    for i in 0..n {
        let at = |k: Kind, tail: fn(&Percentiles) -> Option<f64>| {
            runs(k).get(i).and_then(|r| tail(&r.load.rtt_us)).map(|us| us / 1000.0)
        };
        let cell = |k: Kind| format!("{} / {}", fmt(at(k, tails[0]), 3), fmt(at(k, tails[1]), 3));
        let ok = tails.iter().all(|t| {
            let best = better(at(Kind::Haproxy, *t), at(Kind::Nginx, *t), true);
            matches!((at(Kind::Ingress, *t), best), (Some(o), Some(b)) if o <= b)
        });
        ahead += usize::from(ok);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            i + 1,
            cell(Kind::Ingress),
            cell(Kind::Haproxy),
            cell(Kind::Nginx),
            if ok { "yes" } else { "**no**" }
        );
    }
    let met = if n > 0 && ahead == n { "yes" } else { "**no**" };
    let _ = writeln!(
        out,
        "\nours at or ahead of the better anchor at p99 and p999 in {ahead} of {n} repetitions; goal: every one: {met}\n"
    );
    out
}

pub(super) fn storm_tables(r: &Results) -> (String, Option<[Option<f64>; 2]>) {
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
    let fl = &st.flood;
    let (x, k) = (fl.xdp_drop.as_ref(), fl.kernel_stack.as_ref());
    let (xs, ks) = (fl.xdp_drop_steered.as_ref(), fl.kernel_stack_steered.as_ref());
    let _ = writeln!(
        out,
        "5b. bounded SYN flood over the veth (every fleet full); 5c the same with the ingress end's receive side steered to core {} (RPS) and XDP in SKB mode, so the generator on core {} no longer does the receiving too:\n",
        crate::bench::PROXY_CORE,
        crate::bench::LOAD_CORE
    );
    let _ = writeln!(
        out,
        "| path | SYNs sent | SYNs/s absorbed | reached TCP | backlog drops | softirq ms | proxy CPU ms | tool |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|");
    for (name, v) in [
        ("5b. XDP drop", x),
        ("5b. kernel stack (XDP off)", k),
        ("5c. XDP drop (SKB mode), steered", xs),
        ("5c. kernel stack, steered", ks),
    ] {
        match v.map(|f| f.get()) {
            Some(Err(m)) => {
                let _ = writeln!(out, "| {name} | {} | | | | | | |", missing(m));
            }
            Some(Ok(f)) => {
                let _ = writeln!(
                    out,
                    "| {name} | {} | {} | {} | {} | {} | {} | {} |",
                    f.sent,
                    fmt(Some(f.absorbed_per_s), 0),
                    f.reached_tcp,
                    f.backlog_dropped,
                    fmt(Some(f.softirq_ms), 0),
                    fmt(Some(f.proxy_cpu_ms), 1),
                    f.tool
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {name} | missing | missing | missing | missing | missing | missing | ? |"
                );
            }
        }
    }
    let absorbed = |v: Option<&Figure<Flood>>| v.and_then(|f| f.get().ok()).and_then(|f| finite(f.absorbed_per_s));
    // Both paths took all that was sent, and it was sent as fast to either:
    // the generator was the limit, not the paths (on a veth the sender does
    // the receiving too, so a slower path normally slows the sending).
    let generator_bound = |a: Option<&Figure<Flood>>, b: Option<&Figure<Flood>>| {
        let (Some(a), Some(b)) = (a.and_then(|f| f.get().ok()), b.and_then(|f| f.get().ok())) else {
            return false;
        };
        let took_all = |f: &Flood| f.absorbed_per_s >= 0.9 * f.syn_per_s;
        took_all(a)
            && took_all(b)
            && ratio(Some(a.syn_per_s), Some(b.syn_per_s)).is_some_and(|r| (0.85..=1.15).contains(&r))
    };
    let met = |fr: Option<f64>, bound: bool| match fr {
        _ if bound => "n/a (the generator was the limit: both paths took all it sent)",
        Some(f) if f >= 4.0 => "yes",
        Some(_) => "**no**",
        None => "n/a",
    };
    let (fr, frs) = (ratio(absorbed(x), absorbed(k)), ratio(absorbed(xs), absorbed(ks)));
    let (bound, bound_s) = (generator_bound(x, k), generator_bound(xs, ks));
    let _ = writeln!(
        out,
        "\nXDP / kernel stack = {}× (5b), {}× (5c, steered); goal ≥ 4×: {} (5b), {} (5c)\n",
        fmt(fr, 2),
        fmt(frs, 2),
        met(fr, bound),
        met(frs, bound_s)
    );
    (out, Some([ratio(ours, h), ratio(ours, n)]))
}

/// Figures 6 and 6b: the profiles while setting calls up and during echo.
pub(super) fn perf_text(r: &Results) -> String {
    let mut out = String::new();
    for (figure, name, what) in [
        (&r.perf, "6", "while setting calls up"),
        (&r.perf_echo, "6b", "during echo"),
    ] {
        let p = match figure.get() {
            Ok(p) => p,
            Err(m) => {
                let _ = writeln!(out, "{name}. CPU profile {what}: {}\n", missing(m));
                continue;
            }
        };
        let _ = writeln!(
            out,
            "{name}. CPU profile of ours {what} ({}), top five frames by self time:\n",
            p.during
        );
        let sp = &p.split_percent;
        let _ = writeln!(
            out,
            "Self time by kind: crypto (ring) {:.0}%, kernel {:.0}%, allocator and copies {:.0}%, everything else {:.0}%; WebSocket frame tracking (`FrameCursor`) {:.2}%.\n",
            sp.crypto, sp.kernel, sp.allocator, sp.other, p.frame_tracking_percent
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
        out.push('\n');
    }
    out
}
