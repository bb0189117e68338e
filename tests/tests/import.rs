//! `ingress import`: the seeds' WSS HAProxy setup written as a haproxy.cfg,
//! translated, checked with `ingress check`, and run; every route of the
//! seeds' table answers through the ingress as it does through real HAProxy
//! running the same file against the same two fleet simulators.

use std::{
    net::SocketAddr,
    process::{Command, Output},
    time::{Duration, Instant},
};

use ingress_tests::{Fleet, Ingress, Pki, Proc, TestDir, bin, client, echo, http_raw, parse_response, upgrade_on};

/// A loopback address no one listens on now (for HAProxy, which cannot report the port it bound).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The seeds' setup: TLS 1.2 floor, the call routes, the local health
/// path, /attach and /livekit/* refused, ACME on :80 to certbot, leastconn
/// over two fleets checked for capacity with the seeds' regex.
fn haproxy_cfg(dir: &TestDir, pki: &Pki, https: SocketAddr, http: SocketAddr, fleets: [SocketAddr; 2]) -> String {
    format!(
        r#"# The seeds' WSS ingress (calls.example.com fronting two fleets).
global
    log stdout format raw local0
    maxconn 1000
    stats socket {sock} mode 600 level admin
    stats timeout 30s

defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout http-request 10s

frontend voxcore_wss
    bind {https} ssl crt {crt} ssl-min-ver TLSv1.2 alpn http/1.1
    option forwardfor
    acl is_ws path_beg /ws/
    acl is_exotel path_beg /exotel/
    acl is_rejected path /attach
    acl is_rejected path_beg /livekit/
    http-request return status 200 content-type text/plain string "ok" if {{ path /haproxy-health }}
    http-request deny deny_status 404 if is_rejected
    http-request deny deny_status 404 unless is_ws || is_exotel
    use_backend voxcore_wss_fleet if is_ws || is_exotel

frontend acme_http
    bind {http}
    acl is_acme path_beg /.well-known/acme-challenge/
    http-request deny deny_status 404 unless is_acme
    use_backend certbot if is_acme

backend voxcore_wss_fleet
    balance leastconn
    option httpchk GET /health/fleet
    http-check expect rstring "\"fleet_available\":([1-9]|1[0-6])[,}}]"
    option redispatch
    retry-on conn-failure empty-response response-timeout
    server fleet1 {f1} check inter 1s fall 2 rise 2 maxconn 16 ssl verify none sni str(localhost)
    server fleet2 {f2} check inter 1s fall 2 rise 2 maxconn 16 ssl verify none sni str(localhost)

backend certbot
    server certbot 127.0.0.1:8888
"#,
        sock = dir.path("haproxy.sock").display(),
        crt = pki.certs_dir.join("localhost.pem").display(),
        f1 = fleets[0],
        f2 = fleets[1],
    )
}

fn ingress(args: &[&str]) -> Output {
    Command::new(bin("ingress")).args(args).output().expect("run ingress")
}

