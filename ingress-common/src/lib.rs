//! Types and names shared by the XDP program (`ingress-ebpf`) and the daemon
//! (`ingress-user`). Everything here is `#[repr(C)]`, plain integers, explicit
//! padding, and byte order in the field name where it is not host order, so
//! the kernel side, the daemon and `bpftool` all read the same layout.
#![no_std]

/// Where the daemon pins every map (bpffs).
pub const PIN_DIR: &str = "/sys/fs/bpf/ingress";

/// Name of the XDP program inside the object file.
pub const PROGRAM_NAME: &str = "ingress_xdp";

/// Map names, used by the kernel side (as the static's name) and by the
/// daemon (to find and pin them).
pub mod map_names {
    /// Per-server occupancy; written by the daemon, read by operators.
    pub const FLEETS: &str = "FLEETS";
    /// The single control entry: shed flag, lease, total capacity.
    pub const CONTROL: &str = "CONTROL";
    /// Listener ports whose SYNs may be shed.
    pub const PORTS: &str = "PORTS";
    /// IPv4 carrier prefixes (LPM trie).
    pub const CARRIERS4: &str = "CARRIERS4";
    /// IPv6 carrier prefixes (LPM trie).
    pub const CARRIERS6: &str = "CARRIERS6";
    /// Per-CPU packet counters, indexed by [`super::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Every map, in the order `ingress bpf dump` prints them.
    pub const ALL: [&str; 6] = [CONTROL, FLEETS, PORTS, CARRIERS4, CARRIERS6, COUNTERS];
}

/// Capacity of the `FLEETS` map (servers across all pools).
pub const MAX_FLEETS: u32 = 4096;
/// Capacity of the `PORTS` map.
pub const MAX_PORTS: u32 = 64;
/// Capacity of each carrier trie.
pub const MAX_CARRIERS: u32 = 4096;

/// Indices into the per-CPU `COUNTERS` array. Every packet bumps `SEEN` and
/// exactly one outcome.
pub mod counter {
    /// Every packet the program looked at.
    pub const SEEN: u32 = 0;
    /// Passed: not a new connection, or shedding is off.
    pub const PASSED: u32 = 1;
    /// A carrier SYN dropped while shedding.
    pub const SHED_DROP: u32 = 2;
    /// A carrier SYN answered with a RST while shedding.
    pub const SHED_RST: u32 = 3;
    /// A SYN to a listener port while shedding, from a source outside the carrier tries: passed.
    pub const NOT_CARRIER: u32 = 4;
    /// A SYN while shedding to a port that is not a listener port: passed.
    pub const NOT_PORT: u32 = 5;
    /// Truncated or unparsable headers: passed.
    pub const MALFORMED: u32 = 6;
    /// Number of counters.
    pub const COUNT: u32 = 7;
    /// Names as exported in metrics and dumps, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "seen",
        "passed",
        "shed_drop",
        "shed_rst",
        "not_carrier",
        "not_port",
        "malformed",
    ];
}

/// `Control::action` values.
pub mod action {
    /// Drop shed SYNs silently.
    pub const DROP: u32 = 0;
    /// Answer shed SYNs with a RST (`XDP_TX`).
    pub const RST: u32 = 1;
}

/// `FleetEntry::state` values (the daemon's server states).
pub mod fleet_state {
    pub const UP: u32 = 0;
    pub const FULL: u32 = 1;
    pub const DOWN: u32 = 2;
    pub const DRAIN: u32 = 3;
    pub const MAINT: u32 = 4;
}

/// `FleetEntry::reported` when the fleet has not reported capacity yet.
pub const REPORTED_NONE: u32 = u32::MAX;

/// The single entry (key 0) of the `CONTROL` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlEntry {
    /// Sum of effective capacity over every server of every routed pool.
    pub total_capacity: u32,
    /// 1 while the daemon wants new carrier SYNs shed.
    pub shed: u32,
    /// One of [`action`].
    pub action: u32,
    /// Explicit padding; always 0.
    pub _pad: u32,
    /// Shedding holds only while `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) is
    /// below this; the daemon renews it on a timer (fail open).
    pub lease_deadline_ns: u64,
    /// Bumped on every write by the daemon.
    pub generation: u64,
}

/// One server's occupancy, keyed by its id in the `FLEETS` hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetEntry {
    /// Server id (also the key).
    pub id: u32,
    /// Index of the server's pool in the daemon's config.
    pub pool_id: u32,
    /// One of [`fleet_state`].
    pub state: u32,
    /// Per-server connection limit.
    pub maxconn: u32,
    /// Tunnels the ingress holds open to this server.
    pub active: u32,
    /// Last capacity the fleet reported, or [`REPORTED_NONE`].
    pub reported: u32,
    /// `min(maxconn - active, reported - routed_since_report)`.
    pub effective: u32,
    /// Explicit padding; always 0.
    pub _pad: u32,
    /// CLOCK_MONOTONIC time of the last report (0: never).
    pub last_report_ns: u64,
}

// The kernel and the daemon must agree on these layouts byte for byte.
const _: () = assert!(core::mem::size_of::<ControlEntry>() == 32);
const _: () = assert!(core::mem::align_of::<ControlEntry>() == 8);
const _: () = assert!(core::mem::size_of::<FleetEntry>() == 40);
const _: () = assert!(core::mem::align_of::<FleetEntry>() == 8);

/// An LPM trie key's data for IPv4 (network byte order).
pub type Ipv4Prefix = [u8; 4];
/// An LPM trie key's data for IPv6 (network byte order).
pub type Ipv6Prefix = [u8; 16];

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::ControlEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FleetEntry {}
}
