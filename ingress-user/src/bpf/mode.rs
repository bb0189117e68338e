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

use std::os::fd::AsRawFd as _;

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

/// Why native `XDP_TX` replies are lost on a veth, in one clause.
pub const VETH_NATIVE_TX: &str = "on a veth, a native program's XDP_TX replies reach the peer only when the \
     peer runs an XDP program of its own, so carriers would never see the RST";

/// The plan for `mode` and `action` on `interface`, whose driver is `driver`
/// (`None`: unknown, taken as a driver with a transmit ring of its own). An
/// error refuses the combination, naming the interface and the reason.
pub fn plan(mode: XdpMode, action: XdpAction, interface: &str, driver: Option<&str>) -> Result<Plan, String> {
    let veth_rst = action == XdpAction::Rst && driver == Some("veth");
    let plain = |attempt| Ok(Plan { attempt, reason: None });
    match mode {
        XdpMode::Auto | XdpMode::Off if veth_rst => Ok(Plan {
            attempt: Attempt::Skb,
            reason: Some(format!(
                "action = \"rst\" on veth {interface}: SKB mode, whose XDP_TX replies go out through the \
                 veth's transmit path ({VETH_NATIVE_TX} in native mode)"
            )),
        }),
        XdpMode::Native if veth_rst => Err(format!(
            "mode = \"native\" with action = \"rst\" on {interface} (veth): {VETH_NATIVE_TX}; use mode = \
             \"auto\" or \"skb\" (replies through the veth's transmit path), or action = \"drop\""
        )),
        XdpMode::Auto | XdpMode::Off => plain(Attempt::NativeElseSkb),
        XdpMode::Native => plain(Attempt::Native),
        XdpMode::Skb => plain(Attempt::Skb),
    }
}

/// For `ingress check`: the attach the daemon would make on this host, as a
/// line; an error when it would refuse it. `None` with `mode = "off"`.
pub fn check(cfg: &crate::config::XdpConfig) -> Option<Result<String, String>> {
    if cfg.mode == XdpMode::Off {
        return None;
    }
    let interface = cfg.interface.as_deref().unwrap_or_default();
    let Ok(driver) = driver(interface) else {
        return Some(Ok(format!(
            "xdp: interface {interface} not found in this network namespace; its mode is chosen at start"
        )));
    };
    Some(plan(cfg.mode, cfg.action, interface, Some(&driver)).map(|p| {
        let attempt = match p.attempt {
            Attempt::Native => "native",
            Attempt::Skb => "skb",
            Attempt::NativeElseSkb => "native, else skb",
        };
        let why = p.reason.map(|r| format!(" ({r})")).unwrap_or_default();
        format!("xdp: {interface} (driver {driver}): {attempt}{why}")
    }))
}

/// The kernel driver behind `interface` in this network namespace
/// (`ethtool -i`'s `driver:`).
pub fn driver(interface: &str) -> std::io::Result<String> {
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
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("interface name {interface:?}"),
        ));
    }
    let socket = std::net::UdpSocket::bind(("127.0.0.1", 0)).or_else(|_| std::net::UdpSocket::bind(("::1", 0)))?;
    // SAFETY: both are plain C structs for which all-zero bytes are valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL reads `req` (a NUL-terminated name and a pointer to
    // `info`, both live for the call) and writes at most `size_of::<DrvInfo>()`
    // bytes through that pointer.
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
        let auto = plan(XdpMode::Auto, XdpAction::Rst, "v0", Some("veth")).unwrap();
        assert_eq!(auto.attempt, Attempt::Skb);
        assert!(auto.reason.unwrap().contains("veth v0"));
        let native = plan(XdpMode::Native, XdpAction::Rst, "v0", Some("veth")).unwrap_err();
        assert!(native.contains("v0 (veth)") && native.contains("XDP_TX"), "{native}");
        assert_eq!(
            plan(XdpMode::Skb, XdpAction::Rst, "v0", Some("veth")).unwrap(),
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
            for (action, driver) in [
                (XdpAction::Drop, Some("veth")),
                (XdpAction::Rst, Some("mlx5_core")),
                (XdpAction::Rst, None),
            ] {
                assert_eq!(plan(mode, action, "e0", driver).unwrap().attempt, attempt);
            }
        }
    }

    #[test]
    fn a_bad_interface_name_is_named() {
        let err = driver("a-name-longer-than-ifnamsiz").unwrap_err();
        assert!(err.to_string().contains("a-name-longer"), "{err}");
    }
}
