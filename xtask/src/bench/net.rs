//! Two network namespaces of the bench's own ("ingress" and "carrier")
//! joined by a veth pair, deleted on drop; and the bounded SYN flood from the
//! carrier side (trafgen, else hping3). Traffic never leaves them.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::procs::output;

const PREFIX: &str = "inbench";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    output(Command::new("ip").args(args), Duration::from_secs(10)).map(|_| ())
}

pub struct NetPair {
    pub ingress_ns: String,
    pub carrier_ns: String,
    pub ingress_if: String,
    pub carrier_if: String,
    pub ingress_ip: Ipv4Addr,
    pub carrier_ip: Ipv4Addr,
}

impl NetPair {
    pub fn new() -> anyhow::Result<Self> {
        sweep_stale();
        let pid = std::process::id();
        let pair = Self {
            ingress_ns: format!("{PREFIX}{pid}i"),
            carrier_ns: format!("{PREFIX}{pid}c"),
            ingress_if: format!("vbi{pid}"),
            carrier_if: format!("vbc{pid}"),
            ingress_ip: Ipv4Addr::new(10, 78, 0, 1),
            carrier_ip: Ipv4Addr::new(10, 78, 0, 2),
        };
        ip(&["netns", "add", &pair.ingress_ns])?;
        ip(&["netns", "add", &pair.carrier_ns])?;
        ip(&[
            "link",
            "add",
            &pair.ingress_if,
            "type",
            "veth",
            "peer",
            "name",
            &pair.carrier_if,
        ])?;
        ip(&["link", "set", &pair.ingress_if, "netns", &pair.ingress_ns])?;
        ip(&["link", "set", &pair.carrier_if, "netns", &pair.carrier_ns])?;
        for (ns, dev, addr) in [
            (&pair.ingress_ns, &pair.ingress_if, pair.ingress_ip),
            (&pair.carrier_ns, &pair.carrier_if, pair.carrier_ip),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // XDP_TX replies (RST mode) reach the peer of a veth only when it runs NAPI: GRO on.
        let _ = output(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", pair.carrier_ns))
                .args(["ethtool", "-K", &pair.carrier_if, "gro", "on"]),
            Duration::from_secs(10),
        );
        Ok(pair)
    }

    pub fn mac(ns: &str, dev: &str) -> anyhow::Result<String> {
        let out = output(
            Command::new("ip").args(["-n", ns, "-j", "link", "show", "dev", dev]),
            Duration::from_secs(5),
        )?;
        let v: Value = serde_json::from_str(&out)?;
        v[0]["address"].as_str().map(str::to_owned).context("no MAC address")
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.ingress_ns, &self.carrier_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Deletes namespaces of earlier bench runs whose process is gone.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: Option<u32> = rest.trim_end_matches(['i', 'c']).parse().ok();
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// `Tcp: InSegs` of a namespace (segments that reached the TCP stack).
pub fn tcp_in_segs(ns: &str) -> u64 {
    let out = output(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["cat", "/proc/net/snmp"]),
        Duration::from_secs(5),
    )
    .unwrap_or_default();
    let tcp: Vec<&str> = out.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let (Some(names), Some(values)) = (tcp.first(), tcp.get(1)) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Sends `count` TCP SYNs (random source port and sequence) from the carrier
/// side to `port` on the ingress side, from core `core`; bounded by `count` and
/// 120 s. Returns what ran and how long it took.
pub fn syn_flood(pair: &NetPair, port: u16, count: u64, core: u32, dir: &Path) -> anyhow::Result<Value> {
    let dst_mac = NetPair::mac(&pair.ingress_ns, &pair.ingress_if)?;
    let src_mac = NetPair::mac(&pair.carrier_ns, &pair.carrier_if)?;
    let conf = dir.join("syn-flood.trafgen");
    std::fs::write(
        &conf,
        format!(
            "/* Written by `cargo xtask bench`: one TCP SYN, random source port and sequence. */\n{{\n  eth(da={dst_mac}, sa={src_mac}, type=0x0800),\n  ipv4(saddr={}, daddr={}, ttl=64, df),\n  tcp(sp=drnd(), dp={port}, seq=drnd(), syn, win=64240),\n}}\n",
            pair.carrier_ip, pair.ingress_ip
        ),
    )?;
    let ns = format!("--net=/run/netns/{}", pair.carrier_ns);
    let started = Instant::now();
    let trafgen = output(
        Command::new("nsenter")
            .arg(&ns)
            .args([
                "taskset",
                "-c",
                &core.to_string(),
                "trafgen",
                "--dev",
                &pair.carrier_if,
                "--conf",
            ])
            .arg(&conf)
            .args(["--num", &count.to_string(), "--cpus", "1", "--no-sock-mem"]),
        Duration::from_secs(120),
    );
    match trafgen {
        Ok(_) => Ok(json!({"tool": "trafgen", "sent": count, "elapsed_s": started.elapsed().as_secs_f64()})),
        Err(e_trafgen) => {
            // hping3: slower per packet, but the same SYNs.
            let started = Instant::now();
            // It exits 1 when nothing answered (dropped SYNs): judge by what it says it sent.
            let r = super::procs::run_bounded(
                Command::new("nsenter")
                    .arg(&ns)
                    .args([
                        "taskset",
                        "-c",
                        &core.to_string(),
                        "hping3",
                        "-q",
                        "-S",
                        "-p",
                        &port.to_string(),
                    ])
                    .args(["-c", &count.to_string(), "-i", "u1"])
                    .arg(pair.ingress_ip.to_string()),
                Duration::from_secs(120),
            );
            match r {
                Ok((_, out, err)) if format!("{out}{err}").contains(&format!("{count} packets transmitted")) => Ok(
                    json!({"tool": "hping3", "sent": count, "elapsed_s": started.elapsed().as_secs_f64(), "trafgen_error": e_trafgen.to_string()}),
                ),
                Ok((status, out, err)) => bail!("trafgen: {e_trafgen}; hping3 {status}: {out} {err}"),
                Err(e) => bail!("trafgen: {e_trafgen}; hping3: {e}"),
            }
        }
    }
}
