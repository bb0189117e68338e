//! The three proxies under test with equivalent configs, written as files
//! under `target/bench/` so a reader can inspect them: our `ingress`, HAProxy
//! (the seeds' config: leastconn, maxconn, capacity check, TLS 1.2 floor) and
//! nginx (`least_conn`, `max_conns`, upgrade headers, `proxy_ssl_server_name`,
//! `proxy_next_upstream error timeout http_429`). Each runs pinned to one core
//! with one worker, as a foreground child of the bench.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use testbed::{
    Admin, IngressConfig, Proc,
    config::{Check, Pool, Server, Xdp as XdpTable},
    poll::wait_for,
    proc::launcher,
};

use super::procs::wait_port;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ingress,
    Haproxy,
    Nginx,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Ingress, Kind::Haproxy, Kind::Nginx];

    /// Its place in [`Kind::ALL`].
    pub fn index(self) -> usize {
        match self {
            Kind::Ingress => 0,
            Kind::Haproxy => 1,
            Kind::Nginx => 2,
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Kind::Ingress => "ingress",
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
        }
    }
}

/// XDP settings for our ingress (storm and flood figures).
#[derive(Debug, Clone)]
pub struct Xdp {
    pub interface: String,
    pub action: &'static str,
    pub pin_path: PathBuf,
    /// `skb` to force SKB mode; None: the daemon's default (`auto`).
    pub mode: Option<&'static str>,
}

/// Files shared by every proxy: the CA and the front certificate.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: PathBuf,
    pub certs_dir: PathBuf,
    pub bundle: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub fleet_bundle: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub kind: Kind,
    /// A tag for file names (e.g. `setup`, `storm-xdp-drop`).
    pub tag: String,
    pub listen: SocketAddr,
    pub fleets: Vec<SocketAddr>,
    pub maxconn: u32,
    /// Health check interval (HAProxy and ours; nginx has no active checks).
    pub check_interval_ms: u64,
    /// Ours only: probes on the last probe's connection (`reuse_connection`).
    pub reuse_checks: bool,
    /// Ours only: `None` = XDP off.
    pub xdp: Option<Xdp>,
    /// Every proxy talks TLS 1.2 only to the fleets (resumption without a
    /// key exchange); otherwise each its default (ours and HAProxy 1.3,
    /// nginx 1.22 1.2: its `proxy_ssl_protocols` has no TLSv1.3 by default).
    pub fleet_tls12: bool,
    pub netns: Option<String>,
    pub core: u32,
}

pub struct Running {
    pub proc: Proc,
    /// Ours only.
    pub admin: Option<Admin>,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }
}

fn ingress_config(pki: &Pki, s: &Spec, socket: &Path) -> IngressConfig {
    let pool = s
        .fleets
        .iter()
        .enumerate()
        .fold(
            Pool::new("fleets").balance("leastconn").maxconn(s.maxconn),
            |p, (i, a)| p.server(Server::new(&format!("fleet{}", i + 1), a).sni("localhost")),
        )
        .retry_on(&["conn-failure", "empty-response", "response-timeout", "429"])
        .retries(3)
        .tls_verify(true)
        .tls_ca(&pki.ca)
        .tls_versions(if s.fleet_tls12 { &["1.2"] } else { &[] })
        .check(
            Check::default()
                .path("/health/fleet")
                .interval(&format!("{}ms", s.check_interval_ms))
                .timeout("800ms")
                .fall(2)
                .rise(2)
                .capacity("/fleet_available")
                .reuse_connection(s.reuse_checks),
        );
    let xdp = match &s.xdp {
        None => XdpTable::off(),
        Some(x) => {
            let t = XdpTable::on(&x.interface)
                .action(x.action)
                .lease("3s")
                .pin_path(&x.pin_path);
            match x.mode {
                Some(m) => t.mode(m),
                None => t,
            }
        }
    };
    IngressConfig::new(s.listen, &pki.certs_dir, socket)
        .comment(format!("Written by `cargo xtask bench` ({}).", s.tag))
        .tls_min_version("1.2")
        .max_connections(20000)
        .call_routes("fleets")
        .pool(pool)
        .xdp(xdp)
}

fn haproxy_config(pki: &Pki, s: &Spec) -> String {
    let servers: Vec<String> = s
        .fleets
        .iter()
        .enumerate()
        .map(|(i, a)| format!("    server fleet{} {a}", i + 1))
        .collect();
    format!(
        r#"# Written by `cargo xtask bench` ({tag}): the seeds' HAProxy setup, capacity regex widened.
global
    nbthread 1
    # The hard open-files limit here is 20000 and root cannot raise it: 2 × 9000 + checks fit.
    maxconn 9000
    tune.ssl.default-dh-param 2048

defaults
    mode http
    option redispatch
    retry-on conn-failure empty-response response-timeout
    retries 3
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout http-request 10s
    timeout check 800ms

frontend wss
    bind {listen} ssl crt {bundle} ssl-min-ver TLSv1.2 alpn http/1.1
    http-request return status 200 content-type text/plain string "ok" if {{ path /haproxy-health }}
    http-request deny deny_status 404 unless {{ path_beg /ws/ /exotel/ }}
    default_backend fleets

backend fleets
    balance leastconn
    option httpchk
    http-check send meth GET uri /health/fleet ver HTTP/1.1 hdr Host localhost
    http-check expect rstring "\"fleet_available\":([1-9][0-9]*)[,}}]"
    default-server check inter {interval}ms fall 2 rise 2 maxconn {maxconn} ssl verify required ca-file {ca} sni str(localhost) check-sni localhost{tls12}
{servers}
"#,
        tag = s.tag,
        listen = s.listen,
        bundle = pki.bundle.display(),
        interval = s.check_interval_ms,
        maxconn = s.maxconn,
        ca = pki.ca.display(),
        servers = servers.join("\n"),
        tls12 = if s.fleet_tls12 { " ssl-max-ver TLSv1.2" } else { "" },
    )
}

