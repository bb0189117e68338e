//! Control path: the front listeners' lifecycle — bind what the config
//! lists and is not bound yet, stop what it no longer lists (their live
//! connections carry on), and hand each accept loop to the data path.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use tokio::sync::watch;

use crate::{
    config::Listen,
    data::{DataCtx, listener},
};

/// The accept loops by (TLS?, configured address).
#[derive(Debug)]
pub struct Listeners {
    ctx: Arc<DataCtx>,
    running: HashMap<(bool, SocketAddr), watch::Sender<bool>>,
    /// The daemon's stop switch: every loop ends with it.
    stop: watch::Receiver<bool>,
    /// Bound by [`Self::sync`], accepting from [`Self::start`] on.
    pending: Vec<((bool, SocketAddr), tokio::net::TcpListener)>,
}

impl Listeners {
    pub fn new(ctx: Arc<DataCtx>, stop: watch::Receiver<bool>) -> Self {
        Self {
            ctx,
            running: HashMap::new(),
            stop,
            pending: Vec::new(),
        }
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
                let l = listener::bind_all(&[key.1])
                    .await?
                    .pop()
                    .ok_or_else(|| std::io::Error::other("no listener"))?;
                fresh.push((*key, l));
            }
        }
        let stale: Vec<_> = self.running.keys().filter(|k| !wanted.contains(k)).copied().collect();
        for key in stale {
            if let Some(stop) = self.running.remove(&key) {
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
            self.running.insert((tls, configured), stop_tx);
        }
    }
}
