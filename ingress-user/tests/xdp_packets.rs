//! The XDP program's packet logic on crafted packets, through the kernel's
//! `BPF_PROG_TEST_RUN` (needs root; no interface involved).

use ingress_common::{ControlEntry, action};
use ingress_user::{bpf::XdpHandle, model::XdpAction};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const PORT: u16 = 443;

const SRC4: [u8; 4] = [192, 0, 2, 10];
const DST4: [u8; 4] = [192, 0, 2, 1];
const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn eth(proto: u16, vlan: bool) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    if vlan {
        p.extend_from_slice(&0x8100u16.to_be_bytes());
        p.extend_from_slice(&[0x00, 0x64]);
    }
    p.extend_from_slice(&proto.to_be_bytes());
    p
}

/// A TCP header with an MSS option (as real SYNs carry).
fn tcp(dst_port: u16, flags: u8, seq: u32) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&40000u16.to_be_bytes());
    t.extend_from_slice(&dst_port.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.push(6 << 4); // 24 bytes: 20 + MSS option
    t.push(flags);
    t.extend_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(&[2, 4, 0x05, 0xb4]);
    t
}

fn ipv4(src: [u8; 4], proto: u8, options: &[u8], frag: u16, payload: &[u8]) -> Vec<u8> {
    let ihl = (20 + options.len()) / 4;
    let mut ip = vec![0x40 | ihl as u8, 0];
    ip.extend_from_slice(&((ihl * 4 + payload.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1]);
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&DST4);
    ip.extend_from_slice(options);
    ip.extend_from_slice(payload);
    ip
}

fn ipv6(src: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[next, 64]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&DST6);
    ip.extend_from_slice(payload);
    ip
}

fn v4_syn(flags: u8) -> Vec<u8> {
    [eth(0x0800, false), ipv4(SRC4, 6, &[], 0x4000, &tcp(PORT, flags, 1000))].concat()
}

fn v6_syn() -> Vec<u8> {
    [eth(0x86dd, false), ipv6(SRC6, 6, &tcp(PORT, SYN, 2000))].concat()
}

fn testbed(action: XdpAction, carriers: &[&str]) -> XdpHandle {
    assert!(
        nix::unistd::geteuid().is_root(),
        "BPF_PROG_TEST_RUN needs root; run as root, as CI does"
    );
    let carriers: Vec<String> = carriers.iter().map(|s| (*s).to_owned()).collect();
    let mut h = XdpHandle::load_detached(action, &[PORT], &carriers).expect("load the XDP program");
    shed(&mut h, true, lease_from_now(10_000_000_000), action);
    h
}

fn lease_from_now(ns: i64) -> u64 {
    (ingress_user::model::monotonic_ns() as i64 + ns).max(0) as u64
}

fn shed(h: &mut XdpHandle, on: bool, lease_deadline_ns: u64, a: XdpAction) {
    h.set_control(ControlEntry {
        total_capacity: 0,
        shed: u32::from(on),
        action: if a == XdpAction::Rst { action::RST } else { action::DROP },
        _pad: 0,
        lease_deadline_ns,
        generation: 1,
    })
    .expect("write CONTROL");
}

fn verdict(h: &mut XdpHandle, packet: &[u8]) -> u32 {
    h.test_run(packet).expect("test run").0
}

fn counter(h: &XdpHandle, name: &str) -> u64 {
    h.counters()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .unwrap_or(0)
}

#[test]
fn shedding_drops_only_new_carrier_connections_to_listener_ports() {
    let mut h = testbed(XdpAction::Drop, &[]);
    assert_eq!(verdict(&mut h, &v4_syn(SYN)), XDP_DROP, "IPv4 SYN");
    assert_eq!(verdict(&mut h, &v6_syn()), XDP_DROP, "IPv6 SYN");
    let vlan = [eth(0x0800, true), ipv4(SRC4, 6, &[], 0, &tcp(PORT, SYN, 1))].concat();
    assert_eq!(verdict(&mut h, &vlan), XDP_DROP, "802.1Q-tagged SYN");
    let options = [eth(0x0800, false), ipv4(SRC4, 6, &[1, 1, 1, 0], 0, &tcp(PORT, SYN, 1))].concat();
    assert_eq!(verdict(&mut h, &options), XDP_DROP, "IPv4 with options");
    assert_eq!(counter(&h, "shed_drop"), 4);

    assert_eq!(verdict(&mut h, &v4_syn(SYN | ACK)), XDP_PASS, "SYN-ACK");
    assert_eq!(verdict(&mut h, &v4_syn(ACK)), XDP_PASS, "ACK");
    let udp = [
        eth(0x0800, false),
        ipv4(SRC4, 17, &[], 0, &[0x9c, 0x40, 0x01, 0xbb, 0, 8, 0, 0]),
    ]
    .concat();
    assert_eq!(verdict(&mut h, &udp), XDP_PASS, "UDP to the same port");
    let first_frag = [eth(0x0800, false), ipv4(SRC4, 6, &[], 0x2000, &tcp(PORT, SYN, 1))].concat();
    assert_eq!(verdict(&mut h, &first_frag), XDP_PASS, "first fragment");
    let later_frag = [eth(0x0800, false), ipv4(SRC4, 6, &[], 0x0010, &[0u8; 24])].concat();
    assert_eq!(verdict(&mut h, &later_frag), XDP_PASS, "non-first fragment");
    let other_port = [eth(0x0800, false), ipv4(SRC4, 6, &[], 0, &tcp(22, SYN, 1))].concat();
    assert_eq!(
        verdict(&mut h, &other_port),
        XDP_PASS,
        "SYN to a port that is not a listener"
    );
    assert_eq!(counter(&h, "not_port"), 1);
    let arp = [eth(0x0806, false), vec![0u8; 28]].concat();
    assert_eq!(verdict(&mut h, &arp), XDP_PASS, "ARP");
    assert_eq!(counter(&h, "shed_drop"), 4, "nothing else was dropped");
}

