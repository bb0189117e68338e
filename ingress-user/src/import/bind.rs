//! Import: `bind` lines — addresses, the certificate and the TLS floor —
//! read into `[listen]`'s https items; every other bind option reported.

use std::path::Path;

use super::{
    Report,
    global::{Global, tls_floor},
    parse::{Line, Section},
    render::{Item, s},
};

/// One `bind` line.
#[derive(Debug)]
pub(super) struct Bind {
    pub addrs: Vec<String>,
    pub line: usize,
    pub ssl: bool,
    pub crt: Option<String>,
    pub floor: Option<&'static str>,
}

const BIND_ARG: &[&str] = &[
    "crt",
    "crt-list",
    "ca-file",
    "crl-file",
    "ciphers",
    "ciphersuites",
    "curves",
    "ecdhe",
    "alpn",
    "npn",
    "ssl-min-ver",
    "ssl-max-ver",
    "verify",
    "name",
    "id",
    "process",
    "thread",
    "interface",
    "namespace",
    "mss",
    "backlog",
    "maxconn",
    "level",
    "mode",
    "user",
    "group",
    "uid",
    "gid",
    "tcp-ut",
    "nice",
    "proto",
    "sigalgs",
    "client-sigalgs",
    "ca-verify-file",
    "ca-ignore-err",
    "crt-ignore-err",
    "ca-sign-file",
    "expose-fd",
    "accept-netscaler-cip",
];

/// A `bind` line: its addresses, certificate and TLS floor; every other option reported.
pub(super) fn bind(line: &Line, report: &mut Report) -> Bind {
    let mut b = Bind {
        addrs: Vec::new(),
        line: line.no,
        ssl: false,
        crt: None,
        floor: None,
    };
    for a in line.word(1).split(',') {
        match listen_addr(a) {
            Ok(a) => b.addrs.push(a),
            Err(e) => report.not_translated(line, "bind", format!("`{a}`: {e}")),
        }
    }
    let opts = &line.words[2.min(line.words.len())..];
    let (floor, _) = tls_floor(line, opts, report);
    b.floor = floor;
    let mut i = 0;
    while i < opts.len() {
        let o = opts[i].as_str();
        let arg = opts.get(i + 1).map_or("", String::as_str);
        i += 1 + usize::from(BIND_ARG.contains(&o));
        match o {
            "ssl" => b.ssl = true,
            "crt" if b.crt.is_none() => b.crt = Some(arg.to_owned()),
            "crt" => report.not_translated(
                line,
                o,
                "one certificate path per listener set (a directory holds many)",
            ),
            "alpn" if arg.split(',').any(|p| p == "h2") => report.approx(
                line,
                o,
                "the ingress offers http/1.1 only: HTTP/2 clients fall back to it",
            ),
            "alpn" => report.not_needed(line, o, "the ingress offers http/1.1"),
            "ssl-min-ver" | "ssl-max-ver" | "no-sslv3" | "no-tlsv10" | "no-tlsv11" | "no-tlsv12" | "force-tlsv12"
            | "force-tlsv13" | "force-sslv3" | "force-tlsv10" | "force-tlsv11" => {}
            "strict-sni" => report.not_translated(line, o, "the ingress serves default_cert when SNI matches none"),
            "accept-proxy" => report.not_translated(line, o, "the ingress does not read the PROXY protocol"),
            "verify" | "ca-file" | "crl-file" => {
                report.not_translated(line, o, "the ingress does not ask for client certificates")
            }
            "ciphers" | "ciphersuites" | "curves" | "ecdhe" | "sigalgs" => {
                report.not_translated(line, o, "the ingress uses rustls's safe default cipher suites")
            }
            "v4v6" => report.not_needed(line, o, "[::] and 0.0.0.0 are both listened on"),
            "v6only" => report.not_needed(line, o, "a [::] listener takes IPv6 only"),
            "defer-accept" | "tfo" | "backlog" | "name" | "id" | "process" | "thread" | "nice" => {
                report.not_needed(line, o, "no equivalent needed")
            }
            _ => report.not_translated(line, o, "no equivalent in the ingress"),
        }
    }
    // HAProxy's `:::443` takes IPv4 too (Linux's default, or `v4v6`); the ingress's `[::]` is IPv6 only.
    if !opts.iter().any(|o| o == "v6only") {
        let v4: Vec<String> = b
            .addrs
            .iter()
            .filter_map(|a| a.strip_prefix("[::]:"))
            .map(|port| format!("0.0.0.0:{port}"))
            .filter(|a| !b.addrs.contains(a))
            .collect();
        b.addrs.extend(v4);
    }
    if !b.addrs.is_empty() {
        report.used(line.no);
    }
    b
}

