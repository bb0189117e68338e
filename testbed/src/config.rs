//! The ingress config (TOML) as the harness writes it: a small typed builder
//! for what the tests, the bench, the soak and the demo set (`[listen]`,
//! `[limits]`, `[admin]`, `[[routes]]`, `[pools.*]` with their `tls` and
//! `check`, `[xdp]`), and raw TOML appended where a caller needs a key the
//! builder does not know.

use std::{
    fmt::{Display, Write as _},
    path::{Path, PathBuf},
};

/// A TOML basic string.
pub fn quote(v: impl Display) -> String {
    let s = v.to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn strings<S: Display>(v: &[S]) -> String {
    let items: Vec<String> = v.iter().map(quote).collect();
    format!("[{}]", items.join(", "))
}

/// `key = "value"` when set.
fn opt_str(out: &mut String, key: &str, v: Option<impl Display>) {
    if let Some(v) = v {
        let _ = writeln!(out, "{key} = {}", quote(v));
    }
}

/// `key = value` (unquoted) when set.
fn opt_num(out: &mut String, key: &str, v: Option<impl Display>) {
    if let Some(v) = v {
        let _ = writeln!(out, "{key} = {v}");
    }
}

/// A whole `ingress.toml`.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    comment: Option<String>,
    https: String,
    http: Option<String>,
    certs: PathBuf,
    default_cert: String,
    tls_min_version: Option<String>,
    max_connections: Option<u32>,
    admin_socket: PathBuf,
    admin_listen: Option<String>,
    routes: Vec<(String, String)>,
    pools: Vec<Pool>,
    xdp: Option<Xdp>,
    raw: Vec<String>,
}

impl IngressConfig {
    /// Listens on `https` with the certificates in `certs` (default
    /// `localhost`), admin API on the unix socket `admin_socket`.
    pub fn new(https: impl Display, certs: impl AsRef<Path>, admin_socket: impl AsRef<Path>) -> Self {
        Self {
            comment: None,
            https: https.to_string(),
            http: None,
            certs: certs.as_ref().to_path_buf(),
            default_cert: "localhost".to_owned(),
            tls_min_version: None,
            max_connections: None,
            admin_socket: admin_socket.as_ref().to_path_buf(),
            admin_listen: None,
            routes: Vec::new(),
            pools: Vec::new(),
            xdp: None,
            raw: Vec::new(),
        }
    }

    /// A `# …` line at the top (who wrote the file).
    pub fn comment(mut self, text: impl Display) -> Self {
        self.comment = Some(text.to_string());
        self
    }

    /// The plain-HTTP listener (ACME, health).
    pub fn http(mut self, addr: impl Display) -> Self {
        self.http = Some(addr.to_string());
        self
    }

    /// `[listen] default_cert`: the stem served when SNI matches none.
    pub fn default_cert(mut self, stem: &str) -> Self {
        stem.clone_into(&mut self.default_cert);
        self
    }

    pub fn tls_min_version(mut self, v: &str) -> Self {
        self.tls_min_version = Some(v.to_owned());
        self
    }

    /// `[limits] max_connections`.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// The admin API also on this TCP address.
    pub fn admin_listen(mut self, addr: impl Display) -> Self {
        self.admin_listen = Some(addr.to_string());
        self
    }

    pub fn route(mut self, path: &str, pool: &str) -> Self {
        self.routes.push((path.to_owned(), pool.to_owned()));
        self
    }

    /// The carriers' two call routes, `/ws/{bot_id}` and `/exotel/{bot_id}`, to `pool`.
    pub fn call_routes(self, pool: &str) -> Self {
        self.route("/ws/{bot_id}", pool).route("/exotel/{bot_id}", pool)
    }

    pub fn pool(mut self, pool: Pool) -> Self {
        self.pools.push(pool);
        self
    }

    pub fn xdp(mut self, xdp: Xdp) -> Self {
        self.xdp = Some(xdp);
        self
    }

