//! Balancer (data path, read by the control side): servers and their live
//! counters, leases, dialers' holds, pools and the capacity-aware pick, one small strategy
//! per balance mode. The pick is synchronous and never waits on the control
//! path. Imports only the leaves and `config`.

pub mod check;
pub mod hold;
pub mod lease;
pub mod pool;
pub mod select;
pub mod server;

#[cfg(test)]
mod tests;

pub use check::CheckStatus;
pub use hold::{DIALER_CONNECT, Hold};
pub use lease::{Demand, Hints, Lease};
pub use pool::Pool;
pub use server::{Live, Server};

/// A hash that is the same in every process and release (rendezvous hashing, cookie ids).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    // FNV-1a, then a final mix so that similar keys spread.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}
