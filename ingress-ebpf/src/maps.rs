//! The program's maps. Each comment says who writes the map and who reads it.
//! All are BTF maps, so `bpftool map dump pinned /sys/fs/bpf/ingress/NAME`
//! prints field names.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    macros::btf_map,
};
use ingress_common::{ControlEntry, FleetEntry, Ipv4Prefix, Ipv6Prefix, MAX_CARRIERS, MAX_FLEETS, MAX_PORTS, counter};

use crate::packet::{Addr, Syn};

/// Written by the daemon on every change of server state or capacity; read
/// by operators (`bpftool`, `ingress bpf dump`). The program does not read
/// it: the daemon folds it into `CONTROL.total_capacity`.
#[btf_map]
static FLEETS: HashMap<u32, FleetEntry, { MAX_FLEETS as usize }> = HashMap::new();

/// Written by the daemon (shed flag, action, total capacity, and the lease
/// it renews on a timer); read by the program on every SYN.
#[btf_map]
static CONTROL: Array<ControlEntry, 1> = Array::new();

/// Written by the daemon at start and reload (host byte order port → 1);
/// read by the program while shedding.
#[btf_map]
static PORTS: HashMap<u16, u8, { MAX_PORTS as usize }> = HashMap::new();

/// Written by the daemon from `[xdp] carriers` (default 0.0.0.0/0); read by
/// the program while shedding.
#[btf_map]
static CARRIERS4: LpmTrie<Ipv4Prefix, u32, { MAX_CARRIERS as usize }> = LpmTrie::new();

/// Written by the daemon from `[xdp] carriers` (default ::/0); read by the
/// program while shedding.
#[btf_map]
static CARRIERS6: LpmTrie<Ipv6Prefix, u32, { MAX_CARRIERS as usize }> = LpmTrie::new();

/// Written by the program (one slot per outcome, per CPU); read by the
/// daemon for `/metrics` and by operators.
#[btf_map]
static COUNTERS: PerCpuArray<u64, { counter::COUNT as usize }> = PerCpuArray::new();

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn control() -> Option<ControlEntry> {
    CONTROL.get(0).copied()
}

#[inline(always)]
pub fn is_listener_port(port: u16) -> bool {
    // SAFETY: the value is copied out at once; no reference outlives the lookup.
    unsafe { PORTS.get(port).is_some() }
}

#[inline(always)]
pub fn is_carrier(syn: &Syn) -> bool {
    match syn.src {
        Addr::V4(addr) => CARRIERS4.get(&Key::new(32, addr)).is_some(),
        Addr::V6(addr) => CARRIERS6.get(&Key::new(128, addr)).is_some(),
    }
}
