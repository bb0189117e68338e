//! `cargo xtask setup|run|test|bench|layers`: bootstraps what the build and
//! the tests need (bpffs, rust-src, bpf-linker, Debian packages), builds,
//! checks the daemon's layering, and orchestrates the demo and the test run. Kernel-side builds stay in
//! `ingress-user/build.rs`.

mod bench;
mod deb;
mod demo;
mod fuzz;
mod layers;
mod setup;
mod soak;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install and build what the project needs; idempotent.
    Setup,
    /// Build release and run `ingress` (the demo when no arguments are given).
    Run {
        /// Arguments for `ingress`, e.g. `-- run --config ingress.toml`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the Debian package: target/debian/ingress_<version>_amd64.deb.
    Deb,
    /// Check ingress-user's layering (which module may import which).
    Layers,
    /// Lint and run every test, including the root/namespace ones.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test`, e.g. `-- --nocapture`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Coverage-guided fuzzing of ingress-user's parsers (cargo-fuzz, nightly rustc; root for xdp_packet).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Run only these targets (config, servers_file, health_body, route, http_head, admin_body, xdp_packet).
        #[arg(long, value_delimiter = ',')]
        target: Vec<String>,
    },
    /// Long run against fleet simulators with flapping capacity: lost calls, RSS and fds (not in CI).
    Soak {
        #[arg(long, default_value_t = 5)]
        minutes: u64,
    },
    /// Benchmark ingress side by side with HAProxy and nginx (root; results in target/bench/).
    Bench {
        /// Smaller counts: about 2 minutes instead of about 6.
        #[arg(long)]
        quick: bool,
        /// Run only these figures (setups, echo, perf, idle, s4, storm); default: all.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Runs a command in the workspace root and fails if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(root());
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Run { args } => {
            setup::setup()?;
            run(cargo().args(["build", "--release", "-p", "ingress-user", "-p", "fleet-sim"]))?;
            if args.is_empty() {
                demo::run()
            } else {
                let bin = root().join("target/release/ingress");
                run(Command::new(bin).args(args))
            }
        }
        Cmd::Deb => deb::build().map(drop),
        Cmd::Layers => layers::check(&root().join("ingress-user/src")),
        Cmd::Test { no_lint, args } => {
            // Pure and fast: first, so no setup failure hides it.
            layers::check(&root().join("ingress-user/src"))?;
            setup::setup()?;
            if !no_lint {
                run(cargo().args(["fmt", "--all", "--", "--check"]))?;
                // Default members (host crates), then the eBPF crate alone: checked together,
                // feature unification would hand it `std` through ingress-common's `user` feature.
                run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
                run(cargo()
                    .args([
                        "clippy",
                        "-p",
                        "ingress-ebpf",
                        "--target",
                        "bpfel-unknown-none",
                        "-Z",
                        "build-std=core",
                    ])
                    .args(["--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"])
                    .env("RUSTC_BOOTSTRAP", "1"))?;
            }
            // The end-to-end tests start these binaries as real processes.
            run(cargo().args(["build", "-p", "ingress-user", "-p", "fleet-sim"]))?;
            // The package test installs it.
            deb::build()?;
            run(cargo().args(["test", "--no-fail-fast"]).args(args))
        }
        Cmd::Bench { quick, only } => bench::run(quick, &only),
        Cmd::Fuzz { seconds, target } => fuzz::run_fuzz(seconds, &target),
        Cmd::Soak { minutes } => soak::run_soak(minutes),
    }
}