fn nginx_config(dir: &Path, pki: &Pki, s: &Spec) -> String {
    let tmp = dir.join("nginx-tmp");
    let servers: Vec<String> = s
        .fleets
        .iter()
        .map(|a| format!("        server {a} max_conns={};", s.maxconn))
        .collect();
    format!(
        r#"# Written by `cargo xtask bench` ({tag}). nginx has no active health checks (open source).
worker_processes 1;
daemon off;
master_process off;
worker_rlimit_nofile 19000;
pid {dir}/nginx-{tag}.pid;
error_log {dir}/nginx-{tag}-error.log warn;

events {{
    worker_connections 18000;
}}

http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream fleets {{
        least_conn;
{servers}
    }}

    server {{
        listen {listen} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;

        location = /haproxy-health {{
            return 200 "ok";
        }}

        location ~ ^/(ws|exotel)/ {{
            proxy_pass https://fleets;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_ssl_server_name on;
            proxy_ssl_name localhost;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            {protocols}
            proxy_next_upstream error timeout http_429;
            proxy_connect_timeout 2s;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}

        location / {{
            return 404;
        }}
    }}
}}
"#,
        tag = s.tag,
        dir = dir.display(),
        tmp = tmp.display(),
        servers = servers.join("\n"),
        listen = s.listen,
        cert = pki.cert.display(),
        key = pki.key.display(),
        ca = pki.ca.display(),
        protocols = if s.fleet_tls12 {
            "proxy_ssl_protocols TLSv1.2;"
        } else {
            "# proxy_ssl_protocols: 1.22's default (TLSv1 TLSv1.1 TLSv1.2)"
        },
    )
}

/// Writes the config, starts the proxy pinned, waits until it serves and its
/// checks settled: ours until every server has a report; HAProxy and nginx until
/// the port accepts (plus two check intervals for HAProxy).
pub fn start(dir: &Path, bins: &Path, pki: &Pki, spec: &Spec, probe: SocketAddr) -> anyhow::Result<Running> {
    let ns = spec.netns.as_deref();
    let log = dir.join(format!("{}-{}.log", spec.kind.key(), spec.tag));
    match spec.kind {
        Kind::Ingress => {
            let socket = dir.join(format!("ingress-{}.sock", spec.tag));
            let _ = std::fs::remove_file(&socket);
            let config = dir.join(format!("ingress-{}.toml", spec.tag));
            ingress_config(pki, spec, &socket).write(&config)?;
            let mut cmd = launcher(&bins.join("ingress"), ns, Some(spec.core));
            cmd.arg("run").arg("--config").arg(&config).env("INGRESS_LOG", "warn");
            let proc = Proc::start("ingress", &mut cmd, Some(&log), Some(Duration::from_secs(30)))?;
            let n = spec.fleets.len();
            let admin = Admin::new(&socket).with_timeout(Duration::from_secs(5));
            wait_for(
                "ingress to read every fleet's capacity",
                Duration::from_secs(15),
                Duration::from_millis(50),
                || {
                    admin
                        .servers()
                        .is_ok_and(|a| a.len() == n && a.iter().all(|s| !s["reported"].is_null()))
                },
            )?;
            Ok(Running {
                proc,
                admin: Some(admin),
            })
        }
        Kind::Haproxy => {
            let config = dir.join(format!("haproxy-{}.cfg", spec.tag));
            std::fs::write(&config, haproxy_config(pki, spec))?;
            let mut cmd = launcher(Path::new("/usr/sbin/haproxy"), ns, Some(spec.core));
            cmd.arg("-db").arg("-f").arg(&config);
            let proc = Proc::start("haproxy", &mut cmd, Some(&log), None)?;
            wait_port(ns, probe, Duration::from_secs(10)).context("HAProxy did not listen")?;
            // Let the checks run (rise/fall 2).
            std::thread::sleep(Duration::from_millis(2 * spec.check_interval_ms + 500));
            Ok(Running { proc, admin: None })
        }
        Kind::Nginx => {
            for d in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                std::fs::create_dir_all(dir.join("nginx-tmp").join(d))?;
            }
            let config = dir.join(format!("nginx-{}.conf", spec.tag));
            std::fs::write(&config, nginx_config(dir, pki, spec))?;
            let mut cmd = launcher(Path::new("/usr/sbin/nginx"), ns, Some(spec.core));
            cmd.arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join(format!("nginx-{}-error.log", spec.tag)))
                .arg("-c")
                .arg(&config);
            let proc = Proc::start("nginx", &mut cmd, Some(&log), None)?;
            wait_port(ns, probe, Duration::from_secs(10)).context("nginx did not listen")?;
            Ok(Running { proc, admin: None })
        }
    }
}
