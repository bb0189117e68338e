//! Harness for the end-to-end tests: real `ingress` and `fleet-sim`
//! processes (stopped on drop), generated certificates, a scratch
//! directory, small HTTP helpers, and network namespaces (deleted on drop,
//! also when a test fails).

pub mod netns;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, atomic::AtomicU32},
    time::{Duration, Instant},
};

pub use fleet_sim::{client, pki::TestCa};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A built binary of the workspace (`cargo xtask test` builds them first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test> → target/debug/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test`, which builds it",
        path.display()
    );
    path
}

/// A scratch directory removed on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("ingress-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        Self(path)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Certificates for one test: a CA, the ingress's bundle, the fleets' bundle.
pub struct Pki {
    pub ca: TestCa,
    pub ca_path: PathBuf,
    pub certs_dir: PathBuf,
    pub fleet_bundle: PathBuf,
}

impl Pki {
    /// Writes `ca.pem`, `certs/localhost.pem` and `fleet.pem` into `dir`.
    pub fn new(dir: &TestDir) -> Self {
        let ca = TestCa::new("ingress test CA").expect("CA");
        let ca_path = dir.write("ca.pem", &ca.cert_pem);
        dir.write(
            "certs/localhost.pem",
            &ca.issue(&["localhost", "127.0.0.1"]).expect("leaf").bundle(),
        );
        let fleet_bundle = dir.write(
            "fleet.pem",
            &ca.issue(&["127.0.0.1", "localhost"]).expect("leaf").bundle(),
        );
        Self {
            ca,
            ca_path,
            certs_dir: dir.path("certs"),
            fleet_bundle,
        }
    }

    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        client::tls_config(&self.ca.cert_pem).expect("client TLS config")
    }
}

pub use testbed::Proc;

/// Starts `cmd` with stderr to `log` and waits up to 30 s for its ready line;
/// panics with the log's tail when it does not come.
pub fn start_proc(name: &str, mut cmd: Command, log: &Path) -> Proc {
    Proc::start(name, &mut cmd, Some(log), Some(Duration::from_secs(30))).unwrap_or_else(|e| panic!("{e:#}"))
}

fn addr(v: &Value, key: &str) -> SocketAddr {
    v[key]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address `{key}` in {v}"))
}

/// A fleet simulator process.
pub struct Fleet {
    pub proc: Proc,
    pub https: SocketAddr,
    pub control: SocketAddr,
    /// The network namespace it runs in, if not the test's.
    pub netns: Option<String>,
}

impl Fleet {
    pub fn start(dir: &TestDir, pki: &Pki, name: &str, workers: u32) -> Self {
        Self::start_with(dir, pki, name, workers, None)
    }

    /// `netns`: run inside that namespace (via nsenter).
    pub fn start_with(dir: &TestDir, pki: &Pki, name: &str, workers: u32, netns: Option<&str>) -> Self {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(bin("fleet-sim"));
                c
            }
            None => Command::new(bin("fleet-sim")),
        };
        cmd.arg("--cert")
            .arg(&pki.fleet_bundle)
            .args(["--workers", &workers.to_string(), "--threads", "1"]);
        let proc = start_proc(name, cmd, &dir.path(&format!("{name}.log")));
        let https = addr(&proc.ready, "https");
        let control = addr(&proc.ready, "control");
        Self {
            proc,
            https,
            control,
            netns: netns.map(str::to_owned),
        }
    }

    /// Calls the control port (see `fleet_sim::sim`), returns its state JSON.
    pub async fn control(&self, path_and_query: &str) -> Value {
        let (addr, path) = (self.control, path_and_query.to_owned());
        let (status, body) = match self.netns.clone() {
            None => http_get(addr, &path).await,
            Some(ns) => tokio::task::spawn_blocking(move || {
                netns::block_on_in(&ns, move || async move { http_get(addr, &path).await })
            })
            .await
            .expect("control in netns"),
        };
        assert_eq!(status, 200, "fleet control {path_and_query}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("fleet state {body:?}: {e}"))
    }

    pub async fn state(&self) -> Value {
        self.control("/state").await
    }
}

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
        let path = dir.write("ingress.toml", config);
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin("ingress"));
                c
            }
            None => Command::new(bin("ingress")),
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

    /// GET on the admin API over its unix socket.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        self.admin_request("GET", path, "").await
    }

    /// Any request on the admin API over its unix socket.
    pub async fn admin_request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = tokio::net::UnixStream::connect(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("admin socket {}: {e}", self.admin.display()));
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("admin write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
        parse_response(&out)
    }

    pub async fn servers(&self) -> Vec<Value> {
        let (status, body) = self.admin_get("/api/servers").await;
        assert_eq!(status, 200, "/api/servers: {body}");
        let v: Value = serde_json::from_str(&body).expect("servers JSON");
        v["servers"].as_array().cloned().unwrap_or_default()
    }

    pub async fn server(&self, name: &str) -> Value {
        self.servers()
            .await
            .into_iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no server {name}"))
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200);
        body
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

/// A metric's value from Prometheus text (first line matching name and labels).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            return None;
        }
        if !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            return None;
        }
        value.parse().ok()
    })
}

/// Plain HTTP GET; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let raw = http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    parse_response(&raw)
}

/// Sends raw bytes over plain TCP and reads until the server closes (10 s max).
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}

/// Status and body of a raw HTTP/1.1 response.
pub fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The standard test config: routes for `/ws/{bot_id}` and `/exotel/{bot_id}`
/// to pool `fleets` with the given servers (`name`, `addr`), admin on
/// loopback, XDP off. `extra` is appended (more tables).
pub fn config(dir: &TestDir, pki: &Pki, servers: &[(&str, SocketAddr)], pool_extra: &str, extra: &str) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|(name, addr)| format!("  {{ addr = \"{addr}\", name = \"{name}\" }},"))
        .collect();
    let xdp_off = if extra.contains("[xdp]") {
        ""
    } else {
        "[xdp]\nmode = \"off\"\n"
    };
    format!(
        r#"[listen]
https = "127.0.0.1:0"
http = "127.0.0.1:0"
certs = "{certs}"
default_cert = "localhost"

[admin]
socket = "{sock}"

[[routes]]
path = "/ws/{{bot_id}}"
pool = "fleets"

[[routes]]
path = "/exotel/{{bot_id}}"
pool = "fleets"

[pools.fleets]
maxconn = 16
servers = [
{servers}
]
{pool_extra}

[pools.fleets.tls]
ca = "{ca}"

[pools.fleets.check]
interval = "200ms"
timeout = "500ms"

{extra}
{xdp_off}"#,
        certs = pki.certs_dir.display(),
        sock = dir.path("admin.sock").display(),
        ca = pki.ca_path.display(),
        servers = servers.join("\n"),
    )
}

/// TLS connect to the ingress and send raw request bytes; returns the raw answer
/// (read until the server closes, 10 s max).
pub async fn https_raw(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, request: &[u8]) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}

/// A WebSocket upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Sends an upgrade over a new TLS connection with `cookie` (after a
/// `theme=dark` cookie of the client's own); returns the response head (the
/// call is then dropped).
pub async fn upgrade_head(
    ingress: &Ingress,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    cookie: Option<&str>,
) -> String {
    let tcp = tokio::net::TcpStream::connect(ingress.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
    let cookie = cookie
        .map(|c| format!("Cookie: theme=dark; {c}\r\n"))
        .unwrap_or_default();
    let req = upgrade_request(path).replace("Host: localhost\r\n", &format!("Host: localhost\r\n{cookie}"));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("answer")
            .unwrap();
        assert!(n > 0, "closed before the head: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

pub fn set_cookie(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
}

/// Sends one text message and expects it back within 5 s.
pub async fn echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(text)).await.map_err(|e| format!("send: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => Ok(()),
        other => Err(format!("no echo: {other:?}")),
    }
}

/// Runs headless Chromium (Debian's) on `url` with `extra` flags; returns
/// what it printed. Its whole process group is killed afterwards, so no
/// helper process outlives the test or holds a pipe open.
pub fn headless_chromium(profile: &Path, extra: &[String], url: &str) -> String {
    use std::os::unix::process::CommandExt as _;
    let out_path = profile.with_extension("stdout");
    let out = std::fs::File::create(&out_path).expect("chromium stdout file");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,700",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(std::fs::File::create(profile.with_extension("stderr")).expect("chromium stderr file"))
        .process_group(0)
        .spawn()
        .expect("chromium (installed by cargo xtask setup)");
    let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    std::fs::read_to_string(&out_path).unwrap_or_default()
}

/// The sum of a metric over every label set matching `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
