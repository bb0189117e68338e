//! Lifecycle: winding a process down — its listeners are already closed;
//! live calls go on until they end or the grace is over, then each gets a
//! Close 1001 at its next message boundary and a short window to finish.

use std::time::Duration;

use tokio::{signal::unix::Signal, time::Instant};

use crate::data::{DataCtx, tunnel};

/// The signals that shorten a wind-down.
pub struct Signals<'a> {
    pub term: &'a mut Signal,
    pub int: &'a mut Signal,
}

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
