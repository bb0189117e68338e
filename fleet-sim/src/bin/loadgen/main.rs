//! `loadgen`: the load generator of `cargo xtask bench`. One mode per run,
//! one JSON line on stdout at the end (`idle` prints one when its calls are
//! open, then holds them until stdin closes). Every loop is bounded in count
//! and in time; it only dials the address it is given (the bench gives it
//! loopback or an address in a namespace of its own).
//!
//! - `setups`: N full TLS handshakes (no resumption) + WebSocket upgrades, C at a time;
//!   counts what each attempt ended in (101, an HTTP status, refused, timeout, …).
//! - `echo`: N calls, each sending `rate` messages/s of `size` bytes for `seconds`;
//!   round-trip percentiles and lost messages.
//! - `idle`: N calls held open until stdin closes (or `--hold-max-s`).
//! - `s4`: the seeds' S4: fill a fleet through its control port, 8 calls 100 ms apart,
//!   then probes until the full fleet is no longer picked, then free it and probe until
//!   it is picked again; each call is attributed to a fleet by its `/state` counters.
//! - `soak`: calls opened at a steady rate for `seconds`, each held 2–10 s while echoing a
//!   message every `msg-interval-ms`, while a flapper walks the fleets through a Gray code of
//!   full/free (one fleet toggled every `flap-s` through their control ports, every state
//!   visited, "all full" included). A call that fails to open is *expected* when every fleet
//!   was full at some moment in [start − grace, end] (the ingress sees capacity through its
//!   health checks), else *lost*; a call whose echo stops is *broken*.

mod dial;
mod load;
mod s4;
mod soak;

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, Subcommand};
use fleet_sim::report::Report;

use self::{dial::Target, s4::S4Params, soak::SoakParams};

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "Bounded WSS load for `cargo xtask bench`")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    Setups {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        count: u32,
        #[arg(long, default_value_t = 16)]
        concurrency: u32,
        /// Per attempt: TCP + TLS + upgrade.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Resume TLS sessions the proxy issued (a carrier that reconnects)
        /// instead of a full handshake each time.
        #[arg(long)]
        resume: bool,
    },
    Echo {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 200)]
        calls: u32,
        /// Messages per second per call.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        #[arg(long, default_value_t = 320)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        calls: u32,
        #[arg(long, default_value_t = 32)]
        concurrency: u32,
        /// Hold at most this long when stdin stays open.
        #[arg(long, default_value_t = 600)]
        hold_max_s: u64,
    },
    S4 {
        #[command(flatten)]
        target: Target,
        /// Control addresses of the fleets; the first is the one filled.
        #[arg(long, required = true)]
        fleet: Vec<SocketAddr>,
        /// Workers to occupy on the first fleet.
        #[arg(long, default_value_t = 16)]
        fill: u32,
        #[arg(long, default_value_t = 8)]
        calls: u32,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// Probe calls after the held ones (closed at once), at the same interval.
        #[arg(long, default_value_t = 40)]
        probes: u32,
        /// After freeing the fleet, probe at most this long for it to be picked again.
        #[arg(long, default_value_t = 15)]
        recover_s: u64,
    },
    Soak {
        #[command(flatten)]
        target: Target,
        /// Control addresses of the fleets the flapper toggles.
        #[arg(long, required = true)]
        fleet: Vec<SocketAddr>,
        /// Workers of each fleet (occupied to make it full, freed to make it free).
        #[arg(long)]
        workers: u32,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// New calls per second.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        #[arg(long, default_value_t = 2000)]
        hold_min_ms: u64,
        #[arg(long, default_value_t = 10000)]
        hold_max_ms: u64,
        #[arg(long, default_value_t = 500)]
        msg_interval_ms: u64,
        /// One fleet toggled this often; 0 = no flapping.
        #[arg(long, default_value_t = 15)]
        flap_s: u64,
        /// How far before a failed call's start an all-full moment still explains it.
        #[arg(long, default_value_t = 3000)]
        grace_ms: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// Lifts the open-files limit to its hard maximum (thousands of calls at once).
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid, properly typed struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let out = rt.block_on(async move {
        match cli.mode {
            Mode::Setups {
                target,
                count,
                concurrency,
                timeout_ms,
                resume,
            } => load::setups(target, count, concurrency, timeout_ms, resume).await,
            Mode::Echo {
                target,
                calls,
                rate,
                size,
                seconds,
            } => load::echo(target, calls, rate, size, seconds).await,
            Mode::Idle {
                target,
                calls,
                concurrency,
                hold_max_s,
            } => load::idle(target, calls, concurrency, hold_max_s).await,
            Mode::S4 {
                target,
                fleet,
                fill,
                calls,
                interval_ms,
                probes,
                recover_s,
            } => {
                let p = S4Params {
                    fleets: fleet,
                    fill,
                    calls,
                    interval: Duration::from_millis(interval_ms),
                    probes,
                    recover: Duration::from_secs(recover_s),
                };
                s4::s4(target, p).await.map(Report::S4)
            }
            Mode::Soak {
                target,
                fleet,
                workers,
                seconds,
                rate,
                hold_min_ms,
                hold_max_ms,
                msg_interval_ms,
                flap_s,
                grace_ms,
                seed,
            } => {
                let p = SoakParams {
                    fleets: fleet,
                    workers,
                    seconds,
                    rate,
                    hold: (hold_min_ms, hold_max_ms.max(hold_min_ms)),
                    msg_interval: Duration::from_millis(msg_interval_ms),
                    flap: Duration::from_secs(flap_s),
                    grace: Duration::from_millis(grace_ms),
                    seed,
                };
                soak::soak(target, p).await.map(Report::Soak)
            }
        }
    })?;
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
