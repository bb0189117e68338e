//! Fleet simulator, WSS call client and test certificates, shared by the
//! demo (`cargo xtask run`), the end-to-end tests and the benchmarks.

pub mod client;
pub mod pki;
pub mod sim;
