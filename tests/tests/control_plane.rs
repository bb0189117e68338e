//! The control plane end to end: `ingress ctl` drain/ready, add with
//! rollback and atomic persistence, reload under live calls, metrics that
//! pass promtool, the stats page in a real headless Chromium, and mutating
//! calls refused from non-loopback peers.

use std::{net::SocketAddr, time::Duration};

use ingress_tests::{
    Fleet, Ingress, Pki, TestDir, admin_listen, admin_tcp, client, config, echo, http_get,
    netns::{self, NetPair},
};

async fn calls(ingress: &Ingress, pki: &Pki, n: usize, tag: &str) -> Vec<client::Wss> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            client::connect(ingress.https, "localhost", &format!("/ws/{tag}-{i}"), pki.client_tls())
                .await
                .unwrap_or_else(|e| panic!("call {tag}-{i}: {e}")),
        );
    }
    out
}

async fn all_echo(calls: &mut [client::Wss]) {
    for (i, ws) in calls.iter_mut().enumerate() {
        echo(ws, "still up")
            .await
            .unwrap_or_else(|e| panic!("call {i} dropped: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_new_calls_and_keeps_live_ones() {
    let dir = TestDir::new("drain");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let f2 = Fleet::start(&dir, &pki, "fleet2", 16);
    let ingress = Ingress::start(
        &dir,
        &config(&dir, &pki, &[("fleet1", f1.https), ("fleet2", f2.https)], "", ""),
    );
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    let mut live = calls(&ingress, &pki, 20, "live").await;
    let (code, out, err) = ingress.ctl(&["drain", "fleets/fleet1"]).await;
    assert_eq!(code, 0, "{out}{err}");
    ingress.wait_state(&["fleet1"], "DRAIN").await;
    let mut more = calls(&ingress, &pki, 4, "after-drain").await;
    assert_eq!(f1.state().await["calls"], 10, "drained: no new call on fleet1");
    assert_eq!(f2.state().await["calls"], 14);
    all_echo(&mut live).await;
    let (code, out, _) = ingress.ctl(&["stat"]).await;
    assert_eq!(code, 0);
    assert!(
        out.lines().any(|l| l.contains("fleet1") && l.contains("DRAIN")),
        "{out}"
    );
    let (code, out, err) = ingress.ctl(&["ready", "fleets/fleet1"]).await;
    assert_eq!(code, 0, "{out}{err}");
    ingress.wait_state(&["fleet1"], "UP").await;
    more.extend(calls(&ingress, &pki, 2, "after-ready").await);
    assert_eq!(f1.state().await["calls"], 12, "back in rotation (fewest tunnels)");
    let (code, _, err) = ingress.ctl(&["drain", "fleets/nope"]).await;
    assert_eq!(code, 1, "unknown server: refused");
    assert!(err.contains("no server `nope`"), "{err}");
    let (code, out, _) = ingress.ctl(&["pick", "fleets"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("fleet1"), "fleet1 has more capacity now: {out}");
    ctl_for_scripts(&ingress).await;
}

/// `ctl` for scripts: `--json` on every subcommand (the answer as one
/// document), a line or table otherwise, and exit codes told apart.
async fn ctl_for_scripts(ingress: &Ingress) {
    // A hold lasts until a report on a probe a second after it: read at once.
    let (code, out, err) = ingress.ctl(&["pick", "fleets", "--hold", "5s", "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (_, held, _) = ingress.ctl(&["stat", "--json"]).await;
    let held: serde_json::Value = serde_json::from_str(&held).unwrap();
    assert!(
        held["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["held"].as_u64() >= Some(1)),
        "the hold shows in stat: {held}"
    );
    let cases: [(&[&str], &str); 7] = [
        (&["stat"], "POOL"),
        (&["status"], "pool fleets:"),
        (&["pick", "fleets"], " free"),
        (&["pick", "fleets", "--hold", "5s"], "held until"),
        (&["maint", "fleets/fleet2"], "fleets/fleet2: maint"),
        (&["ready", "fleets/fleet2"], "fleets/fleet2: ready"),
        (&["reload"], "reloaded: generation"),
    ];
    for (args, human) in cases {
        let with_json: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
        let (code, out, err) = ingress.ctl(&with_json).await;
        assert_eq!(code, 0, "{with_json:?}: {out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{with_json:?} is not one JSON document ({e}): {out}"));
        assert!(v.is_object(), "{v}");
        let (code, out, err) = ingress.ctl(args).await;
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        assert!(out.contains(human), "{args:?} prints {human:?}: {out}");
        assert!(
            serde_json::from_str::<serde_json::Value>(&out).is_err(),
            "{args:?}: a line, not JSON: {out}"
        );
    }
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(ingress_tests::bin("ingress"))
            .arg("ctl")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = ctl(&["--socket", "/nonexistent/admin.sock", "stat"]);
    assert_eq!(code, 2, "unreachable: {err}");
    assert!(err.contains("/nonexistent/admin.sock"), "{err}");
    let (code, _, err) = ingress.ctl(&["drain", "fleets/nope"]).await;
    assert_eq!(code, 1, "refused: {err}");
    // With --json a script gets a document on every outcome.
    for (args, code) in [
        (&["drain", "fleets/nope", "--json"][..], 1),
        (&["drain", "no-slash", "--json"], 64),
    ] {
        let (got, out, err) = ingress.ctl(args).await;
        assert_eq!(got, code, "{args:?}: {out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
        assert!(v["error"].is_string(), "{v}");
    }
    let (code, out, _) = ctl(&["--socket", "/nonexistent/admin.sock", "--json", "status"]);
    assert_eq!(code, 2);
    assert!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["error"].is_string(),
        "{out}"
    );
    for usage in [&["frobnicate"][..], &["drain"], &["pick", "fleets", "--hold", "soon"]] {
        let (code, _, err) = ctl(usage);
        assert_eq!(code, 64, "{usage:?} is a usage error: {err}");
    }
    let (code, _, err) = ingress.ctl(&["drain", "no-slash"]).await;
    assert_eq!(code, 64, "a target without POOL/ is a usage error: {err}");
    let (code, help, _) = ctl(&["--help"]);
    assert_eq!(code, 0);
    for line in [
        "0   done",
        "1   refused",
        "2   the daemon could not be reached",
        "64  usage error",
    ] {
        assert!(help.contains(line), "--help tells {line:?}:\n{help}");
    }
}

fn servers_file_config(dir: &TestDir, pki: &Pki, file: &std::path::Path) -> String {
    config(dir, pki, &[], &format!("servers_file = \"{}\"", file.display()), "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_checks_persists_and_rolls_back() {
    let dir = TestDir::new("add");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let f2 = Fleet::start(&dir, &pki, "fleet2", 16);
    let bad = Fleet::start(&dir, &pki, "bad", 16);
    bad.control("/health?mode=garbage").await;
    let file = dir.write("fleet-servers.txt", &format!("# fleets\n{} name=fleet1\n", f1.https));
    let ingress = Ingress::start(&dir, &servers_file_config(&dir, &pki, &file));
    ingress.wait_state(&["fleet1"], "UP").await;
    let before = std::fs::read(&file).unwrap();

    // Dry run: pre-checks only.
    let (code, out, err) = ingress
        .ctl(&["add", "fleets", &f2.https.to_string(), "--name", "fleet2", "--dry-run"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("would add fleets/fleet2") && out.contains("fleet_available"),
        "{out}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), before, "a dry run writes nothing");
    assert_eq!(ingress.servers().await.len(), 1);

    // A server whose health body does not parse: refused, file untouched.
    let (code, _, err) = ingress
        .ctl(&["add", "fleets", &bad.https.to_string(), "--name", "bad"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("not valid JSON"), "the reason is printed: {err}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "byte-identical after a refused add"
    );
    assert_eq!(ingress.servers().await.len(), 1);

    // A healthy one: UP and in the file.
    let (code, out, err) = ingress
        .ctl(&["add", "fleets", &f2.https.to_string(), "--name", "fleet2"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(ingress.server("fleet2").await["state"], "UP");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(&format!("{} name=fleet2", f2.https)), "{text}");
    assert!(text.contains(&format!("{} name=fleet1", f1.https)), "{text}");

    // A server that passes the pre-check but never comes UP is rolled back.
    let flaky = Fleet::start(&dir, &pki, "flaky", 16);
    let before = std::fs::read(&file).unwrap();
    let flaky_addr = flaky.https.to_string();
    let add = {
        let socket = ingress.admin.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(ingress_tests::bin("ingress"))
                .arg("ctl")
                .arg("--socket")
                .arg(&socket)
                .args(["add", "fleets", &flaky_addr, "--name", "flaky"])
                .output()
                .expect("ctl add")
        })
    };
    // As soon as the daemon lists it (pre-check passed), its health breaks.
    ingress
        .wait_servers("flaky to be added", Duration::from_secs(10), |s| {
            s.iter().any(|s| s["name"] == "flaky")
        })
        .await;
    flaky.control("/health?mode=500").await;
    let out = add.await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(1) {
        assert!(err.contains("rolled back"), "{err}");
        assert_eq!(
            std::fs::read(&file).unwrap(),
            before,
            "rolled back: file byte-identical"
        );
        assert!(ingress.servers().await.iter().all(|s| s["name"] != "flaky"));
    } else {
        // The first check beat the breakage: then it must be in the file.
        assert!(std::fs::read_to_string(&file).unwrap().contains("name=flaky"));
    }

    // remove: out of the live state and the file.
    let (code, out, err) = ingress.ctl(&["remove", "fleets/fleet2"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(!std::fs::read_to_string(&file).unwrap().contains("fleet2"));
    assert!(ingress.servers().await.iter().all(|s| s["name"] != "fleet2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_add_leaves_a_valid_file() {
    let dir = TestDir::new("addkill");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let f2 = Fleet::start(&dir, &pki, "fleet2", 16);
    let file = dir.write("fleet-servers.txt", &format!("{} name=fleet1\n", f1.https));
    let before = std::fs::read_to_string(&file).unwrap();
    let mut ingress = Ingress::start(&dir, &servers_file_config(&dir, &pki, &file));
    ingress.wait_state(&["fleet1"], "UP").await;
    // Every probe of the new fleet takes 300 ms (within the 500 ms timeout):
    // the add is still waiting for its first check when the daemon dies.
    f2.control("/health?mode=slow&delay_ms=300").await;
    let socket = ingress.admin.clone();
    let addr = f2.https.to_string();
    let add = tokio::task::spawn_blocking(move || {
        std::process::Command::new(ingress_tests::bin("ingress"))
            .arg("ctl")
            .arg("--socket")
            .arg(&socket)
            .args(["add", "fleets", &addr, "--name", "fleet2"])
            .output()
            .expect("ctl add")
    });
    ingress
        .wait_servers("fleet2 to be added", Duration::from_secs(10), |s| {
            s.iter().any(|s| s["name"] == "fleet2")
        })
        .await;
    ingress.proc.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = ingress.proc.child.wait();
    let out = add.await.unwrap();
    assert_ne!(out.status.code(), Some(0), "the add cannot have completed");
    let after = std::fs::read_to_string(&file).unwrap();
    let parsed = ingress_user::config::parse_servers_file(&after).expect("the file still parses");
    assert!(
        after == before || parsed.len() == 2,
        "old content or the complete new one: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_live_calls_and_refused_reload() {
    let dir = TestDir::new("reload");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let f2 = Fleet::start(&dir, &pki, "fleet2", 16);
    let cfg = config(&dir, &pki, &[("fleet1", f1.https), ("fleet2", f2.https)], "", "");
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    let mut live = calls(&ingress, &pki, 20, "live").await;

    // Change the pool: maxconn, retries and the check interval.
    let changed = cfg
        .replace("maxconn = 16", "maxconn = 20\nretries = 1")
        .replace("interval = \"200ms\"", "interval = \"300ms\"");
    std::fs::write(&ingress.config, &changed).unwrap();
    let (code, out, err) = ingress.ctl(&["reload"]).await;
    assert_eq!(code, 0, "{out}{err}");
    all_echo(&mut live).await;
    let servers = ingress.servers().await;
    assert!(servers.iter().all(|s| s["maxconn"] == 20), "{servers:?}");
    assert_eq!(
        servers.iter().map(|s| s["active"].as_u64().unwrap()).sum::<u64>(),
        20,
        "live calls still counted"
    );

    // An invalid file: refused with the reason, the old config keeps serving.
    std::fs::write(
        &ingress.config,
        changed.replace("retries = 1", "retries = 1\nretires = 2"),
    )
    .unwrap();
    let (code, _, err) = ingress.ctl(&["reload"]).await;
    assert_eq!(code, 1, "ctl reload fails when the daemon refused the file");
    assert!(err.contains("retires"), "the reason names the key: {err}");
    let (_, status) = ingress.admin_get("/api/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["last_reload"]["ok"], false, "{status}");
    all_echo(&mut live).await;
    let mut ws = client::connect(ingress.https, "localhost", "/ws/after", pki.client_tls())
        .await
        .expect("still serving");
    echo(&mut ws, "ok").await.unwrap();

    // Refused late (the pool's CA cannot be read, which only building the
    // new snapshot finds): the new listener it asked for is not bound either.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let late = changed
        .replace(
            "http = \"127.0.0.1:0\"",
            &format!("http = [\"127.0.0.1:0\", \"{free}\"]"),
        )
        .replace(&pki.ca_path.display().to_string(), "/nonexistent/ca.pem");
    assert_ne!(late, changed, "the test edits the config");
    std::fs::write(&ingress.config, &late).unwrap();
    let (code, _, err) = ingress.ctl(&["reload"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/ca.pem"), "the reason names the file: {err}");
    assert!(
        tokio::net::TcpStream::connect(free).await.is_err(),
        "a refused reload bound {free}"
    );
    all_echo(&mut live).await;

    // A certificate directory with nothing to serve: refused before the switch.
    let empty = dir.path("no-certs");
    std::fs::create_dir_all(&empty).unwrap();
    let bare = changed.replace(&pki.certs_dir.display().to_string(), &empty.display().to_string());
    assert_ne!(bare, changed, "the test edits the config");
    std::fs::write(&ingress.config, &bare).unwrap();
    let (code, _, err) = ingress.ctl(&["reload"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("listen.certs") && err.contains("no-certs"), "{err}");
    let status: serde_json::Value = serde_json::from_str(&ingress.admin_get("/api/status").await.1).unwrap();
    assert!(status["certs"].to_string().contains("localhost"), "{status}");
    assert_eq!(status["last_reload"]["ok"], false, "{status}");
    client::connect(ingress.https, "localhost", "/ws/after-certs", pki.client_tls())
        .await
        .expect("the old certificate still serves");

    // SIGHUP takes the same path.
    std::fs::write(&ingress.config, &cfg).unwrap();
    ingress.proc.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    ingress
        .wait_servers("maxconn back to 16", Duration::from_secs(10), |s| {
            s.iter().all(|s| s["maxconn"] == 16)
        })
        .await;
    all_echo(&mut live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_the_stats_page_renders_in_chromium() {
    let dir = TestDir::new("stats");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let f2 = Fleet::start(&dir, &pki, "fleet2", 16);
    let cfg = admin_listen(
        &config(&dir, &pki, &[("fleet1", f1.https), ("fleet2", f2.https)], "", ""),
        "127.0.0.1:0",
        None,
    );
    let ingress = Ingress::start(&dir, &cfg);
    let admin: SocketAddr = ingress.proc.ready["admin"].as_str().unwrap().parse().unwrap();
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    f2.control("/occupy?n=16").await;
    ingress.wait_state(&["fleet2"], "FULL").await;
    let _call = client::connect(ingress.https, "localhost", "/ws/m", pki.client_tls())
        .await
        .unwrap();

    let (status, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "ingress_server_state",
        "ingress_server_effective_capacity",
        "ingress_server_check_latency_seconds_bucket",
        "ingress_tls_handshakes_total",
        "ingress_cert_expiry_timestamp_seconds",
        "ingress_build_info",
        "ingress_xdp_attached",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, installed by cargo xtask setup)");
    use std::io::Write as _;
    promtool.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The page as a browser renders it.
    let url = format!("http://{admin}/stats");
    let profile = dir.path("chromium-profile");
    let artefacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let shot = artefacts.join("stats.png");
    let dom = tokio::task::spawn_blocking({
        let (profile, url) = (profile.clone(), url.clone());
        move || ingress_tests::headless_chromium(&profile, &["--dump-dom".to_owned()], &url)
    })
    .await
    .unwrap();
    assert!(dom.contains("fleet1") && dom.contains("fleet2"), "{dom}");
    assert!(
        dom.contains("<td>UP</td>") && dom.contains("<td>FULL</td>"),
        "both states shown: {dom}"
    );
    tokio::task::spawn_blocking({
        let (profile, url, arg) = (profile.clone(), url.clone(), format!("--screenshot={}", shot.display()));
        move || ingress_tests::headless_chromium(&profile, &[arg], &url)
    })
    .await
    .unwrap();
    assert!(
        std::fs::metadata(&shot).map(|m| m.len() > 1000).unwrap_or(false),
        "screenshot at {}",
        shot.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_need_the_token_over_tcp_and_the_socket_admits_its_group() {
    let dir = TestDir::new("adminaccess");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    // A dual-stack listen: 127.0.0.1 arrives as ::ffff:127.0.0.1, which is loopback.
    let cfg = admin_listen(
        &config(
            &dir,
            &pki,
            &[("fleet1", f1.https)],
            "",
            "[limits]\nheader_timeout = \"1s\"\n",
        ),
        "[::]:0",
        Some("s3cret"),
    )
    .replacen("[admin]\n", "[admin]\ngroup = \"4242\"\n", 1);
    let ingress = Ingress::start(&dir, &cfg);
    let port: SocketAddr = ingress.proc.ready["admin"].as_str().unwrap().parse().unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], port.port()));
    ingress.wait_state(&["fleet1"], "UP").await;
    let state = "/api/servers/fleets/fleet1/state";
    assert_eq!(
        admin_tcp(admin, "GET", "/api/servers", None).await,
        200,
        "loopback reads freely"
    );
    assert_eq!(
        admin_tcp(admin, "POST", state, None).await,
        403,
        "any local process could otherwise take calls"
    );
    assert_ne!(ingress.server("fleet1").await["state"], "DRAIN");
    assert_eq!(admin_tcp(admin, "POST", state, Some("s3cret")).await, 200);
    assert_eq!(ingress.server("fleet1").await["state"], "DRAIN");

    // The socket belongs to the group, and a member that is neither root nor
    // the daemon's user may change through it; anyone else cannot connect.
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let sock = std::fs::metadata(dir.path("admin.sock")).unwrap();
    assert_eq!((sock.mode() & 0o777, sock.gid()), (0o660, 4242));
    let ctl = dir.path("ingress-ctl");
    std::fs::copy(ingress_tests::bin("ingress"), &ctl).unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path("admin.sock");
    let as_nobody = move |groups: &'static str, verb: &'static str| {
        let (ctl, sock) = (ctl.clone(), sock.clone());
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", groups])
                .arg(&ctl)
                .args(["ctl", "--socket"])
                .arg(&sock)
                .args([verb, "fleets/fleet1"])
                .output()
                .expect("setpriv (util-linux)");
            (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
        })
    };
    let (ok, err) = as_nobody("--clear-groups", "ready").await.unwrap();
    assert!(!ok, "outside the group the socket is closed to nobody");
    assert!(err.contains("ermission denied"), "{err}");
    assert_eq!(ingress.server("fleet1").await["state"], "DRAIN");
    let (ok, err) = as_nobody("--groups=4242", "ready").await.unwrap();
    assert!(ok, "a member of the admin group may change: {err}");

    // An admin connection that never sends a head is closed at header_timeout.
    let mut idle = tokio::net::TcpStream::connect(admin).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut idle, &mut rest),
    )
    .await;
    assert!(closed.is_ok(), "an idle admin connection is held");
    assert_eq!(ingress.server("fleet1").await["state"], "UP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_refused_from_non_loopback_peers() {
    let net = NetPair::new();
    let dir = TestDir::new("adminpeer");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start_with(&dir, &pki, "fleet1", 16, Some(&net.ingress_ns));
    let cfg = admin_listen(
        &config(&dir, &pki, &[("fleet1", f1.https)], "", ""),
        "0.0.0.0:0",
        Some("s3cret"),
    );
    let ingress = Ingress::start_with(&dir, &cfg, Some(&net.ingress_ns));
    let port: SocketAddr = ingress.proc.ready["admin"].as_str().unwrap().parse().unwrap();
    let admin = SocketAddr::from((net.ingress_ip, port.port()));
    let carrier = net.carrier_ns.clone();
    let answers = tokio::task::spawn_blocking(move || {
        netns::block_on_in(&carrier, move || async move {
            let req = |method: &str, path: &str, token: Option<&str>| {
                let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
                let body = if method == "POST" { "{\"state\":\"drain\"}" } else { "" };
                format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let mut out = Vec::new();
            for (m, p, t) in [
                ("GET", "/api/servers", None),
                ("GET", "/api/servers", Some("s3cret")),
                ("POST", "/api/servers/fleets/fleet1/state", Some("s3cret")),
                ("POST", "/api/reload", Some("s3cret")),
            ] {
                let raw = ingress_tests::http_raw(admin, req(m, p, t).as_bytes()).await;
                out.push(ingress_tests::parse_response(&raw).0);
            }
            out
        })
    })
    .await
    .unwrap();
    assert_eq!(
        answers,
        vec![401, 200, 403, 403],
        "read with the token only; never a change from off-box"
    );
    assert_ne!(ingress.server("fleet1").await["state"], "DRAIN");
    // The same change over the unix socket is accepted.
    let (code, out, err) = ingress.ctl(&["drain", "fleets/fleet1"]).await;
    assert_eq!(code, 0, "{out}{err}");

    // Remote peers holding every admin slot lock out neither the box itself
    // nor anything but the next remote connection.
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(netns::tcp_from(&net.carrier_ns, admin).await);
    }
    let mut extra = netns::tcp_from(&net.carrier_ns, admin).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut extra, &mut rest),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the 65th remote connection is closed at once: {closed:?}"
    );
    let local = SocketAddr::from(([127, 0, 0, 1], port.port()));
    let ns = net.ingress_ns.clone();
    let status = tokio::task::spawn_blocking(move || {
        netns::block_on_in(&ns, move || async move {
            ingress_tests::parse_response(
                &ingress_tests::http_raw(
                    local,
                    b"GET /api/servers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .await,
            )
            .0
        })
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "a loopback peer is served from the local reserve");
    drop(held);
}

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET` (reads
/// time out after 10 s), and its path.
fn notify_socket(dir: &TestDir) -> (std::os::unix::net::UnixDatagram, String) {
    let path = dir.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (sock, path.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_is_told_ready_reloading_the_main_pid_after_an_upgrade_and_stopping() {
    let dir = TestDir::new("notify");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let (sock, path) = notify_socket(&dir);
    let recv = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut ingress = Ingress::start_full(
        &dir,
        &config(&dir, &pki, &[("fleet1", f1.https)], "", ""),
        None,
        &[("NOTIFY_SOCKET", path.as_str())],
    );
    let first = recv();
    assert!(first.starts_with("READY=1"), "{first}");
    ingress.proc.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    let reloading = recv();
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading}");
    let ready = recv();
    assert!(ready.starts_with("READY=1") && ready.contains("reloaded"), "{ready}");
    // An upgrade: the new process names itself the main one (the unit's
    // NotifyAccess=all); the old one leaves without saying it stops.
    let (_, successor) = ingress.upgrade().await;
    let handover = recv();
    assert!(
        handover.starts_with(&format!("MAINPID={}\nREADY=1", successor.0)),
        "{handover}"
    );
    let old = ingress.proc.child.wait().unwrap();
    assert!(old.success(), "{old:?}");
    drop(successor);
    assert_eq!(recv(), "STOPPING=1", "the new process, when it stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_max_connections_under_load_takes_effect_as_calls_end() {
    use futures_util::StreamExt as _;
    let dir = TestDir::new("maxconn-lower");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let limits = |n: u32| format!("[limits]\nmax_connections = {n}\n");
    let cfg = |n| config(&dir, &pki, &[("fleet1", f1.https)], "", &limits(n));
    let ingress = Ingress::start(&dir, &cfg(10));
    ingress.wait_state(&["fleet1"], "UP").await;
    let mut live = calls(&ingress, &pki, 8, "held").await;
    std::fs::write(&ingress.config, cfg(4)).unwrap();
    let (code, out, err) = ingress.ctl(&["reload"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let try_call = |tag: &'static str| {
        let (https, tls) = (ingress.https, pki.client_tls());
        async move {
            tokio::time::timeout(
                Duration::from_secs(3),
                client::connect(https, "localhost", &format!("/ws/{tag}"), tls),
            )
            .await
            .ok()
            .and_then(Result::ok)
        }
    };
    assert!(try_call("over-1").await.is_none(), "8 open, limit 4: refused");
    // Five calls end: three open, one slot free under the new limit.
    for mut ws in live.drain(..5) {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    }
    ingress
        .wait_metric("ingress_connections_open", &[], Duration::from_secs(5), |v| v == 3.0)
        .await;
    let fourth = try_call("fourth").await;
    let fifth = try_call("over-2").await;
    assert!(fourth.is_some(), "3 open, limit 4: the fourth is let in");
    assert!(
        fifth.is_none(),
        "4 open, limit 4: the fifth is refused (the old limit of 10 no longer counts)"
    );
    live.extend(fourth);
    all_echo(&mut live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_neither_restart_health_checks_nor_probe_every_fleet_at_once() {
    let dir = TestDir::new("health-keep");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let f2 = Fleet::start(&dir, &pki, "fleet2", 16);
    // One probe every 3 s, 1 failure takes a server out only after 2 in a row.
    let cfg = config(&dir, &pki, &[("fleet1", f1.https), ("fleet2", f2.https)], "", "")
        .replace("interval = \"200ms\"", "interval = \"3s\"");
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
    let checks = |v: serde_json::Value| v["health_checks"].as_u64().unwrap();
    let before = checks(f1.state().await);
    // Six changes to fleet 2 in a row: each one commits a new snapshot.
    for state in ["drain", "ready", "maint", "ready", "drain", "ready"] {
        let (code, out, err) = ingress.ctl(&[state, "fleets/fleet2"]).await;
        assert_eq!(code, 0, "{out}{err}");
    }
    let after = checks(f1.state().await);
    assert!(
        after - before <= 1,
        "fleet 1 was probed {} times by six changes to fleet 2 (its loop restarted on each)",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_turned_down_after_it_said_ready_never_tells_systemd_anything() {
    let dir = TestDir::new("notify-abandon");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let (sock, path) = notify_socket(&dir);
    let cfg = config(&dir, &pki, &[("fleet1", f1.https)], "", "");
    let ingress = Ingress::start_full(&dir, &cfg, None, &[("NOTIFY_SOCKET", path.as_str())]);
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"READY=1"));
    ingress.wait_state(&["fleet1"], "UP").await;
    // The file on disk now has checks that fail: the new process starts,
    // says ready with no healthy server, and is turned down.
    std::fs::write(
        &ingress.config,
        cfg.replace("[pools.fleets.check]\n", "[pools.fleets.check]\npath = \"/nope\"\n"),
    )
    .unwrap();
    let (code, out, err) = ingress.ctl(&["upgrade"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("no healthy server"), "{err}");
    // Neither MAINPID=, READY=1 nor STOPPING=1 from it: the service is
    // still the old process.
    sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    match sock.recv(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
        other => panic!(
            "systemd was told {:?}",
            other.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        ),
    }
    let (_, status) = ingress.admin_get("/api/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["pid"], ingress.proc.pid(), "{status}");
}
