//! `ingress`: the daemon (`run`), the config checker (`check`) and the BPF
//! map reader (`bpf dump`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ingress",
    version,
    about = "Capacity-aware WSS ingress for voice-call fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Read the pinned BPF maps.
    Bpf {
        #[command(subcommand)]
        command: BpfCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BpfCommand {
    /// Print every map.
    Dump {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// bpffs directory of the pinned maps.
        #[arg(long, default_value = ingress_common::PIN_DIR)]
        pin_path: PathBuf,
    },
}

fn init_tracing() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("INGRESS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("INGRESS_LOG_FORMAT").is_ok_and(|v| v == "json");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_tracing();
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(ingress_user::daemon::run(&config))
        }
        Command::Check { config } => {
            let c = ingress_user::config::Config::load(&config)?;
            let servers: usize = c
                .pools
                .iter()
                .map(|(name, p)| c.pool_servers(name, p).map(|s| s.len()).unwrap_or(0))
                .sum();
            println!(
                "{}: ok ({} routes, {} pools, {} servers)",
                config.display(),
                c.routes.len(),
                c.pools.len(),
                servers
            );
            Ok(())
        }
        Command::Bpf {
            command: BpfCommand::Dump { json, pin_path },
        } => {
            let out = ingress_user::xdp::dump(&pin_path, json)
                .with_context(|| format!("reading maps pinned under {}", pin_path.display()))?;
            print!("{out}");
            Ok(())
        }
    }
}
