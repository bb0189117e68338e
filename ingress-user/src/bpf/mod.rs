//! Control path: the XDP fast path's userspace side — load and attach the
//! program ([`handle`]) in the mode that delivers what the action
//! sends ([`mode`]), keep its pinned maps in step with the servers
//! ([`sync`]: `FLEETS` per server, `CONTROL` with the total effective
//! capacity, the shed flag and a lease the kernel honours only while the
//! daemon keeps renewing it — fail open), report what it did ([`status`]),
//! and read the pins back for `ingress bpf dump` ([`dump`]); whether the
//! process holds the capabilities for it is [`caps`]'s.

pub mod caps;
pub mod dump;
pub mod handle;
pub mod mode;
pub mod status;
pub mod sync;

pub use handle::{XdpError, XdpHandle};
pub use status::{XdpStatus, XdpView};