    /// TOML appended as is, after the pools and before `[xdp]`.
    pub fn raw(mut self, toml: &str) -> Self {
        self.raw.push(toml.to_owned());
        self
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(c) = &self.comment {
            let _ = writeln!(out, "# {c}");
        }
        out.push_str("[listen]\n");
        opt_str(&mut out, "https", Some(&self.https));
        opt_str(&mut out, "http", self.http.as_ref());
        opt_str(&mut out, "certs", Some(self.certs.display()));
        opt_str(&mut out, "default_cert", Some(&self.default_cert));
        opt_str(&mut out, "tls_min_version", self.tls_min_version.as_ref());
        if let Some(n) = self.max_connections {
            let _ = write!(out, "\n[limits]\nmax_connections = {n}\n");
        }
        out.push_str("\n[admin]\n");
        opt_str(&mut out, "socket", Some(self.admin_socket.display()));
        opt_str(&mut out, "listen", self.admin_listen.as_ref());
        for (path, pool) in &self.routes {
            let _ = write!(out, "\n[[routes]]\npath = {}\npool = {}\n", quote(path), quote(pool));
        }
        for p in &self.pools {
            p.render(&mut out);
        }
        for r in &self.raw {
            let _ = write!(out, "\n{r}\n");
        }
        if let Some(x) = &self.xdp {
            x.render(&mut out);
        }
        out
    }

    /// Renders into `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.render())
    }
}

/// One `[pools.NAME]` table with its `tls` and `check` tables.
#[derive(Debug, Clone)]
pub struct Pool {
    name: String,
    balance: Option<String>,
    maxconn: Option<u32>,
    servers: Vec<Server>,
    servers_file: Option<PathBuf>,
    retry_on: Vec<String>,
    retries: Option<u32>,
    raw: Vec<String>,
    tls_verify: Option<bool>,
    tls_ca: Option<PathBuf>,
    tls_versions: Vec<String>,
    check: Option<Check>,
}

impl Pool {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            balance: None,
            maxconn: None,
            servers: Vec::new(),
            servers_file: None,
            retry_on: Vec::new(),
            retries: None,
            raw: Vec::new(),
            tls_verify: None,
            tls_ca: None,
            tls_versions: Vec::new(),
            check: None,
        }
    }

    pub fn balance(mut self, mode: &str) -> Self {
        self.balance = Some(mode.to_owned());
        self
    }

    pub fn maxconn(mut self, n: u32) -> Self {
        self.maxconn = Some(n);
        self
    }

    pub fn server(mut self, server: Server) -> Self {
        self.servers.push(server);
        self
    }

    pub fn servers_file(mut self, path: impl AsRef<Path>) -> Self {
        self.servers_file = Some(path.as_ref().to_path_buf());
        self
    }

    pub fn retry_on(mut self, kinds: &[&str]) -> Self {
        self.retry_on = kinds.iter().map(|k| (*k).to_owned()).collect();
        self
    }

    pub fn retries(mut self, n: u32) -> Self {
        self.retries = Some(n);
        self
    }

    /// Keys appended to the pool's table as is.
    pub fn raw(mut self, toml: &str) -> Self {
        self.raw.push(toml.to_owned());
        self
    }

    /// The CA the fleets' certificates are checked against.
    pub fn tls_ca(mut self, ca: impl AsRef<Path>) -> Self {
        self.tls_ca = Some(ca.as_ref().to_path_buf());
        self
    }

    /// `[pools.NAME.tls] versions` (empty: the daemon's default).
    pub fn tls_versions(mut self, versions: &[&str]) -> Self {
        self.tls_versions = versions.iter().map(|v| (*v).to_owned()).collect();
        self
    }

    pub fn tls_verify(mut self, on: bool) -> Self {
        self.tls_verify = Some(on);
        self
    }

    pub fn check(mut self, check: Check) -> Self {
        self.check = Some(check);
        self
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "\n[pools.{}]", self.name);
        opt_str(out, "balance", self.balance.as_ref());
        opt_num(out, "maxconn", self.maxconn);
        if !self.servers.is_empty() || self.servers_file.is_none() {
            out.push_str("servers = [\n");
            for s in &self.servers {
                let sni = s
                    .sni
                    .as_ref()
                    .map(|h| format!(", sni = {}", quote(h)))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {{ addr = {}, name = {}{sni} }},",
                    quote(&s.addr),
                    quote(&s.name)
                );
            }
            out.push_str("]\n");
        }
        opt_str(out, "servers_file", self.servers_file.as_ref().map(|p| p.display()));
        if !self.retry_on.is_empty() {
            let _ = writeln!(out, "retry_on = {}", strings(&self.retry_on));
        }
        opt_num(out, "retries", self.retries);
        for r in &self.raw {
            let _ = writeln!(out, "{r}");
        }
        if self.tls_verify.is_some() || self.tls_ca.is_some() || !self.tls_versions.is_empty() {
            let _ = writeln!(out, "\n[pools.{}.tls]", self.name);
            opt_num(out, "verify", self.tls_verify);
            opt_str(out, "ca", self.tls_ca.as_ref().map(|p| p.display()));
            if !self.tls_versions.is_empty() {
                let _ = writeln!(out, "versions = {}", strings(&self.tls_versions));
            }
        }
        if let Some(c) = &self.check {
            let _ = writeln!(out, "\n[pools.{}.check]", self.name);
            c.render(out);
        }
    }
}

