//! Running the bench's short-lived programs to their end (bounded in time),
//! what `/proc` says about processes, and waiting for a port. Long-lived
//! processes are `testbed::Proc`s; HTTP to the daemon and the fleets goes
//! through `testbed`'s clients.

use std::{
    io::Read as _,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use testbed::poll::wait_for;

/// Runs a command to its end (bounded by `limit`), returns stdout.
pub fn output(cmd: &mut Command, limit: Duration) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let (status, stdout, stderr) = run_bounded(cmd, limit)?;
    if !status.success() {
        bail!("{shown} failed ({status}): {}", stderr.trim());
    }
    Ok(stdout)
}

/// Runs a command to its end (bounded by `limit`): status, stdout, stderr.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> anyhow::Result<(std::process::ExitStatus, String, String)> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{shown} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok((status, stdout, stderr))
}

/// Runs the load generator (bounded) and parses its JSON line as the mode's report.
pub fn loadgen<T: serde::de::DeserializeOwned>(cmd: &mut Command, limit: Duration) -> anyhow::Result<T> {
    let out = output(cmd, limit)?;
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("loadgen printed {out:?}"))
}

/// utime + stime of a process (all its threads, dead ones included), in milliseconds.
pub fn cpu_ms(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // After ")": state is field 3, utime field 14, stime field 15 → indices 11, 12.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 * 1000.0 / clk_tck()
}

/// Time on CPU of the live threads, from schedstat (ns precision; misses exited threads).
pub fn sched_ms(pid: i32) -> f64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum::<u64>() as f64
        / 1e6
}

/// A CPU reading of one process: ticks (complete) and schedstat (precise).
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    ticks_ms: f64,
    sched_ms: f64,
}

impl Cpu {
    pub fn read(pid: i32) -> Self {
        Self {
            ticks_ms: cpu_ms(pid),
            sched_ms: sched_ms(pid),
        }
    }

    /// Milliseconds of CPU since `self`: the tick count, unless it is too coarse
    /// (under 100 ms), then the schedstat sum.
    pub fn since(&self, pid: i32) -> f64 {
        let now = Self::read(pid);
        let ticks = now.ticks_ms - self.ticks_ms;
        if ticks >= 100.0 {
            ticks
        } else {
            (now.sched_ms - self.sched_ms).max(0.0)
        }
    }
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// VmRSS in KiB.
pub fn rss_kb(pid: i32) -> u64 {
    testbed::proc::status_kib(pid, "VmRSS")
}

/// What the kernel holds system-wide, in KiB: unreclaimable slab (sockets,
/// their inodes, epoll entries) plus TCP's buffer pages (`/proc/net/sockstat`).
pub fn kernel_kb() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let slab = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("SUnreclaim:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let tcp_pages = sockstat
        .lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let page_kb = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|b| u64::try_from(b).ok())
        .unwrap_or(4096)
        / 1024;
    slab + tcp_pages * page_kb
}

/// Packets the kernel dropped because a CPU's receive backlog was full
/// (`/proc/net/softnet_stat`, second column, every CPU).
pub fn backlog_dropped() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|v| u64::from_str_radix(v, 16).ok())
        .sum()
}

/// System-wide softirq time in milliseconds (all CPUs).
pub fn softirq_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or_default();
    // cpu user nice system idle iowait irq softirq
    let f: Vec<u64> = cpu.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    f.get(6).copied().unwrap_or(0) as f64 * 1000.0 / clk_tck()
}

/// Waits until a TCP port accepts (bounded), in `netns` when given.
pub fn wait_port(netns: Option<&str>, addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let accepts = move || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
    wait_for(
        &format!("{addr} to accept"),
        limit,
        Duration::from_millis(50),
        || match netns {
            Some(ns) => testbed::netns::try_run_in(ns, accepts).unwrap_or(false),
            None => accepts(),
        },
    )
}

/// The median of a list (None when empty).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The bench directory's path for a file.
pub fn bench_dir() -> PathBuf {
    crate::root().join("target/bench")
}
