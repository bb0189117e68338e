//! Configuration: `[group]` — how this ingress leaves a group of ingresses
//! sharing carriers' traffic (a VRRP pair, an ECMP set) on a graceful stop,
//! and the addresses it holds for a routing daemon to announce.

use std::net::IpAddr;

use serde::Deserialize;

use super::{ConfigError, Dur, invalid};
use crate::model::addr::parse_prefix;

/// `[group]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupConfig {
    /// More than 0: a graceful stop first leaves the group — XDP drops new
    /// carrier SYNs (their retransmits reach the member that takes the
    /// traffic), live calls get the Close 1001 and are waited for, then
    /// `announce` is withdrawn and the health path answers 503 — and closes
    /// the listeners only this long after that. 0 (default): the
    /// one-ingress stop (listeners closed at once, calls keep
    /// `limits.shutdown_grace`); `announce` is still withdrawn first.
    pub leave: Dur,
    /// Host addresses (`"192.0.2.10/32"`, or `/128`) held on `announce_interface` while the
    /// process serves, for a routing daemon to announce (BIRD's `protocol
    /// direct`); each with a kernel lease (`valid_lft`) renewed every third
    /// of `announce_lease`, so the announcement ends by itself when the
    /// process dies. Deleted first on a graceful stop.
    pub announce: Vec<String>,
    /// An interface of their own (e.g. a dummy); required with `announce`.
    pub announce_interface: Option<String>,
    /// How long an address outlives the last renewal.
    pub announce_lease: Dur,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            leave: Dur(std::time::Duration::ZERO),
            announce: Vec::new(),
            announce_interface: None,
            announce_lease: Dur(std::time::Duration::from_secs(3)),
        }
    }
}

impl GroupConfig {
    /// `announce` parsed: address and prefix length.
    pub fn prefixes(&self) -> Result<Vec<(IpAddr, u8)>, ConfigError> {
        self.announce
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (ip, len) = parse_prefix(p).map_err(|e| invalid(format!("group.announce[{i}]"), e))?;
                Ok((ip, u8::try_from(len).unwrap_or(u8::MAX)))
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, (ip, len)) in self.prefixes()?.into_iter().enumerate() {
            let host = if ip.is_ipv4() { 32 } else { 128 };
            if len != host {
                return Err(invalid(
                    format!("group.announce[{i}]"),
                    format!("{ip}/{len}: an address to announce is one host, /{host}"),
                ));
            }
        }
        if self.announce.is_empty() {
            return Ok(());
        }
        match self.announce_interface.as_deref() {
            None | Some("") => {
                return Err(invalid(
                    "group.announce_interface",
                    "required with group.announce: an interface of its own (e.g. a dummy) for the announced addresses",
                ));
            }
            Some("lo") => {
                return Err(invalid(
                    "group.announce_interface",
                    "not lo: the addresses are deleted on a stop, and calls to them must still be answered (keep them on lo too)",
                ));
            }
            Some(_) => {}
        }
        if self.announce_lease.0 < std::time::Duration::from_secs(1) {
            return Err(invalid(
                "group.announce_lease",
                "must be at least 1s (the kernel counts whole seconds)",
            ));
        }
        Ok(())
    }
}
