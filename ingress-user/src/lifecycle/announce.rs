//! Lifecycle: the addresses this ingress announces to its group (BGP ECMP).
//! They are held on an interface of their own with a lease the kernel
//! enforces (`valid_lft`), renewed while the process serves and deleted
//! first on a graceful stop; a routing daemon announces what is there
//! (BIRD's `protocol direct`), so a process that dies is withdrawn by the
//! kernel when the lease runs out, like the XDP program's shed lease.

use std::{net::IpAddr, time::Duration};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage, AddressScope, CacheInfo},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::config::GroupConfig;

/// The announced addresses of `[group]`.
#[derive(Debug, Clone)]
pub struct Announcer {
    interface: String,
    prefixes: Vec<(IpAddr, u8)>,
    lease: Duration,
}

impl Announcer {
    /// `None` without `group.announce`.
    pub fn from_config(cfg: &GroupConfig) -> Option<Self> {
        let prefixes = cfg.prefixes().ok()?;
        (!prefixes.is_empty()).then(|| Self {
            interface: cfg.announce_interface.clone().unwrap_or_default(),
            prefixes,
            lease: cfg.announce_lease.0,
        })
    }

    /// Adds the addresses, or renews their lease.
    pub fn hold(&self) -> std::io::Result<()> {
        let index = self.index()?;
        let secs = u32::try_from(self.lease.as_secs()).unwrap_or(u32::MAX).max(1);
        for &(ip, len) in &self.prefixes {
            let mut msg = address(index, ip, len);
            let mut lease = CacheInfo::default();
            lease.ifa_preferred = secs;
            lease.ifa_valid = secs;
            msg.attributes.push(AddressAttribute::CacheInfo(lease));
            request(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_REPLACE)
                .map_err(|e| std::io::Error::new(e.kind(), format!("adding {ip}/{len} on {}: {e}", self.interface)))?;
        }
        Ok(())
    }

    /// Deletes the addresses (those already gone are no error).
    pub fn withdraw(&self) -> std::io::Result<()> {
        let index = self.index()?;
        for &(ip, len) in &self.prefixes {
            match request(RouteNetlinkMessage::DelAddress(address(index, ip, len)), 0) {
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
                other => other.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("deleting {ip}/{len} on {}: {e}", self.interface))
                })?,
            }
        }
        Ok(())
    }

    /// Renews the lease every third of it until `stop` turns true; the
    /// first hold announces. A failed renewal is logged and retried.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let every = (self.lease / 3).max(Duration::from_millis(200));
        let mut announced = false;
        loop {
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.hold()).await {
                Ok(Ok(())) if !announced => {
                    announced = true;
                    tracing::info!(interface = %self.interface, addresses = ?self.prefixes, lease = ?self.lease, "announcing");
                }
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "renewing the announced addresses"),
                Err(e) => tracing::error!(error = %e, "renewing the announced addresses"),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    fn index(&self) -> std::io::Result<u32> {
        let name = std::ffi::CString::new(self.interface.as_str())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "interface name"))?;
        // SAFETY: `name` is a NUL-terminated string that lives for the call.
        match unsafe { libc::if_nametoindex(name.as_ptr()) } {
            0 => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("group.announce_interface {}: no such interface", self.interface),
            )),
            i => Ok(i),
        }
    }
}

fn address(index: u32, ip: IpAddr, len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = len;
    msg.header.scope = AddressScope::Universe;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(ip));
    msg.attributes.push(AddressAttribute::Address(ip));
    msg
}

/// One rtnetlink request, waited for until its acknowledgement.
fn request(message: RouteNetlinkMessage, flags: u16) -> std::io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    loop {
        let (reply, _) = socket.recv_from_full()?;
        let mut at = 0;
        while at < reply.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[at..])
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            if let NetlinkPayload::Error(e) = msg.payload {
                return match e.code {
                    None => Ok(()),
                    Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
                };
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}
