//! The ingress daemon as a library: the binary (`main.rs`) is a thin CLI.
//!
//! The layering, lowest first; a module imports only from those before it
//! (checked by `cargo xtask test`, see `xtask/src/layers.rs`):
//!
//! 1. leaves — [`model`] (states, enumerations, addresses, route patterns,
//!    clock) and [`telemetry`] (counters and labels): nothing from the crate;
//! 2. [`config`] — the TOML schema, validation (pure), the `servers_file` format;
//! 3. [`balance`] — servers, leases, pools, the pick and its strategies;
//!    beside it (same rank, neither names the other) [`import`] — `ingress
//!    import`: a haproxy.cfg translated to ingress.toml, checked with
//!    [`config`]'s own validation; it names only [`config`] and [`model`];
//! 4. [`snapshot`] — the immutable runtime the data path reads, and the one
//!    walk over its servers ([`snapshot::ServerView`]);
//! 5. [`data`] — the data path: listener, HTTP/1 heads, upgrade, `http`
//!    routes, upstream connections, tunnel. Never imports 6–9;
//! 6. [`bpf`] — the XDP program's userspace side (control path);
//! 7. [`control`] — the owner of running state: desired state, snapshot
//!    building, listeners, health, certificates, TLS, add/remove;
//! 8. [`admin`] — admin API, `/metrics`, `/stats`, `ingress ctl`;
//! 9. [`lifecycle`] — the process's own life: graceful stop, the old side
//!    of a binary upgrade;
//! 10. [`daemon`] — wiring only.

pub mod admin;
pub mod balance;
pub mod bpf;
pub mod config;
pub mod control;
pub mod daemon;
pub mod data;
pub mod import;
pub mod lifecycle;
pub mod model;
pub mod snapshot;
pub mod telemetry;
