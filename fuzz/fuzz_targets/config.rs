//! `Config::parse` then `validate` on arbitrary text: errors are fine, panics are not.
#![no_main]

use ingress_user::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text) {
        let _ = config.validate();
        // What `check` and the runtime read next: every pool's inline servers
        // (a servers_file is read by the control side, not here).
        for (name, pool) in &config.pools {
            let _ = config.inline_servers(name, pool);
        }
    }
});
