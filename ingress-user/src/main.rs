//! `ingress`: the daemon (`run`), the config checker (`check`), the
//! HAProxy importer (`import`) and the BPF map reader (`bpf dump`).

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
    /// Validate a configuration file; with --probe, fetch every server's
    /// health body and show what the capacity pointer reads from it.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        probe: bool,
    },
    /// Translate a haproxy.cfg into an ingress.toml (on stdout); what has
    /// no equivalent is named on stderr with its line.
    Import {
        /// The HAProxy configuration file.
        file: PathBuf,
        /// Write the pools' servers here (`servers_file = "OUT"`, a path as
        /// seen from the ingress.toml) instead of inline.
        #[arg(long, value_name = "OUT")]
        servers_file: Option<PathBuf>,
    },
    /// Operate a running daemon through its admin socket.
    #[command(
        after_help = "Exit status (the reason on stderr; with --json as {\"error\", \"status\"} on stdout):\n  \
                            0   done\n  1   refused by the daemon\n  2   the daemon could not be reached\n  \
                            64  usage error (the command line did not parse)"
    )]
    Ctl {
        /// The admin unix socket.
        #[arg(long, default_value = "/run/ingress/admin.sock")]
        socket: PathBuf,
        /// Print the daemon's answer as JSON (one document) instead of a table or line.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Read the pinned BPF maps.
    Bpf {
        #[command(subcommand)]
        command: BpfCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Servers with state, occupancy and the last check.
    Stat,
    /// The daemon: pid, version, generation, open calls, pools, XDP,
    /// certificates, the last reload.
    Status,
    /// No new calls to POOL/NAME; live calls carry on (or, with
    /// --close-after, get a WebSocket Close 1001 after that long).
    Drain {
        target: String,
        /// E.g. `2s`, `10m`: then its calls end with a Close 1001 to both sides.
        #[arg(long, value_parser = humantime::parse_duration)]
        close_after: Option<std::time::Duration>,
    },
    /// Back into rotation.
    Ready { target: String },
    /// Out of service.
    Maint { target: String },
    /// Add a server: pre-check, add, wait for UP, roll back on failure, persist.
    Add {
        pool: String,
        /// HOST[:PORT], port 443 by default.
        addr: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        sni: Option<String>,
        #[arg(long)]
        maxconn: Option<u32>,
        /// Only run the pre-checks and show what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove POOL/NAME (drained first while it has calls, unless --now).
    Remove {
        target: String,
        /// End its live calls now (a WebSocket Close 1001 to both sides).
        #[arg(long)]
        now: bool,
    },
    /// Reload the configuration file; fails when the daemon refused it.
    Reload,
    /// Replace the daemon with the binary now at the path it was started
    /// from: the new process takes the sockets and the XDP program, the
    /// old one keeps its calls until they end (or `upgrade_grace`). Prints
    /// the new PID; fails, with the reason, when the new binary could not
    /// start (the old process serves on).
    Upgrade,
    /// Stop gracefully, as SIGTERM: listeners closed now, calls kept for
    /// `shutdown_grace`, then a Close 1001 to both sides.
    Stop,
    /// The server of POOL with the most effective capacity; with --hold, a
    /// slot held there for that long (as `POST /api/pick`).
    Pick {
        pool: String,
        /// E.g. `10s` (at most 60s): counted like a routed call until the
        /// fleet's next report shows the call, or the hold ends.
        #[arg(long, value_parser = humantime::parse_duration)]
        hold: Option<std::time::Duration>,
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

/// Logs to stderr as text (the default) or JSON, or to the journal with
/// priorities (`INGRESS_LOG_FORMAT=text|json|journald`); `INGRESS_LOG` filters.
fn init_tracing() {
    use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = || EnvFilter::try_from_env("INGRESS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let format = std::env::var("INGRESS_LOG_FORMAT").unwrap_or_default();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = || {
        fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
    };
    match format.as_str() {
        "json" => text().json().init(),
        "journald" => match tracing_journald::layer() {
            // Fields as journal fields (BOT_ID=, POOL=, …), levels as priorities.
            Ok(journal) => tracing_subscriber::registry()
                .with(filter())
                .with(journal.with_field_prefix(None).with_syslog_identifier("ingress".into()))
                .init(),
            Err(e) => {
                text().init();
                tracing::warn!(error = %e, "INGRESS_LOG_FORMAT=journald: the journal socket cannot be used; logging to stderr");
            }
        },
        "" | "text" => text().init(),
        other => {
            text().init();
            tracing::warn!("INGRESS_LOG_FORMAT={other}: not text, json or journald; logging text to stderr");
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        // Help and version on stdout with 0; a usage error apart from the
        // exit codes `ctl` gives (2 is "unreachable" there).
        let code = if e.use_stderr() {
            ingress_user::admin::ctl::EXIT_USAGE
        } else {
            0
        };
        let _ = e.print();
        std::process::exit(code);
    });
    match cli.command {
        Command::Run { config } => {
            init_tracing();
            // Before any other thread: it reads and clears the environment.
            let inherited = ingress_user::control::handover::Inherited::from_env()?;
            let exe = ingress_user::daemon::started_as()?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let done = rt.block_on(ingress_user::daemon::run(&config, exe, inherited));
            // Nothing is left to wait for: a blocked helper thread must not hold the exit.
            rt.shutdown_timeout(std::time::Duration::from_millis(500));
            done
        }
        Command::Check { config, probe } => {
            let c = ingress_user::config::Config::load(&config)?;
            let desired = ingress_user::control::load_desired(&c)?;
            let servers: usize = ingress_user::control::server_counts(&desired).values().sum();
            println!(
                "{}: ok ({} routes, {} pools, {} servers)",
                config.display(),
                c.routes.len(),
                c.pools.len(),
                servers
            );
            if let Some(line) = ingress_user::bpf::mode::check(&c.xdp) {
                println!("{line}");
            }
            let (lines, refused) = check_files(&c);
            for line in lines {
                println!("{line}");
            }
            if let Some(e) = refused {
                anyhow::bail!(e);
            }
            if probe {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let failed = rt.block_on(probe_all(&c, &desired))?;
                if failed > 0 {
                    std::process::exit(1);
                }
            }
            Ok(())
        }
        Command::Import { file, servers_file } => import(&file, servers_file.as_deref()),
        Command::Ctl { socket, json, command } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let code = rt.block_on(ctl(&socket, json, command));
            std::process::exit(code);
        }
        Command::Bpf {
            command: BpfCommand::Dump { json, pin_path },
        } => {
            let out = ingress_user::bpf::dump::dump(&pin_path, json)
                .with_context(|| format!("reading maps pinned under {}", pin_path.display()))?;
            print!("{out}");
            Ok(())
        }
    }
}

/// `import`: the translation, checked as `check` checks a file (its
/// servers files as read), then the servers files, the notes on stderr and
/// the config on stdout. Nothing is written when it fails.
fn import(file: &std::path::Path, servers_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let imported = match ingress_user::import::import_file(file, servers_file) {
        Ok(i) => i,
        Err(failed) => {
            for n in &failed.notes {
                eprintln!("{n}");
            }
            return Err(failed.error.into());
        }
    };
    ingress_user::control::desired::Desired::from_config(&imported.config, &imported.files)
        .with_context(|| format!("{}: the translation does not pass `ingress check`", file.display()))?;
    for (path, text) in &imported.servers_files {
        ingress_user::config::write_atomically(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for n in &imported.notes {
        eprintln!("{n}");
    }
    // What `check` would say of the files it names, as found here (the import may run elsewhere).
    let (lines, refused) = check_files(&imported.config);
    for line in lines.into_iter().chain(refused) {
        eprintln!("check: {line}");
    }
    print!("{}", imported.toml);
    Ok(())
}

/// What `check` says of the files the config names: the certificates the
/// daemon would serve, and where each pool's list is read from. An error
/// when the daemon would refuse to start (no certificate, no ACME listener).
fn check_files(c: &ingress_user::config::Config) -> (Vec<String>, Option<String>) {
    let mut lines = Vec::new();
    let dir = &c.listen.certs;
    let provider = ingress_user::control::tls::provider();
    let refused = match ingress_user::control::certs::check_dir(dir, c.listen.default_cert.as_deref(), &provider) {
        Ok(stems) => {
            lines.push(format!("certs: {}: {}", dir.display(), stems.join(", ")));
            None
        }
        Err(e) if c.listen.http.is_some() && !matches!(e, ingress_user::control::certs::CertError::Bundle { .. }) => {
            lines.push(format!(
                "certs: {e}; the daemon starts, :443 handshakes fail until a certificate is there (ACME on the http listener forwards to {})",
                c.listen.acme_upstream
            ));
            None
        }
        Err(e) => Some(format!(
            "listen.certs: {e} (and no [listen] http for ACME to fetch one)"
        )),
    };
    for (name, pool) in &c.pools {
        if let (Some(file), Some(seed)) = (&pool.servers_file, &pool.servers_seed) {
            lines.push(if file.exists() {
                let since = if ingress_user::config::seed_is_newer(seed, file) {
                    "; the seed was edited since: change the list with ctl add/remove, or edit servers_file"
                } else {
                    ""
                };
                format!(
                    "pools.{name}: servers from {} (servers_seed {} is not read: the list changed at runtime{since})",
                    file.display(),
                    seed.display()
                )
            } else {
                format!(
                    "pools.{name}: servers from servers_seed {} ({} is written at the first runtime change)",
                    seed.display(),
                    file.display()
                )
            });
        }
    }
    (lines, refused)
}

/// `check --probe`: one health request per server, and what the pool's capacity pointer reads.
async fn probe_all(
    c: &ingress_user::config::Config,
    desired: &ingress_user::control::desired::Desired,
) -> anyhow::Result<usize> {
    let rt = ingress_user::control::build::build(c, desired, None, 0, {
        let mut n = 0;
        move || {
            n += 1;
            n
        }
    })?;
    let mut failed = 0;
    for pool in &rt.pools {
        let expect = regex::Regex::new(&pool.check.expect_status)?;
        for s in pool.servers.load().iter() {
            let shown = format!("{}/{} ({})", pool.name, s.name(), s.def.addr());
            match ingress_user::control::health::probe(s, pool).await {
                Err(e) => {
                    failed += 1;
                    println!("FAIL {shown}: {e}");
                }
                Ok((status, body)) => {
                    let excerpt: String = String::from_utf8_lossy(&body).chars().take(120).collect();
                    match ingress_user::control::health::evaluate(status, &expect, &body, &pool.check.capacity) {
                        Ok(Some(n)) => println!(
                            "ok   {shown}: status {status}, {} = {n}  body: {excerpt}",
                            pool.check.capacity
                        ),
                        Ok(None) => println!("ok   {shown}: status {status} (liveness only)"),
                        Err(e) => {
                            failed += 1;
                            println!("FAIL {shown}: {e}  body: {excerpt}");
                        }
                    }
                }
            }
        }
    }
    Ok(failed)
}

/// A `ctl` that did not get done: the reason on stderr, or with `--json`
/// as `{"error", "status"}` on stdout (status: the daemon's, when it refused).
fn failed(json_out: bool, code: i32, why: &str, status: Option<u16>) -> i32 {
    if json_out {
        println!("{}", serde_json::json!({ "error": why, "status": status }));
    } else {
        eprintln!("{why}");
    }
    code
}

async fn ctl(socket: &std::path::Path, json_out: bool, command: CtlCommand) -> i32 {
    use ingress_user::admin::ctl::{
        EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, change_line, report, request, seg, servers_table, split_target,
        status_lines,
    };
    let target = |t: &str| split_target(t).map(|(p, n)| (seg(p), seg(n)));
    let (method, path, body, kind) = match &command {
        CtlCommand::Stat => ("GET", "/api/servers".to_owned(), None, "stat"),
        CtlCommand::Status => ("GET", "/api/status".to_owned(), None, "status"),
        CtlCommand::Drain { target: t, .. } | CtlCommand::Ready { target: t } | CtlCommand::Maint { target: t } => {
            let (pool, name) = match target(t) {
                Ok(t) => t,
                Err(e) => return failed(json_out, EXIT_USAGE, &e, None),
            };
            let state = match &command {
                CtlCommand::Drain { .. } => "drain",
                CtlCommand::Ready { .. } => "ready",
                _ => "maint",
            };
            let mut body = serde_json::json!({ "state": state });
            if let CtlCommand::Drain {
                close_after: Some(d), ..
            } = &command
            {
                body["close_after"] = humantime::format_duration(*d).to_string().into();
            }
            ("POST", format!("/api/servers/{pool}/{name}/state"), Some(body), "state")
        }
        CtlCommand::Add {
            pool,
            addr,
            name,
            sni,
            maxconn,
            dry_run,
        } => (
            "POST",
            format!("/api/pools/{}/servers", seg(pool)),
            Some(serde_json::json!({ "addr": addr, "name": name, "sni": sni, "maxconn": maxconn, "dry_run": dry_run })),
            "add",
        ),
        CtlCommand::Remove { target: t, now } => {
            let (pool, name) = match target(t) {
                Ok(t) => t,
                Err(e) => return failed(json_out, EXIT_USAGE, &e, None),
            };
            let q = if *now { "?now=1" } else { "" };
            ("DELETE", format!("/api/servers/{pool}/{name}{q}"), None, "remove")
        }
        CtlCommand::Reload => ("POST", "/api/reload".to_owned(), None, "reload"),
        CtlCommand::Upgrade => ("POST", "/api/upgrade".to_owned(), None, "upgrade"),
        CtlCommand::Stop => ("POST", "/api/stop".to_owned(), None, "stop"),
        CtlCommand::Pick { pool, hold: None } => ("GET", format!("/api/pick/{}", seg(pool)), None, "pick"),
        CtlCommand::Pick { pool, hold: Some(d) } => (
            "POST",
            format!(
                "/api/pick/{}?hold={}",
                seg(pool),
                humantime::format_duration(*d).to_string().replace(' ', "")
            ),
            None,
            "pick",
        ),
    };
    let answer = match request(socket, method, &path, body).await {
        Ok(a) => a,
        Err(e) => return failed(json_out, EXIT_UNREACHABLE, &e.to_string(), None),
    };
    if json_out && !(200..300).contains(&answer.status) {
        let why = answer.body["error"]
            .as_str()
            .map_or_else(|| answer.body.to_string(), str::to_owned);
        return failed(true, EXIT_REFUSED, &why, Some(answer.status));
    }
    let (out, code) = report(&answer, |v| match kind {
        _ if json_out => serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
        "stat" => servers_table(v),
        "status" => status_lines(v),
        kind => change_line(kind, v),
    });
    if code == 0 {
        print!("{out}");
    } else {
        eprint!("{out}");
    }
    code
}
