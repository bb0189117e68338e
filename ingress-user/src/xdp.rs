//! Control path: loads and attaches the XDP program, pins its maps, and keeps
//! them in step with the servers: `FLEETS` per server, `CONTROL` with the
//! total effective capacity, the shed flag and a lease the kernel honours
//! only while the daemon keeps renewing it (fail open).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
    programs::{Xdp, xdp::XdpMode as AyaXdpMode},
};
use ingress_common::{Control, FleetEntry, REPORTED_NONE, action, counter, map_names};
use serde::Serialize;

use crate::{
    config::{Config, XdpAction, XdpConfig, XdpMode},
    runtime::Shared,
};

/// The compiled XDP object, built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ingress"));

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

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> XdpError {
    move |source| XdpError::Map { name, source }
}

/// Parses `192.0.2.0/24`, `2001:db8::/32` or a bare address.
pub fn parse_prefix(s: &str) -> Result<(IpAddr, u32), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.trim().parse().map_err(|e| format!("`{s}`: {e}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
    };
    Ok((ip, len))
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

/// What `/metrics`, `/api/status` and `stat` show about XDP.
#[derive(Debug, Clone, Default, Serialize)]
pub struct XdpSnapshot {
    pub attached: bool,
    pub interface: Option<String>,
    /// `native` or `skb` when attached.
    pub mode: Option<String>,
    pub shedding: bool,
    pub total_capacity: u64,
    /// Why XDP is not attached, when it is not.
    pub error: Option<String>,
    pub counters: Vec<(&'static str, u64)>,
}

/// Shared XDP status, written by the sync task.
#[derive(Debug, Default)]
pub struct XdpState(Mutex<XdpSnapshot>);

impl XdpState {
    pub fn snapshot(&self) -> XdpSnapshot {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn update(&self, f: impl FnOnce(&mut XdpSnapshot)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// Turns shedding on at once when capacity is 0, and off only after it has
/// stayed above 0 for `hold` (no flapping on one freed slot).
#[derive(Debug, Clone)]
pub struct ShedPolicy {
    hold: Duration,
    shedding: bool,
    positive_since: Option<Instant>,
}

impl ShedPolicy {
    pub fn new(hold: Duration) -> Self {
        Self {
            hold,
            shedding: false,
            positive_since: None,
        }
    }

    pub fn update(&mut self, total_capacity: u64, now: Instant) -> bool {
        if total_capacity == 0 {
            self.shedding = true;
            self.positive_since = None;
        } else if self.shedding {
            let since = *self.positive_since.get_or_insert(now);
            if now.duration_since(since) >= self.hold {
                self.shedding = false;
                self.positive_since = None;
            }
        }
        self.shedding
    }
}

/// The loaded, attached program and its maps.
pub struct XdpHandle {
    ebpf: Ebpf,
    pub interface: String,
    pub mode: &'static str,
    action: u32,
    generation: u64,
}

impl std::fmt::Debug for XdpHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpHandle").field("interface", &self.interface).finish()
    }
}

impl XdpHandle {
    /// Loads the object with maps pinned under `pin_path` (re-using existing
    /// pins), fills `PORTS` and the carrier tries, and attaches.
    pub fn attach(cfg: &XdpConfig, ports: &[u16]) -> Result<Self, XdpError> {
        let interface = cfg.interface.clone().unwrap_or_default();
        std::fs::create_dir_all(&cfg.pin_path).map_err(|source| XdpError::Pin {
            path: cfg.pin_path.clone(),
            source,
        })?;
        let ebpf = match load(Some(&cfg.pin_path)) {
            Ok(e) => e,
            Err(first) => {
                // Pins left by an older build may not fit this object: start afresh.
                tracing::warn!(error = %first, "pinned maps could not be reused; re-creating them");
                for name in map_names::ALL {
                    let _ = std::fs::remove_file(cfg.pin_path.join(name));
                }
                load(Some(&cfg.pin_path))?
            }
        };
        let mut handle = Self::prepare(ebpf, cfg.action, ports, &cfg.carriers)?;
        handle.interface = interface.clone();
        let program = handle.program_mut()?;
        let attach_err = |e: aya::programs::ProgramError| XdpError::Attach {
            interface: interface.clone(),
            reason: e.to_string(),
        };
        handle.mode = match cfg.mode {
            XdpMode::Native => program
                .attach(&interface, AyaXdpMode::Driver)
                .map(|_| "native")
                .map_err(attach_err)?,
            XdpMode::Skb => program
                .attach(&interface, AyaXdpMode::Skb)
                .map(|_| "skb")
                .map_err(attach_err)?,
            XdpMode::Auto | XdpMode::Off => match program.attach(&interface, AyaXdpMode::Driver) {
                Ok(_) => "native",
                Err(native) => {
                    tracing::info!(error = %native, "native XDP refused; trying SKB mode");
                    program
                        .attach(&interface, AyaXdpMode::Skb)
                        .map(|_| "skb")
                        .map_err(attach_err)?
                }
            },
        };
        Ok(handle)
    }

    /// Loads the program with private (unpinned) maps and attaches it nowhere:
    /// for running crafted packets through it with `BPF_PROG_TEST_RUN`.
    pub fn load_detached(action: XdpAction, ports: &[u16], carriers: &[String]) -> Result<Self, XdpError> {
        Self::prepare(load(None)?, action, ports, carriers)
    }

    fn prepare(mut ebpf: Ebpf, action: XdpAction, ports: &[u16], carriers: &[String]) -> Result<Self, XdpError> {
        let program: &mut Xdp = ebpf
            .program_mut(ingress_common::PROGRAM_NAME)
            .ok_or(XdpError::MissingProgram(ingress_common::PROGRAM_NAME))?
            .try_into()?;
        program.load()?;
        let mut handle = Self {
            ebpf,
            interface: String::new(),
            mode: "detached",
            action: match action {
                XdpAction::Drop => action::DROP,
                XdpAction::Rst => action::RST,
            },
            generation: 0,
        };
        handle.set_ports(ports)?;
        handle.set_carriers(carriers)?;
        handle.write_control(false, 0, 0)?;
        Ok(handle)
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, XdpError> {
        Ok(self
            .ebpf
            .program_mut(ingress_common::PROGRAM_NAME)
            .ok_or(XdpError::MissingProgram(ingress_common::PROGRAM_NAME))?
            .try_into()?)
    }

    /// Attaches an already loaded (detached) program to `interface` in the
    /// caller's network namespace; it detaches when the handle drops.
    pub fn attach_to(&mut self, interface: &str, native: bool) -> Result<(), XdpError> {
        let mode = if native { AyaXdpMode::Driver } else { AyaXdpMode::Skb };
        let program = self.program_mut()?;
        program.attach(interface, mode).map_err(|e| XdpError::Attach {
            interface: interface.to_owned(),
            reason: e.to_string(),
        })?;
        self.interface = interface.to_owned();
        Ok(())
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
    pub fn set_control(&mut self, value: Control) -> Result<(), XdpError> {
        let mut map: Array<_, Control> =
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
        self.generation += 1;
        let value = Control {
            total_capacity: u32::try_from(total).unwrap_or(u32::MAX),
            shed: u32::from(shed),
            action: self.action,
            _pad: 0,
            lease_deadline_ns: if shed {
                monotonic_ns().saturating_add(lease_ns)
            } else {
                0
            },
            generation: self.generation,
        };
        let mut map: Array<_, Control> =
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

fn load(pin_dir: Option<&Path>) -> Result<Ebpf, aya::EbpfError> {
    let mut loader = EbpfLoader::new();
    if let Some(dir) = pin_dir {
        for name in map_names::ALL {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    loader.load(OBJECT)
}

fn sum_counters<T: std::borrow::Borrow<MapData>>(arr: &PerCpuArray<T, u64>) -> Vec<(&'static str, u64)> {
    (0..counter::COUNT)
        .map(|i| {
            let total = arr.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
            (counter::NAMES[i as usize], total)
        })
        .collect()
}

/// Whether every server of a routed pool has had at least one check.
fn all_checked(shared: &Shared) -> bool {
    let rt = shared.runtime.load();
    rt.routed_pools()
        .all(|p| p.servers.load().iter().all(|s| s.check_status().at.is_some()))
}

/// Server entries for `FLEETS`, from the live state of routed pools.
fn fleet_entries(shared: &Shared) -> (Vec<FleetEntry>, u64) {
    let rt = shared.runtime.load();
    let now_ns = monotonic_ns();
    let mut entries = Vec::new();
    let mut total = 0u64;
    for pool in rt.routed_pools() {
        for s in pool.servers.load().iter() {
            let state = s.state();
            let effective = s.effective();
            if state == crate::pool::State::Up {
                total += u64::from(effective);
            }
            let age_ns = s
                .last_report
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map(|t| t.elapsed().as_nanos() as u64);
            entries.push(FleetEntry {
                id: s.id,
                pool_id: pool.index as u32,
                state: state.bpf_code(),
                maxconn: s.maxconn,
                active: s.active(),
                reported: s.reported().unwrap_or(REPORTED_NONE),
                effective,
                _pad: 0,
                last_report_ns: age_ns.map_or(0, |a| now_ns.saturating_sub(a)),
            });
        }
    }
    (entries, total)
}

/// Keeps the maps in step: on every change notification and at least every
/// quarter lease; renews the lease while shedding. Ends when `stop` fires,
/// then clears the shed flag (the link detaches when the handle drops).
pub async fn run_sync(
    shared: Arc<Shared>,
    mut handle: XdpHandle,
    lease: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut policy = ShedPolicy::new(Duration::from_secs(1));
    let tick = (lease / 4).min(Duration::from_millis(250));
    let mut stop = stop;
    loop {
        let (entries, total) = fleet_entries(&shared);
        // No shedding before every server had its first check: at start "no capacity" only means "not checked yet".
        let shed = all_checked(&shared) && policy.update(total, Instant::now());
        if let Err(e) = handle.write_fleets(&entries) {
            tracing::error!(error = %e, "writing FLEETS");
        }
        if let Err(e) = handle.write_control(shed, total, lease.as_nanos() as u64) {
            tracing::error!(error = %e, "writing CONTROL");
        }
        let counters = handle.counters();
        let was = shared.xdp.snapshot().shedding;
        if was != shed {
            if shed {
                tracing::warn!(interface = %handle.interface, "no fleet has capacity: shedding new carrier connections in XDP");
            } else {
                tracing::info!(interface = %handle.interface, total_capacity = total, "capacity is back: XDP shedding off");
            }
        }
        shared.xdp.update(|s| {
            s.shedding = shed;
            s.total_capacity = total;
            s.counters = counters;
        });
        tokio::select! {
            () = shared.changed.notified() => {}
            () = tokio::time::sleep(tick) => {}
            _ = stop.changed() => break,
        }
    }
    let _ = handle.write_control(false, 0, 0);
    shared.xdp.update(|s| {
        s.attached = false;
        s.shedding = false;
    });
    drop(handle);
    tracing::info!("XDP program detached");
}

/// Sets XDP up from the config, or explains (loudly, once) why not.
pub fn start(config: &Config, ports: &[u16]) -> Result<XdpHandle, String> {
    if config.xdp.mode == XdpMode::Off {
        return Err("xdp.mode = \"off\"".to_owned());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root".to_owned());
    }
    XdpHandle::attach(&config.xdp, ports).map_err(|e| e.to_string())
}

/// `ingress bpf dump`: every pinned map, readable or as JSON.
pub fn dump(pin_dir: &Path, json: bool) -> Result<String, XdpError> {
    let open = |name: &'static str| -> Result<Map, XdpError> {
        let path = pin_dir.join(name);
        let data = MapData::from_pin(&path).map_err(map_err(name))?;
        Map::from_map_data(data).map_err(map_err(name))
    };
    let control: Control = Array::<_, Control>::try_from(open(map_names::CONTROL)?)
        .map_err(map_err(map_names::CONTROL))?
        .get(&0, 0)
        .map_err(map_err(map_names::CONTROL))?;
    let fleets_map =
        HashMap::<_, u32, FleetEntry>::try_from(open(map_names::FLEETS)?).map_err(map_err(map_names::FLEETS))?;
    let mut fleets: Vec<FleetEntry> = fleets_map.iter().filter_map(Result::ok).map(|(_, v)| v).collect();
    fleets.sort_by_key(|f| f.id);
    let ports_map = HashMap::<_, u16, u8>::try_from(open(map_names::PORTS)?).map_err(map_err(map_names::PORTS))?;
    let mut ports: Vec<u16> = ports_map.keys().filter_map(Result::ok).collect();
    ports.sort_unstable();
    let c4 =
        LpmTrie::<_, [u8; 4], u32>::try_from(open(map_names::CARRIERS4)?).map_err(map_err(map_names::CARRIERS4))?;
    let c6 =
        LpmTrie::<_, [u8; 16], u32>::try_from(open(map_names::CARRIERS6)?).map_err(map_err(map_names::CARRIERS6))?;
    let mut carriers: Vec<String> = c4
        .keys()
        .filter_map(Result::ok)
        .map(|k| format!("{}/{}", std::net::Ipv4Addr::from(k.data()), k.prefix_len()))
        .collect();
    carriers.extend(
        c6.keys()
            .filter_map(Result::ok)
            .map(|k| format!("{}/{}", std::net::Ipv6Addr::from(k.data()), k.prefix_len())),
    );
    let counters_arr =
        PerCpuArray::<_, u64>::try_from(open(map_names::COUNTERS)?).map_err(map_err(map_names::COUNTERS))?;
    let counters = sum_counters(&counters_arr);
    let now = monotonic_ns();
    let lease_left_ms = control.lease_deadline_ns.saturating_sub(now) / 1_000_000;
    if json {
        let v = serde_json::json!({
            "control": {
                "total_capacity": control.total_capacity,
                "shed": control.shed,
                "action": if control.action == action::RST { "rst" } else { "drop" },
                "lease_deadline_ns": control.lease_deadline_ns,
                "lease_left_ms": lease_left_ms,
                "shedding_now": control.shed != 0 && lease_left_ms > 0,
                "generation": control.generation,
            },
            "fleets": fleets.iter().map(|f| serde_json::json!({
                "id": f.id, "pool_id": f.pool_id, "state": state_name(f.state), "maxconn": f.maxconn,
                "active": f.active, "reported": (f.reported != REPORTED_NONE).then_some(f.reported),
                "effective": f.effective, "last_report_ns": f.last_report_ns,
            })).collect::<Vec<_>>(),
            "ports": ports,
            "carriers": carriers,
            "counters": counters.iter().map(|(k, v)| ((*k).to_owned(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        });
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    let mut out = String::new();
    out.push_str(&format!(
        "CONTROL  total_capacity={} shed={} action={} lease_left_ms={} generation={}\n",
        control.total_capacity,
        control.shed,
        if control.action == action::RST { "rst" } else { "drop" },
        lease_left_ms,
        control.generation
    ));
    out.push_str("FLEETS   id  pool  state  maxconn  active  reported  effective\n");
    for f in &fleets {
        let reported = if f.reported == REPORTED_NONE {
            "-".to_owned()
        } else {
            f.reported.to_string()
        };
        out.push_str(&format!(
            "         {:<3} {:<5} {:<6} {:<8} {:<7} {:<9} {}\n",
            f.id,
            f.pool_id,
            state_name(f.state),
            f.maxconn,
            f.active,
            reported,
            f.effective
        ));
    }
    out.push_str(&format!("PORTS    {ports:?}\nCARRIERS {carriers:?}\nCOUNTERS"));
    for (k, v) in &counters {
        out.push_str(&format!(" {k}={v}"));
    }
    out.push('\n');
    Ok(out)
}

fn state_name(code: u32) -> &'static str {
    use ingress_common::fleet_state as s;
    match code {
        s::UP => "UP",
        s::FULL => "FULL",
        s::DOWN => "DOWN",
        s::DRAIN => "DRAIN",
        s::MAINT => "MAINT",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(
            parse_prefix("192.0.2.0/24").unwrap(),
            ("192.0.2.0".parse().unwrap(), 24)
        );
        assert_eq!(parse_prefix("2001:db8::/32").unwrap().1, 32);
        assert_eq!(parse_prefix("10.0.0.1").unwrap().1, 32);
        assert!(parse_prefix("10.0.0.0/33").is_err());
        assert!(parse_prefix("fleet/8").is_err());
    }

    #[test]
    fn shedding_turns_on_at_once_and_off_after_the_hold() {
        let t0 = Instant::now();
        let mut p = ShedPolicy::new(Duration::from_secs(1));
        assert!(!p.update(5, t0));
        assert!(p.update(0, t0), "no capacity: shed at once");
        assert!(
            p.update(1, t0 + Duration::from_millis(100)),
            "one freed slot does not stop shedding"
        );
        assert!(p.update(0, t0 + Duration::from_millis(200)));
        assert!(p.update(2, t0 + Duration::from_millis(300)));
        assert!(
            !p.update(2, t0 + Duration::from_millis(1300)),
            "capacity held for the hold: off"
        );
    }
}
