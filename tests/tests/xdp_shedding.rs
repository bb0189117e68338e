//! XDP shedding for real: a carrier namespace and an ingress namespace joined
//! by a veth pair, the daemon attaching its program to the ingress side,
//! fleets filled through their control port.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use ingress_tests::{
    Fleet, Ingress, Pki, TestDir, config,
    netns::{BpfPins, Connect, NetPair, connect_from},
};
use serde_json::Value;

struct Setup {
    net: NetPair,
    pins: BpfPins,
    _dir: TestDir,
    pki: Pki,
    fleet: Fleet,
    ingress: Ingress,
    https: SocketAddr,
    http: SocketAddr,
}

async fn setup() -> Setup {
    let net = NetPair::new();
    let dir = TestDir::new("shed");
    let pki = Pki::new(&dir);
    let pins = BpfPins::new("shed");
    let fleet = Fleet::start_with(&dir, &pki, "fleet1", 4, Some(&net.ingress_ns));
    let xdp = format!(
        "[xdp]\ninterface = \"{}\"\naction = \"drop\"\ncarriers = [\"{}/32\"]\nlease = \"2s\"\npin_path = \"{}\"\n",
        net.ingress_if,
        net.carrier_ip,
        pins.0.display()
    );
    let cfg = config(&dir, &pki, &[("fleet1", fleet.https)], "", &xdp)
        .replace("https = \"127.0.0.1:0\"", "https = \"0.0.0.0:0\"")
        .replace("http = \"127.0.0.1:0\"", "http = \"0.0.0.0:0\"");
    let ingress = Ingress::start_with(&dir, &cfg, Some(&net.ingress_ns));
    assert_eq!(ingress.proc.ready["xdp"]["attached"], true, "{}", ingress.proc.ready);
    ingress.wait_state(&["fleet1"], "UP").await;
    let https = SocketAddr::from((net.ingress_ip, ingress.https.port()));
    let http = SocketAddr::from((net.ingress_ip, ingress.http.expect("http").port()));
    Setup {
        net,
        pins,
        _dir: dir,
        pki,
        fleet,
        ingress,
        https,
        http,
    }
}

