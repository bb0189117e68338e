//! The scaffolding itself: processes are stopped on drop and refused when
//! their ready line is not JSON; namespace pairs exist while held and are
//! gone after drop; the config builder writes each table once, quoted; the
//! launcher puts its wrappers in order.

use std::{process::Command, time::Duration};

use testbed::{NetPair, Proc, netns};

fn namespaces() -> String {
    String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned()
}

#[test]
fn a_proc_gives_its_ready_line_and_is_stopped_on_drop() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", r#"echo '{"ready": 7}'; exec sleep 300"#]);
    let p = Proc::start("sleeper", &mut cmd, None, Some(Duration::from_secs(10))).unwrap();
    assert_eq!(p.ready["ready"], 7);
    let pid = p.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(p);
    // Reaped by the drop: the PID no longer names our child.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(!stat.contains("(sleep)"), "still running: {stat}");
}

#[test]
fn a_proc_without_a_json_ready_line_is_an_error_naming_it() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo not-json; exec sleep 300"]);
    let err = Proc::start("chatty", &mut cmd, None, Some(Duration::from_secs(10)))
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains("chatty") && text.contains("not-json"), "{text}");
}

#[test]
fn a_net_pair_exists_while_held_and_is_gone_after_drop() {
    let pair = NetPair::new('s').unwrap();
    let listed = namespaces();
    assert!(
        listed.contains(&pair.ingress_ns) && listed.contains(&pair.carrier_ns),
        "{listed}"
    );
    // The veth works: a connect from the carrier side reaches a listener on the ingress side.
    assert_eq!(netns::tcp_in_segs(&pair.ingress_ns), 0, "no TCP yet");
    let ip = pair.ingress_ip;
    let listener = netns::run_in(&pair.ingress_ns, move || std::net::TcpListener::bind((ip, 0)).unwrap());
    let addr = listener.local_addr().unwrap();
    netns::run_in(&pair.carrier_ns, move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect over the veth")
    });
    listener.accept().expect("accepted on the ingress side");
    assert!(netns::tcp_in_segs(&pair.ingress_ns) >= 2, "the handshake counted there");
    let names = (pair.ingress_ns.clone(), pair.carrier_ns.clone());
    drop(pair);
    let listed = namespaces();
    assert!(!listed.contains(&names.0) && !listed.contains(&names.1), "{listed}");
}

#[test]
fn a_host_pair_reaches_the_root_namespace_and_is_gone_after_drop() {
    let pair = testbed::HostPair::new('s').unwrap();
    let ip = pair.host_ip;
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    netns::run_in(&pair.carrier_ns, move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect over the veth")
    });
    listener.accept().expect("accepted in the root namespace");
    let (ns, dev) = (pair.carrier_ns.clone(), pair.host_if.clone());
    drop(pair);
    assert!(!namespaces().contains(&ns));
    let shown = Command::new("ip").args(["link", "show", "dev", &dev]).output().unwrap();
    assert!(!shown.status.success(), "{dev} is gone with its peer's namespace");
}

#[test]
fn the_config_builder_writes_each_table_once_with_quoted_values() {
    use testbed::{
        IngressConfig,
        config::{Check, Pool, Server, Xdp},
    };
    let text = IngressConfig::new("127.0.0.1:0", "/c/certs", "/c/admin.sock")
        .comment("made here")
        .http("127.0.0.1:0")
        .max_connections(7)
        .call_routes("fleets")
        .pool(
            Pool::new("fleets")
                .maxconn(16)
                .server(Server::new("fleet1", "127.0.0.1:1").sni("localhost"))
                .retry_on(&["429"])
                .raw("hash = \"bot_id\"")
                .tls_verify(false)
                .tls_ca("/c/ca \"x\".pem")
                .check(Check::default().interval("200ms").fall(2)),
        )
        .raw("[acme]\nupstream = \"127.0.0.1:8888\"")
        .xdp(Xdp::on("lo").mode("skb").ports(&[443, 80]))
        .render();
    for want in [
        "# made here\n[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\ncerts = \"/c/certs\"\ndefault_cert = \"localhost\"\n",
        "\n[limits]\nmax_connections = 7\n",
        "\n[admin]\nsocket = \"/c/admin.sock\"\n",
        "\n[[routes]]\npath = \"/ws/{bot_id}\"\npool = \"fleets\"\n",
        "\n[[routes]]\npath = \"/exotel/{bot_id}\"\npool = \"fleets\"\n",
        "\n[pools.fleets]\nmaxconn = 16\nservers = [\n  { addr = \"127.0.0.1:1\", name = \"fleet1\", sni = \"localhost\" },\n]\nretry_on = [\"429\"]\nhash = \"bot_id\"\n",
        "\n[pools.fleets.tls]\nverify = false\nca = \"/c/ca \\\"x\\\".pem\"\n",
        "\n[pools.fleets.check]\ninterval = \"200ms\"\nfall = 2\n",
        "\n[acme]\nupstream = \"127.0.0.1:8888\"\n\n[xdp]\ninterface = \"lo\"\nmode = \"skb\"\nports = [443, 80]\n",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    assert_eq!(text.matches("[xdp]").count(), 1, "{text}");
}

#[test]
fn a_launcher_puts_nsenter_before_taskset_before_the_program() {
    let words = |c: &Command| -> Vec<String> {
        std::iter::once(c.get_program())
            .chain(c.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    };
    let p = std::path::Path::new("/bin/prog");
    assert_eq!(words(&testbed::proc::launcher(p, None, None)), ["/bin/prog"]);
    assert_eq!(
        words(&testbed::proc::launcher(p, Some("ns1"), Some(1))),
        ["nsenter", "--net=/run/netns/ns1", "taskset", "-c", "1", "/bin/prog"]
    );
    assert_eq!(
        words(&testbed::proc::launcher(p, None, Some(0))),
        ["taskset", "-c", "0", "/bin/prog"]
    );
}
