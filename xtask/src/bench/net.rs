//! The bounded SYN flood of figure 5, sent from the carrier side of a
//! testbed `NetPair` (trafgen, else hping3). Traffic never leaves the pair.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;
use testbed::NetPair;

use super::procs::output;

/// What a flood sent.
#[derive(Debug)]
pub struct Sent {
    /// `trafgen` or `hping3`.
    pub tool: &'static str,
    pub sent: u64,
    pub elapsed_s: f64,
}

/// Sends `count` TCP SYNs (random source port and sequence) from the carrier
/// side to `port` on the ingress side, from core `core`; bounded by `count` and
/// 120 s. Returns what ran and how long it took. With `gap`, trafgen sends
/// one packet per system call that far apart instead of through its TX
/// ring (which fails with EAGAIN when the receive side is steered away).
pub fn syn_flood(
    pair: &NetPair,
    port: u16,
    count: u64,
    core: u32,
    dir: &Path,
    gap: Option<&str>,
) -> anyhow::Result<Sent> {
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
            .args(["--num", &count.to_string(), "--cpus", "1", "--no-sock-mem"])
            .args(gap.map(|g| ["--gap", g]).into_iter().flatten()),
        Duration::from_secs(120),
    );
    match trafgen {
        Ok(_) => Ok(Sent {
            tool: "trafgen",
            sent: count,
            elapsed_s: started.elapsed().as_secs_f64(),
        }),
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
                Ok((_, out, err)) if format!("{out}{err}").contains(&format!("{count} packets transmitted")) => {
                    eprintln!("bench: trafgen failed ({e_trafgen}); flooded with hping3");
                    Ok(Sent {
                        tool: "hping3",
                        sent: count,
                        elapsed_s: started.elapsed().as_secs_f64(),
                    })
                }
                Ok((status, out, err)) => bail!("trafgen: {e_trafgen}; hping3 {status}: {out} {err}"),
                Err(e) => bail!("trafgen: {e_trafgen}; hping3: {e}"),
            }
        }
    }
}
