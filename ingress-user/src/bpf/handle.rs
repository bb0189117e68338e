//! Control path: the loaded XDP program and its pinned maps — load (re-using
//! pins), attach, fill `PORTS` and the carrier tries, write `FLEETS` and
//! `CONTROL`, read the per-CPU counters, and run crafted packets through
//! `BPF_PROG_TEST_RUN`.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId, XdpMode as AyaXdpMode},
    },
};
use ingress_common::{ControlEntry, FleetEntry, action, counter, map_names};

use super::mode::Attempt;
use crate::config::XdpConfig;
use crate::model::{XdpAction, addr::parse_prefix, monotonic_ns};

/// The compiled XDP object, built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ingress-xdp"));

/// Why XDP could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program `{0}` missing from the object")]
    MissingProgram(&'static str),
    #[error("program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("{path}: {source}")]
    Pin { path: PathBuf, source: std::io::Error },
    #[error("attach to {interface}: {reason}")]
    Attach { interface: String, reason: String },
}

pub(super) fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> XdpError {
    move |source| XdpError::Map { name, source }
}

/// The loaded, attached program and its maps.
pub struct XdpHandle {
    ebpf: Ebpf,
    pub interface: String,
    pub mode: &'static str,
    /// Why `mode` is not the configured one, when it is not.
    pub mode_reason: Option<String>,
    action: u32,
    generation: u64,
    /// The attachment while this program holds it.
    link: Option<XdpLinkId>,
    /// The attachment once pinned for a new process (an upgrade): held
    /// here too, so that it outlives a new process that fails.
    pinned: Option<PinnedLink>,
    /// What this program was given, to give it again after a new process
    /// that failed had written its own ([`Self::reclaim`]).
    ports: Vec<u16>,
    carriers: Vec<String>,
}

impl std::fmt::Debug for XdpHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpHandle").field("interface", &self.interface).finish()
    }
}

impl XdpHandle {
    /// Loads the object with maps pinned under `pin_path` (re-using existing
    /// pins), fills `PORTS` and the carrier tries, and attaches. With the
    /// pin of a link the replaced process held (an upgrade), the new
    /// program replaces the old one on that link in one step, and the
    /// control entry is left as the old process wrote it: carriers are
    /// shed, or not, throughout.
    pub fn attach(cfg: &XdpConfig, ports: &[u16], inherited: Option<&(PathBuf, String)>) -> Result<Self, XdpError> {
        let interface = cfg.interface.clone().unwrap_or_default();
        std::fs::create_dir_all(&cfg.pin_path).map_err(|source| XdpError::Pin {
            path: cfg.pin_path.clone(),
            source,
        })?;
        let ebpf = match load(Some(&cfg.pin_path)) {
            Ok(e) => e,
            // Taking over from a running process: its maps, or nothing.
            Err(first) if inherited.is_some() => return Err(first.into()),
            Err(first) => {
                // Pins left by an older build may not fit this object: start afresh.
                tracing::warn!(error = %first, "pinned maps could not be reused; re-creating them");
                for name in map_names::ALL {
                    let _ = std::fs::remove_file(cfg.pin_path.join(name));
                }
                load(Some(&cfg.pin_path))?
            }
        };
        let mut handle = Self::prepare(ebpf, cfg.action, ports, &cfg.carriers, inherited.is_none())?;
        handle.interface = interface.clone();
        if let Some((pin, mode)) = inherited {
            let pin_err = |reason: String| XdpError::Attach {
                interface: interface.clone(),
                reason: format!("the link pinned at {}: {reason}", pin.display()),
            };
            let link = FdLink::from(PinnedLink::from_pin(pin).map_err(|e| pin_err(e.to_string()))?);
            let link = XdpLink::try_from(link).map_err(|e| pin_err(e.to_string()))?;
            handle.link = Some(handle.program_mut()?.attach_to_link(link)?);
            handle.mode = if mode == "native" { "native" } else { "skb" };
            handle.mode_reason = inherited_reason(cfg, &interface, handle.mode);
            return Ok(handle);
        }
        let link = read_link(&interface);
        let plan =
            super::mode::plan(cfg.mode, cfg.action, &interface, link.as_ref()).map_err(|reason| XdpError::Attach {
                interface: interface.clone(),
                reason,
            })?;
        let mut reason = plan.reason;
        let program = handle.program_mut()?;
        let attach_err = |e: aya::programs::ProgramError| XdpError::Attach {
            interface: interface.clone(),
            reason: e.to_string(),
        };
        let (link, mode) = match plan.attempt {
            Attempt::Native => (
                program.attach(&interface, AyaXdpMode::Driver).map_err(attach_err)?,
                "native",
            ),
            Attempt::Skb => (program.attach(&interface, AyaXdpMode::Skb).map_err(attach_err)?, "skb"),
            Attempt::NativeElseSkb => match program.attach(&interface, AyaXdpMode::Driver) {
                Ok(link) => (link, "native"),
                Err(native) => {
                    tracing::info!(error = %native, "native XDP refused; trying SKB mode");
                    reason = Some(format!("native mode refused by the driver: {native}"));
                    (program.attach(&interface, AyaXdpMode::Skb).map_err(attach_err)?, "skb")
                }
            },
        };
        handle.link = Some(link);
        handle.mode = mode;
        handle.mode_reason = reason;
        Ok(handle)
    }

