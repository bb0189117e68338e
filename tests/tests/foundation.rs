//! Foundation: a WSS call through the ingress echoes, and the XDP program is
//! loaded and attached by the daemon inside a network namespace with its
//! counters readable from the pinned maps.

use ingress_tests::{Fleet, Ingress, Pki, TestDir, bin, client, config, netns};

async fn echo_once(ws: &mut client::Wss, text: &str) {
    ingress_tests::echo(ws, text).await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_call_through_the_ingress_echoes() {
    let dir = TestDir::new("echo");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 16);
    let f2 = Fleet::start(&dir, &pki, "fleet2", 16);
    let ingress = Ingress::start(
        &dir,
        &config(&dir, &pki, &[("fleet1", f1.https), ("fleet2", f2.https)], "", ""),
    );
    ingress.wait_state(&["fleet1", "fleet2"], "UP").await;

    let mut ws = client::connect(ingress.https, "localhost", "/ws/bot-1", pki.client_tls())
        .await
        .expect("call");
    echo_once(&mut ws, "hello").await;
    echo_once(&mut ws, "again").await;
    let busy: u64 = [f1.state().await, f2.state().await]
        .iter()
        .map(|s| s["calls"].as_u64().unwrap())
        .sum();
    assert_eq!(busy, 1, "the call holds one worker on one fleet");
    ws.close(None).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_program_attaches_in_a_namespace_and_counts_packets() {
    let net = netns::NetPair::new();
    let dir = TestDir::new("xdp");
    let pki = Pki::new(&dir);
    let pins = netns::BpfPins::new("attach");
    let fleet = Fleet::start_with(&dir, &pki, "fleet1", 16, Some(&net.ingress_ns));
    let xdp = format!(
        "[xdp]\ninterface = \"{}\"\nmode = \"auto\"\npin_path = \"{}\"\n",
        net.ingress_if,
        pins.0.display()
    );
    let cfg = config(&dir, &pki, &[("fleet1", fleet.https)], "", &xdp)
        .replace("https = \"127.0.0.1:0\"", "https = \"0.0.0.0:0\"");
    let mut ingress = Ingress::start_with(&dir, &cfg, Some(&net.ingress_ns));
    assert_eq!(
        ingress.proc.ready["xdp"]["attached"], true,
        "ready line: {}",
        ingress.proc.ready
    );
    ingress.wait_state(&["fleet1"], "UP").await;

    let link = std::process::Command::new("ip")
        .args(["-n", &net.ingress_ns, "link", "show", "dev", &net.ingress_if])
        .output()
        .expect("ip link");
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "no XDP program on the interface: {}",
        String::from_utf8_lossy(&link.stdout)
    );

    // A real call from the carrier namespace crosses the XDP program.
    let target = std::net::SocketAddr::from((net.ingress_ip, ingress.https.port()));
    let tls = pki.client_tls();
    let carrier = net.carrier_ns.clone();
    tokio::task::spawn_blocking(move || {
        netns::block_on_in(&carrier, move || async move {
            let mut ws = client::connect(target, "localhost", "/exotel/bot-9", tls)
                .await
                .expect("call from the carrier namespace");
            echo_once(&mut ws, "through xdp").await;
            ws.close(None).await.expect("close");
        })
    })
    .await
    .expect("carrier task");

    let dump = std::process::Command::new(bin("ingress"))
        .args(["bpf", "dump", "--json", "--pin-path"])
        .arg(&pins.0)
        .output()
        .expect("ingress bpf dump");
    assert!(
        dump.status.success(),
        "bpf dump: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&dump.stdout).expect("dump JSON");
    let seen = v["counters"]["seen"].as_u64().unwrap();
    let passed = v["counters"]["passed"].as_u64().unwrap();
    assert!(
        seen >= 5 && passed >= 5,
        "a TLS + WebSocket call is several packets: {v}"
    );
    assert_eq!(v["ports"], serde_json::json!([ingress.https.port()]));

    // bpftool reads the same pinned map with field names (BTF).
    let bpftool = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(pins.0.join("CONTROL"))
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    let text = String::from_utf8_lossy(&bpftool.stdout);
    assert!(
        text.contains("lease_deadline_ns") && text.contains("total_capacity"),
        "bpftool output: {text}"
    );

    // A clean stop detaches the program.
    let status = ingress.proc.stop().expect("exit status");
    assert!(status.success(), "ingress exit: {status}");
    let link = std::process::Command::new("ip")
        .args(["-n", &net.ingress_ns, "link", "show", "dev", &net.ingress_if])
        .output()
        .expect("ip link");
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "XDP still attached after stop"
    );
}
