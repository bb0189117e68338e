//! The ingress daemon as a library: the binary (`main.rs`) is a thin CLI.
//!
//! Data path: [`front`] (accept, limits, TLS, head) → [`routes`] → [`proxy`]
//! (pick from [`pool`], connect via [`upstream`], retries) → [`tunnel`].
//! Control path: [`config`], [`runtime`] (snapshots), [`health`], [`certs`]
//! (load, watch), [`tls`] (configs), [`admin`], [`metrics`], [`xdp`].

pub mod admin;
pub mod certs;
pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod front;
pub mod health;
pub mod http1;
pub mod http_proxy;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod routes;
pub mod runtime;
pub mod sdnotify;
pub mod state;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod xdp;
