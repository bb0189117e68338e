//! `parse_servers_file` never panics, and what parses survives a round trip
//! through `render_servers_file`: parse(render(parse(x))) == parse(x).
#![no_main]

use ingress_user::config::{parse_servers_file, render_servers_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(servers) = parse_servers_file(text) {
        let rendered = render_servers_file(&servers);
        let again = parse_servers_file(&rendered)
            .unwrap_or_else(|e| panic!("rendered servers file does not parse: {e}\n{rendered}"));
        assert_eq!(again, servers, "round trip changed the servers; rendered:\n{rendered}");
    }
});
