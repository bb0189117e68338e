//! Inputs found by `cargo xtask fuzz` (fuzz/), kept as regression tests.

use ingress_user::{
    config::{parse_servers_file, render_servers_file},
    control::{
        ControlError,
        servers::{AddRequest, server_def},
    },
    model::{AdminState, addr::parse_host_port},
};

/// parse(render(parse(x))) == parse(x), as the `servers_file` target checks.
fn round_trips(text: &str) {
    let Ok(servers) = parse_servers_file(text) else {
        return;
    };
    let rendered = render_servers_file(&servers);
    let again = parse_servers_file(&rendered).unwrap_or_else(|e| panic!("{rendered:?} does not parse: {e}"));
    assert_eq!(again, servers, "{rendered:?}");
}

/// servers_file: `[[157]` parsed as host `[157`, written back as `[157:443`,
/// which does not parse (fuzz/artifacts/servers_file/crash-2bd66194…).
#[test]
fn servers_file_bracket_in_host() {
    round_trips("#\0\x12\n[[157]# em");
    assert!(parse_host_port("[[157]").is_err());
    assert!(parse_host_port("a]b:80").is_err());
    assert!(
        parse_host_port("a#b:443").is_err(),
        "`#` would start a comment in the file"
    );
    assert_eq!(parse_host_port("[::1]:8443").unwrap(), ("::1".to_owned(), 8443));
    round_trips("[2001:db8::5]:8443 name=v6 state=drain\n10.0.0.5 sni=a.example maxconn=3\n");
}

fn add_request(json: &str) -> AddRequest {
    serde_json::from_str(json).unwrap()
}

/// admin_body: `{"addr":"     0.o7:443"}` named the server after its raw
/// address, spaces included; persisted, `name=     0.o7:443` broke the
/// servers_file (fuzz/artifacts/admin_body/crash-8d9bc5cd…).
#[test]
fn admin_add_name_survives_the_servers_file() {
    let def = server_def(&add_request(r#"{"addr":"     0.o7:443"         }"#)).unwrap();
    assert_eq!(def.name, "0.o7:443");
    let file = render_servers_file(&[(def.clone(), AdminState::Ready)]);
    assert_eq!(
        parse_servers_file(&file).unwrap(),
        vec![(def, AdminState::Ready)],
        "{file:?}"
    );
    for bad in [
        r#"{"addr":"10.0.0.7","name":"a b"}"#,
        r#"{"addr":"10.0.0.7","name":"x\n10.0.0.9:443"}"#,
        r##"{"addr":"10.0.0.7","name":"a#b"}"##,
        r#"{"addr":"10.0.0.7","name":""}"#,
    ] {
        let r = server_def(&add_request(bad));
        assert!(matches!(r, Err(ControlError::Invalid(_))), "{bad}: {r:?}");
    }
}

/// route: a Host header opening a bracket it never closes (`[::1`) sliced
/// past its end in `RouteTable::lookup` and panicked the connection's task.
#[test]
fn lookup_host_with_unclosed_bracket() {
    use ingress_user::{
        model::RouteKind,
        model::route::{Route, RoutePattern, RouteTable, Target},
    };
    let table = RouteTable {
        health_path: "/haproxy-health".to_owned(),
        routes: vec![Route {
            pattern: RoutePattern::parse("/ws/{bot_id}").unwrap(),
            path: "/ws/{bot_id}".to_owned(),
            pool: 0,
            kind: RouteKind::Websocket,
            host: Some("[::1]".to_owned()),
        }],
    };
    assert_eq!(table.lookup("/ws/a", Some("[::1")), Target::NotFound);
    assert_eq!(table.lookup("/ws/a", Some("[")), Target::NotFound);
    assert!(matches!(table.lookup("/ws/a", Some("[::1]:8443")), Target::Pool { .. }));
}

/// admin_body: `{"addr":"10.050om","maxconn":0}` was accepted and persisted
/// as `maxconn=0`, which the servers_file parser (and the next reload) refuses
/// (fuzz/artifacts/admin_body/crash-716bc391…).
#[test]
fn admin_add_refuses_maxconn_zero() {
    let r = server_def(&add_request(r#"{"addr":"10.050om","maxconn":0}"#));
    assert!(matches!(r, Err(ControlError::Invalid(_))), "{r:?}");
    let def = server_def(&add_request(r#"{"addr":"10.050om","maxconn":1}"#)).unwrap();
    let file = render_servers_file(&[(def.clone(), AdminState::Ready)]);
    assert_eq!(parse_servers_file(&file).unwrap(), vec![(def, AdminState::Ready)]);
}

/// head_rest: `GET http://localhos=/.//b` settled to `//b`, which settles
/// again to an error (fuzz/artifacts/head_rest/crash-d54336ce…): dot
/// segments removed can leave a leading `//`, refused like one written so.
#[test]
fn head_rest_dot_segment_leaving_a_network_path() {
    use ingress_user::data::target::normalize;
    for target in ["http://localhos=/.//b", "/.//b", "/a/..//b", "/a/.././/b"] {
        assert!(normalize(target).is_err(), "{target} is accepted");
    }
    assert_eq!(normalize("/a/./b").unwrap().origin, "/a/b");
}
