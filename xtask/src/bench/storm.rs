//! Figure 5: every fleet full. (a) Carriers storm with TLS + upgrade
//! attempts from a namespace over a veth, against ours with XDP dropping,
//! answering RST and off, and against HAProxy and nginx; (b) a bounded SYN
//! flood, XDP vs the kernel stack. RST mode runs as the daemon attaches it
//! on a veth (SKB mode: native XDP_TX replies would not reach the peer).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;
use serde_json::Value;
use testbed::{NetPair, poll::wait_for};

use super::{
    Ctx, LOAD_CORE, PROXY_CORE, figure, net,
    procs::{self, Cpu, softirq_ms},
    proxies::{Kind, Running},
    results::{Flood, Floods, Storm, StormRun},
};

/// How often the bench polls a condition.
const POLL: Duration = Duration::from_millis(50);

/// A bpffs directory for one run's pinned maps, removed on drop.
pub(super) struct Pins(pub(super) PathBuf);

impl Pins {
    /// `/sys/fs/bpf/ingress-bench-{pid}-{tag}`, emptied first.
    pub(super) fn new(tag: &str) -> Self {
        let p = PathBuf::from(format!("/sys/fs/bpf/ingress-bench-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Self(p)
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The XDP program's counters (`ingress bpf dump`); null when unreadable.
fn xdp_counters(ctx: &Ctx, pins: &Path) -> Value {
    procs::output(
        Command::new(ctx.bins.join("ingress"))
            .args(["bpf", "dump", "--json", "--pin-path"])
            .arg(pins),
        Duration::from_secs(20),
    )
    .ok()
    .and_then(|o| serde_json::from_str::<Value>(&o).ok())
    .map(|v| v["counters"].clone())
    .unwrap_or(Value::Null)
}

fn counter_delta(before: &Value, after: &Value, key: &str) -> u64 {
    after[key]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(before[key].as_u64().unwrap_or(0))
}

pub(super) fn storm(ctx: &Ctx) -> anyhow::Result<Storm> {
    let s = ctx.sizes;
    let pair = NetPair::new('b')?;
    let ns = pair.ingress_ns.clone();
    let fleets = ctx.start_fleets(2, 16, Some(&ns), "storm")?;
    for f in &fleets {
        f.control.occupy(16)?;
    }
    let configs: [(&str, Kind, Option<&'static str>); 5] = [
        ("ours, XDP drop", Kind::Ingress, Some("drop")),
        ("ours, XDP rst (SKB mode on the veth)", Kind::Ingress, Some("rst")),
        ("ours, XDP off", Kind::Ingress, None),
        ("HAProxy", Kind::Haproxy, None),
        ("nginx", Kind::Nginx, None),
    ];
    let port = 18443;
    let dial = SocketAddr::from((pair.ingress_ip, port));
    let mut runs = Vec::new();
    let mut floods = Floods::default();
    for (name, kind, xdp) in configs {
        let r = figure(&format!("  storm: {name}"), || -> anyhow::Result<StormRun> {
            let pins = Pins::new(xdp.unwrap_or("off"));
            let tag = format!("storm-{}", name_tag(name));
            let spec = ctx.spec_in_pair(
                &pair,
                (kind, &tag, port),
                &fleets,
                16,
                xdp.map(|action| (action, None, pins.0.as_path())),
            );
            let p = ctx.start(&spec, dial)?;
            let mut attached = Value::Null;
            if p.admin.is_some() {
                attached = p.proc.ready["xdp"].clone();
                settle(&p, xdp.is_some())?;
            } else if kind == Kind::Haproxy {
                // fall 2 × inter 1s after start: both fleets DOWN.
                std::thread::sleep(Duration::from_millis(1500));
            }
            // What the proxy burns with no load (health checks, lease renewal), per second.
            let idle_cpu = Cpu::read(p.pid());
            let idle_soft = softirq_ms();
            let idle_at = Instant::now();
            std::thread::sleep(Duration::from_secs(3));
            let idle_s = idle_at.elapsed().as_secs_f64();
            let idle_rate = idle_cpu.since(p.pid()) / idle_s;
            let idle_soft_rate = (softirq_ms() - idle_soft) / idle_s;
            let before = xdp.map(|_| xdp_counters(ctx, &pins.0));
            let cpu = Cpu::read(p.pid());
            let soft = softirq_ms();
            let at = Instant::now();
            let r = ctx.setups(Some(&pair.carrier_ns), dial, s.storm, 50, 1000, false)?;
            let elapsed = at.elapsed().as_secs_f64();
            let cpu_ms = cpu.since(p.pid());
            let soft_ms = softirq_ms() - soft;
            let attempts = f64::from(s.storm);
            let net_cpu = (cpu_ms - idle_rate * elapsed).max(0.0);
            let net_soft = (soft_ms - idle_soft_rate * elapsed).max(0.0);
            let (shed_drop, shed_rst) = match &before {
                Some(before) => {
                    let after = xdp_counters(ctx, &pins.0);
                    (
                        Some(counter_delta(before, &after, "shed_drop")),
                        Some(counter_delta(before, &after, "shed_rst")),
                    )
                }
                None => (None, None),
            };
            // 5b: the SYN flood, with XDP dropping and with the kernel stack taking it.
            if kind == Kind::Ingress && xdp != Some("rst") {
                let f = figure(&format!("  SYN flood: {name}"), || {
                    flood(ctx, &pair, &p, &pins.0, xdp.is_some(), port, None)
                });
                if xdp.is_some() {
                    floods.xdp_drop = Some(f);
                } else {
                    floods.kernel_stack = Some(f);
                }
            }
            Ok(StormRun {
                name: name.to_owned(),
                attempts: s.storm,
                proxy_cpu_ms: cpu_ms,
                proxy_idle_cpu_ms_per_s: idle_rate,
                cpu_ms_per_attempt: net_cpu / attempts,
                softirq_ms_per_attempt: net_soft / attempts,
                carrier_sees: r.outcomes,
                answer_p50_ms: r.fail_ms.p50,
                elapsed_s: r.elapsed_s,
                xdp: attached,
                xdp_shed_drop: shed_drop,
                xdp_shed_rst: shed_rst,
            })
        });
        runs.push(r);
    }
    // 5c: the same floods with the receive side steered off the sender's core.
    for with_xdp in [true, false] {
        let f = figure(
            &format!(
                "  SYN flood steered to core {PROXY_CORE}, XDP {}",
                if with_xdp { "drop (SKB mode)" } else { "off" }
            ),
            || steered_flood(ctx, &pair, &fleets, port, with_xdp),
        );
        if with_xdp {
            floods.xdp_drop_steered = Some(f);
        } else {
            floods.kernel_stack_steered = Some(f);
        }
    }
    drop(fleets);
    drop(pair);
    Ok(Storm { runs, flood: floods })
}

/// Fails unless ours attached its XDP program (its ready line says).
pub(super) fn attached(p: &Running) -> anyhow::Result<()> {
    if p.proc.ready["xdp"]["attached"] != true {
        bail!("XDP did not attach: {}", p.proc.ready["xdp"]);
    }
    Ok(())
}

/// Waits until ours sheds (XDP on) or sees every fleet FULL (XDP off).
fn settle(p: &Running, with_xdp: bool) -> anyhow::Result<()> {
    let Some(admin) = &p.admin else {
        return Ok(());
    };
    if with_xdp {
        attached(p)?;
        wait_for("XDP shedding", Duration::from_secs(10), POLL, || {
            admin.json("/api/status").is_ok_and(|v| v["xdp"]["shedding"] == true)
        })
    } else {
        wait_for("every fleet FULL", Duration::from_secs(10), POLL, || {
            admin.servers().is_ok_and(|a| a.iter().all(|s| s["state"] == "FULL"))
        })
    }
}

/// 5c: on a veth the receive side runs on the sending core, so the flood's
/// generator and the path under test share it. Receive packet steering
/// (RPS) on the ingress end moves the receive side to the proxy's core;
/// XDP then runs in SKB mode (after steering; native XDP on a veth runs
/// in the sender's NAPI poll, before it). trafgen's TX ring fails with
/// EAGAIN once the receive side is steered away, so it sends one packet
/// per system call here (a tenth of the count); when that is slower than
/// both paths, the generator is the limit and the ratio reads near 1.
fn steered_flood(
    ctx: &Ctx,
    pair: &NetPair,
    fleets: &[testbed::Fleet],
    port: u16,
    with_xdp: bool,
) -> anyhow::Result<Flood> {
    let pins = Pins::new(if with_xdp { "steered-xdp" } else { "steered-off" });
    let tag = if with_xdp {
        "flood-steered-xdp"
    } else {
        "flood-steered-off"
    };
    let spec = ctx.spec_in_pair(
        pair,
        (Kind::Ingress, tag, port),
        fleets,
        16,
        with_xdp.then_some(("drop", Some("skb"), pins.0.as_path())),
    );
    let p = ctx.start(&spec, SocketAddr::from((pair.ingress_ip, port)))?;
    settle(&p, with_xdp)?;
    let rps = |mask: &str| {
        procs::output(
            Command::new("ip")
                .args(["netns", "exec", &pair.ingress_ns, "sh", "-c"])
                .arg(format!(
                    "echo {mask} > /sys/class/net/{}/queues/rx-0/rps_cpus",
                    pair.ingress_if
                )),
            Duration::from_secs(10),
        )
    };
    rps(&format!("{:x}", 1u32 << PROXY_CORE))?;
    let r = flood(ctx, pair, &p, &pins.0, with_xdp, port, Some("1ns"));
    let _ = rps("0");
    r
}

fn name_tag(name: &str) -> String {
    name.chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

fn flood(
    ctx: &Ctx,
    pair: &NetPair,
    p: &Running,
    pins: &Path,
    with_xdp: bool,
    port: u16,
    gap: Option<&str>,
) -> anyhow::Result<super::results::Flood> {
    let s = ctx.sizes;
    let before = with_xdp.then(|| xdp_counters(ctx, pins));
    let segs = testbed::netns::tcp_in_segs(&pair.ingress_ns);
    let backlog = procs::backlog_dropped();
    let cpu = Cpu::read(p.pid());
    let soft = softirq_ms();
    // One packet per system call is slower: a tenth of the count.
    let count = if gap.is_some() { s.flood / 10 } else { s.flood };
    let r = net::syn_flood(pair, port, count, LOAD_CORE, &ctx.dir, gap)?;
    let proxy_ms = cpu.since(p.pid());
    let soft_ms = softirq_ms() - soft;
    let reached_stack = testbed::netns::tcp_in_segs(&pair.ingress_ns).saturating_sub(segs);
    let backlog_dropped = procs::backlog_dropped().saturating_sub(backlog);
    let elapsed = r.elapsed_s;
    let sent = r.sent;
    let (xdp_dropped, absorbed) = match before {
        Some(before) => {
            let dropped = counter_delta(&before, &xdp_counters(ctx, pins), "shed_drop");
            (Some(dropped), dropped as f64 / elapsed)
        }
        // InSegs also counts the carrier's RSTs to our SYN-ACKs: count SYNs up to what was sent.
        None => (None, reached_stack.min(sent) as f64 / elapsed),
    };
    Ok(super::results::Flood {
        tool: r.tool.to_owned(),
        sent,
        elapsed_s: elapsed,
        syn_per_s: sent as f64 / elapsed,
        reached_tcp: reached_stack,
        softirq_ms: soft_ms,
        proxy_cpu_ms: proxy_ms,
        xdp_dropped,
        backlog_dropped,
        absorbed_per_s: absorbed,
    })
}
