//! Lifecycle: the addresses this ingress announces to its group (BGP ECMP).
//! They are held on an interface of their own with a lease the kernel
//! enforces (`valid_lft`), renewed while the process serves and deleted
//! when it leaves; a routing daemon announces what is there (BIRD's
//! `protocol direct`), so a process that dies is withdrawn by the kernel
//! when the lease runs out, like the XDP program's shed lease.

use std::{net::IpAddr, sync::Arc, time::Duration};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage, AddressScope, CacheInfo},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::sync::watch;

use crate::{config::GroupConfig, control::handover, data::DataCtx};

/// How long one rtnetlink request may take before it is given up.
const REQUEST_LIMIT: Duration = Duration::from_secs(1);

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

    /// Adds every address, or renews its lease; the first failure, after
    /// trying them all.
    pub fn hold(&self) -> std::io::Result<()> {
        let index = self.index()?;
        // Whole seconds, rounded up: the kernel counts in seconds.
        let secs = u32::try_from(self.lease.as_millis().div_ceil(1000))
            .unwrap_or(u32::MAX)
            .max(1);
        let mut first = Ok(());
        for &(ip, len) in &self.prefixes {
            let mut msg = address(index, ip, len);
            let mut lease = CacheInfo::default();
            lease.ifa_preferred = secs;
            lease.ifa_valid = secs;
            msg.attributes.push(AddressAttribute::CacheInfo(lease));
            let done = request(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_REPLACE)
                .map_err(|e| std::io::Error::new(e.kind(), format!("adding {ip}/{len} on {}: {e}", self.interface)));
            first = first.and(done);
        }
        first
    }

    /// Deletes the addresses (those already gone are no error).
    pub fn withdraw(&self) -> std::io::Result<()> {
        let index = self.index()?;
        let mut first = Ok(());
        for &(ip, len) in &self.prefixes {
            let done = match request(RouteNetlinkMessage::DelAddress(address(index, ip, len)), 0) {
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
                other => other.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("deleting {ip}/{len} on {}: {e}", self.interface))
                }),
            };
            first = first.and(done);
        }
        first
    }

    /// [`Self::withdraw`] off the runtime, bounded; said in the log.
    pub async fn withdraw_now(&self) {
        let me = self.clone();
        let done = tokio::time::timeout(REQUEST_LIMIT * 2, tokio::task::spawn_blocking(move || me.withdraw())).await;
        match done
            .map_err(|_| "timed out".to_owned())
            .and_then(|j| j.map_err(|e| e.to_string()))
        {
            Ok(Ok(())) => tracing::info!(interface = %self.interface, "announced addresses withdrawn"),
            Ok(Err(e)) => tracing::error!(error = %e, "withdrawing the announced addresses (their lease ends them)"),
            Err(e) => tracing::error!(error = %e, "withdrawing the announced addresses (their lease ends them)"),
        }
    }

    fn index(&self) -> std::io::Result<u32> {
        nix::net::if_::if_nametoindex(self.interface.as_str()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("group.announce_interface {}: {e}", self.interface),
            )
        })
    }
}

/// The renewal task of a serving process.
#[derive(Debug)]
pub struct Announcing {
    announcer: Announcer,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Announcing {
    /// Announces (once the fleets had their first checks, at most
    /// `first_checks`; at once with `None`: an upgrade's new process had
    /// them before it said ready) and renews every third of the lease
    /// until stopped. Failures are logged when the state changes.
    pub fn start(announcer: Announcer, data: Arc<DataCtx>, first_checks: Option<Duration>) -> Self {
        if let Err(e) = announcer.index() {
            tracing::warn!("################################################################");
            tracing::warn!(error = %e, "nothing will be announced until the interface exists");
            tracing::warn!("################################################################");
        }
        let (stop, mut stopped) = watch::channel(false);
        let a = announcer.clone();
        let task = tokio::spawn(async move {
            if let Some(limit) = first_checks {
                tokio::select! {
                    () = handover::first_checks(&data, limit) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
            let every = (a.lease / 3).max(Duration::from_millis(200));
            let mut held: Option<bool> = None;
            while !*stopped.borrow() {
                let me = a.clone();
                let renewal = tokio::time::timeout(REQUEST_LIMIT * 2, tokio::task::spawn_blocking(move || me.hold()));
                let outcome = match renewal.await {
                    Ok(Ok(r)) => r.map_err(|e| e.to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("rtnetlink did not answer".to_owned()),
                };
                match (&outcome, held) {
                    (Ok(()), Some(true)) | (Err(_), Some(false)) => {}
                    (Ok(()), _) => {
                        tracing::info!(interface = %a.interface, addresses = ?a.prefixes, lease = ?a.lease, "announcing");
                    }
                    (Err(e), _) => tracing::error!(error = %e, "the announced addresses are not held"),
                }
                held = Some(outcome.is_ok());
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        });
        Self { announcer, stop, task }
    }

    /// Stops renewing (a renewal under way is waited for, at most a
    /// second); the addresses stay until withdrawn or their lease ends.
    pub async fn stop_renewing(self) -> Announcer {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(REQUEST_LIMIT, self.task).await;
        self.announcer
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

/// One rtnetlink request, waited for (at most [`REQUEST_LIMIT`]) until the
/// kernel acknowledges it.
fn request(message: RouteNetlinkMessage, flags: u16) -> std::io::Result<()> {
    const SEQUENCE: u32 = 1;
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    let limit = nix::sys::time::TimeVal::new(REQUEST_LIMIT.as_secs() as libc::time_t, 0);
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &limit)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = SEQUENCE;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    loop {
        let (reply, from) = socket.recv_from_full()?;
        if from.port_number() != 0 {
            continue; // only the kernel answers
        }
        let mut at = 0;
        while at < reply.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[at..])
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            if msg.header.sequence_number == SEQUENCE
                && let NetlinkPayload::Error(e) = msg.payload
            {
                return match e.code {
                    None => Ok(()),
                    Some(_) => Err(e.to_io()),
                };
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}
