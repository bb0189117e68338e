//! A running `ingress` daemon for a test (started from a config, stopped on
//! drop), its admin API through `testbed::Admin` and `ingress ctl`, and the
//! standard test config built with `testbed::config`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{
    Admin, IngressConfig,
    config::{Check, Pool, Server, Xdp},
};

use crate::{Pki, Proc, TestDir, bin, blocking, start_proc};

/// A running `ingress` daemon.
pub struct Ingress {
    pub proc: Proc,
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    /// The admin API's unix socket (reachable whatever the network namespace).
    pub admin: PathBuf,
    pub config: PathBuf,
}

impl Ingress {
    /// A WSS call to `path` on the front (SNI `localhost`, the test CA).
    pub async fn call(&self, pki: &Pki, path: &str) -> Result<fleet_sim::client::Wss, fleet_sim::client::CallError> {
        fleet_sim::client::connect(self.https, "localhost", path, pki.client_tls()).await
    }

    /// Starts `ingress run --config {config}`.
    pub fn start(dir: &TestDir, config: &str) -> Self {
        Self::start_with(dir, config, None)
    }

    pub fn start_with(dir: &TestDir, config: &str, netns: Option<&str>) -> Self {
        Self::start_full(dir, config, netns, &[])
    }

    /// Starts with extra environment variables.
    pub fn start_full(dir: &TestDir, config: &str, netns: Option<&str>, env: &[(&str, &str)]) -> Self {
        let prefix: Vec<String> = netns
            .map(|ns| vec!["nsenter".to_owned(), format!("--net=/run/netns/{ns}")])
            .unwrap_or_default();
        Self::start_prefixed(dir, config, &prefix, env)
    }

    /// Starts under a wrapper command (`nsenter …`, `prlimit …`).
    pub fn start_prefixed(dir: &TestDir, config: &str, prefix: &[String], env: &[(&str, &str)]) -> Self {
        Self::start_exe(dir, config, &bin("ingress"), prefix, env)
    }

    /// Starts the binary at `exe` (a copy a test can replace, as a package
    /// upgrade replaces the installed one).
    pub fn start_exe(dir: &TestDir, config: &str, exe: &Path, prefix: &[String], env: &[(&str, &str)]) -> Self {
        let path = dir.write("ingress.toml", config);
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .env("INGRESS_LOG", "info,ingress_user=debug")
            .envs(env.iter().copied());
        let proc = start_proc("ingress", cmd, &dir.path("ingress.log"));
        let first = |k: &str| {
            proc.ready[k]
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
        };
        let https = first("https").expect("https address in the ready line");
        let http = first("http");
        let admin = PathBuf::from(
            proc.ready["admin_socket"]
                .as_str()
                .expect("admin_socket in the ready line"),
        );
        Self {
            proc,
            https,
            http,
            admin,
            config: path,
        }
    }

    /// The admin API client for this daemon.
    pub fn admin_client(&self) -> Admin {
        Admin::new(&self.admin)
    }

    /// Runs `ingress ctl --socket ADMIN ARGS…`; returns exit code, stdout, stderr.
    pub async fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(bin("ingress"));
        cmd.arg("ctl").arg("--socket").arg(&self.admin).args(args);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("ctl task")
            .expect("ingress ctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `ctl upgrade`, which must succeed: what it printed, and the new process.
    pub async fn upgrade(&self) -> (Value, Successor) {
        let (code, out, err) = self.ctl(&["upgrade", "--json"]).await;
        assert_eq!(code, 0, "ctl upgrade: {out}{err}\n{}", self.proc.log_tail(30));
        let up: Value = serde_json::from_str(&out).expect("ctl upgrade prints JSON");
        let pid = up["pid"].as_i64().expect("the new PID") as i32;
        (up, Successor(pid))
    }

    /// GET on the admin API over its unix socket.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        self.admin_request("GET", path, "").await
    }

