//! Fleet simulator, WSS call client, test certificates and the load
//! generator's report types, shared by the demo (`cargo xtask run`), the
//! end-to-end tests and the benchmarks.

pub mod client;
pub mod pki;
pub mod report;
pub mod sim;
