//! Control path: what operators and scripts see and say — the admin API
//! ([`server`]: HTTP + JSON on a unix socket and optionally TCP; who may
//! read or change is [`access`]; `server` is the only module that knows the
//! API's status codes), `/metrics`
//! ([`prometheus`], with the `process_*` figures of [`process`]), `/stats` ([`stats`]) and its command line `ingress ctl`
//! ([`ctl`]). Every server figure comes from one walk,
//! [`crate::snapshot::Runtime::server_views`].

pub mod access;
pub mod ctl;
pub mod process;
pub mod prometheus;
pub mod server;
pub mod stats;

pub use access::bind_unix;
pub use server::{Admin, serve_tcp, serve_unix};
