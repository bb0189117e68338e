//! A fleet simulator for a test: `testbed::Fleet` started from the test's
//! scratch directory and certificates, its control port called async and
//! panicking on failure.

use serde_json::Value;
use testbed::FleetSpec;

use crate::{Pki, READY, TestDir, bin, blocking};

/// A fleet simulator process (the testbed's handle: `proc`, `https`, `control`).
pub struct Fleet(testbed::Fleet);

impl Fleet {
    pub fn start(dir: &TestDir, pki: &Pki, name: &str, workers: u32) -> Self {
        Self::start_with(dir, pki, name, workers, None)
    }

    /// `netns`: run inside that namespace (via nsenter).
    pub fn start_with(dir: &TestDir, pki: &Pki, name: &str, workers: u32, netns: Option<&str>) -> Self {
        Self::start_on(dir, pki, name, workers, netns, None)
    }

    /// `listen`: the address calls and health checks are taken on (loopback when `None`).
    pub fn start_on(
        dir: &TestDir,
        pki: &Pki,
        name: &str,
        workers: u32,
        netns: Option<&str>,
        listen: Option<&str>,
    ) -> Self {
        let spec = FleetSpec {
            bin: &bin("fleet-sim"),
            cert: &pki.fleet_bundle,
            workers,
            threads: Some(1),
            netns,
            listen,
            core: None,
            log: Some(&dir.path(&format!("{name}.log"))),
            ready: READY,
        };
        Self(testbed::Fleet::start(name, &spec).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// Calls the control port (see `fleet_sim::sim`), returns its state JSON.
    pub async fn control(&self, path_and_query: &str) -> Value {
        let (control, path) = (self.0.control.clone(), path_and_query.to_owned());
        blocking(move || control.get(&path)).await
    }

    pub async fn state(&self) -> Value {
        self.control("/state").await
    }
}

impl std::ops::Deref for Fleet {
    type Target = testbed::Fleet;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Fleet {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
