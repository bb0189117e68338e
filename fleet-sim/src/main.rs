//! `fleet-sim`: one simulated fleet host. Prints one JSON line with its
//! addresses when ready: `{"https":"…","control":"…"}`.

use std::{io::Write as _, net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::Parser;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

#[derive(Debug, Parser)]
#[command(
    name = "fleet-sim",
    about = "Simulated call fleet: health JSON, WebSocket echo, 429 when full"
)]
struct Args {
    /// HTTPS address (health and calls).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Plain-HTTP control address.
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
    /// PEM bundle: certificate chain and private key.
    #[arg(long)]
    cert: PathBuf,
    /// Call workers.
    #[arg(long, default_value_t = 16)]
    workers: u32,
    /// Worker threads of the runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Serve plain HTTP instead of HTTPS (a `tls = false` backend).
    #[arg(long)]
    plain: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pem = std::fs::read(&args.cert).with_context(|| format!("reading {}", args.cert.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("certificates in {}", args.cert.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).with_context(|| format!("private key in {}", args.cert.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = (!args.plain).then(|| tokio_rustls::TlsAcceptor::from(Arc::new(cfg)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let https = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("bind {}", args.listen))?;
        let control = tokio::net::TcpListener::bind(args.control)
            .await
            .with_context(|| format!("bind {}", args.control))?;
        let line = serde_json::json!({
            "https": https.local_addr()?.to_string(),
            "control": control.local_addr()?.to_string(),
        });
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
        }
        let fleet = fleet_sim::sim::Fleet::new(args.workers);
        if let Ok(mut label) = fleet.label.lock() {
            *label = https.local_addr()?.to_string();
        }
        fleet_sim::sim::run(fleet, https, control, acceptor).await;
        Ok(())
    })
}