/// A bind address as a socket address (`:443` → `0.0.0.0:443`).
pub(super) fn listen_addr(a: &str) -> Result<String, String> {
    let a = a.strip_prefix("ipv4@").or_else(|| a.strip_prefix("ipv6@")).unwrap_or(a);
    if a.contains('@') || a.starts_with('/') {
        return Err("only TCP addresses".to_owned());
    }
    let (host, port) = a.rsplit_once(':').ok_or("no port")?;
    if port.contains('-') {
        return Err("a port range".to_owned());
    }
    let addr = match host {
        "" | "*" | "0.0.0.0" => format!("0.0.0.0:{port}"),
        "::" | "[::]" => format!("[::]:{port}"),
        h if h.starts_with('[') => format!("{h}:{port}"),
        h if h.contains(':') => format!("[{h}]:{port}"),
        h => format!("{h}:{port}"),
    };
    addr.parse::<std::net::SocketAddr>()
        .map(|_| addr.clone())
        .map_err(|_| format!("`{addr}` is not IP:port (names are not resolved here)"))
}

/// The `[listen]` items of the TLS frontend's binds: addresses, certificates, TLS floor.
pub(super) fn listen_items(
    binds: &[Bind],
    g: &Global,
    report: &mut Report,
    section: &Section,
) -> Result<Vec<Item>, String> {
    let tls: Vec<&Bind> = binds.iter().filter(|b| b.ssl && !b.addrs.is_empty()).collect();
    let first = tls.first().ok_or("no bind with `ssl crt` and an IP address")?;
    let crt = first.crt.as_deref().ok_or("the TLS bind names no `crt`")?;
    let addrs: Vec<String> = tls.iter().flat_map(|b| b.addrs.iter().map(|a| s(a))).collect();
    let lines: Vec<usize> = tls.iter().map(|b| b.line).collect();
    let value = match addrs.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let mut items = vec![Item {
        key: "https",
        value,
        lines,
        note: None,
    }];
    if let Some(floor) = first.floor.map(|v| (v, first.line)).or(g.bind_min_tls) {
        items.push(Item::new("tls_min_version", s(floor.0), floor.1));
    }
    let path = match (&g.crt_base, Path::new(crt).is_relative()) {
        (Some(base), true) => Path::new(base).join(crt),
        _ => Path::new(crt).to_path_buf(),
    };
    let line = section
        .lines
        .iter()
        .find(|l| l.no == first.line)
        .unwrap_or(&section.header);
    if path.is_relative() {
        report.approx(
            line,
            "crt",
            "relative: HAProxy read it from its working directory, the ingress reads it from the config file's",
        );
    }
    let is_dir = path.is_dir() || (!path.exists() && path.extension().is_none());
    if !path.exists() && is_dir {
        report.approx(
            line,
            "crt",
            format!("{} does not exist here: taken as a directory", path.display()),
        );
    }
    if is_dir {
        let note = "every *.pem bundle there, chosen by SNI";
        items.push(Item::new("certs", s(&path.display().to_string()), first.line).note(note));
        return Ok(items);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if path.extension().is_none_or(|e| e != "pem") {
        let msg = format!("the ingress reads *.pem bundles (chain + key) only: rename it {stem}.pem");
        report.approx(line, "crt", msg);
    }
    let note = "the crt's directory: every *.pem bundle there is served, chosen by SNI";
    items.push(Item::new("certs", s(&dir.display().to_string()), first.line).note(note));
    items.push(Item::new("default_cert", s(&stem), first.line).note("the crt itself, served when SNI matches none"));
    Ok(items)
}