async fn from(net: &NetPair, src: std::net::Ipv4Addr, dst: SocketAddr, timeout: Duration) -> Connect {
    let ns = net.carrier_ns.clone();
    tokio::task::spawn_blocking(move || connect_from(&ns, src, dst, timeout))
        .await
        .expect("connect task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carriers_are_shed_while_every_fleet_is_full_and_fail_open_on_sigkill() {
    let mut s = setup().await;
    let net = &s.net;
    assert_eq!(
        from(net, net.carrier_ip, s.https, Duration::from_secs(2)).await,
        Connect::Connected,
        "room: a carrier connects"
    );

    let filled = Instant::now();
    s.fleet.control("/occupy?n=4").await;
    s.ingress.wait_state(&["fleet1"], "FULL").await;
    eprintln!("FULL after {:?}", filled.elapsed());
    let took = s.ingress.wait_shedding(true).await;
    eprintln!(
        "fleet full → XDP shedding after {:?} (check interval 200ms)",
        filled.elapsed()
    );
    assert!(
        took < Duration::from_secs(1),
        "shedding within about one check interval, took {took:?}"
    );
    assert_eq!(
        from(net, net.carrier_ip, s.https, Duration::from_secs(1)).await,
        Connect::TimedOut,
        "the carrier's SYN is dropped"
    );
    assert!(s.pins.dump()["counters"]["shed_drop"].as_u64().unwrap() >= 1);
    assert_eq!(
        from(net, net.other_ip, s.https, Duration::from_secs(2)).await,
        Connect::Connected,
        "a non-carrier source still connects"
    );
    assert_eq!(
        from(net, net.carrier_ip, s.http, Duration::from_secs(2)).await,
        Connect::Connected,
        "a port not listed still connects"
    );
    let d = s.pins.dump();
    assert!(
        d["counters"]["not_carrier"].as_u64().unwrap() >= 1 && d["counters"]["not_port"].as_u64().unwrap() >= 1,
        "{d}"
    );

    // bpftool reads FLEETS with field names, and the numbers are the admin view's.
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(s.pins.0.join("FLEETS"))
        .output()
        .expect("bpftool");
    let fleets: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool JSON: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let entry = &fleets[0]["formatted"]["value"];
    let admin = s.ingress.server("fleet1").await;
    assert_eq!(entry["state"], 1, "FULL: {fleets}");
    assert_eq!(entry["reported"], admin["reported"], "{fleets} vs {admin}");
    assert_eq!(entry["effective"], admin["effective"]);
    assert_eq!(entry["maxconn"], admin["maxconn"]);
    let control = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(s.pins.0.join("CONTROL"))
        .output()
        .expect("bpftool");
    let text = String::from_utf8_lossy(&control.stdout);
    assert!(
        text.contains("\"shed\": 1") || text.contains("shed = 1") || text.contains("\"shed\":1"),
        "{text}"
    );

    // One freed slot: carriers connect again once capacity held for the hold.
    s.fleet.control("/free?n=1").await;
    s.ingress.wait_state(&["fleet1"], "UP").await;
    let freed = Instant::now();
    loop {
        if from(net, net.carrier_ip, s.https, Duration::from_millis(300)).await == Connect::Connected {
            break;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(5),
            "carriers never got through after capacity came back"
        );
    }
    eprintln!("capacity back → carrier connects after {:?} (hold 1s)", freed.elapsed());

    // Full again, then the daemon dies hard: shedding must stop by itself.
    s.fleet.control("/occupy?n=1").await;
    s.ingress.wait_shedding(true).await;
    assert_eq!(
        from(net, net.carrier_ip, s.https, Duration::from_millis(500)).await,
        Connect::TimedOut
    );
    s.ingress.proc.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = s.ingress.proc.child.wait();
    let killed = Instant::now();
    loop {
        // With nobody listening, a SYN that is not dropped gets the kernel's RST.
        if from(net, net.carrier_ip, s.https, Duration::from_millis(300)).await == Connect::Refused {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "SYNs still dropped {:?} after SIGKILL (lease 2s)",
            killed.elapsed()
        );
    }
    eprintln!("SIGKILL → carrier SYNs no longer dropped after {:?}", killed.elapsed());
}

/// The lowest descriptor number `pid` has free.
fn lowest_free_fd(pid: u32) -> u64 {
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's fds")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !open.contains(n)).expect("a free number")
}

/// Sets the daemon's soft descriptor limit (`prlimit`, util-linux).
fn set_nofile(pid: u32, soft: u64) {
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .output()
        .expect("prlimit (util-linux)");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_ingress_answers_503_itself_and_neither_marks_fleets_down_nor_sheds() {
    let s = setup().await;
    let pid = s.ingress.proc.child.id();
    let log = s._dir.path("ingress.log");
    let soft_before = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .expect("soft nofile");

    // Room for one more descriptor: an accepted carrier, and no fleet connection for it.
    set_nofile(pid, lowest_free_fd(pid) + 1);
    let mut held = Vec::new();
    let mut refusal = None;
    for i in 0..4 {
        let tcp = ingress_tests::netns::tcp_from(&s.net.carrier_ns, s.https).await;
        let (head, stream) = ingress_tests::upgrade_on(tcp, s.pki.client_tls(), &format!("/ws/fd-{i}"), None).await;
        if head.starts_with("HTTP/1.1 101") {
            held.push(stream); // a probe's descriptor was free when counted
            continue;
        }
        refusal = Some(head);
        break;
    }
    let refusal = refusal.expect("a call refused at the descriptor limit");
    assert!(
        refusal.starts_with("HTTP/1.1 503") && refusal.contains("ingress out of resources"),
        "the ingress says the fault is its own: {refusal}"
    );

    // No room at all (a limit below every open descriptor): every health
    // probe fails locally, for longer than `fall` probes.
    set_nofile(pid, 0);
    let started = Instant::now();
    while std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("health probe not sent")
        .count()
        < 4
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no local probe failures logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        from(&s.net, s.net.carrier_ip, s.https, Duration::from_secs(2)).await,
        Connect::Connected,
        "the XDP program still passes carrier SYNs"
    );

    set_nofile(pid, soft_before);
    assert_eq!(s.ingress.server("fleet1").await["state"], "UP");
    assert_eq!(s.ingress.status().await["xdp"]["shedding"], false);
    let m = s.ingress.metrics().await;
    assert!(
        ingress_tests::metric(&m, "ingress_local_errors_total", &[("reason", "call")]) >= Some(1.0),
        "{m}"
    );
    assert!(
        ingress_tests::metric(&m, "ingress_local_errors_total", &[("reason", "health")]) >= Some(4.0),
        "{m}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("to=DOWN"), "a fleet was marked DOWN:\n{text}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carriers_are_shed_throughout_an_upgrade_and_fail_open_if_the_new_process_dies() {
    let mut s = setup().await;
    s.fleet.control("/occupy?n=4").await;
    s.ingress.wait_shedding(true).await;
    let before = s.pins.dump()["counters"]["shed_drop"].as_u64().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The control entry read every millisecond: it must say "shed" with a
    // lease in force at every read (a fresh process clears it until its
    // first checks; one that took over must not).
    let watcher = {
        let (pins, stop) = (s.pins.0.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut reads, mut gaps, mut writes) = (0u64, Vec::new(), std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let c = ingress_user::bpf::dump::read_control(&pins).expect("read CONTROL");
                reads += 1;
                writes.insert(c.generation);
                if c.shed == 0 || c.lease_deadline_ns <= ingress_user::model::monotonic_ns() {
                    gaps.push(c);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (reads, gaps, writes.len())
        })
    };
    // Four carriers dialing without pause: any SYN that gets through is a gap.
    let mut dialers = Vec::new();
    for _ in 0..4 {
        let (ns, src, dst, stop) = (s.net.carrier_ns.clone(), s.net.carrier_ip, s.https, stop.clone());
        dialers.push(std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seen.push(connect_from(&ns, src, dst, Duration::from_millis(100)));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, successor) = s.ingress.upgrade().await;
    // The old process has no call to keep: it leaves at once.
    let exited = tokio::task::spawn_blocking(move || {
        let exit = s.ingress.proc.child.wait();
        (s.ingress, exit)
    });
    let (ingress, exit) = exited.await.unwrap();
    assert!(exit.unwrap().success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut attempts = 0;
    for d in dialers {
        let seen = d.join().unwrap();
        attempts += seen.len();
        assert!(
            seen.iter().all(|c| *c == Connect::TimedOut),
            "a carrier got through during the upgrade: {seen:?}"
        );
    }
    let (reads, gaps, writes) = watcher.join().unwrap();
    assert!(
        gaps.is_empty(),
        "{} of {reads} reads of CONTROL did not shed: {:?}",
        gaps.len(),
        gaps.first()
    );
    eprintln!(
        "{attempts} carrier SYNs during the upgrade, every one dropped; CONTROL read {reads} times ({writes} generations), shedding at every read"
    );
    let st = ingress.status().await;
    assert_eq!(st["pid"], successor.0, "{st}");
    assert_eq!(st["xdp"]["attached"], true, "{st}");
    assert_eq!(st["xdp"]["shedding"], true, "{st}");
    let after = s.pins.dump()["counters"]["shed_drop"].as_u64().unwrap();
    assert!(after >= before + attempts as u64, "shed_drop {before} → {after}");
    assert!(!s.pins.0.join("link").exists(), "the link's pin is gone once taken");
    // The new process dies hard: its link goes with it, carriers fail open.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(successor.0),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(successor.wait_gone(Duration::from_secs(5)));
    let killed = Instant::now();
    loop {
        if from(&s.net, s.net.carrier_ip, s.https, Duration::from_millis(300)).await == Connect::Refused {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "SYNs still dropped {:?} after the new process died",
            killed.elapsed()
        );
    }
    eprintln!(
        "new process SIGKILLed → carrier SYNs no longer dropped after {:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upgrade_gives_the_old_process_its_xdp_program_and_maps_back() {
    let s = setup().await;
    s.fleet.control("/occupy?n=4").await;
    s.ingress.wait_shedding(true).await;
    // The file on disk now names another carrier and a check path that
    // fails: the new process takes the link and writes its carriers, then
    // sees no healthy server where the old one does, and is abandoned.
    let cfg = std::fs::read_to_string(&s.ingress.config).unwrap();
    let broken = cfg
        .replace(
            &format!("carriers = [\"{}/32\"]", s.net.carrier_ip),
            &format!("carriers = [\"{}/32\"]", s.net.other_ip),
        )
        .replace("[pools.fleets.check]\n", "[pools.fleets.check]\npath = \"/nope\"\n");
    assert_ne!(broken, cfg);
    std::fs::write(&s.ingress.config, broken).unwrap();
    let (code, out, err) = s.ingress.ctl(&["upgrade"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("no healthy server"), "{err}");
    // The old carriers are shed, the other source is not: our maps again.
    assert_eq!(
        from(&s.net, s.net.carrier_ip, s.https, Duration::from_millis(500)).await,
        Connect::TimedOut,
        "the carrier is shed as before"
    );
    assert_eq!(
        from(&s.net, s.net.other_ip, s.https, Duration::from_secs(2)).await,
        Connect::Connected,
        "the other source is not a carrier here"
    );
    let st = s.ingress.status().await;
    assert_eq!(st["pid"], s.ingress.proc.pid(), "{st}");
    assert_eq!(st["xdp"]["shedding"], true, "{st}");
    assert!(!s.pins.0.join("link").exists());
}
