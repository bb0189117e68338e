//! Control path: which XDP mode to attach in — the configured mode, the
//! interface's driver (`ETHTOOL_GDRVINFO`), and the one combination whose
//! replies would be lost: `action = "rst"` in native mode on a veth.
//!
//! On a veth, a native program's `XDP_TX` frame is put on the *peer's* XDP
//! ring, and the veth driver wakes the peer's NAPI to deliver it only when
//! the peer runs an XDP program of its own. Without one the frame is dropped
//! (the peer has no NAPI) or left on the ring (GRO gave the peer NAPI, but
//! nothing wakes it for `XDP_TX`): the `shed_rst` counter grows and the
//! carrier sees nothing. In SKB (generic) mode `XDP_TX` goes out through the
//! veth's own transmit path and reaches the peer like any packet.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use crate::model::{XdpAction, XdpMode};

/// How to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Native,
    Skb,
    /// Native, else SKB when the driver refuses native.
    NativeElseSkb,
}

/// The attach to make, and why when it is not the configured mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub attempt: Attempt,
    /// Said at start, and in `/api/status` and `/stats` next to the mode.
    pub reason: Option<String>,
}

/// What the mode depends on of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// `ethtool -i`'s `driver:`.
    pub driver: String,
    /// Native `XDP_TX` leaves through a veth: the interface is one, or a
    /// bond with one among its slaves (a bond's native program runs on its
    /// slaves, whose `XDP_TX` is the veth's).
    pub veth: bool,
}

/// Why native `XDP_TX` replies are lost on a veth.
pub const VETH_NATIVE_TX: &str = "a native program's XDP_TX replies reach a veth's peer only when the peer \
     runs an XDP program of its own, so carriers would never see the RST";

/// The plan for `mode` and `action` on `interface` (`link`: `None` when
/// unknown, taken as a driver with a transmit ring of its own). An error
/// refuses the combination, naming the interface and the reason.
pub fn plan(mode: XdpMode, action: XdpAction, interface: &str, link: Option<&Link>) -> Result<Plan, String> {
    let veth_rst = action == XdpAction::Rst && link.is_some_and(|l| l.veth);
    let plain = |attempt| Ok(Plan { attempt, reason: None });
    match mode {
        XdpMode::Auto | XdpMode::Off if veth_rst => Ok(Plan {
            attempt: Attempt::Skb,
            reason: Some(format!(
                "action = \"rst\" on {interface}, a veth: SKB mode, whose XDP_TX replies go out through \
                 the veth's transmit path (in native mode, {VETH_NATIVE_TX})"
            )),
        }),
        XdpMode::Native if veth_rst => Err(format!(
            "mode = \"native\" with action = \"rst\" on {interface}, a veth: {VETH_NATIVE_TX}; use mode = \
             \"auto\" or \"skb\" (replies through the veth's transmit path), or action = \"drop\""
        )),
        XdpMode::Auto | XdpMode::Off => plain(Attempt::NativeElseSkb),
        XdpMode::Native => plain(Attempt::Native),
        XdpMode::Skb => plain(Attempt::Skb),
    }
}

/// For `ingress check`: the attach the daemon would make here, as a line
/// (a refusal is a warning: the daemon serves without XDP). `None` with
/// `mode = "off"`.
pub fn check(cfg: &crate::config::XdpConfig) -> Option<String> {
    if cfg.mode == XdpMode::Off {
        return None;
    }
    let interface = cfg.interface.as_deref().unwrap_or_default();
    let link = match link(interface) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
            return Some(format!(
                "xdp: no interface {interface} in this network namespace; its mode is chosen at start"
            ));
        }
        Err(e) => return Some(format!("xdp: {interface}: reading its driver: {e}")),
    };
    Some(match plan(cfg.mode, cfg.action, interface, Some(&link)) {
        Ok(p) => {
            let attempt = match p.attempt {
                Attempt::Native => "native",
                Attempt::Skb => "skb",
                Attempt::NativeElseSkb => "native, else skb",
            };
            let why = p.reason.map(|r| format!(" ({r})")).unwrap_or_default();
            format!(
                "xdp: {interface} (driver {}, this network namespace): {attempt}{why}",
                link.driver
            )
        }
        Err(refused) => format!("xdp: WARNING: XDP will not attach, the daemon serves without it: {refused}"),
    })
}

/// The driver of `interface` in this network namespace, and whether its
/// `XDP_TX` leaves through a veth.
pub fn link(interface: &str) -> std::io::Result<Link> {
    let name = driver(interface)?;
    let veth = match name.as_str() {
        "veth" => true,
        "bonding" => std::fs::read_dir(format!("/sys/class/net/{interface}"))?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("lower_").map(str::to_owned))
            .any(|slave| driver(&slave).is_ok_and(|d| d == "veth")),
        _ => false,
    };
    Ok(Link { driver: name, veth })
}

/// `struct ethtool_drvinfo` from `<linux/ethtool.h>`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}
const _: () = assert!(size_of::<DrvInfo>() == 196);

/// The kernel driver behind `interface` (`ETHTOOL_GDRVINFO`).
fn driver(interface: &str) -> std::io::Result<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) || name.contains(&b'/') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("interface name {interface:?}"),
        ));
    }
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: both are plain C structs for which all-zero bytes are valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL reads `req` (a NUL-terminated name, the rest zero,
    // and a pointer to `info`; both live for the call) and writes at most
    // `size_of::<DrvInfo>()` bytes through that pointer.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &raw mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rst_on_a_veth_attaches_in_skb_mode_or_is_refused_in_native_mode() {
        let veth = Some(&Link {
            driver: "veth".into(),
            veth: true,
        });
        let auto = plan(XdpMode::Auto, XdpAction::Rst, "v0", veth).unwrap();
        assert_eq!(auto.attempt, Attempt::Skb);
        assert!(auto.reason.unwrap().contains("v0, a veth"));
        let native = plan(XdpMode::Native, XdpAction::Rst, "v0", veth).unwrap_err();
        assert!(native.contains("v0, a veth") && native.contains("XDP_TX"), "{native}");
        assert_eq!(
            plan(XdpMode::Skb, XdpAction::Rst, "v0", veth).unwrap(),
            Plan {
                attempt: Attempt::Skb,
                reason: None
            }
        );
    }

    #[test]
    fn drop_and_other_drivers_keep_the_configured_mode() {
        for (mode, attempt) in [
            (XdpMode::Auto, Attempt::NativeElseSkb),
            (XdpMode::Native, Attempt::Native),
            (XdpMode::Skb, Attempt::Skb),
        ] {
            let veth = Link {
                driver: "veth".into(),
                veth: true,
            };
            let nic = Link {
                driver: "mlx5_core".into(),
                veth: false,
            };
            for (action, link) in [
                (XdpAction::Drop, Some(&veth)),
                (XdpAction::Rst, Some(&nic)),
                (XdpAction::Rst, None),
            ] {
                assert_eq!(plan(mode, action, "e0", link).unwrap().attempt, attempt);
            }
        }
    }

    #[test]
    fn a_bad_interface_name_is_named_and_a_missing_one_is_enodev() {
        assert_eq!(link("no-such-if0").unwrap_err().raw_os_error(), Some(libc::ENODEV));
        let err = link("a-name-longer-than-ifnamsiz").unwrap_err();
        assert!(err.to_string().contains("a-name-longer"), "{err}");
    }
}