/// One entry of a pool's `servers`.
#[derive(Debug, Clone)]
pub struct Server {
    name: String,
    addr: String,
    sni: Option<String>,
}

impl Server {
    pub fn new(name: &str, addr: impl Display) -> Self {
        Self {
            name: name.to_owned(),
            addr: addr.to_string(),
            sni: None,
        }
    }

    pub fn sni(mut self, host: &str) -> Self {
        self.sni = Some(host.to_owned());
        self
    }
}

/// A pool's `check` table; unset keys keep the daemon's defaults.
#[derive(Debug, Clone, Default)]
pub struct Check {
    path: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    fall: Option<u32>,
    rise: Option<u32>,
    capacity: Option<String>,
    reuse_connection: Option<bool>,
}

impl Check {
    pub fn path(mut self, p: &str) -> Self {
        self.path = Some(p.to_owned());
        self
    }

    /// A humantime duration (`200ms`, `1s`).
    pub fn interval(mut self, d: &str) -> Self {
        self.interval = Some(d.to_owned());
        self
    }

    pub fn timeout(mut self, d: &str) -> Self {
        self.timeout = Some(d.to_owned());
        self
    }

    pub fn fall(mut self, n: u32) -> Self {
        self.fall = Some(n);
        self
    }

    pub fn rise(mut self, n: u32) -> Self {
        self.rise = Some(n);
        self
    }

    /// The JSON pointer to the reported capacity.
    pub fn capacity(mut self, pointer: &str) -> Self {
        self.capacity = Some(pointer.to_owned());
        self
    }

    /// Probe on the last probe's connection while it stays open.
    pub fn reuse_connection(mut self, on: bool) -> Self {
        self.reuse_connection = Some(on);
        self
    }

    fn render(&self, out: &mut String) {
        opt_str(out, "path", self.path.as_ref());
        opt_str(out, "interval", self.interval.as_ref());
        opt_str(out, "timeout", self.timeout.as_ref());
        opt_num(out, "fall", self.fall);
        opt_num(out, "rise", self.rise);
        opt_str(out, "capacity", self.capacity.as_ref());
        opt_num(out, "reuse_connection", self.reuse_connection);
    }
}

/// The `[xdp]` table.
#[derive(Debug, Clone, Default)]
pub struct Xdp {
    interface: Option<String>,
    mode: Option<String>,
    action: Option<String>,
    lease: Option<String>,
    carriers: Vec<String>,
    ports: Vec<u16>,
    pin_path: Option<PathBuf>,
}

impl Xdp {
    /// No XDP program (`mode = "off"`).
    pub fn off() -> Self {
        Self::default().mode("off")
    }

    /// A program on `interface`.
    pub fn on(interface: &str) -> Self {
        Self {
            interface: Some(interface.to_owned()),
            ..Self::default()
        }
    }

    /// `native`, `skb` or `off`.
    pub fn mode(mut self, mode: &str) -> Self {
        self.mode = Some(mode.to_owned());
        self
    }

    /// What a shed SYN gets: `drop` or `rst`.
    pub fn action(mut self, action: &str) -> Self {
        self.action = Some(action.to_owned());
        self
    }

    pub fn lease(mut self, d: &str) -> Self {
        self.lease = Some(d.to_owned());
        self
    }

    pub fn carriers(mut self, cidrs: &[&str]) -> Self {
        self.carriers = cidrs.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    pub fn ports(mut self, ports: &[u16]) -> Self {
        self.ports = ports.to_vec();
        self
    }

    pub fn pin_path(mut self, dir: impl AsRef<Path>) -> Self {
        self.pin_path = Some(dir.as_ref().to_path_buf());
        self
    }

    fn render(&self, out: &mut String) {
        out.push_str("\n[xdp]\n");
        opt_str(out, "interface", self.interface.as_ref());
        opt_str(out, "mode", self.mode.as_ref());
        opt_str(out, "action", self.action.as_ref());
        opt_str(out, "lease", self.lease.as_ref());
        if !self.carriers.is_empty() {
            let _ = writeln!(out, "carriers = {}", strings(&self.carriers));
        }
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
            let _ = writeln!(out, "ports = [{}]", ports.join(", "));
        }
        opt_str(out, "pin_path", self.pin_path.as_ref().map(|p| p.display()));
    }
}
