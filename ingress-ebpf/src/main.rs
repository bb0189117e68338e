//! XDP program on the carrier-facing interface. It passes everything except a
//! new TCP connection (SYN without ACK) to a listener port from a carrier
//! source while the daemon has shedding on and its lease holds; those it
//! drops, or answers with a RST so the carrier fails over at once.
//!
//! Work per packet is O(1): one array lookup for the control entry, and only
//! while shedding one hash lookup (port) and one LPM lookup (source).
#![no_std]
#![no_main]

mod maps;
mod packet;
mod rst;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext};
use ingress_common::{action, counter};

use crate::packet::{Parsed, parse};

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn ingress_xdp(ctx: XdpContext) -> u32 {
    maps::count(counter::SEEN);
    let (outcome, verdict) = decide(&ctx);
    maps::count(outcome);
    verdict
}

/// Returns the counter to bump and the XDP verdict.
#[inline(always)]
fn decide(ctx: &XdpContext) -> (u32, u32) {
    let syn = match parse(ctx) {
        Parsed::Malformed => return (counter::MALFORMED, xdp_action::XDP_PASS),
        Parsed::Other => return (counter::PASSED, xdp_action::XDP_PASS),
        Parsed::Syn(syn) => syn,
    };
    let Some(control) = maps::control() else {
        return (counter::PASSED, xdp_action::XDP_PASS);
    };
    // SAFETY: reading a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if control.shed == 0 || now >= control.lease_deadline_ns {
        return (counter::PASSED, xdp_action::XDP_PASS);
    }
    if !maps::is_listener_port(syn.dst_port) {
        return (counter::NOT_PORT, xdp_action::XDP_PASS);
    }
    if !maps::is_carrier(&syn) {
        return (counter::NOT_CARRIER, xdp_action::XDP_PASS);
    }
    if control.action == action::RST && rst::rewrite(ctx, &syn) {
        return (counter::SHED_RST, xdp_action::XDP_TX);
    }
    (counter::SHED_DROP, xdp_action::XDP_DROP)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
