//! Certificates as certbot writes them, end to end, in a namespace of the
//! test's own: Debian's `pebble` (an ACME server) and `pebble-challtestsrv`
//! (its DNS, every name → 127.0.0.1), the ingress on :80 and :443 with
//! `certs` at certbot's `live/` directory before it exists, and `certbot`
//! with its standalone listener on 127.0.0.1:8888 and the shipped deploy
//! hook, unedited. The first certificate is issued through the ingress's
//! :80 and served without a signal; `certbot renew --force-renewal` under
//! 20 live calls drops none, and the next handshake sees the new one.

use std::{
    net::SocketAddr,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use ingress_tests::{
    Fleet, Ingress, Pki, Proc, TestDir, client, echo,
    netns::{NetPair, block_on_in},
    run_ok,
};
use testbed::{
    IngressConfig,
    config::{Check, Pool, Server, Xdp},
    netns::nsenter,
    poll::wait_for,
};

const DOMAIN: &str = "calls.ingress.test";
const ACME_DIR: &str = "https://127.0.0.1:14000/dir";
/// The group the deploy hook hands the lineage to (the package's is `ingress`).
const GROUP: &str = "nogroup";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Waits until something in `ns` accepts TCP on `addr`: the process's readiness.
fn wait_listening(ns: &str, addr: SocketAddr, what: &str) {
    let what = what.to_owned();
    testbed::netns::run_in(ns, move || {
        wait_for(&what, Duration::from_secs(20), Duration::from_millis(50), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// certbot with its state in the test's directory, trusting pebble's listener.
#[derive(Clone)]
struct Certbot {
    ns: String,
    state: PathBuf,
    ca: PathBuf,
}

impl Certbot {
    fn run(&self, args: &[&str]) {
        let mut cmd = nsenter(&self.ns, "certbot");
        cmd.args(args)
            .arg("--non-interactive")
            .arg("--config-dir")
            .arg(self.state.join("letsencrypt"))
            .arg("--work-dir")
            .arg(self.state.join("certbot-work"))
            .arg("--logs-dir")
            .arg(self.state.join("certbot-logs"))
            .env("REQUESTS_CA_BUNDLE", &self.ca)
            .env("INGRESS_GROUP", GROUP);
        run_ok(&mut cmd);
    }
}

fn gid_of(group: &str) -> u32 {
    let out = Command::new("getent").args(["group", group]).output().expect("getent");
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("no group {group}"))
}

/// The leaf the ingress serves for `DOMAIN`, verified against the ACME
/// server's intermediate (certbot's `chain.pem`).
async fn served_leaf(https: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect(https).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
    // A full handshake each time: a resumed session would show the leaf it began with.
    let mut fresh = (*tls).clone();
    fresh.resumption = rustls::client::Resumption::disabled();
    let s = tokio_rustls::TlsConnector::from(Arc::new(fresh))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(s.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

fn leaf_der(live: &Path) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let pem = std::fs::read(live.join("cert.pem")).expect("live cert.pem");
    CertificateDer::from_pem_slice(&pem).expect("cert.pem").to_vec()
}

#[test]
fn certbot_issues_through_port_80_and_a_forced_renewal_keeps_20_calls() {
    let pair = NetPair::new();
    let ns = pair.ingress_ns.clone();
    let dir = TestDir::new("certbot");
    let pki = Pki::new(&dir);

    // The ACME server's own listener, under the test CA certbot trusts.
    let listener = pki.ca.issue(&["127.0.0.1", "localhost"]).unwrap();
    let pebble_cert = dir.write("pebble-cert.pem", &listener.cert_pem);
    let pebble_key = dir.write("pebble-key.pem", &listener.key_pem);
    let pebble_config = dir.write(
        "pebble.json",
        &serde_json::json!({"pebble": {
            "listenAddress": "127.0.0.1:14000",
            "managementListenAddress": "127.0.0.1:15000",
            "certificate": pebble_cert,
            "privateKey": pebble_key,
            "httpPort": 80,
            "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }})
        .to_string(),
    );
    let mut dns_cmd = nsenter(&ns, "pebble-challtestsrv");
    dns_cmd.args([
        "-defaultIPv4",
        "127.0.0.1",
        "-defaultIPv6",
        "",
        "-dns01",
        "127.0.0.1:8053",
        "-management",
        "127.0.0.1:8055",
        "-http01",
        "",
        "-https01",
        "",
        "-tlsalpn01",
        "",
    ]);
    let _dns = Proc::start("challtestsrv", &mut dns_cmd, Some(&dir.path("challtestsrv.log")), None).unwrap();
    wait_listening(&ns, "127.0.0.1:8055".parse().unwrap(), "pebble-challtestsrv");
    let mut pebble_cmd = nsenter(&ns, "pebble");
    pebble_cmd
        .arg("-config")
        .arg(&pebble_config)
        .args(["-dnsserver", "127.0.0.1:8053"])
        // No random sleep before validating; no nonces refused on purpose.
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0");
    let _pebble = Proc::start("pebble", &mut pebble_cmd, Some(&dir.path("pebble.log")), None).unwrap();
    wait_listening(&ns, "127.0.0.1:14000".parse().unwrap(), "pebble");

    // The ingress, before certbot's live/ directory exists.
    let fleet = Fleet::start_with(&dir, &pki, "fleet1", 32, Some(&ns));
    let live_dir = dir.path("letsencrypt/live");
    let cfg = IngressConfig::new("0.0.0.0:443", &live_dir, dir.path("admin.sock"))
        .http("0.0.0.0:80")
        .default_cert(DOMAIN)
        .call_routes("fleets")
        .pool(
            Pool::new("fleets")
                .maxconn(32)
                .server(Server::new("fleet1", fleet.https).sni("localhost"))
                .tls_ca(&pki.ca_path)
                .check(Check::default().interval("200ms").timeout("500ms")),
        )
        .xdp(Xdp::off())
        .render();
    let ingress = Ingress::start_with(&dir, &cfg, Some(&ns));
    assert!(!live_dir.exists());

    // First issuance: pebble validates through the ingress's :80, which
    // forwards the challenge to certbot's listener on 127.0.0.1:8888.
    let hook = repo_file("ops/certbot-deploy-hook");
    let certbot = Certbot {
        ns: ns.clone(),
        state: dir.0.clone(),
        ca: pki.ca_path,
    };
    certbot.run(&[
        "certonly",
        "--standalone",
        "--http-01-address",
        "127.0.0.1",
        "--http-01-port",
        "8888",
        "--server",
        ACME_DIR,
        "--agree-tos",
        "--register-unsafely-without-email",
        "-d",
        DOMAIN,
        "--deploy-hook",
        hook.to_str().unwrap(),
    ]);
    let lineage = live_dir.join(DOMAIN);
    assert!(
        lineage.join("fullchain.pem").is_symlink(),
        "certbot's layout: links into archive/"
    );

    // The hook handed the lineage to the group, and nothing to others.
    let key = std::fs::canonicalize(lineage.join("privkey.pem")).unwrap();
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.gid(), gid_of(GROUP), "{}", key.display());
    assert_eq!(meta.permissions().mode() & 0o777, 0o640, "{}", key.display());
    for d in [&live_dir, &lineage, &dir.path("letsencrypt/archive")] {
        let m = std::fs::metadata(d).unwrap();
        assert_eq!(
            (m.gid(), m.permissions().mode() & 0o777),
            (gid_of(GROUP), 0o750),
            "{}",
            d.display()
        );
    }

    // The client trusts the ACME server's intermediate, from certbot's chain.pem.
    let chain = std::fs::read_to_string(lineage.join("chain.pem")).unwrap();
    let tls = client::tls_config(&chain).unwrap();
    let https: SocketAddr = "127.0.0.1:443".parse().unwrap();
    let first = leaf_der(&lineage);
    let (renewed, dropped, waited) = block_on_in(&ns, move || async move {
        // Served without a signal, within a second of certbot's exit.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match served_leaf(https, Arc::clone(&tls)).await {
                Ok(leaf) if leaf == first => break,
                other => assert!(
                    Instant::now() < deadline,
                    "the issued certificate is not served: {:?}",
                    other.map(|_| "another leaf")
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut calls = Vec::new();
        for i in 0..20 {
            let ws = client::connect_on(
                tokio::net::TcpStream::connect(https).await.unwrap(),
                DOMAIN,
                &format!("/ws/renew-{i}"),
                Arc::clone(&tls),
            )
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
            calls.push(ws);
        }
        tokio::task::spawn_blocking(move || certbot.run(&["renew", "--force-renewal", "--no-random-sleep-on-renew"]))
            .await
            .unwrap();
        let exited = Instant::now();
        let renewed = leaf_der(&lineage);
        assert_ne!(renewed, first, "certbot renewed the certificate");
        let waited = loop {
            let leaf = served_leaf(https, Arc::clone(&tls))
                .await
                .expect("handshake after renewal");
            if leaf == renewed {
                // And since certbot re-pointed the lineage's link.
                let linked = std::fs::symlink_metadata(lineage.join("fullchain.pem"))
                    .and_then(|m| m.modified())
                    .unwrap();
                break (exited.elapsed(), linked.elapsed().unwrap_or_default());
            }
            assert!(
                exited.elapsed() < Duration::from_secs(1),
                "the renewed certificate is not served a second after certbot's exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut dropped = Vec::new();
        for (i, ws) in calls.iter_mut().enumerate() {
            if let Err(e) = echo(ws, "after renewal").await {
                dropped.push(format!("call {i}: {e}"));
            }
        }
        (renewed, dropped, waited)
    });
    assert!(dropped.is_empty(), "calls dropped by the renewal: {dropped:?}");
    eprintln!(
        "renewal: 0 of 20 calls dropped; the new certificate served {} ms after certbot exited, {} ms after it re-pointed the link ({} bytes)",
        waited.0.as_millis(),
        waited.1.as_millis(),
        renewed.len()
    );
    drop((ingress, fleet));
}
