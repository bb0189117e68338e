//! Balancer: in turn — the first eligible server from the rotating start.

use std::sync::Arc;

use super::Ring;
use crate::balance::Server;

pub fn choose<'a>(ring: Ring<'a>, eligible: impl Fn(&Server) -> bool) -> Option<&'a Arc<Server>> {
    ring.iter().find(|s| eligible(s))
}
