//! Balancer: least-loaded pick over the per-server active counters (fewest
//! tunnels held, then most effective capacity).

use std::sync::Arc;

use super::Ring;
use crate::balance::Server;

pub fn choose<'a>(ring: Ring<'a>, eligible: impl Fn(&Server) -> bool) -> Option<&'a Arc<Server>> {
    let mut best: Option<(&Arc<Server>, u32, u32)> = None;
    for s in ring.iter().filter(|s| eligible(s)) {
        let (active, eff) = (s.active(), s.effective());
        if best.is_none_or(|(_, a, e)| active < a || (active == a && eff > e)) {
            best = Some((s, active, eff));
        }
    }
    best.map(|(s, _, _)| s)
}