    /// Pins the attachment at `path` for a new process (an upgrade) to
    /// take with [`Self::attach`]. This handle keeps it too: if the new
    /// process fails, nothing changed for carriers.
    pub fn pin_link(&mut self, path: &Path) -> Result<(), XdpError> {
        let link_err = |reason: String| XdpError::Pin {
            path: path.to_owned(),
            source: std::io::Error::other(reason),
        };
        let fd = match self.pinned.take() {
            // Pinned for an upgrade that failed: pinned again here.
            Some(p) => FdLink::from(p),
            None => {
                let id = self.link.take().ok_or_else(|| link_err("not attached".to_owned()))?;
                let link = self.program_mut()?.take_link(id)?;
                FdLink::try_from(link)
                    .map_err(|e| link_err(format!("{e} (an attachment made by netlink cannot be handed over)")))?
            }
        };
        let _ = std::fs::remove_file(path);
        self.pinned = Some(fd.pin(path).map_err(|e| link_err(e.to_string()))?);
        Ok(())
    }

    /// After an upgrade was abandoned: this program back on the link (the
    /// new process may have swapped its own in), and this process's ports
    /// and carriers back in the maps.
    pub fn reclaim(&mut self) -> Result<(), XdpError> {
        // The maps first: whatever happens to the link, they are ours again.
        let maps = self.apply_config();
        if let Some(p) = self.pinned.take() {
            let link = XdpLink::try_from(FdLink::from(p)).map_err(|e| XdpError::Attach {
                interface: self.interface.clone(),
                reason: e.to_string(),
            })?;
            self.link = Some(self.program_mut()?.attach_to_link(link)?);
        }
        maps
    }

    /// Writes this program's ports and carriers into the maps.
    pub fn apply_config(&mut self) -> Result<(), XdpError> {
        let (ports, carriers) = (self.ports.clone(), self.carriers.clone());
        self.set_ports(&ports)?;
        self.set_carriers(&carriers)
    }

    /// Loads the program with private (unpinned) maps and attaches it nowhere:
    /// for running crafted packets through it with `BPF_PROG_TEST_RUN`.
    pub fn load_detached(action: XdpAction, ports: &[u16], carriers: &[String]) -> Result<Self, XdpError> {
        Self::prepare(load(None)?, action, ports, carriers, true)
    }

