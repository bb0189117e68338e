//! Turns a shed SYN into the RST|ACK that answers it, in place, for
//! `XDP_TX`: swapped MACs, addresses and ports, `ack = seq + 1`, a 20-byte
//! TCP header, fresh checksums, and the tail trimmed to the new length.

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};

use crate::packet::{
    Addr, EthHdr, IPV4_MIN_LEN, IPV6_LEN, Ipv4Hdr, Ipv6Hdr, Syn, TCP_ACK, TCP_MIN_LEN, TCP_RST, TcpHdr, ptr_at,
};

const IPPROTO_TCP: u8 = 6;
const REPLY_TTL: u8 = 64;

/// Rewrites the packet; false when it cannot (IPv4 options), so the caller drops instead.
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, syn: &Syn) -> bool {
    if let Addr::V4(_) = syn.src
        && !syn.plain_ipv4
    {
        return false;
    }
    let (Some(eth), Some(tcp)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<TcpHdr>(ctx, syn.l4_off)) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at; align-1 structs; nothing else holds these bytes.
    unsafe {
        core::mem::swap(&mut (*eth).src, &mut (*eth).dst);
        core::mem::swap(&mut (*tcp).src_port_be, &mut (*tcp).dst_port_be);
        (*tcp).ack_be = syn.seq.wrapping_add(1).to_be_bytes();
        (*tcp).seq_be = [0; 4];
        (*tcp).data_offset = ((TCP_MIN_LEN / 4) as u8) << 4;
        (*tcp).flags = TCP_RST | TCP_ACK;
        (*tcp).window_be = [0; 2];
        (*tcp).urgent_be = [0; 2];
        (*tcp).check_be = [0; 2];
    }
    let tcp_sum = sum_words(tcp.cast::<u8>(), TCP_MIN_LEN);
    let pseudo = match syn.src {
        Addr::V4(_) => {
            let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, syn.l3_off) else {
                return false;
            };
            // SAFETY: as above.
            unsafe {
                core::mem::swap(&mut (*ip).src, &mut (*ip).dst);
                (*ip).tos = 0;
                (*ip).total_len_be = ((IPV4_MIN_LEN + TCP_MIN_LEN) as u16).to_be_bytes();
                (*ip).id_be = [0; 2];
                (*ip).frag_be = 0x4000u16.to_be_bytes(); // DF
                (*ip).ttl = REPLY_TTL;
                (*ip).check_be = [0; 2];
                (*ip).check_be = fold(sum_words(ip.cast::<u8>(), IPV4_MIN_LEN)).to_be_bytes();
                sum_words((*ip).src.as_ptr(), 8)
            }
        }
        Addr::V6(_) => {
            let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, syn.l3_off) else {
                return false;
            };
            // SAFETY: as above.
            unsafe {
                core::mem::swap(&mut (*ip).src, &mut (*ip).dst);
                (*ip).payload_len_be = (TCP_MIN_LEN as u16).to_be_bytes();
                (*ip).hop_limit = REPLY_TTL;
                sum_words((*ip).src.as_ptr(), 32)
            }
        }
    };
    let sum = tcp_sum + pseudo + u32::from(IPPROTO_TCP) + TCP_MIN_LEN as u32;
    // SAFETY: `tcp` is still within bounds (nothing was resized yet).
    unsafe { (*tcp).check_be = fold(sum).to_be_bytes() };

    let ip_len = match syn.src {
        Addr::V4(_) => IPV4_MIN_LEN,
        Addr::V6(_) => IPV6_LEN,
    };
    let new_len = (syn.l3_off + ip_len + TCP_MIN_LEN) as i64;
    let old_len = (ctx.data_end() - ctx.data()) as i64;
    let delta = new_len - old_len;
    if delta < 0 {
        // SAFETY: shrinking an XDP frame; pointers taken above are not used afterwards.
        let ret = unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) };
        if ret != 0 {
            return false;
        }
    }
    true
}

/// One's-complement sum of `len` bytes (even) as big-endian 16-bit words.
#[inline(always)]
fn sum_words(start: *const u8, len: usize) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < len {
        // SAFETY: callers pass a region already bounds checked by ptr_at.
        let word = unsafe { u16::from_be_bytes([*start.add(i), *start.add(i + 1)]) };
        sum += u32::from(word);
        i += 2;
    }
    sum
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