#[test]
fn truncated_headers_pass_and_are_counted() {
    let mut h = testbed(XdpAction::Drop, &[]);
    let full = v4_syn(SYN);
    // BPF_PROG_TEST_RUN needs at least an Ethernet header.
    for cut in [14, 20, 33, 34 + 10, 34 + 19] {
        assert_eq!(verdict(&mut h, &full[..cut]), XDP_PASS, "cut at {cut}");
    }
    let v6 = v6_syn();
    assert_eq!(verdict(&mut h, &v6[..14 + 30]), XDP_PASS, "IPv6 header cut");
    assert_eq!(verdict(&mut h, &v6[..14 + 40 + 12]), XDP_PASS, "TCP header cut");
    assert!(counter(&h, "malformed") >= 6, "{:?}", h.counters());
    assert_eq!(counter(&h, "shed_drop"), 0);
}

#[test]
fn only_carrier_sources_are_shed() {
    let mut h = testbed(XdpAction::Drop, &["192.0.2.0/28", "2001:db8::/64"]);
    assert_eq!(verdict(&mut h, &v4_syn(SYN)), XDP_DROP, "192.0.2.10 is in 192.0.2.0/28");
    let outsider = [
        eth(0x0800, false),
        ipv4([198, 51, 100, 7], 6, &[], 0, &tcp(PORT, SYN, 1)),
    ]
    .concat();
    assert_eq!(verdict(&mut h, &outsider), XDP_PASS);
    assert_eq!(verdict(&mut h, &v6_syn()), XDP_DROP);
    let mut src6 = SRC6;
    src6[4] = 0xff;
    let outsider6 = [eth(0x86dd, false), ipv6(src6, 6, &tcp(PORT, SYN, 1))].concat();
    assert_eq!(verdict(&mut h, &outsider6), XDP_PASS);
    assert_eq!(counter(&h, "not_carrier"), 2);
}

#[test]
fn shedding_holds_only_while_the_lease_holds() {
    let mut h = testbed(XdpAction::Drop, &[]);
    assert_eq!(verdict(&mut h, &v4_syn(SYN)), XDP_DROP);
    shed(&mut h, true, lease_from_now(-1_000_000), XdpAction::Drop);
    assert_eq!(verdict(&mut h, &v4_syn(SYN)), XDP_PASS, "an expired lease fails open");
    shed(&mut h, false, lease_from_now(10_000_000_000), XdpAction::Drop);
    assert_eq!(verdict(&mut h, &v4_syn(SYN)), XDP_PASS, "shed flag off");
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn rst_mode_answers_with_a_valid_rst() {
    let mut h = testbed(XdpAction::Rst, &[]);
    let (v, out) = h.test_run(&v4_syn(SYN)).unwrap();
    assert_eq!(v, XDP_TX);
    assert_eq!(out.len(), 14 + 20 + 20, "options trimmed: {out:?}");
    assert_eq!(&out[0..6], &[0x02, 0, 0, 0, 0, 0x02], "MACs swapped");
    let ip = &out[14..34];
    assert_eq!(&ip[12..16], &DST4, "addresses swapped");
    assert_eq!(&ip[16..20], &SRC4);
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 40);
    assert_eq!(checksum(ip), 0, "IPv4 header checksum");
    let th = &out[34..54];
    assert_eq!(u16::from_be_bytes([th[0], th[1]]), PORT, "ports swapped");
    assert_eq!(u16::from_be_bytes([th[2], th[3]]), 40000);
    assert_eq!(
        u32::from_be_bytes([th[8], th[9], th[10], th[11]]),
        1001,
        "ack = seq + 1"
    );
    assert_eq!(th[13], 0x14, "RST|ACK");
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(th);
    assert_eq!(checksum(&pseudo), 0, "TCP checksum");

    let (v, out) = h.test_run(&v6_syn()).unwrap();
    assert_eq!(v, XDP_TX);
    assert_eq!(out.len(), 14 + 40 + 20);
    let ip = &out[14..54];
    assert_eq!(&ip[8..24], &DST6);
    assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 20);
    let th = &out[54..74];
    assert_eq!(u32::from_be_bytes([th[8], th[9], th[10], th[11]]), 2001);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[8..40]);
    pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
    pseudo.extend_from_slice(th);
    assert_eq!(checksum(&pseudo), 0, "TCP checksum over the IPv6 pseudo-header");

    let options = [eth(0x0800, false), ipv4(SRC4, 6, &[1, 1, 1, 0], 0, &tcp(PORT, SYN, 1))].concat();
    assert_eq!(
        verdict(&mut h, &options),
        XDP_DROP,
        "IPv4 with options cannot be answered in place: dropped"
    );
    assert_eq!(counter(&h, "shed_rst"), 2);
}
