//! Control path: what operators and scripts see and say — the admin API
//! ([`server`]: HTTP + JSON on a unix socket and optionally TCP — loopback,
//! or any address with a token and read-only —
//! the only module that knows the API's status codes), `/metrics`
//! ([`prometheus`]), `/stats` ([`stats`]) and its command line `ingress ctl`
//! ([`ctl`]). Every server figure comes from one walk,
//! [`crate::snapshot::Runtime::server_views`].

pub mod ctl;
pub mod prometheus;
pub mod server;
pub mod stats;

pub use server::{Admin, bind_unix, serve_tcp, serve_unix};
