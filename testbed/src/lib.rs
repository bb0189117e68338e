//! Scaffolding shared by the end-to-end tests (`tests/`), `cargo xtask
//! bench`, `soak` and `run`: child processes that announce readiness with one
//! JSON line and are stopped on drop ([`proc`]), and pairs of network
//! namespaces joined by a veth, deleted on drop ([`netns`]).

pub mod netns;
pub mod proc;

pub use netns::NetPair;
pub use proc::Proc;
