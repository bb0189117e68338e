//! Control path: keeps the maps in step with the servers — the shed policy,
//! the projection of server views into `FLEETS` entries, the lease renewal,
//! and the task that runs them on every change.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ingress_common::{FleetEntry, REPORTED_NONE};

use super::{XdpHandle, XdpStatus};
use crate::{
    config::Config,
    data::DataCtx,
    model::{ServerState, XdpMode, monotonic_ns},
};

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

/// `FLEETS` entries for the servers of routed pools, the total effective
/// capacity of those that are UP, and whether every one had its first check.
fn fleet_entries(ctx: &DataCtx) -> (Vec<FleetEntry>, u64, bool) {
    let now_ns = monotonic_ns();
    let mut entries = Vec::new();
    let (mut total, mut all_checked) = (0u64, true);
    for v in ctx.runtime.load().server_views().into_iter().filter(|v| v.routed) {
        if v.state == ServerState::Up {
            total += u64::from(v.effective);
        }
        all_checked &= v.check.at.is_some();
        let age_ns = v.last_report.map(|t| t.elapsed().as_nanos() as u64);
        entries.push(FleetEntry {
            id: v.id,
            pool_id: v.pool_index as u32,
            state: v.state.bpf_code(),
            maxconn: v.maxconn,
            active: v.active + v.inherited,
            reported: v.reported.unwrap_or(REPORTED_NONE),
            effective: v.effective,
            _pad: 0,
            last_report_ns: age_ns.map_or(0, |a| now_ns.saturating_sub(a)),
        });
    }
    (entries, total, all_checked)
}

/// Keeps the maps in step: on every change notification and at least every
/// quarter lease; renews the lease while shedding. Ends when `stop` fires,
/// then clears the shed flag (the link detaches when the handle drops); or
/// when `handed_over` does (a new process took the link): then leaves the
/// maps as they are for it. With `inherited` (this process took the link
/// from the one it replaced), the control entry is left as that one wrote
/// it until every server had its first check here.
pub async fn run_sync(
    ctx: Arc<DataCtx>,
    status: Arc<XdpStatus>,
    mut handle: XdpHandle,
    lease: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
    upgrades: Upgrades,
) {
    let Upgrades {
        mut handed_over,
        mut pins,
        mut go,
        inherited,
    } = upgrades;
    let mut stop = stop;
    if inherited {
        // The old process owns the maps until it says go.
        tokio::select! {
            _ = go.wait_for(|g| *g) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = handle.apply_config() {
            tracing::error!(error = %e, "writing PORTS and the carriers");
        }
    }
    let mut hold_control = inherited;
    let mut policy = ShedPolicy::new(Duration::from_secs(1));
    let tick = (lease / 4).min(Duration::from_millis(250));
    let mut changed = ctx.changed.subscribe();
    loop {
        let (entries, total, all_checked) = fleet_entries(&ctx);
        // No shedding before every server had its first check: at start "no capacity" only means "not checked yet".
        let shed = all_checked && policy.update(total, Instant::now());
        if let Err(e) = handle.write_fleets(&entries) {
            tracing::error!(error = %e, "writing FLEETS");
        }
        hold_control &= !all_checked;
        let leaving = ctx.is_leaving();
        let written = if leaving {
            handle.write_control_leaving(total, lease.as_nanos() as u64)
        } else if hold_control {
            Ok(())
        } else {
            handle.write_control(shed, total, lease.as_nanos() as u64)
        };
        if let Err(e) = &written {
            tracing::error!(error = %e, "writing CONTROL");
        }
        let counters = handle.counters();
        let was = status.view();
        if leaving && !was.leaving {
            tracing::info!(interface = %handle.interface, "leaving the group: new carrier SYNs dropped in XDP");
        }
        if was.shedding != shed {
            if shed {
                tracing::warn!(interface = %handle.interface, "no fleet has capacity: shedding new carrier connections in XDP");
            } else {
                tracing::info!(interface = %handle.interface, total_capacity = total, "capacity is back: XDP shedding off");
            }
        }
        status.update(|s| {
            s.shedding = shed;
            s.leaving = leaving && written.is_ok();
            s.total_capacity = total;
            s.counters = counters;
        });
        tokio::select! {
            // Handed over wins over everything: it must never clear CONTROL.
            biased;
            _ = handed_over.wait_for(|h| *h) => {
                tracing::info!("XDP handed over to the new process");
                return;
            }
            _ = changed.changed() => {}
            () = tokio::time::sleep(tick) => {}
            _ = stop.changed() => break,
            Some(request) = pins.recv() => match request {
                LinkRequest::Pin { path, reply } => {
                    let pinned = handle.pin_link(&path).map(|()| handle.mode.to_owned()).map_err(|e| e.to_string());
                    let _ = reply.send(pinned);
                }
                LinkRequest::Reclaim { reply } => {
                    let _ = reply.send(handle.reclaim().map_err(|e| e.to_string()));
                }
            },
        }
    }
    if *handed_over.borrow() {
        return;
    }
    let _ = handle.write_control(false, 0, 0);
    status.update(|s| {
        s.attached = false;
        s.shedding = false;
    });
    drop(handle);
    tracing::info!("XDP program detached");
}

/// The sync task's part in binary upgrades.
#[derive(Debug)]
pub struct Upgrades {
    /// Turns true once a new process took the link.
    pub handed_over: tokio::sync::watch::Receiver<bool>,
    /// Requests about the link from an upgrade.
    pub pins: tokio::sync::mpsc::Receiver<LinkRequest>,
    /// This process took the link from the one it replaced.
    pub inherited: bool,
    /// Turns true when the old process says go (at once for a fresh start).
    pub go: tokio::sync::watch::Receiver<bool>,
}

/// What an upgrade asks of the sync task.
#[derive(Debug)]
pub enum LinkRequest {
    /// Pin the XDP link at `path` for a new process; the reply is its mode.
    Pin {
        path: std::path::PathBuf,
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
    /// The upgrade was abandoned: take the link and the maps back.
    Reclaim {
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

/// Sets XDP up from the config, or explains (loudly, once) why not.
pub fn start(
    config: &Config,
    ports: &[u16],
    inherited: Option<&(std::path::PathBuf, String)>,
) -> Result<XdpHandle, String> {
    if config.xdp.mode == XdpMode::Off {
        return Err("xdp.mode = \"off\"".to_owned());
    }
    let missing = super::caps::missing();
    if !missing.is_empty() {
        return Err(format!(
            "missing capabilities {} (uid {}; the packaged unit grants them)",
            missing.join(", "),
            nix::unistd::geteuid()
        ));
    }
    XdpHandle::attach(&config.xdp, ports, inherited).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
