//! Control path: `ingress bpf dump` — every pinned map, readable or as JSON,
//! read from bpffs without the daemon.

use std::path::Path;

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray};
use ingress_common::{ControlEntry, FleetEntry, REPORTED_NONE, action, map_names};

use super::handle::{XdpError, map_err, sum_counters};
use crate::model::{ServerState, monotonic_ns};

fn open(pin_dir: &Path, name: &'static str) -> Result<Map, XdpError> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

/// The pinned control entry (shed flag, lease, generation).
pub fn read_control(pin_dir: &Path) -> Result<ControlEntry, XdpError> {
    Array::<_, ControlEntry>::try_from(open(pin_dir, map_names::CONTROL)?)
        .map_err(map_err(map_names::CONTROL))?
        .get(&0, 0)
        .map_err(map_err(map_names::CONTROL))
}

/// `ingress bpf dump`: every pinned map, readable or as JSON.
pub fn dump(pin_dir: &Path, json: bool) -> Result<String, XdpError> {
    let open = |name: &'static str| open(pin_dir, name);
    let control = read_control(pin_dir)?;
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
                "id": f.id, "pool_id": f.pool_id, "state": ServerState::from_bpf_code(f.state).map_or("?", ServerState::as_str), "maxconn": f.maxconn,
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
            ServerState::from_bpf_code(f.state).map_or("?", ServerState::as_str),
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