    /// Any request on the admin API over its unix socket.
    pub async fn admin_request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let admin = self.admin_client();
        let (method, path, body) = (method.to_owned(), path.to_owned(), body.to_owned());
        blocking(move || admin.request(&method, &path, &body)).await
    }

    pub async fn servers(&self) -> Vec<Value> {
        let admin = self.admin_client();
        blocking(move || admin.servers()).await
    }

    pub async fn server(&self, name: &str) -> Value {
        self.servers()
            .await
            .into_iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no server {name}"))
    }

    pub async fn metrics(&self) -> String {
        let admin = self.admin_client();
        blocking(move || admin.metrics()).await
    }

    /// Polls the admin API until `pred` holds for the server list (or panics after `timeout`).
    pub async fn wait_servers(&self, what: &str, timeout: Duration, pred: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let servers = self.servers().await;
            if pred(&servers) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; servers: {servers:#?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls `/metrics` until `pred` holds for the sample `name{labels}` (or panics after `timeout`).
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
        pred: impl Fn(f64) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.metrics().await;
            if crate::metric(&text, name, labels).is_some_and(&pred) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {name}{labels:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `GET /api/status` as JSON.
    pub async fn status(&self) -> Value {
        let (code, body) = self.admin_get("/api/status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Waits until `/api/status` says XDP shedding is `want`; returns how long that took.
    pub async fn wait_shedding(&self, want: bool) -> Duration {
        let started = Instant::now();
        loop {
            if self.status().await["xdp"]["shedding"] == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "shedding never became {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every named server is in `state`.
    pub async fn wait_state(&self, names: &[&str], state: &str) {
        let what = format!("{names:?} to be {state}");
        self.wait_servers(&what, Duration::from_secs(15), |servers| {
            names
                .iter()
                .all(|n| servers.iter().any(|s| s["name"] == *n && s["state"] == state))
        })
        .await;
    }
}

/// The standard test config: routes for `/ws/{bot_id}` and `/exotel/{bot_id}`
/// to pool `fleets` with the given servers (`name`, `addr`), admin on
/// loopback, XDP off unless `extra` has an `[xdp]` table. `pool_extra` goes
/// into the pool's table, `extra` (more tables) after the pool.
pub fn config(dir: &TestDir, pki: &Pki, servers: &[(&str, SocketAddr)], pool_extra: &str, extra: &str) -> String {
    let pool = servers
        .iter()
        .fold(Pool::new("fleets").maxconn(16), |p, (name, addr)| {
            p.server(Server::new(name, addr))
        })
        .raw(pool_extra)
        .tls_ca(&pki.ca_path)
        .check(Check::default().interval("200ms").timeout("500ms"));
    let cfg = IngressConfig::new("127.0.0.1:0", &pki.certs_dir, dir.path("admin.sock"))
        .http("127.0.0.1:0")
        .call_routes("fleets")
        .pool(pool)
        .raw(extra);
    if extra.contains("[xdp]") {
        cfg
    } else {
        cfg.xdp(Xdp::off())
    }
    .render()
}

/// The marker in the binary that names its build (see `lifecycle::VERSION`).
const BUILD_MARKER: &[u8] = b"build:0000000000000000";

/// Writes a copy of the ingress binary to `dst` (through a temporary file
/// renamed over it, as a package upgrade replaces the installed binary):
/// with `build` (16 characters) in place of its build marker, another build.
pub fn install_binary(dst: &Path, build: Option<&str>) {
    let mut bytes = std::fs::read(bin("ingress")).expect("read the ingress binary");
    if let Some(b) = build {
        assert_eq!(b.len(), 16, "a build is 16 characters");
        let new: Vec<u8> = [b"build:".as_slice(), b.as_bytes()].concat();
        let mut at = 0;
        let mut found = 0;
        while let Some(i) = bytes[at..].windows(BUILD_MARKER.len()).position(|w| w == BUILD_MARKER) {
            bytes[at + i..at + i + new.len()].copy_from_slice(&new);
            at += i + new.len();
            found += 1;
        }
        assert!(found > 0, "no build marker in the binary");
    }
    let tmp = dst.with_extension("new");
    std::fs::write(&tmp, &bytes).expect("write the binary");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, dst).expect("rename the binary into place");
}

/// A process that took over from a test's daemon (a binary upgrade): not
/// the test's child, stopped on drop like one.
#[derive(Debug)]
pub struct Successor(pub i32);

impl Successor {
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.0))
            .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
    }

    /// Waits up to `limit` for the process to be gone; whether it is.
    pub fn wait_gone(&self, limit: Duration) -> bool {
        testbed::poll::wait_for("the process to be gone", limit, Duration::from_millis(20), || {
            !self.alive()
        })
        .is_ok()
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        use nix::{
            sys::signal::{Signal, kill},
            unistd::Pid,
        };
        let pid = Pid::from_raw(self.0);
        let _ = kill(pid, Signal::SIGINT);
        if !self.wait_gone(Duration::from_secs(5)) {
            let _ = kill(pid, Signal::SIGKILL);
            self.wait_gone(Duration::from_secs(2));
        }
    }
}

/// `cfg` with the admin API also on TCP `listen`, with `token` if given.
pub fn admin_listen(cfg: &str, listen: &str, token: Option<&str>) -> String {
    let token = token.map(|t| format!("\ntoken = \"{t}\"")).unwrap_or_default();
    cfg.replacen("[admin]\n", &format!("[admin]\nlisten = \"{listen}\"{token}\n"), 1)
}

/// A raw admin request over TCP (a POST carries a drain body): the status
/// and the body.
pub async fn admin_tcp_answer(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = if method == "POST" { "{\"state\":\"drain\"}" } else { "" };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (code, body) = crate::parse_response(&crate::http_raw(admin, req.as_bytes()).await);
    (code, body)
}

/// [`admin_tcp_answer`]'s status.
pub async fn admin_tcp(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> u16 {
    admin_tcp_answer(admin, method, path, token).await.0
}
