//! `wscall`: place one WSS call, send messages, print the echoes.
//! `wscall --ca ca.pem wss://localhost:8443/ws/demo --message hello`

use std::{net::ToSocketAddrs as _, path::PathBuf};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(name = "wscall", about = "Place one WSS call and echo messages")]
struct Args {
    /// wss://HOST:PORT/PATH
    url: String,
    /// CA certificate (PEM) that signed the ingress's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Message to send.
    #[arg(long, default_value = "hello")]
    message: String,
    /// How many times.
    #[arg(long, default_value_t = 1)]
    count: u32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rest = args.url.strip_prefix("wss://").context("URL must start with wss://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    let addr = addr.to_socket_addrs()?.next().context("no address")?;
    let ca = std::fs::read_to_string(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
    let tls = fleet_sim::client::tls_config(&ca)?;
    let mut ws = fleet_sim::client::connect(addr, host, path, tls).await?;
    for i in 0..args.count {
        ws.send(Message::text(args.message.clone())).await?;
        match ws.next().await {
            Some(Ok(Message::Text(t))) => println!("echo {}: {}", i + 1, t.as_str()),
            other => bail!("unexpected answer: {other:?}"),
        }
    }
    ws.close(None).await?;
    Ok(())
}
