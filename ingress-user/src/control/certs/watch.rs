//! Following the certificate directory without a signal: inotify
//! (recursive, so the re-pointed links inside a certbot lineage are seen)
//! wakes a reload at once, and a fingerprint taken every [`POLL`] catches
//! what inotify cannot see: a link's target changed in place, the
//! directory created after start, a deploy hook's `chmod`.

use std::{path::Path, sync::Arc, time::Duration};

use tokio::{sync::mpsc, task::JoinHandle};

use super::{CertStore, source};

/// How often the fingerprint is compared.
pub const POLL: Duration = Duration::from_millis(500);
/// A burst of events (write, then rename; certbot's four links) settles this long.
const SETTLE: Duration = Duration::from_millis(150);

/// Follows the store's directory until dropped.
pub struct CertWatcher {
    task: JoinHandle<()>,
}

impl Drop for CertWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts following `store`'s directory.
pub fn spawn(store: Arc<CertStore>) -> CertWatcher {
    let task = tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut inotify: Option<notify::RecommendedWatcher> = None;
        let mut said = false;
        // Nothing seen yet: the first comparison reloads, so a change made
        // between the store's load and this task's start is not missed.
        let mut last = Vec::new();
        // Arming is tried at start and after a change, not at every poll.
        let mut try_arm = true;
        loop {
            let dir = store.dir();
            if inotify.is_none() && std::mem::take(&mut try_arm) {
                match arm(&dir, tx.clone()) {
                    Ok(w) => inotify = Some(w),
                    Err(e) if !said => {
                        said = true;
                        tracing::warn!(error = %e, dir = %dir.display(), every_ms = POLL.as_millis() as u64, "cannot watch the certificate directory; comparing it on a timer");
                    }
                    Err(_) => {}
                }
            }
            let woken = tokio::select! {
                Some(()) = rx.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                    true
                }
                () = tokio::time::sleep(POLL) => false,
            };
            let now = source::fingerprint(&dir);
            if !woken && now == last {
                continue;
            }
            let paths = |f: &source::Fingerprint| f.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
            if !dir.is_dir() || paths(&now) != paths(&last) {
                // Watches die with their directory, and a lineage made after
                // the watch began may have none: arm again.
                inotify = None;
            }
            try_arm = true;
            last = now;
            let store = Arc::clone(&store);
            let _ = tokio::task::spawn_blocking(move || store.reload()).await;
        }
    });
    CertWatcher { task }
}

/// Whether an event can change what is served: not the opens and reads of
/// the reload itself (inotify reports them, and acting on them would reload
/// forever), but a file closed after writing, created, renamed, removed, or
/// its mode changed.
fn changes(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(a) => *a == AccessKind::Close(AccessMode::Write),
        _ => true,
    }
}

fn arm(dir: &Path, tx: mpsc::UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| changes(&e.kind)) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::Recursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    /// The watcher's own reads are no change: with a refused bundle in the
    /// directory, no reload happens (and no error is counted) while nothing
    /// changes, and one happens when a file is written.
    #[tokio::test]
    async fn reading_the_directory_does_not_wake_the_watcher() {
        let dir = std::env::temp_dir().join(format!("ingress-certs-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Empty, as before certbot's first issuance: the store waits for one.
        let store = CertStore::load(&dir, None, crate::control::tls::provider(), true).unwrap();
        let _w = spawn(Arc::clone(&store));
        std::fs::write(dir.join("broken.pem"), "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
        let deadline = std::time::Instant::now() + POLL * 4;
        while store.errors.load(Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "a written file was not noticed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let refused = store.errors.load(Relaxed);
        // A quiet window several polls and settles long: nothing to wait for.
        tokio::time::sleep(POLL * 4).await;
        assert_eq!(store.errors.load(Relaxed), refused, "reloaded with nothing changed");
        assert!(store.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