    /// Loads the program; for a fresh start (`fresh`) fills `PORTS` and
    /// the carriers and writes a control entry that sheds nothing, while a
    /// process taking over leaves the maps to the old one until it is told
    /// to go ([`Self::apply_config`]).
    fn prepare(
        mut ebpf: Ebpf,
        action: XdpAction,
        ports: &[u16],
        carriers: &[String],
        fresh: bool,
    ) -> Result<Self, XdpError> {
        let program: &mut Xdp = ebpf
            .program_mut(ingress_common::PROGRAM_NAME)
            .ok_or(XdpError::MissingProgram(ingress_common::PROGRAM_NAME))?
            .try_into()?;
        program.load()?;
        let mut handle = Self {
            ebpf,
            interface: String::new(),
            mode: "detached",
            mode_reason: None,
            action: match action {
                XdpAction::Drop => action::DROP,
                XdpAction::Rst => action::RST,
            },
            generation: 0,
            link: None,
            pinned: None,
            ports: ports.to_vec(),
            carriers: carriers.to_vec(),
        };
        if fresh {
            handle.apply_config()?;
            handle.write_control(false, 0, 0)?;
        }
        Ok(handle)
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, XdpError> {
        Ok(self
            .ebpf
            .program_mut(ingress_common::PROGRAM_NAME)
            .ok_or(XdpError::MissingProgram(ingress_common::PROGRAM_NAME))?
            .try_into()?)
    }

    /// Runs one packet through the loaded program; returns the XDP verdict and the packet as the program left it.
    pub fn test_run(&mut self, packet: &[u8]) -> Result<(u32, Vec<u8>), XdpError> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let mut out = vec![0u8; packet.len() + 256];
        let program = self.program_mut()?;
        let result = program.test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Writes the control entry as given (tests use it for expired leases).
    pub fn set_control(&mut self, value: ControlEntry) -> Result<(), XdpError> {
        let mut map: Array<_, ControlEntry> =
            Array::try_from(self.map_mut(map_names::CONTROL)?).map_err(map_err(map_names::CONTROL))?;
        map.set(0, value, 0).map_err(map_err(map_names::CONTROL))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, XdpError> {
        self.ebpf.map_mut(name).ok_or(XdpError::MissingMap(name))
    }

    /// Replaces the listener ports.
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<(), XdpError> {
        let mut map: HashMap<_, u16, u8> =
            HashMap::try_from(self.map_mut(map_names::PORTS)?).map_err(map_err(map_names::PORTS))?;
        let old: Vec<u16> = map.keys().filter_map(Result::ok).collect();
        for p in old.iter().filter(|p| !ports.contains(p)) {
            map.remove(p).map_err(map_err(map_names::PORTS))?;
        }
        for p in ports {
            map.insert(p, 1, 0).map_err(map_err(map_names::PORTS))?;
        }
        Ok(())
    }

    /// Replaces the carrier prefixes; empty means every source.
    pub fn set_carriers(&mut self, carriers: &[String]) -> Result<(), XdpError> {
        let mut v4: Vec<(u32, [u8; 4])> = Vec::new();
        let mut v6: Vec<(u32, [u8; 16])> = Vec::new();
        if carriers.is_empty() {
            v4.push((0, [0; 4]));
            v6.push((0, [0; 16]));
        }
        for c in carriers {
            match parse_prefix(c) {
                Ok((IpAddr::V4(a), len)) => v4.push((len, a.octets())),
                Ok((IpAddr::V6(a), len)) => v6.push((len, a.octets())),
                Err(e) => tracing::error!(error = %e, "carrier prefix ignored"),
            }
        }
        {
            let mut trie: LpmTrie<_, [u8; 4], u32> =
                LpmTrie::try_from(self.map_mut(map_names::CARRIERS4)?).map_err(map_err(map_names::CARRIERS4))?;
            let old: Vec<Key<[u8; 4]>> = trie.keys().filter_map(Result::ok).collect();
            for k in &old {
                let _ = trie.remove(k);
            }
            for (len, data) in &v4 {
                trie.insert(&Key::new(*len, *data), 1, 0)
                    .map_err(map_err(map_names::CARRIERS4))?;
            }
        }
        let mut trie: LpmTrie<_, [u8; 16], u32> =
            LpmTrie::try_from(self.map_mut(map_names::CARRIERS6)?).map_err(map_err(map_names::CARRIERS6))?;
        let old: Vec<Key<[u8; 16]>> = trie.keys().filter_map(Result::ok).collect();
        for k in &old {
            let _ = trie.remove(k);
        }
        for (len, data) in &v6 {
            trie.insert(&Key::new(*len, *data), 1, 0)
                .map_err(map_err(map_names::CARRIERS6))?;
        }
        Ok(())
    }

    /// Writes the control entry; `lease` 0 means shedding cannot hold.
    pub fn write_control(&mut self, shed: bool, total: u64, lease_ns: u64) -> Result<(), XdpError> {
        self.write_control_as(shed, self.action, total, lease_ns)
    }

    /// [`Self::write_control`] with every shed SYN dropped, whatever the
    /// action: a process leaving its group (the carrier's retransmit finds
    /// the member that took the traffic; a RST would fail the call).
    pub fn write_control_leaving(&mut self, total: u64, lease_ns: u64) -> Result<(), XdpError> {
        self.write_control_as(true, action::DROP, total, lease_ns)
    }

    fn write_control_as(&mut self, shed: bool, action: u32, total: u64, lease_ns: u64) -> Result<(), XdpError> {
        self.generation += 1;
        let value = ControlEntry {
            total_capacity: u32::try_from(total).unwrap_or(u32::MAX),
            shed: u32::from(shed),
            action,
            _pad: 0,
            lease_deadline_ns: if shed {
                monotonic_ns().saturating_add(lease_ns)
            } else {
                0
            },
            generation: self.generation,
        };
        let mut map: Array<_, ControlEntry> =
            Array::try_from(self.map_mut(map_names::CONTROL)?).map_err(map_err(map_names::CONTROL))?;
        map.set(0, value, 0).map_err(map_err(map_names::CONTROL))
    }

    /// Makes `FLEETS` hold exactly `entries`.
    pub fn write_fleets(&mut self, entries: &[FleetEntry]) -> Result<(), XdpError> {
        let mut map: HashMap<_, u32, FleetEntry> =
            HashMap::try_from(self.map_mut(map_names::FLEETS)?).map_err(map_err(map_names::FLEETS))?;
        let old: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        for id in old.iter().filter(|id| !entries.iter().any(|e| e.id == **id)) {
            let _ = map.remove(id);
        }
        for e in entries {
            if map.get(&e.id, 0).ok().as_ref() != Some(e) {
                map.insert(e.id, e, 0).map_err(map_err(map_names::FLEETS))?;
            }
        }
        Ok(())
    }

    /// Per-outcome packet counts summed over CPUs.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let Some(map) = self.ebpf.map(map_names::COUNTERS) else {
            return Vec::new();
        };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
            return Vec::new();
        };
        sum_counters(&arr)
    }
}

