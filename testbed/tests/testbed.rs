//! The scaffolding itself: processes are stopped on drop and refused when
//! their ready line is not JSON; namespace pairs exist while held and are
//! gone after drop.

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
