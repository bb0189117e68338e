//! Leaf: the vocabulary both paths share — server and operator states (with
//! their BPF codes and names, one mapping), where a server is defined, the
//! enumerations of the configuration, and the monotonic clock the kernel side
//! reads; [`addr`] parses `host[:port]` and prefixes, [`route`] compiles and
//! matches route patterns. Imports nothing from the crate outside `model`.

/// This build, as the ready line, `/api/status` and `ctl upgrade` name it.
/// The marker after `build:` is all zeros from `cargo build`; a copy of the
/// binary with other characters there is another build.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " build:0000000000000000");

pub mod addr;
pub mod route;

use std::fmt;

use serde::{Deserialize, Serialize};

/// A server's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ServerState {
    /// Healthy with at least one free worker.
    Up,
    /// Healthy, no free worker (reported 0, used up by our routing, or at maxconn).
    Full,
    /// Failed `fall` checks in a row (or not checked yet).
    Down,
    /// Set by an operator: no new calls, live ones continue.
    Drain,
    /// Set by an operator: out of service.
    Maint,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "UP",
            ServerState::Full => "FULL",
            ServerState::Down => "DOWN",
            ServerState::Drain => "DRAIN",
            ServerState::Maint => "MAINT",
        }
    }

    /// The value stored in the BPF `FLEETS` map.
    pub fn bpf_code(self) -> u32 {
        use ingress_common::fleet_state as s;
        match self {
            ServerState::Up => s::UP,
            ServerState::Full => s::FULL,
            ServerState::Down => s::DOWN,
            ServerState::Drain => s::DRAIN,
            ServerState::Maint => s::MAINT,
        }
    }

    /// The state a `FLEETS` map value encodes (`bpf dump`).
    pub fn from_bpf_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.bpf_code() == code)
    }

    pub const ALL: [ServerState; 5] = [
        ServerState::Up,
        ServerState::Full,
        ServerState::Down,
        ServerState::Drain,
        ServerState::Maint,
    ];
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Operator-set state, independent of health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminState {
    Ready = 0,
    Drain = 1,
    Maint = 2,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ready" => Some(AdminState::Ready),
            "drain" => Some(AdminState::Drain),
            "maint" => Some(AdminState::Maint),
            _ => None,
        }
    }
}

/// Where a server's definition lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Written inline in the config file: runtime changes last until the next reload.
    Inline,
    /// A line of the pool's `servers_file`: runtime changes are written back.
    File,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Inline => "inline",
            Origin::File => "file",
        })
    }
}

/// Lowest TLS version the front accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// What a route proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    #[default]
    Websocket,
    Http,
}

/// How a pool picks a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Fewest tunnels held by the ingress, then most effective capacity.
    Leastconn,
    /// In turn.
    Roundrobin,
    /// Consistent (rendezvous) hashing of `hash_key`: adding or removing one
    /// of N servers moves about 1/N of the keys.
    #[serde(rename = "uri-hash")]
    UriHash,
    /// Sticky: new clients by least-conn, pinned with a cookie.
    Cookie,
}

/// What happens to a server's tunnels when its health check takes it DOWN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum OnMarkedDown {
    /// Live calls carry on (default).
    #[default]
    #[serde(rename = "keep")]
    Keep,
    /// Live calls are cut at once.
    #[serde(rename = "shutdown-sessions")]
    ShutdownSessions,
}

/// What makes an upgrade attempt retried on another server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub enum RetryOn {
    /// TCP connect or TLS handshake failed or timed out.
    #[serde(rename = "conn-failure")]
    ConnFailure,
    /// The server closed before sending any byte of a response.
    #[serde(rename = "empty-response")]
    EmptyResponse,
    /// No complete response head within `timeouts.upgrade_response`.
    #[serde(rename = "response-timeout")]
    ResponseTimeout,
    /// The fleet answered 429 (all its workers busy).
    #[serde(rename = "429")]
    TooManyRequests,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, else generic (SKB) mode.
    Auto,
    Native,
    Skb,
    /// No XDP: shedding in userspace only.
    Off,
}

/// What shedding does to a carrier SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAction {
    Drop,
    Rst,
}

/// A server after parsing, from either source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerDef {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub sni: Option<String>,
    pub maxconn: Option<u32>,
}

impl ServerDef {
    /// `host:port` as written for connecting (IPv6 in brackets).
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The `Host` header for it: the host alone on port 443, else
    /// `host:port`; an IPv6 literal in brackets either way.
    pub fn host_header(&self) -> String {
        match (self.port, self.host.contains(':')) {
            (443, true) => format!("[{}]", self.host),
            (443, false) => self.host.clone(),
            _ => self.addr(),
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_bracket_ipv6_literals() {
        let def = |host: &str, port| ServerDef {
            name: String::new(),
            host: host.to_owned(),
            port,
            sni: None,
            maxconn: None,
        };
        assert_eq!(def("::1", 443).host_header(), "[::1]");
        assert_eq!(def("::1", 8443).host_header(), "[::1]:8443");
        assert_eq!(def("fleet.example", 443).host_header(), "fleet.example");
        assert_eq!(def("10.0.0.1", 8443).host_header(), "10.0.0.1:8443");
    }

    #[test]
    fn bpf_codes_map_back_to_states() {
        for s in ServerState::ALL {
            assert_eq!(ServerState::from_bpf_code(s.bpf_code()), Some(s));
        }
        assert_eq!(ServerState::from_bpf_code(99), None);
    }
}
