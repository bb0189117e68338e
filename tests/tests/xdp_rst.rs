//! RST mode on a veth, as a container host has it: the carrier's end of the
//! pair in a carrier namespace, the ingress end in the root namespace or in
//! a namespace of its own, no XDP program on the carrier's end. In every
//! mode the carrier's connect is refused by the program's RST within 100 ms,
//! or the daemon refuses the mode and says why.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use ingress_tests::{
    Fleet, Ingress, Pki, TestDir, bin, config,
    netns::{BpfPins, Connect, NetPair, connect_timed},
};
use serde_json::Value;

/// The carrier's veth, seen from the ingress end.
struct Veth {
    /// The ingress end's namespace; `None`: the root namespace.
    ingress_ns: Option<String>,
    ingress_if: String,
    ingress_ip: Ipv4Addr,
    carrier_ns: String,
    carrier_ip: Ipv4Addr,
    /// A second address on the carrier's end, not a carrier.
    other_ip: Ipv4Addr,
}

/// The program as the kernel shows it on the interface (`ip -d link`): `xdp` or `xdpgeneric`, or none.
fn attached_as(veth: &Veth) -> Option<String> {
    let mut cmd = std::process::Command::new("ip");
    if let Some(ns) = &veth.ingress_ns {
        cmd.args(["-n", ns]);
    }
    let out = cmd
        .args(["-j", "-d", "link", "show", "dev", &veth.ingress_if])
        .output()
        .expect("ip link");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j link");
    v[0]["xdp"]["mode"].as_u64().map(|m| match m {
        1 => "xdp".to_owned(),
        2 => "xdpgeneric".to_owned(),
        other => format!("mode {other}"),
    })
}

async fn every_mode_refuses_the_carrier_or_says_why(veth: Veth) {
    let dir = TestDir::new("rst");
    let pki = Pki::new(&dir);
    let pins = BpfPins::new("rst");
    let fleet = Fleet::start_with(&dir, &pki, "fleet1", 2, veth.ingress_ns.as_deref());
    fleet.control("/occupy?n=2").await;
    for mode in ["auto", "skb", "native"] {
        let xdp = format!(
            "[xdp]\ninterface = \"{}\"\nmode = \"{mode}\"\naction = \"rst\"\ncarriers = [\"{}/32\"]\nlease = \"2s\"\npin_path = \"{}\"\n",
            veth.ingress_if,
            veth.carrier_ip,
            pins.0.display()
        );
        let listen = format!("https = \"{}:0\"", veth.ingress_ip);
        let cfg = config(&dir, &pki, &[("fleet1", fleet.https)], "", &xdp).replace("https = \"127.0.0.1:0\"", &listen);
        let ingress = Ingress::start_with(&dir, &cfg, veth.ingress_ns.as_deref());
        let ready = &ingress.proc.ready["xdp"];
        if mode == "native" {
            // Native XDP_TX replies would never reach the carrier: refused, named.
            assert_eq!(ready["attached"], false, "{ready}");
            let error = ready["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(&veth.ingress_if) && error.contains("veth") && error.contains("XDP_TX"),
                "the refusal names the interface and the reason: {error}"
            );
            assert_eq!(attached_as(&veth), None, "nothing left attached");
            // `ingress check` on the host warns before a start does.
            let exe = bin("ingress");
            let mut check = match &veth.ingress_ns {
                Some(ns) => testbed::netns::nsenter(ns, &exe.to_string_lossy()),
                None => std::process::Command::new(&exe),
            };
            let out = check
                .arg("check")
                .arg("--config")
                .arg(dir.path("ingress.toml"))
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
            assert!(
                stdout.contains("WARNING: XDP will not attach") && stdout.contains(&veth.ingress_if),
                "{stdout}"
            );
            continue;
        }
        assert_eq!(ready["attached"], true, "{ready}");
        ingress.wait_state(&["fleet1"], "FULL").await;
        ingress.wait_shedding(true).await;
        let dst = SocketAddr::from((veth.ingress_ip, ingress.https.port()));
        let shed_before = pins.dump()["counters"]["shed_rst"].as_u64().unwrap();
        let connect = |src| {
            let ns = veth.carrier_ns.clone();
            tokio::task::spawn_blocking(move || connect_timed(&ns, src, dst, Duration::from_secs(2)))
        };
        let (got, took) = connect(veth.carrier_ip).await.expect("connect task");
        assert_eq!(got, Connect::Refused, "mode {mode}: the carrier gets the RST");
        assert!(took < Duration::from_millis(100), "mode {mode}: refused after {took:?}");
        eprintln!("mode {mode} on a veth: carrier refused in {took:?}");
        let shed = pins.dump()["counters"]["shed_rst"].as_u64().unwrap();
        assert!(shed > shed_before, "counted as shed_rst");
        let (other, _) = connect(veth.other_ip).await.expect("connect task");
        assert_eq!(
            other,
            Connect::Connected,
            "mode {mode}: a source that is no carrier passes"
        );
        // Said at start: the mode used, and why it is not native.
        assert_eq!(ready["mode"], "skb", "{mode}: {ready}");
        assert_eq!(attached_as(&veth).as_deref(), Some("xdpgeneric"));
        if mode == "auto" {
            let reason = ready["mode_reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains("veth") && reason.contains("SKB"),
                "said at start: {reason}"
            );
            assert_eq!(ingress.status().await["xdp"]["mode_reason"], ready["mode_reason"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_reaches_a_carrier_whose_veth_ends_in_the_root_namespace() {
    let pair = testbed::HostPair::new('r').unwrap_or_else(|e| panic!("{e:#}"));
    every_mode_refuses_the_carrier_or_says_why(Veth {
        ingress_ns: None,
        ingress_if: pair.host_if.clone(),
        ingress_ip: pair.host_ip,
        carrier_ns: pair.carrier_ns.clone(),
        carrier_ip: pair.carrier_ip,
        other_ip: pair.other_ip,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_reaches_a_carrier_whose_veth_ends_in_the_ingress_namespace() {
    let pair = NetPair::new();
    every_mode_refuses_the_carrier_or_says_why(Veth {
        ingress_ns: Some(pair.ingress_ns.clone()),
        ingress_if: pair.ingress_if.clone(),
        ingress_ip: pair.ingress_ip,
        carrier_ns: pair.carrier_ns.clone(),
        carrier_ip: pair.carrier_ip,
        other_ip: pair.other_ip,
    })
    .await;
}
