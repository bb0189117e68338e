//! Scaffolding shared by the end-to-end tests (`tests/`), `cargo xtask
//! bench`, `soak` and `run`: child processes that announce readiness with one
//! JSON line and are stopped on drop ([`proc`]), pairs of network namespaces
//! joined by a veth, deleted on drop ([`netns`]), the ingress config they
//! write ([`config`]), the admin API client ([`admin`]), fleet simulators and
//! their control client ([`fleet`]), and the bounded HTTP under both
//! ([`http`]).

pub mod admin;
pub mod config;
pub mod fleet;
pub mod http;
pub mod lab;
pub mod netns;
pub mod poll;
pub mod proc;

pub use admin::Admin;
pub use config::IngressConfig;
pub use fleet::{Fleet, FleetControl, FleetSpec};
pub use netns::{HostPair, NetPair};
pub use proc::Proc;