/// The interface's driver for the mode plan; a failed read is said (the
/// plan then takes the interface as one with its own transmit ring).
fn read_link(interface: &str) -> Option<super::mode::Link> {
    super::mode::link(interface)
        .inspect_err(|e| tracing::warn!(%interface, error = %e, "reading the interface's driver for the XDP mode"))
        .ok()
}

/// Why a link taken over from the replaced process has its mode: the
/// reason the plan gives for it, or, when the plan would attach otherwise
/// (the old process was built before the rule, or the action changed), a
/// loud warning: the mode of a link cannot change, only a restart does it.
fn inherited_reason(cfg: &XdpConfig, interface: &str, mode: &str) -> Option<String> {
    let link = read_link(interface);
    let plan = super::mode::plan(cfg.mode, cfg.action, interface, link.as_ref());
    let fits = match &plan {
        Ok(p) => match p.attempt {
            Attempt::Native => mode == "native",
            Attempt::Skb => mode == "skb",
            Attempt::NativeElseSkb => true,
        },
        Err(_) => false,
    };
    if fits {
        return plan.ok().and_then(|p| p.reason);
    }
    let why = match plan {
        Ok(p) => p.reason.unwrap_or_default(),
        Err(refused) => refused,
    };
    let reason = format!(
        "{mode} mode taken over from the replaced process, which this config would not attach ({why}); \
         restart the daemon (an upgrade keeps the link's mode) to attach as configured"
    );
    tracing::warn!("################################################################");
    tracing::warn!(%interface, %reason, "XDP link kept in the wrong mode");
    tracing::warn!("################################################################");
    Some(reason)
}

fn load(pin_dir: Option<&Path>) -> Result<Ebpf, aya::EbpfError> {
    let mut loader = EbpfLoader::new();
    if let Some(dir) = pin_dir {
        for name in map_names::ALL {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    loader.load(OBJECT)
}

pub(super) fn sum_counters<T: std::borrow::Borrow<MapData>>(arr: &PerCpuArray<T, u64>) -> Vec<(&'static str, u64)> {
    (0..counter::COUNT)
        .map(|i| {
            let total = arr.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
            (counter::NAMES[i as usize], total)
        })
        .collect()
}
