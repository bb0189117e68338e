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

/// Starts following `store`'s directory; its first reload is the caller's.
pub fn spawn(store: Arc<CertStore>) -> CertWatcher {
    let task = tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut inotify: Option<notify::RecommendedWatcher> = None;
        let mut said = false;
        let mut last = source::fingerprint(&store.dir());
        loop {
            let dir = store.dir();
            if inotify.is_none() {
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
            if !dir.is_dir() {
                // Watches die with their directory; arm again when it is back.
                inotify = None;
            }
            last = now;
            let store = Arc::clone(&store);
            let _ = tokio::task::spawn_blocking(move || store.reload()).await;
        }
    });
    CertWatcher { task }
}

fn arm(dir: &Path, tx: mpsc::UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::Recursive)?;
    Ok(watcher)
}
