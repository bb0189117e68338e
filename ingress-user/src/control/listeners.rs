//! Control path: the front listeners' lifecycle — bind what the config
//! lists and is not bound yet (or take it from the process this one
//! replaced), stop what it no longer lists (their live connections carry
//! on), hand each accept loop to the data path, and offer the listening
//! sockets to a new process on an upgrade.

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    sync::Arc,
};

use tokio::sync::watch;

use crate::{
    config::Listen,
    data::{DataCtx, listener},
};

/// The accept loops by (TLS?, configured address).
#[derive(Debug)]
pub struct Listeners {
    ctx: Arc<DataCtx>,
    /// Each loop's own stop, and a duplicate of its socket (offered on an upgrade).
    running: HashMap<(bool, SocketAddr), (watch::Sender<bool>, OwnedFd)>,
    /// The daemon's stop switch: every loop ends with it.
    stop: watch::Receiver<bool>,
    /// Bound by [`Self::sync`], accepting from [`Self::start`] on.
    pending: Vec<((bool, SocketAddr), tokio::net::TcpListener)>,
    /// Sockets the replaced process was listening on (an upgrade), taken
    /// by [`Self::sync`] instead of binding; those it does not take close.
    inherited: Vec<((bool, SocketAddr), std::net::TcpListener)>,
}

impl Listeners {
    pub fn new(ctx: Arc<DataCtx>, stop: watch::Receiver<bool>) -> Self {
        Self {
            ctx,
            running: HashMap::new(),
            stop,
            pending: Vec::new(),
            inherited: Vec::new(),
        }
    }

    /// Listening sockets to take before binding (an upgrade).
    pub fn inherit(&mut self, listeners: Vec<((bool, SocketAddr), std::net::TcpListener)>) {
        self.inherited = listeners;
    }

    /// Stops every accept loop and closes the sockets (a stop, or after a
    /// new process took them): a SYN from now on is refused here.
    pub fn close_all(&mut self) {
        for (_, (stop, _)) in self.running.drain() {
            let _ = stop.send(true);
        }
    }

    /// The running listeners by (TLS?, configured address), for a new process.
    pub fn offer(&self) -> Vec<((bool, SocketAddr), BorrowedFd<'_>)> {
        self.running.iter().map(|(k, (_, fd))| (*k, fd.as_fd())).collect()
    }

    /// Makes the running listeners those of `listen`; returns the newly
    /// bound ones with their actual addresses (a configured port 0 becomes
    /// the real one). Everything new is bound first: a reload that cannot
    /// bind changes nothing.
    pub async fn sync(&mut self, listen: &Listen) -> std::io::Result<Vec<(bool, SocketAddr)>> {
        let mut wanted: Vec<(bool, SocketAddr)> = listen.https.0.iter().map(|a| (true, *a)).collect();
        if let Some(http) = &listen.http {
            wanted.extend(http.0.iter().map(|a| (false, *a)));
        }
        let mut fresh = Vec::new();
        for key in &wanted {
            if !self.running.contains_key(key) && !fresh.iter().any(|(k, _)| k == key) {
                if let Some(i) = self.inherited.iter().position(|(k, _)| k == key) {
                    let (_, l) = self.inherited.swap_remove(i);
                    fresh.push((*key, tokio::net::TcpListener::from_std(l)?));
                    continue;
                }
                let l = listener::bind_all(&[key.1])
                    .await?
                    .pop()
                    .ok_or_else(|| std::io::Error::other("no listener"))?;
                fresh.push((*key, l));
            }
        }
        for (key, _) in self.inherited.drain(..) {
            tracing::info!(addr = %key.1, "inherited listener not in the config: closed");
        }
        let stale: Vec<_> = self.running.keys().filter(|k| !wanted.contains(k)).copied().collect();
        for key in stale {
            if let Some((stop, _)) = self.running.remove(&key) {
                let _ = stop.send(true);
                tracing::info!(addr = %key.1, "listener closed");
            }
        }
        let mut bound = Vec::new();
        for ((tls, _), l) in &fresh {
            bound.push((*tls, l.local_addr()?));
        }
        self.pending = fresh;
        Ok(bound)
    }

    /// Starts accepting on what [`Self::sync`] bound: called once the
    /// snapshot they are to serve is installed (their SYNs wait in the
    /// backlog until then).
    pub fn start(&mut self) {
        for ((tls, configured), l) in std::mem::take(&mut self.pending) {
            let dup = match l.as_fd().try_clone_to_owned() {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::error!(addr = %configured, error = %e, "listener not started: no descriptor left to keep for an upgrade");
                    continue;
                }
            };
            let (stop_tx, mut own) = watch::channel(false);
            let mut global = self.stop.clone();
            let (tx, merged) = watch::channel(false);
            tokio::spawn(async move {
                tokio::select! {
                    _ = global.wait_for(|s| *s) => {}
                    _ = own.wait_for(|s| *s) => {}
                }
                let _ = tx.send(true);
            });
            tokio::spawn(listener::serve(l, Arc::clone(&self.ctx), tls, merged));
            self.running.insert((tls, configured), (stop_tx, dup));
        }
    }
}
