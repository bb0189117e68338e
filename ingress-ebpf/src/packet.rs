//! Bounds-checked packet parsing: Ethernet (plus one 802.1Q/802.1ad tag),
//! IPv4 (options allowed; fragments pass), IPv6 (TCP as the next header;
//! extension headers pass) and TCP. Headers are read through align-1 byte
//! structs; nothing is read as an enum straight from packet bytes.

use aya_ebpf::programs::XdpContext;

pub const ETH_LEN: usize = 14;
pub const VLAN_LEN: usize = 4;
pub const IPV4_MIN_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const TCP_MIN_LEN: usize = 20;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto_be: [u8; 2],
}

#[repr(C)]
pub struct VlanHdr {
    pub tci_be: [u8; 2],
    pub proto_be: [u8; 2],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len_be: [u8; 2],
    pub id_be: [u8; 2],
    pub frag_be: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check_be: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_tc_flow: [u8; 4],
    pub payload_len_be: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[repr(C)]
pub struct TcpHdr {
    pub src_port_be: [u8; 2],
    pub dst_port_be: [u8; 2],
    pub seq_be: [u8; 4],
    pub ack_be: [u8; 4],
    pub data_offset: u8,
    pub flags: u8,
    pub window_be: [u8; 2],
    pub check_be: [u8; 2],
    pub urgent_be: [u8; 2],
}

/// Source address of a SYN, network byte order.
#[derive(Clone, Copy)]
pub enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// A TCP SYN without ACK, with what shedding and the RST need.
#[derive(Clone, Copy)]
pub struct Syn {
    pub src: Addr,
    pub dst_port: u16,
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Offset of the TCP header.
    pub l4_off: usize,
    /// IPv4 header without options (the RST reply keeps a 20-byte header).
    pub plain_ipv4: bool,
    /// The SYN's sequence number, host order.
    pub seq: u32,
}

pub enum Parsed {
    /// Truncated or inconsistent headers.
    Malformed,
    /// Anything that is not a new TCP connection.
    Other,
    Syn(Syn),
}

/// A pointer to a `T` at `offset`, or `None` when the packet is too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
pub fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by ptr_at; align-1 struct.
    let mut proto = be16(unsafe { (*eth).proto_be });
    let mut l3_off = ETH_LEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, ETH_LEN) else {
            return Parsed::Malformed;
        };
        // SAFETY: as above.
        proto = be16(unsafe { (*vlan).proto_be });
        l3_off += VLAN_LEN;
    }
    match proto {
        ETH_P_IPV4 => parse_ipv4(ctx, l3_off),
        ETH_P_IPV6 => parse_ipv6(ctx, l3_off),
        _ => Parsed::Other,
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3_off: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3_off) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by ptr_at; align-1 struct.
    let (version_ihl, proto, frag, src) = unsafe { ((*ip).version_ihl, (*ip).proto, be16((*ip).frag_be), (*ip).src) };
    if version_ihl >> 4 != 4 {
        return Parsed::Malformed;
    }
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if ihl < IPV4_MIN_LEN {
        return Parsed::Malformed;
    }
    if proto != IPPROTO_TCP {
        return Parsed::Other;
    }
    // More-fragments flag or a fragment offset: let the stack reassemble.
    if frag & 0x3fff != 0 {
        return Parsed::Other;
    }
    parse_tcp(ctx, l3_off, l3_off + ihl, Addr::V4(src), ihl == IPV4_MIN_LEN)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3_off: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l3_off) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by ptr_at; align-1 struct.
    let (first, next, src) = unsafe { ((*ip).version_tc_flow[0], (*ip).next_header, (*ip).src) };
    if first >> 4 != 6 {
        return Parsed::Malformed;
    }
    if next != IPPROTO_TCP {
        return Parsed::Other;
    }
    parse_tcp(ctx, l3_off, l3_off + IPV6_LEN, Addr::V6(src), false)
}

#[inline(always)]
fn parse_tcp(ctx: &XdpContext, l3_off: usize, l4_off: usize, src: Addr, plain_ipv4: bool) -> Parsed {
    let Some(tcp) = ptr_at::<TcpHdr>(ctx, l4_off) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by ptr_at; align-1 struct.
    let (flags, dst_port, seq, doff) = unsafe {
        (
            (*tcp).flags,
            be16((*tcp).dst_port_be),
            (*tcp).seq_be,
            (*tcp).data_offset,
        )
    };
    if ((doff >> 4) as usize) * 4 < TCP_MIN_LEN {
        return Parsed::Malformed;
    }
    if flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
        return Parsed::Other;
    }
    Parsed::Syn(Syn {
        src,
        dst_port,
        l3_off,
        l4_off,
        plain_ipv4,
        seq: u32::from_be_bytes(seq),
    })
}
