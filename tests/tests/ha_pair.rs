//! An HA pair on keepalived (Debian's package) with the shipped
//! `ops/keepalived/keepalived.conf`: a LAN (a bridge in its own namespace)
//! with a carrier, two ingress hosts and a fleet host; keepalived in each
//! ingress namespace moves the virtual IP. Measured: the daemon on the
//! master SIGKILL-ed (time until a call through the VIP succeeds, the
//! backup's calls untouched), the old master coming back (the VIP stays,
//! no call cut), the master stopped gracefully (no new call fails, its
//! calls get the 1001 close), the master host dying whole.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use ingress_tests::{
    Fleet, Ingress, Pki, Proc, TestDir,
    group::{
        Call, Ended, GOING_AWAY, MEMBER_PORT, Member, first_call, has_address, member_config, observe, stream_of_calls,
        until,
    },
    netns::BpfPins,
};
use testbed::lab::Lab;

const VIP: &str = "10.80.0.100";
const CARRIER: &str = "10.80.0.10";
const FLEETS: &str = "10.80.0.20";

/// One ingress host: its namespace, daemon and keepalived.
/// Fields drop in order: the processes before their logs and pins.
struct Node {
    ingress: Option<Ingress>,
    keepalived: Option<Proc>,
    ns: String,
    ip: &'static str,
    dir: TestDir,
    _pins: BpfPins,
    config: String,
}

impl Node {
    fn start_ingress(&mut self) {
        let ingress = Ingress::start_with(&self.dir, &self.config, Some(&self.ns));
        assert_eq!(ingress.proc.ready["xdp"]["attached"], true, "{}", ingress.proc.ready);
        self.ingress = Some(ingress);
    }

    /// keepalived as shipped, its site file written for this host.
    fn start_keepalived(&mut self, peer: &str) {
        let conf = self.dir.path("keepalived/keepalived.conf");
        std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/keepalived/keepalived.conf");
        std::fs::copy(shipped, &conf).unwrap();
        let site = format!(
            "$INTERFACE=eth0\n$ROUTER_ID=51\n$SELF={}\n$PEER={peer}\n$VIP={VIP}/24\n$SECRET=t3st-s3c\n$HEALTH_URL=https://127.0.0.1:{MEMBER_PORT}/haproxy-health\n",
            self.ip
        );
        std::fs::write(conf.with_file_name("ingress-site.conf"), site).unwrap();
        let d = conf.parent().unwrap().display().to_string();
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(format!(
            "exec keepalived --dont-fork --log-console --log-detail --vrrp --no-syslog --namespace {ns} \
             --use-file {d}/keepalived.conf --pid {d}/keepalived.pid --vrrp_pid {d}/vrrp.pid >&2",
            ns = self.ns
        ));
        let log = self.dir.path("keepalived.log");
        self.keepalived = Some(Proc::start("keepalived", &mut cmd, Some(&log), None).unwrap());
    }

    fn has_vip(&self) -> bool {
        has_address(&self.ns, "eth0", VIP)
    }

    fn keepalived_log(&self) -> String {
        std::fs::read_to_string(self.dir.path("keepalived.log")).unwrap_or_default()
    }
}

/// Fields drop in order: processes, then their files, then the namespaces.
struct Pair {
    a: Node,
    b: Node,
    _fleets: Vec<Fleet>,
    carrier: String,
    pki: Pki,
    _shared: TestDir,
    _lab: Lab,
}

async fn pair() -> Pair {
    let mut lab = Lab::new('h').unwrap();
    let lan = lab.ns("lan").unwrap();
    let carrier = lab.ns("car").unwrap();
    let fl = lab.ns("fl").unwrap();
    let (na, nb) = (lab.ns("a").unwrap(), lab.ns("b").unwrap());
    lab.bridge(&lan, "br0").unwrap();
    for (ns, port, addr) in [
        (&carrier, "pc", format!("{CARRIER}/24")),
        (&fl, "pf", format!("{FLEETS}/24")),
        (&na, "pa", "10.80.0.1/24".to_owned()),
        (&nb, "pb", "10.80.0.2/24".to_owned()),
    ] {
        lab.veth((ns, "eth0", &[&addr]), (&lan, port, &[])).unwrap();
        lab.enslave(&lan, port, "br0").unwrap();
    }
    let shared = TestDir::new("ha");
    let pki = Pki::new(&shared);
    let fleets: Vec<Fleet> = ["fleet1", "fleet2"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let listen = format!("0.0.0.0:{}", 9443 + i);
            Fleet::start_on(&shared, &pki, name, 64, Some(&fl), Some(&listen))
        })
        .collect();
    let addrs: Vec<(&str, SocketAddr)> = fleets
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let name = if i == 0 { "fleet1" } else { "fleet2" };
            (name, SocketAddr::new(FLEETS.parse().unwrap(), f.https.port()))
        })
        .collect();
    let node = |ns: String, ip: &'static str, tag: &str| {
        let dir = TestDir::new(tag);
        let pins = BpfPins::new(tag);
        let carriers = [format!("{CARRIER}/32")];
        let config = member_config(
            &dir,
            &pki,
            &Member {
                fleets: &addrs,
                maxconn: 64,
                interface: "eth0",
                carriers: &[&carriers[0]],
                pins: &pins.0,
                group: "[group]\nleave = \"3s\"\n\n[limits]\nlocal_reserve = 8\n",
            },
        );
        Node {
            ns,
            ip,
            dir,
            _pins: pins,
            config,
            ingress: None,
            keepalived: None,
        }
    };
    let mut a = node(na, "10.80.0.1", "ha-a");
    let mut b = node(nb, "10.80.0.2", "ha-b");
    a.start_ingress();
    b.start_ingress();
    for n in [&a, &b] {
        n.ingress
            .as_ref()
            .unwrap()
            .wait_state(&["fleet1", "fleet2"], "UP")
            .await;
    }
    // a first: it becomes master; b, started after, stays backup.
    a.start_keepalived("10.80.0.2");
    until("the VIP on a", Duration::from_secs(10), || a.has_vip()).await;
    b.start_keepalived("10.80.0.1");
    until("b in BACKUP", Duration::from_secs(10), || {
        b.keepalived_log().contains("Entering BACKUP STATE")
    })
    .await;
    Pair {
        a,
        b,
        _fleets: fleets,
        carrier,
        pki,
        _shared: shared,
        _lab: lab,
    }
}