/// The first line of `cfg` with `text` in it.
fn line_of(cfg: &str, text: &str) -> usize {
    1 + cfg
        .lines()
        .position(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no line `{text}`"))
}

/// The status of a carrier's WebSocket upgrade for `path` through the proxy at `addr` (TLS, SNI localhost).
async fn status(addr: SocketAddr, pki: &Pki, path: &str) -> u16 {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (head, _call) = upgrade_on(tcp, pki.client_tls(), path, None).await;
    parse_response(head.as_bytes()).0
}

/// Waits until HAProxy's own checks found both fleets up (its stats socket: `check_status` L7OK).
async fn haproxy_ready(dir: &TestDir, haproxy: &mut Proc) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let started = Instant::now();
    loop {
        let mut csv = String::new();
        if let Ok(mut s) = tokio::net::UnixStream::connect(dir.path("haproxy.sock")).await {
            let _ = s.write_all(b"show stat\n").await;
            let _ = s.read_to_string(&mut csv).await;
        }
        let header: Vec<&str> = csv
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let up = match (col("svname"), col("check_status")) {
            (Some(sv), Some(check)) => csv
                .lines()
                .map(|l| l.split(',').collect::<Vec<_>>())
                .filter(|f| f.get(sv).is_some_and(|n| n.starts_with("fleet")))
                .filter(|f| f.get(check) == Some(&"L7OK"))
                .count(),
            _ => 0,
        };
        if up == 2 {
            return;
        }
        assert!(
            haproxy.child.try_wait().unwrap().is_none(),
            "haproxy exited:\n{}",
            haproxy.log_tail(20)
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "HAProxy's checks never passed:\n{csv}\n{}",
            haproxy.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_haproxy_cfg_imports_and_routes_as_haproxy_does() {
    let dir = TestDir::new("import");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let f2 = Fleet::start(&dir, &pki, "fleet2", 16);
    let (hp_https, hp_http) = (free_addr(), free_addr());
    let cfg = haproxy_cfg(&dir, &pki, hp_https, hp_http, [f1.https, f2.https]);
    let cfg_path = dir.write("haproxy.cfg", &cfg);

    // The original under real HAProxy, started first: its checks run while we import.
    let haproxy = std::path::Path::new("/usr/sbin/haproxy");
    assert!(haproxy.exists(), "haproxy is missing: `cargo xtask setup` installs it");
    let mut cmd = Command::new(haproxy);
    cmd.arg("-db").arg("-f").arg(&cfg_path);
    let mut hp = Proc::start("haproxy", &mut cmd, Some(&dir.path("haproxy.log")), None).expect("start haproxy");

    let out = ingress(&["import", cfg_path.to_str().unwrap()]);
    let (toml, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "ingress import failed:\n{stderr}");
    let file = cfg_path.display().to_string();
    for (line, rest) in [
        ("log stdout", "log: not translated: "),
        ("stats socket", "stats socket: not translated: "),
        ("stats timeout", "stats timeout: not translated: "),
        ("mode http", "mode http: not needed: "),
        ("option httplog", "option httplog: not translated: "),
        ("timeout client", "timeout client: not needed: "),
        ("timeout server", "timeout server: not needed: "),
        ("option forwardfor", "option forwardfor: not needed: "),
        ("alpn", "alpn: not needed: "),
        (
            "http-request deny deny_status 404 if is_rejected",
            "http-request deny: not needed: ",
        ),
        (
            "http-request deny deny_status 404 unless is_ws",
            "http-request deny: not needed: ",
        ),
        (
            "http-request deny deny_status 404 unless is_acme",
            "http-request deny: not needed: ",
        ),
        ("option redispatch", "option redispatch: not needed: "),
    ] {
        let want = format!("{file}:{}: {rest}", line_of(&cfg, line));
        assert!(
            stderr.lines().any(|l| l.starts_with(&want)),
            "no `{want}` in:\n{stderr}"
        );
    }
    // Nothing dropped silently: every line is named on stderr or in a comment of the output.
    let named = |n: usize| {
        stderr.lines().any(|l| l.starts_with(&format!("{file}:{n}:")))
            || toml.lines().filter_map(|l| l.split("haproxy.cfg:").nth(1)).any(|refs| {
                refs.split(|c: char| !c.is_ascii_digit() && c != ',')
                    .next()
                    .is_some_and(|at| at.split(',').any(|x| x == n.to_string()))
            })
    };
    let sections = ["global", "defaults", "frontend", "backend"];
    for (i, l) in cfg.lines().enumerate() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') || sections.iter().any(|s| l.starts_with(s)) {
            continue;
        }
        assert!(named(i + 1), "line {} `{l}` is named nowhere:\n{toml}\n{stderr}", i + 1);
    }
    for want in [
        format!("https = \"{hp_https}\""),
        format!("http = \"{hp_http}\""),
        "tls_min_version = \"1.2\"".to_owned(),
        format!("certs = \"{}\"", pki.certs_dir.display()),
        "default_cert = \"localhost\"".to_owned(),
        "health_path = \"/haproxy-health\"".to_owned(),
        "acme_upstream = \"127.0.0.1:8888\"".to_owned(),
        "path = \"/ws/*\"".to_owned(),
        "path = \"/exotel/*\"".to_owned(),
        "capacity = \"/fleet_available\"".to_owned(),
    ] {
        assert!(toml.contains(&want), "no `{want}` in:\n{toml}");
    }

    // The daemon's own check accepts it as written.
    let imported = dir.write("imported.toml", &toml);
    let check = ingress(&["check", "--config", imported.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(said.contains(": ok (2 routes, 1 pools, 2 servers)"), "{said}");

    // Run it on ports of its own, with an admin socket in the test directory.
    let ours = toml
        .replace(&format!("\"{hp_https}\""), "\"127.0.0.1:0\"")
        .replace(&format!("\"{hp_http}\""), "\"127.0.0.1:0\"")
        + &format!("\n[admin]\nsocket = \"{}\"\n", dir.path("admin.sock").display());
    let ingress = Ingress::start(&dir, &ours);
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    haproxy_ready(&dir, &mut hp).await;

    let table = [
        ("/ws/bot-1", 101),
        ("/exotel/bot-2", 101),
        ("/haproxy-health", 200),
        ("/attach", 404),
        ("/livekit/dialout", 404),
        ("/livekit/widget", 404),
        ("/livekit/dispatch", 404),
        ("/", 404),
        ("/health/fleet", 404),
        ("/wsx/bot", 404),
        ("/.well-known/acme-challenge/token", 404),
    ];
    for (path, want) in table {
        let (ours, theirs) = (
            status(ingress.https, &pki, path).await,
            status(hp_https, &pki, path).await,
        );
        assert_eq!((ours, theirs), (want, want), "{path}: ingress {ours}, HAProxy {theirs}");
    }
    // On :80 both refuse what is not an ACME challenge.
    let plain = b"GET /ws/bot-1 HTTP/1.1\r\nHost: calls.example.com\r\nConnection: close\r\n\r\n";
    let http = ingress.http.expect("the http listener");
    let (ours, theirs) = (
        parse_response(&http_raw(http, plain).await).0,
        parse_response(&http_raw(hp_http, plain).await).0,
    );
    assert_eq!((ours, theirs), (404, 404), ":80: ingress {ours}, HAProxy {theirs}");
    // And a call through the imported config is a real tunnel.
    let mut ws = client::connect(ingress.https, "localhost", "/ws/bot-3", pki.client_tls())
        .await
        .expect("a call");
    echo(&mut ws, "hello").await.expect("echo");
}
