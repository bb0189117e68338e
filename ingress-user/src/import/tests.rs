//! Import: tests of the tokenizer, the rules (rstring → pointer, routes,
//! `default-server` merging, denials) and the notes with their lines.

use super::{
    Verdict, bind::listen_addr, check::capacity_pointer, check::status_regex, import_str, parse::tokenize,
    servers::server_addr,
};
use crate::{
    config::{PoolTlsSetting, ServerSpec},
    model::{AdminState, Balance},
};

fn words(line: &str) -> Vec<String> {
    tokenize(line, 1).unwrap().words
}

#[test]
fn words_follow_haproxy_quoting() {
    assert_eq!(
        words(r#"http-check expect rstring "\"fleet_available\":([1-9]|1[0-6])[,}]""#),
        [
            "http-check",
            "expect",
            "rstring",
            r#""fleet_available":([1-9]|1[0-6])[,}]"#
        ]
    );
    // Single quotes take everything as written; a blank and `#` escaped outside quotes.
    assert_eq!(words(r#"a 'x\"y z' b\ c d\#e"#), ["a", r#"x\"y z"#, "b c", "d#e"]);
    // A regex keeps its backslashes; quotes join with the text around them.
    assert_eq!(
        words(r#"rstring ^\d+$ pre"fix"post"#),
        ["rstring", r"^\d+$", "prefixpost"]
    );
    // `#` starts a comment outside quotes only; the raw text loses it.
    let l = tokenize(r#"  string "a # b" # comment"#, 7).unwrap();
    assert_eq!(l.words, ["string", "a # b"]);
    assert_eq!((l.no, l.raw.as_str()), (7, r#"string "a # b""#));
    assert!(words("# only a comment").is_empty());
    assert!(tokenize(r#"bind "unclosed"#, 1).is_err());
    assert!(tokenize("bind 'unclosed", 1).is_err());
    assert!(tokenize("bind ${ADDR}:443", 1).unwrap().env);
    assert!(!tokenize("rstring a$", 1).unwrap().env, "a regex anchor is no variable");
}

#[test]
fn an_rstring_over_a_json_number_becomes_a_capacity_pointer() {
    let seed = r#""fleet_available":([1-9]|1[0-6])[,}]"#;
    assert_eq!(
        capacity_pointer(seed, false),
        Some(("/fleet_available".to_owned(), Some(16)))
    );
    assert_eq!(
        capacity_pointer(r#""fleet_available":([1-9][0-9]*)[,}]"#, false),
        Some(("/fleet_available".to_owned(), None))
    );
    assert_eq!(
        capacity_pointer(r#"\"free\"\s*:\s*[1-9]\d*"#, false),
        Some(("/free".to_owned(), None)),
        "escaped quotes and blanks"
    );
    assert_eq!(
        capacity_pointer(r#""fleet_available":0[,}]"#, true),
        Some(("/fleet_available".to_owned(), None)),
        "`! rstring` of zero"
    );
    assert_eq!(capacity_pointer(r#""a/b~c":[1-9]"#, false).unwrap().0, "/a~1b~0c");
    for not in [
        r#""status":"ok""#,             // a string value
        r#""fleet_available":[0-9]+"#,  // holds for 0: not a capacity test
        r#""fleet_available":(2|4|6)"#, // holes
        r#"fleet_available":[1-9]"#,    // no opening quote
        r#""fleet.*":[1-9]"#,           // not one key
        r#""fleet_available":[1-9]x"#,  // a letter after the number
        r#""fleet_available":0[,}]"#,   // only 0 (not negated)
    ] {
        assert_eq!(capacity_pointer(not, false), None, "{not}");
    }
}

#[test]
fn status_specs_become_regexes() {
    assert_eq!(status_regex("200").as_deref(), Some("^200$"));
    assert_eq!(status_regex("200,204").as_deref(), Some("^(200|204)$"));
    assert_eq!(status_regex("200-399").as_deref(), Some(r"^(2\d\d|3\d\d)$"));
    assert_eq!(status_regex("200-209,301").as_deref(), Some(r"^(20\d|301)$"));
    assert_eq!(status_regex("abc"), None);
    assert_eq!(status_regex("600"), None);
}

#[test]
fn addresses() {
    assert_eq!(listen_addr(":443").unwrap(), "0.0.0.0:443");
    assert_eq!(listen_addr("*:80").unwrap(), "0.0.0.0:80");
    assert_eq!(listen_addr(":::443").unwrap(), "[::]:443");
    assert_eq!(listen_addr("ipv6@::1:8443").unwrap(), "[::1]:8443");
    let dual = "frontend f\n    bind :::443 ssl crt /c/x.pem\n    bind [::]:8443 v6only ssl crt /c/x.pem\n\
        default_backend b\nbackend b\n    server a 10.0.0.1:443\n";
    let https = import_str(dual, "h.cfg", None)
        .unwrap_or_else(|f| panic!("{}", f.error))
        .config
        .listen
        .https
        .0;
    let want: Vec<std::net::SocketAddr> = ["[::]:443", "0.0.0.0:443", "[::]:8443"]
        .map(|a| a.parse().unwrap())
        .into();
    assert_eq!(https, want, "`:::443` takes IPv4 too; `v6only` does not");
    assert!(listen_addr("unix@/run/x.sock").is_err());
    assert!(listen_addr("calls.example.com:443").is_err());
    assert!(listen_addr(":8000-8010").is_err());
    assert_eq!(
        server_addr("fleet.example.com:443").unwrap(),
        ("fleet.example.com".to_owned(), Some(443))
    );
    assert_eq!(
        server_addr("[fd00::1]:8443").unwrap(),
        ("fd00::1".to_owned(), Some(8443))
    );
    assert_eq!(
        server_addr("fleet.example.com").unwrap(),
        ("fleet.example.com".to_owned(), None)
    );
    assert!(server_addr("10.0.0.1:+1").is_err());
}

const SEED: &str = r#"global
    log /dev/log local0
    maxconn 4096
    stats socket /run/haproxy/admin.sock mode 600 level admin

defaults
    mode http
    option forwardfor
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h

frontend voxcore_wss
    bind :443 ssl crt /etc/haproxy/certs/calls.example.com.pem ssl-min-ver TLSv1.2
    acl is_ws path_beg /ws/
    acl is_exotel path_beg /exotel/
    acl rejected path /attach
    acl rejected path_beg /livekit/
    http-request return status 200 content-type text/plain string "ok" if { path /haproxy-health }
    http-request deny deny_status 404 if rejected
    http-request deny deny_status 404 unless is_ws || is_exotel
    use_backend voxcore_wss_fleet if is_ws || is_exotel

frontend acme
    bind :80
    use_backend certbot if { path_beg /.well-known/acme-challenge/ }

backend voxcore_wss_fleet
    balance leastconn
    option httpchk GET /health/fleet
    http-check expect rstring "\"fleet_available\":([1-9]|1[0-6])[,}]"
    option redispatch
    retry-on conn-failure empty-response response-timeout
    server fleet1 fleet.example.com:443 check inter 1s fall 2 rise 2 maxconn 16 ssl verify none sni str(fleet.example.com)
    server fleet2 fleet2.example.com:443 check inter 1s fall 2 rise 2 maxconn 16 ssl verify none sni str(fleet2.example.com)

backend certbot
    server certbot 127.0.0.1:8888
"#;

/// The notes as `LINE keyword verdict`.
fn notes(text: &str) -> Vec<String> {
    let imported = import_str(text, "haproxy.cfg", None).unwrap_or_else(|f| panic!("{}", f.error));
    imported
        .notes
        .iter()
        .map(|n| format!("{} {} {}", n.line, n.keyword, n.verdict))
        .collect()
}

#[test]
fn the_seed_setup_translates_and_validates() {
    let i = import_str(SEED, "haproxy.cfg", None).unwrap_or_else(|f| panic!("{}", f.error));
    let c = &i.config;
    assert_eq!(c.listen.https.0, ["0.0.0.0:443".parse().unwrap()]);
    assert_eq!(c.listen.http.as_ref().unwrap().0, ["0.0.0.0:80".parse().unwrap()]);
    assert_eq!(c.listen.certs.to_str(), Some("/etc/haproxy/certs"));
    assert_eq!(c.listen.default_cert.as_deref(), Some("calls.example.com"));
    assert_eq!(c.listen.health_path, "/haproxy-health");
    assert_eq!(c.listen.acme_upstream, "127.0.0.1:8888");
    assert_eq!(c.limits.max_connections, 4096);
    assert_eq!(c.timeouts.connect.0.as_secs(), 5);
    assert_eq!(c.timeouts.tunnel_idle.0.as_secs(), 3600);
    let routes: Vec<(&str, &str)> = c.routes.iter().map(|r| (r.path.as_str(), r.pool.as_str())).collect();
    assert_eq!(
        routes,
        [("/ws/*", "voxcore_wss_fleet"), ("/exotel/*", "voxcore_wss_fleet")]
    );
    let p = &c.pools["voxcore_wss_fleet"];
    assert_eq!((p.balance, p.maxconn, p.retries), (Balance::Leastconn, 16, 3));
    assert_eq!(
        (p.check.path.as_str(), p.check.capacity.as_str()),
        ("/health/fleet", "/fleet_available")
    );
    assert_eq!((p.check.interval.0.as_secs(), p.check.fall, p.check.rise), (1, 2, 2));
    let PoolTlsSetting::Settings(tls) = &p.tls else {
        panic!("TLS")
    };
    assert!(!tls.verify);
    assert_eq!(tls.sni, None, "two SNIs: one per server");
    let ServerSpec::Table(t) = &p.servers[1] else {
        panic!("a table")
    };
    assert_eq!(
        (t.name.as_deref(), t.sni.as_deref()),
        (Some("fleet2"), Some("fleet2.example.com"))
    );
    assert!(
        i.toml.contains("# haproxy.cfg:31"),
        "comments name the lines:\n{}",
        i.toml
    );
    assert_eq!(
        notes(SEED),
        [
            "2 log not translated",
            "4 stats socket not translated",
            "7 mode http not needed",
            "8 option forwardfor not needed",
            "10 timeout client not needed",
            "11 timeout server not needed",
            "21 http-request deny not needed",
            "22 http-request deny not needed",
            "33 option redispatch not needed",
        ]
    );
}

#[test]
fn default_server_lines_merge_in_order() {
    let cfg = "defaults\n    default-server inter 3s fall 5 ssl verify none\n\
        frontend f\n    bind :443 ssl crt /c/x.pem\n    default_backend b\n\
        backend b\n    option httpchk\n    default-server maxconn 20 check\n\
        server a 10.0.0.1:443 fall 1\n    server b 10.0.0.2:443 no-ssl maxconn 30\n    server c 10.0.0.3:443 disabled\n";
    let i =
        import_str(cfg, "h.cfg", Some(std::path::Path::new("servers.txt"))).unwrap_or_else(|f| panic!("{}", f.error));
    let p = &i.config.pools["b"];
    assert_eq!((p.check.interval.0.as_secs(), p.check.fall, p.maxconn), (3, 1, 20));
    assert!(
        matches!(&p.tls, PoolTlsSetting::Settings(t) if !t.verify),
        "ssl from defaults"
    );
    let servers = &i.files["b"];
    assert_eq!(servers[1].0.maxconn, Some(30));
    assert_eq!(servers[2].1, AdminState::Maint, "disabled: state=maint in the file");
    assert_eq!(i.servers_files[0].0.to_str(), Some("servers.txt"));
    let n: Vec<String> = i
        .notes
        .iter()
        .map(|n| format!("{} {} {}", n.line, n.keyword, n.verdict))
        .collect();
    assert!(
        n.contains(&"10 ssl approximated".to_owned()),
        "no-ssl on one server: {n:?}"
    );
    assert!(
        n.contains(&"10 fall approximated".to_owned()),
        "fall is one per pool: {n:?}"
    );
}

#[test]
fn a_denial_the_routes_would_undo_is_reported() {
    let cfg = "frontend f\n    bind :443 ssl crt /c/x.pem\n    acl ws path_beg /ws/\n\
        http-request deny if { path_beg /ws/private/ }\n    use_backend b if ws\n\
        backend b\n    server a 10.0.0.1:443\n";
    let i = import_str(cfg, "h.cfg", None).unwrap_or_else(|f| panic!("{}", f.error));
    let deny = i
        .notes
        .iter()
        .find(|n| n.line == 4 && n.verdict == Verdict::NotTranslated)
        .expect("line 4 named");
    assert!(deny.message.contains("/ws/private/x"), "{deny}");
    assert_eq!(
        deny.to_string(),
        format!("h.cfg:4: http-request deny: not translated: {}", deny.message)
    );
}

#[test]
fn default_backend_takes_the_condition_of_a_deny_unless() {
    let cfg = "frontend f\n    bind :443 ssl crt /c/x.pem\n\
        http-request deny deny_status 404 unless { path_beg /ws/ /exotel/ } || { path /x }\n\
        default_backend b\nbackend b\n    server a 10.0.0.1:443\n";
    let i = import_str(cfg, "h.cfg", None).unwrap_or_else(|f| panic!("{}", f.error));
    let routes: Vec<&str> = i.config.routes.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(routes, ["/ws/*", "/exotel/*", "/x"]);
    // Without the gate, default_backend is everything.
    let open = cfg.replace(
        "http-request deny deny_status 404 unless { path_beg /ws/ /exotel/ } || { path /x }\n",
        "",
    );
    assert_ne!(open, cfg);
    let i = import_str(&open, "h.cfg", None).unwrap_or_else(|f| panic!("{}", f.error));
    assert_eq!(i.config.routes[0].path, "/*");
}

#[test]
fn hosts_and_untranslatable_conditions() {
    let cfg = "frontend f\n    bind :443 ssl crt /c/x.pem\n    acl api hdr(host) -i API.example.com\n\
        acl p path_beg /api/\n    use_backend b if api p\n    use_backend b unless p\n\
        use_backend b if !p\n    use_backend b if { path_end .php }\nbackend b\n    server a 10.0.0.1:443\n";
    let i = import_str(cfg, "h.cfg", None).unwrap_or_else(|f| panic!("{}", f.error));
    let r = &i.config.routes;
    assert_eq!(
        (r.len(), r[0].path.as_str(), r[0].host.as_deref()),
        (1, "/api/*", Some("api.example.com"))
    );
    for line in [6, 7, 8] {
        let n = i
            .notes
            .iter()
            .find(|n| n.line == line)
            .unwrap_or_else(|| panic!("line {line} not named"));
        assert_eq!(
            (n.keyword.as_str(), n.verdict),
            ("use_backend", Verdict::NotTranslated),
            "{n}"
        );
    }
}

#[test]
fn unknown_keywords_and_sections_are_named_never_dropped() {
    let cfg = "global\n    frobnicate 3\n    nbthread 4\npeers p\n    peer a 1.2.3.4:1\n\
        frontend f\n    bind :443 ssl crt /c/x.pem\n    default_backend b\n    balance roundrobin\n\
        backend b\n    server a 10.0.0.1:443 weight 5 send-proxy\nbackend other\n    server z 10.0.0.9:443\n";
    assert_eq!(
        notes(cfg),
        [
            "2 frobnicate not translated",
            "3 nbthread not translated",
            "4 peers p not translated",
            "9 balance not translated",
            "10 check approximated",
            "11 send-proxy not translated",
            "11 weight not translated",
            "11 maxconn approximated",
            "12 backend other not translated",
        ]
    );
}

#[test]
fn inputs_that_give_no_config_are_errors_with_their_line() {
    let err = |cfg: &str| import_str(cfg, "h.cfg", None).unwrap_err().error.to_string();
    assert_eq!(
        err("global\n    maxconn 1\n"),
        "h.cfg: no frontend: nothing receives requests"
    );
    assert!(err("frontend f\n    bind :80\n").starts_with("h.cfg:1: frontend f: no frontend binds with `ssl crt"));
    let no_backend = "frontend f\n    bind :443 ssl crt /c/x.pem\n    use_backend gone if { path /a }\n";
    assert_eq!(err(no_backend), "h.cfg:3: no backend named `gone`");
    let backup_only = "frontend f\n    bind :443 ssl crt /c/x.pem\n    default_backend b\nbackend b\n    server a 10.0.0.1:443 backup\n";
    assert_eq!(err(backup_only), "h.cfg:4: backend b: no server could be translated");
    assert_eq!(
        err("frontend f\n    bind \"x\n"),
        "h.cfg:2: a double quote is not closed"
    );
    let template = "frontend f\n    bind :443 ssl crt /etc/haproxy/certs/__INGRESS_DOMAIN__.pem\n";
    assert!(err(template).starts_with("h.cfg:2: __INGRESS_DOMAIN__ is a placeholder"));
}

#[test]
fn cookies_hashes_and_liveness_checks() {
    let cfg = "frontend f\n    bind :443 ssl crt /c/x.pem\n    use_backend api if { path_beg /api/ }\n\
        use_backend stream if { path_beg /stream/ }\nbackend api\n    balance roundrobin\n\
        cookie SERVERID insert indirect nocache\n    option httpchk\n\
        http-check send meth GET uri / ver HTTP/1.1 hdr Host forgejo.talas.group\n    http-check expect rstatus ^[23]\n\
        server a 10.0.0.1:8080 check cookie a\nbackend stream\n    balance uri whole\n    hash-type consistent\n\
        option httpchk GET /health\n    http-check expect string ok\n    server s 10.0.0.2:8082 check slowstart 30s on-marked-down shutdown-sessions\n";
    let i = import_str(cfg, "h.cfg", None).unwrap_or_else(|f| panic!("{}", f.error));
    let api = &i.config.pools["api"];
    assert_eq!((api.balance, api.cookie.as_str()), (Balance::Cookie, "SERVERID"));
    assert_eq!(api.check.host.as_deref(), Some("forgejo.talas.group"));
    assert_eq!(
        (api.check.expect_status.as_str(), api.check.capacity.as_str()),
        ("^[23]", "")
    );
    assert!(matches!(api.tls, PoolTlsSetting::Enabled(false)), "no ssl: plain TCP");
    let stream = &i.config.pools["stream"];
    assert_eq!((stream.balance, stream.hash_key.as_str()), (Balance::UriHash, "path"));
    assert_eq!(stream.slowstart.map(|d| d.0.as_secs()), Some(30));
    assert_eq!(stream.on_marked_down, crate::model::OnMarkedDown::ShutdownSessions);
    assert_eq!(stream.check.capacity, "", "a body string is liveness only");
    let kinds: Vec<_> = i.config.routes.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [crate::model::RouteKind::Http; 2],
        "not call fleets: every request proxied"
    );
    let n = |line: usize| {
        i.notes
            .iter()
            .find(|n| n.line == line)
            .map(|n| (n.keyword.clone(), n.verdict))
    };
    assert_eq!(n(16), Some(("http-check expect".to_owned(), Verdict::NotTranslated)));
    assert_eq!(n(14), Some(("hash-type".to_owned(), Verdict::NotNeeded)));
}