fn vip() -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), MEMBER_PORT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalived_pair_fails_over_keeps_the_vip_where_it_is_and_hands_it_over_gracefully() {
    let mut p = pair().await;
    let backup_direct = SocketAddr::new(p.b.ip.parse().unwrap(), MEMBER_PORT);
    let mut on_backup = Call::open_many(
        &p.carrier,
        backup_direct,
        "direct",
        4,
        &p.pki.client_tls(),
        Duration::from_secs(5),
    )
    .await;
    let on_master = Call::open_many(&p.carrier, vip(), "vip", 4, &p.pki.client_tls(), Duration::from_secs(5)).await;
    assert_eq!(
        p.a.ingress.as_ref().unwrap().status().await["calls_open"],
        4,
        "calls through the VIP on a"
    );

    // (a) The master's daemon SIGKILL-ed: keepalived's tracked check fails,
    // the backup takes the VIP.
    let killed = Instant::now();
    p.a.ingress
        .as_ref()
        .unwrap()
        .proc
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let failover = first_call(&p.carrier, vip(), &p.pki.client_tls(), killed, Duration::from_secs(10)).await;
    eprintln!("(a) master's daemon SIGKILL-ed: a new call through the VIP succeeded after {failover:?}");
    assert!(p.b.has_vip());
    assert!(
        failover <= Duration::from_secs(3),
        "failover took {failover:?} (goal ≤ 3 s)"
    );
    for (i, c) in on_backup.iter().enumerate() {
        assert_eq!(c.ended(), Ended::Open, "the backup's call {i}");
    }
    drop(on_master);

    // (c) The old master comes back: it stays backup, the VIP stays on b.
    let mut on_new_master =
        Call::open_many(&p.carrier, vip(), "b", 4, &p.pki.client_tls(), Duration::from_secs(5)).await;
    p.a.ingress = None;
    let seen = p.a.keepalived_log().matches("Entering BACKUP STATE").count();
    p.a.start_ingress();
    until("a back in BACKUP", Duration::from_secs(15), || {
        p.a.keepalived_log().matches("Entering BACKUP STATE").count() > seen
    })
    .await;
    // Three adverts later still: a preempting master would have taken it by now.
    observe(Duration::from_secs(3)).await;
    assert!(
        p.b.has_vip() && !p.a.has_vip(),
        "the VIP moved back:\n{}",
        p.a.keepalived_log()
    );
    for (i, c) in on_new_master.iter().chain(&on_backup).enumerate() {
        assert_eq!(c.ended(), Ended::Open, "call {i} on b after a came back");
    }
    eprintln!(
        "(c) old master back: VIP stayed on b, {} calls on b untouched",
        on_new_master.len() + on_backup.len()
    );

    // (b) The master (now b) stopped gracefully while calls keep coming.
    let stop = Instant::now();
    p.b.ingress
        .as_ref()
        .unwrap()
        .proc
        .signal(nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let stream = stream_of_calls(
        &p.carrier,
        vip(),
        &p.pki.client_tls(),
        Duration::from_millis(100),
        Duration::from_secs(10),
        || stop.elapsed() >= Duration::from_secs(5),
    )
    .await;
    eprintln!(
        "(b) graceful stop of the master: {} new calls through the VIP in 5 s, {} failed, {} set up as the stop began \
         and closed with 1001, the slowest set up in {:?}",
        stream.tried,
        stream.failed.len(),
        stream.going_away.len(),
        stream.slowest
    );
    stream.assert_no_new_call_failed();
    assert!(p.a.has_vip(), "the VIP moved to a");
    for (i, c) in on_new_master.iter_mut().chain(on_backup.iter_mut()).enumerate() {
        assert_eq!(
            c.wait_end(Duration::from_secs(5)).await,
            Ended::Closed(GOING_AWAY),
            "call {i} on b"
        );
    }

    // (a') The master host dies whole (keepalived too): the backup waits
    // three adverts and its skew.
    p.b.ingress = None;
    let seen = p.b.keepalived_log().matches("Entering BACKUP STATE").count();
    p.b.start_ingress();
    until("b back in BACKUP", Duration::from_secs(15), || {
        p.b.keepalived_log().matches("Entering BACKUP STATE").count() > seen
    })
    .await;
    // Its VRRP child first: killed after its parent, it would be told to stop
    // and hand the address over at once.
    let vrrp: i32 = std::fs::read_to_string(p.a.dir.path("keepalived/vrrp.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let died = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(vrrp), nix::sys::signal::Signal::SIGKILL).unwrap();
    p.a.keepalived
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    p.a.ingress
        .as_ref()
        .unwrap()
        .proc
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let host_failover = first_call(&p.carrier, vip(), &p.pki.client_tls(), died, Duration::from_secs(10)).await;
    eprintln!("(a') master host dead (keepalived too): a new call through the VIP succeeded after {host_failover:?}");
    assert!(
        host_failover <= Duration::from_secs(5),
        "3 adverts + skew is about 3.6 s: {host_failover:?}"
    );
}
