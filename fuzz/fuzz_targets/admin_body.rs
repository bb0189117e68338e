//! The admin API's JSON bodies: `POST /api/pools/{pool}/servers`
//! (`control::AddRequest`) and `POST /api/servers/{pool}/{name}/state`
//! (`{"state": ...}`). An accepted add request goes through the same pure
//! checks as `control::add_server` (address, TLS name), and the server it
//! describes must survive being persisted to a servers_file and read back.
//! (Found: an address with spaces, the default name, broke the file; see
//! ingress-user/tests/fuzz_regressions.rs.)
#![no_main]

use ingress_user::{
    config::{parse_servers_file, render_servers_file},
    control::{servers::AddRequest, tls},
    model::AdminState,
};
use libfuzzer_sys::fuzz_target;

/// The state body (its type is private to `admin`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StateBody {
    state: String,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = serde_json::from_slice::<StateBody>(data)
        && let Some(st) = AdminState::parse(&b.state)
    {
        assert_eq!(st.as_str(), b.state);
    }
    let Ok(req) = serde_json::from_slice::<AddRequest>(data) else {
        return;
    };
    // As `control::add_server` builds the server.
    let Ok(def) = ingress_user::control::servers::server_def(&req) else {
        return;
    };
    if tls::server_name(def.sni.as_deref(), &def.host).is_err() {
        return;
    }
    for state in [AdminState::Ready, AdminState::Drain] {
        let file = render_servers_file(&[(def.clone(), state)]);
        let back = parse_servers_file(&file).unwrap_or_else(|e| panic!("persisted server does not parse: {e}\n{file}"));
        assert_eq!(back, vec![(def.clone(), state)], "persisted server changed:\n{file}");
    }
});
