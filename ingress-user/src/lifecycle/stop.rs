//! Lifecycle: winding a process down — leaving its group first when it is
//! in one (withdrawn, health path 503, new carrier SYNs dropped, calls
//! closed with 1001 while their path still works); then, the listeners
//! closed, live calls go on until they end or the grace is over, and each
//! gets a Close 1001 at its next message boundary and a short window to finish.

use std::time::Duration;

use tokio::{signal::unix::Signal, time::Instant};

use super::announce::Announcing;
use crate::{
    bpf::XdpStatus,
    data::{DataCtx, tunnel},
};

/// The signals that shorten a wind-down.
pub struct Signals<'a> {
    pub term: &'a mut Signal,
    pub int: &'a mut Signal,
}

/// Leaves the group before the listeners close. Without a `grace`
/// (`[group] leave`), withdraws the announced addresses and is done. With
/// one, the order keeps every call's path working until it is closed:
/// first no new carrier connection (XDP drops their SYNs, whose
/// retransmits find the member that takes the traffic; a RST would fail
/// them), then a Close 1001 to every call, waited for (at most
/// [`CLOSING`]), and only then the traffic given up: the announced
/// addresses withdrawn (their renewal stopped just before) and the health
/// path answering 503 (a VRRP peer's tracked check moves the address). XDP
/// goes on dropping new SYNs for the grace after that, the listeners still
/// open. A signal skips to the withdrawal and ends the grace.
pub async fn leave(
    data: &DataCtx,
    xdp: &XdpStatus,
    announcing: Option<Announcing>,
    grace: Duration,
    signals: &mut Signals<'_>,
) {
    let mut interrupted = grace.is_zero();
    if !interrupted {
        let dropping = xdp.view().attached;
        if dropping {
            tracing::info!(
                calls = data.calls_open(),
                "leaving the group: new carrier SYNs dropped, calls closed with 1001"
            );
        } else {
            tracing::warn!(
                calls = data.calls_open(),
                "leaving the group without XDP: new calls are still accepted (and closed with 1001); calls closed with 1001"
            );
        }
        data.leave();
        // The drop is in the maps before a carrier hears 1001 and dials again.
        let written = Instant::now() + Duration::from_millis(500);
        while dropping && !xdp.view().leaving && Instant::now() < written {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = signals.term.recv() => { interrupted = true; break; }
                _ = signals.int.recv() => { interrupted = true; break; }
            }
        }
        data.end_calls();
        let mut changes = data.changed.subscribe();
        let closing = Instant::now() + CLOSING;
        while !interrupted && data.calls_open() > 0 {
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                () = tokio::time::sleep_until(closing) => break,
                _ = signals.term.recv() => interrupted = true,
                _ = signals.int.recv() => interrupted = true,
            }
        }
    }
    if let Some(a) = announcing {
        a.stop_renewing().await.withdraw_now().await;
    }
    if grace.is_zero() {
        return;
    }
    data.withdraw();
    tracing::info!(
        calls = data.calls_open(),
        grace = %humantime::format_duration(grace),
        "left the group: withdrawn, health path 503; new carrier SYNs still dropped for the grace"
    );
    if interrupted {
        return;
    }
    tokio::select! {
        () = tokio::time::sleep(grace) => {}
        _ = signals.term.recv() => {}
        _ = signals.int.recv() => {}
    }
}

/// How long leaving waits for the calls to answer their 1001.
pub const CLOSING: Duration = Duration::from_millis(2500);

/// Calls, and connections on their way to being one.
fn calls(data: &DataCtx) -> usize {
    data.in_flight()
}

/// Waits for the calls to end until `grace` is over, then ends the rest
/// with a Close 1001 and waits for them at most [`tunnel::CLOSE_WINDOW`].
/// SIGINT ends the grace at once; so does SIGTERM, unless `term_grace` is
/// given: then the first SIGTERM shortens the grace to that (an upgrade's
/// old process asked to stop keeps its calls as a stopping one would).
pub async fn wind_down(data: &DataCtx, grace: Duration, mut term_grace: Option<Duration>, signals: Signals<'_>) {
    let mut deadline = Instant::now() + grace;
    let mut changes = data.changed.subscribe();
    // Woken when a call ends (the tick is a backstop, and catches the end of
    // a connection being set up). An http route's connections are not waited for.
    while calls(data) > 0 {
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = tokio::time::sleep_until(deadline) => break,
            _ = signals.term.recv() => match term_grace.take() {
                Some(g) => deadline = deadline.min(Instant::now() + g),
                None => break,
            },
            _ = signals.int.recv() => break,
        }
    }
    if calls(data) == 0 {
        return;
    }
    tracing::info!(
        calls = data.calls_open(),
        "closing the calls left with 1001 (going away)"
    );
    data.end_calls();
    let closing = Instant::now() + tunnel::CLOSE_WINDOW;
    while calls(data) > 0 {
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = tokio::time::sleep_until(closing) => break,
        }
    }
}

/// Waits (a little) until every admin connection closed: the answer to
/// `ctl upgrade` must have gone out before the old process exits.
pub async fn admin_answered(open: &std::sync::atomic::AtomicUsize) {
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while open.load(std::sync::atomic::Ordering::Relaxed) > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
