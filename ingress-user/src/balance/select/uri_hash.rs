//! Balancer: consistent (rendezvous) hashing of the request's hash key over
//! server names — adding or removing one of N servers moves about 1/N keys.

use std::sync::Arc;

use crate::balance::{Server, stable_hash};

pub fn choose<'a>(
    servers: &'a [Arc<Server>],
    key: &str,
    eligible: impl Fn(&Server) -> bool,
) -> Option<&'a Arc<Server>> {
    servers
        .iter()
        .filter(|s| eligible(s))
        .max_by_key(|s| stable_hash(&[key.as_bytes(), s.def.name.as_bytes()]))
}
