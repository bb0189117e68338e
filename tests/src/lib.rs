//! Harness for the end-to-end tests: real `ingress` and `fleet-sim`
//! processes (stopped on drop), generated certificates, a scratch
//! directory, small HTTP helpers, and network namespaces (deleted on drop,
//! also when a test fails). The shared pieces (processes, the admin and
//! fleet-control clients, the config builder) come from `testbed`; this
//! crate gives them the tests' shape: async, and panicking with context.

mod chromium;
mod fleet;
pub mod group;
mod ingress;
mod metrics;
pub mod netns;
mod scratch;
mod wire;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

pub use fleet_sim::{client, pki::TestCa};
pub use testbed::Proc;

pub use self::{
    chromium::headless_chromium,
    fleet::Fleet,
    ingress::{Ingress, Successor, admin_listen, admin_tcp, admin_tcp_answer, config, install_binary},
    metrics::{metric, metric_sum},
    scratch::{Pki, TestDir},
    wire::{
        echo, http_get, http_raw, https_raw, parse_response, read_answer, set_cookie, tls_connect, upgrade_head,
        upgrade_on, upgrade_request,
    },
};

/// A built binary of the workspace (`cargo xtask test` builds them first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test> → target/debug/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test`, which builds it",
        path.display()
    );
    path
}

/// How long a started process gets to print its ready line.
const READY: Duration = Duration::from_secs(30);

/// Runs `cmd` to its end; panics with the command, its status and its
/// output unless it succeeded.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts `cmd` with stderr to `log` and waits up to 30 s for its ready line;
/// panics with the log's tail when it does not come.
pub fn start_proc(name: &str, mut cmd: Command, log: &Path) -> Proc {
    Proc::start(name, &mut cmd, Some(log), Some(READY)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs a blocking `testbed` call off the test's runtime thread; panics with
/// the error's chain.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task")
        .unwrap_or_else(|e| panic!("{e:#}"))
}
