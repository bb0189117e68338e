//! The XDP program's packet parsing (ingress-ebpf/src/packet.rs, rst.rs),
//! which is no_std eBPF code: run in the kernel through BPF_PROG_TEST_RUN on
//! the program loaded once per process (needs root), in RST mode with
//! shedding on and a lease far in the future, so that every SYN to port 443
//! takes the longest path (parse → shed → rewrite → XDP_TX).
//! Asserted: the verdict is PASS, DROP or TX; a TX reply is a bare RST|ACK:
//! Ethernet (+ one VLAN tag when the SYN had one) + IPv4 20 / IPv6 40 + TCP
//! 20 bytes, i.e. 54 or 74 bytes untagged, with valid IPv4 and TCP checksums.
#![no_main]

use std::sync::{Mutex, OnceLock};

use ingress_common::{ControlEntry, action};
use ingress_user::{bpf::XdpHandle, model::XdpAction};
use libfuzzer_sys::fuzz_target;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

static PROGRAM: OnceLock<Mutex<XdpHandle>> = OnceLock::new();

fn program() -> &'static Mutex<XdpHandle> {
    PROGRAM.get_or_init(|| {
        let mut h = XdpHandle::load_detached(XdpAction::Rst, &[443], &[])
            .expect("load the XDP program (BPF_PROG_TEST_RUN needs root)");
        h.set_control(ControlEntry {
            total_capacity: 0,
            shed: 1,
            action: action::RST,
            _pad: 0,
            // About 31 years of CLOCK_MONOTONIC from now: the lease never ends in a run.
            lease_deadline_ns: ingress_user::model::monotonic_ns() + (1 << 60),
            generation: 1,
        })
        .expect("write CONTROL");
        Mutex::new(h)
    })
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

fn check_rst(input: &[u8], out: &[u8]) {
    let l3 = match u16::from_be_bytes([out[12], out[13]]) {
        0x8100 | 0x88a8 => 18,
        _ => 14,
    };
    assert!(input.len() >= l3, "TX of a packet shorter than its own headers");
    let proto = u16::from_be_bytes([out[l3 - 2], out[l3 - 1]]);
    match proto {
        0x0800 => {
            assert_eq!(out.len(), l3 + 40, "IPv4 RST length: {out:02x?}");
            let ip = &out[l3..l3 + 20];
            assert_eq!(ip[0], 0x45, "IPv4 without options");
            assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 40, "IPv4 total length");
            assert_eq!(checksum(ip), 0, "IPv4 header checksum: {out:02x?}");
            let th = &out[l3 + 20..];
            assert_eq!(th[13], 0x14, "RST|ACK");
            let mut pseudo = ip[12..20].to_vec();
            pseudo.extend_from_slice(&[0, 6, 0, 20]);
            pseudo.extend_from_slice(th);
            assert_eq!(checksum(&pseudo), 0, "TCP checksum: {out:02x?}");
        }
        0x86dd => {
            assert_eq!(out.len(), l3 + 60, "IPv6 RST length: {out:02x?}");
            let ip = &out[l3..l3 + 40];
            assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 20, "IPv6 payload length");
            assert_eq!(ip[6], 6, "next header TCP");
            let th = &out[l3 + 40..];
            assert_eq!(th[13], 0x14, "RST|ACK");
            let mut pseudo = ip[8..40].to_vec();
            pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
            pseudo.extend_from_slice(th);
            assert_eq!(
                checksum(&pseudo),
                0,
                "TCP checksum over the IPv6 pseudo-header: {out:02x?}"
            );
        }
        other => panic!("XDP_TX of a packet with EtherType {other:#06x}: {out:02x?}"),
    }
}

/// The kernel-side branches are not instrumented: libFuzzer sees only this
/// process. Each XDP counter the run moved (malformed, not_port, not_carrier,
/// shed_drop, shed_rst, …) and the verdict become a distinct edge here, so an
/// input reaching a new outcome in the kernel counts as new coverage.
#[inline(never)]
fn feedback(counter: usize) {
    macro_rules! arms {
        ($($n:literal)*) => {
            match counter {
                $($n => { std::hint::black_box($n); })*
                _ => { std::hint::black_box(usize::MAX); }
            }
        };
    }
    arms!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19);
}

fuzz_target!(|data: &[u8]| {
    // The kernel refuses test runs shorter than an Ethernet header.
    if data.len() < 14 {
        return;
    }
    let (verdict, out) = {
        let mut h = program().lock().unwrap();
        let before = h.counters();
        let r = h.test_run(data).expect("BPF_PROG_TEST_RUN");
        for (i, (b, a)) in before.iter().zip(h.counters()).enumerate() {
            if a.1 > b.1 {
                feedback(i);
            }
        }
        feedback(16 + r.0.min(3) as usize);
        r
    };
    match verdict {
        XDP_PASS | XDP_DROP => {}
        XDP_TX => check_rst(data, &out),
        other => panic!("verdict {other} (only PASS, DROP or TX are expected)"),
    }
});
