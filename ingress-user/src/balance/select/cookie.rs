//! Balancer: the sticky cookie — the pinned server, and the cookie's text as
//! both HTTP stacks read, strip and set it (one implementation for the
//! upgrade path and the `http` routes).

use std::sync::Arc;

use crate::balance::Server;

/// The server a pin names, unless it is excluded.
pub fn pinned<'a>(servers: &'a [Arc<Server>], pin: &str, skip: &[u32]) -> Option<&'a Arc<Server>> {
    servers.iter().find(|s| s.cookie_id == pin && !skip.contains(&s.id))
}

/// The value of cookie `name` in one `Cookie` header value (`a=1; b=2`).
pub fn value_in<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// One `Cookie` header value without cookie `name` (empty when it was the only one).
pub fn without(header: &str, name: &str) -> String {
    header
        .split(';')
        .map(str::trim)
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some(name))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `Set-Cookie` value that pins a client to a server.
pub fn set_cookie(name: &str, server_cookie_id: &str) -> String {
    format!("{name}={server_cookie_id}; Path=/; HttpOnly")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_strip_and_set() {
        assert_eq!(value_in("a=1; SERVERID=abc; b=2", "SERVERID"), Some("abc"));
        assert_eq!(value_in("a=1", "SERVERID"), None);
        assert_eq!(without("a=1; SERVERID=abc; b=2", "SERVERID"), "a=1; b=2");
        assert_eq!(without("SERVERID=abc", "SERVERID"), "");
        assert_eq!(set_cookie("S", "x1"), "S=x1; Path=/; HttpOnly");
    }
}
