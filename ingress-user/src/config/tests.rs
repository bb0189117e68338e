//! Unit tests of the configuration: defaults, named errors, the README example, servers_file.
use super::*;
use crate::model::{AdminState, addr::parse_host_port};

const MINIMAL: &str = r#"
    [listen]
    https = "127.0.0.1:8443"
    certs = "certs"
    [xdp]
    mode = "off"
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    c.validate().unwrap();
    assert_eq!(c.listen.health_path, "/haproxy-health");
    assert_eq!(c.listen.tls_min_version, TlsVersion::Tls12);
    assert_eq!(c.limits.max_headers, 100);
    assert_eq!(c.timeouts.connect.0, Duration::from_secs(2));
}

#[test]
fn unknown_key_is_named() {
    let err = Config::parse(&format!("{MINIMAL}\n[limits]\nmax_conections = 5\n")).unwrap_err();
    assert!(err.to_string().contains("max_conections"), "{err}");
}

#[test]
fn bad_duration_is_named() {
    let err = Config::parse(&format!("{MINIMAL}\n[timeouts]\nconnect = \"2 parsecs\"\n")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("2 parsecs") && msg.contains("connect"), "{msg}");
}

#[test]
fn route_to_missing_pool_is_refused() {
    let c = Config::parse(&format!(
        "{MINIMAL}\n[[routes]]\npath = \"/ws/{{bot_id}}\"\npool = \"nope\"\n"
    ))
    .unwrap();
    let msg = c.validate().unwrap_err().to_string();
    assert!(msg.contains("routes[0].pool") && msg.contains("nope"), "{msg}");
}

#[test]
fn xdp_needs_interface() {
    let text = MINIMAL.replace("mode = \"off\"", "mode = \"auto\"");
    let msg = Config::parse(&text).unwrap().validate().unwrap_err().to_string();
    assert!(msg.contains("xdp.interface"), "{msg}");
}

#[test]
fn readme_example_parses() {
    let readme = include_str!("../../../README.md");
    let section = readme.split("## Configuration reference").nth(1).expect("section");
    let example = section
        .split("```toml")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("toml block");
    let c = Config::parse(example).unwrap_or_else(|e| panic!("{e}"));
    c.validate().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen.https.0.len(), 2);
    assert_eq!(c.inline_servers("fleets", &c.pools["fleets"]).unwrap().len(), 2);
}

#[test]
fn host_port_forms() {
    assert_eq!(
        parse_host_port("fleet.example.com").unwrap(),
        ("fleet.example.com".into(), 443)
    );
    assert_eq!(parse_host_port("10.0.0.5:8443").unwrap(), ("10.0.0.5".into(), 8443));
    assert_eq!(parse_host_port("[::1]:9000").unwrap(), ("::1".into(), 9000));
    assert_eq!(parse_host_port("[::1]").unwrap(), ("::1".into(), 443));
    assert!(parse_host_port("::1").is_err());
    assert!(parse_host_port("host:0").is_err());
    assert!(parse_host_port("host:http").is_err());
}

#[test]
fn servers_file_round_trips() {
    let text =
        "# fleets\nfleet.example.com\n10.0.0.5:8443 name=fleet2 sni=fleet2.example.com maxconn=20 state=drain\n\n";
    let defs = parse_servers_file(text).unwrap();
    assert_eq!(defs.len(), 2);
    assert_eq!(defs[1].0.name, "fleet2");
    assert_eq!(defs[1].0.maxconn, Some(20));
    assert_eq!(defs[1].1, AdminState::Drain);
    assert_eq!(parse_servers_file(&render_servers_file(&defs)).unwrap(), defs);
}

#[test]
fn servers_file_errors_name_the_line() {
    let err = parse_servers_file("ok.example.com\nbad.example.com weight=3\n").unwrap_err();
    assert!(err.contains("line 2") && err.contains("weight"), "{err}");
}

#[test]
fn group_defaults_to_the_one_ingress_stop_and_bad_announcements_are_named() {
    let c = Config::parse(MINIMAL).unwrap();
    assert!(c.group.leave.0.is_zero() && c.group.announce.is_empty());
    let with = |group: &str| {
        Config::parse(&format!("{MINIMAL}\n[group]\n{group}"))
            .unwrap()
            .validate()
    };
    with("leave = \"3s\"\nannounce = [\"192.0.2.10/32\"]\nannounce_interface = \"ingress-vip\"").unwrap();
    for (group, named) in [
        ("announce = [\"192.0.2.10/32\"]", "group.announce_interface"),
        ("announce = [\"192.0.2.10/32\"]\nannounce_interface = \"lo\"", "not lo"),
        (
            "announce = [\"192.0.2.x/32\"]\nannounce_interface = \"v\"",
            "group.announce[0]",
        ),
        (
            "announce = [\"192.0.2.10/32\"]\nannounce_interface = \"v\"\nannounce_lease = \"500ms\"",
            "group.announce_lease",
        ),
    ] {
        let err = with(group).unwrap_err().to_string();
        assert!(err.contains(named), "{group}: {err}");
    }
}

#[test]
fn a_pick_token_must_be_set_and_differ_from_the_admin_token() {
    let with = |admin: &str| {
        Config::parse(&format!("{MINIMAL}\n[admin]\n{admin}"))
            .unwrap()
            .validate()
    };
    with("pick_token = \"dial\"\ntoken = \"adm\"").unwrap();
    for (admin, named) in [
        ("pick_token = \"\"", "empty"),
        ("pick_token = \"same\"\ntoken = \"same\"", "the same as admin.token"),
    ] {
        let err = with(admin).unwrap_err().to_string();
        assert!(err.contains("admin.pick_token") && err.contains(named), "{err}");
    }
}

#[test]
fn fleet_tls_versions_are_named_when_wrong() {
    let pool = |versions: &str| {
        format!("{MINIMAL}\n[pools.fleets]\nservers = [\"10.0.0.1:443\"]\n[pools.fleets.tls]\nversions = {versions}\n")
    };
    let c = Config::parse(&pool(r#"["1.2"]"#)).unwrap();
    c.validate().unwrap();
    assert_eq!(c.pools["fleets"].tls.settings().unwrap().versions, [TlsVersion::Tls12]);
    let err = Config::parse(&pool("[]")).unwrap().validate().unwrap_err();
    assert!(err.to_string().contains("pools.fleets.tls.versions"), "{err}");
    let err = Config::parse(&pool(r#"["1.1"]"#)).unwrap_err();
    assert!(err.to_string().contains("1.1"), "{err}");
}
