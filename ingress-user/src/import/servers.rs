//! Import: `server` and `default-server` lines — options merged in order
//! (`no-X` removes X), the address, and what each option becomes on one
//! server (the pool-wide ones are read by [`super::back`]).

use std::collections::BTreeMap;

use super::{Report, Verdict, parse::Line, render::ServerPlan};
use crate::model::{AdminState, ServerDef, addr::parse_host_port};

/// A server option and its argument (`None`: a flag), with its line.
pub(super) type Params = BTreeMap<String, (Option<String>, usize)>;

const FLAGS: &[&str] = &[
    "check",
    "ssl",
    "backup",
    "disabled",
    "enabled",
    "check-ssl",
    "send-proxy",
    "send-proxy-v2",
    "send-proxy-v2-ssl",
    "send-proxy-v2-ssl-cn",
    "check-send-proxy",
    "non-stick",
    "tfo",
    "allow-0rtt",
    "force-sslv3",
    "force-tlsv10",
    "force-tlsv11",
    "force-tlsv12",
    "force-tlsv13",
    "no-sslv3",
    "no-tlsv10",
    "no-tlsv11",
    "no-tlsv12",
    "no-tlsv13",
    "no-tls-tickets",
    "tls-tickets",
    "no-ssl-reuse",
    "ssl-reuse",
    "agent-check",
    "no-verifyhost",
    "check-via-socks4",
    "stick",
];

/// Server options as name → argument.
pub(super) fn params(words: &[String], line: &Line, report: &mut Report) -> Params {
    let mut out = Params::new();
    let mut i = 0;
    while i < words.len() {
        let o = words[i].clone();
        let flag = FLAGS.contains(&o.as_str()) || o.starts_with("no-");
        let arg = (!flag).then(|| words.get(i + 1).cloned()).flatten();
        if !flag && arg.is_none() {
            report.not_translated(line, &o, "no argument given");
        }
        i += 1 + usize::from(!flag);
        out.insert(o, (arg, line.no));
    }
    out
}

/// `default-server` (or a server's own) options over earlier ones; `no-X` removes X.
pub(super) fn merge(into: &mut Params, new: Params) {
    for (k, v) in new {
        match k.strip_prefix("no-") {
            Some(base) if !FLAGS.contains(&k.as_str()) => {
                into.remove(base);
            }
            _ => {
                into.insert(k, v);
            }
        }
    }
}

/// One server, or `None` (reported) when it cannot be one.
pub(super) fn server(
    line: &Line,
    p: &Params,
    to_file: bool,
    cookie_pool: bool,
    report: &mut Report,
) -> Option<ServerPlan> {
    let (name, addr) = (line.word(1), line.word(2));
    if line.env {
        report.not_translated(
            line,
            "server",
            "environment variables are not expanded: write the address",
        );
        return None;
    }
    let (host, port) = match server_addr(addr) {
        Ok((h, Some(p))) => (h, p),
        Ok((h, None)) => {
            report.approx(
                line,
                "server",
                format!("`{addr}` has no port: HAProxy used the client's, the ingress uses 443"),
            );
            (h, 443)
        }
        Err(e) => {
            report.not_translated(line, "server", format!("`{addr}`: {e}"));
            return None;
        }
    };
    if p.contains_key("backup") {
        let msg = "the ingress has no backup servers: add it with `ingress ctl add` when it is needed";
        report.note_no(p["backup"].1, "backup", Verdict::NotTranslated, msg);
        return None;
    }
    let mut state = AdminState::Ready;
    if let Some((_, l)) = p.get("disabled") {
        if !to_file {
            let msg = "inline servers have no state: use --servers-file (state=maint), or `ingress ctl maint`";
            report.note_no(*l, "disabled", Verdict::NotTranslated, msg);
            return None;
        }
        state = AdminState::Maint;
    }
    for (k, (v, l)) in p {
        use Verdict::{Approximated, NotNeeded, NotTranslated};
        let (verdict, msg) = match k.as_str() {
            "check" | "ssl" | "verify" | "ca-file" | "sni" | "maxconn" | "inter" | "fall" | "rise" | "slowstart"
            | "on-marked-down" | "disabled" | "check-sni" | "verifyhost" => continue,
            "weight" => (NotTranslated, "the ingress has no weights: spare capacity steers calls"),
            "cookie" if cookie_pool => (
                Approximated,
                "the ingress pins clients with its own opaque id per server: HAProxy's pins are picked afresh once",
            ),
            "cookie" => (NotNeeded, "the backend sets no cookie"),
            "check-ssl" | "enabled" | "id" => (NotNeeded, "no equivalent needed"),
            "no-ssl-reuse" | "ssl-reuse" | "tls-tickets" | "no-tls-tickets" => {
                (NotNeeded, "TLS sessions are resumed per server")
            }
            "pool-purge-delay" | "pool-max-conn" | "pool-low-conn" | "max-reuse" => {
                (NotNeeded, "idle fleet connections are reused on kind = \"http\" routes")
            }
            "alpn" | "check-alpn" if v.as_deref().is_some_and(|a| a.split(',').all(|p| p == "http/1.1")) => {
                (NotNeeded, "the ingress speaks HTTP/1.1 to servers")
            }
            "ciphers" | "ciphersuites" | "curves" | "sigalgs" | "no-sslv3" => {
                (NotTranslated, "rustls's safe defaults towards the servers")
            }
            k if k == "ssl-min-ver" || k == "ssl-max-ver" || k.starts_with("force-") || k.starts_with("no-tlsv") => (
                NotTranslated,
                "set the pool's versions by hand: [pools.NAME.tls] versions = [\"1.2\"] or [\"1.3\"] (default both)",
            ),
            "maxqueue" | "minconn" => (NotTranslated, "no queue: a call with no free server gets 503 at once"),
            "resolvers" | "init-addr" | "resolve-prefer" | "resolve-opts" | "resolve-net" => (
                NotTranslated,
                "the ingress resolves names with the system resolver at each connect",
            ),
            "observe" | "on-error" | "error-limit" => (
                NotTranslated,
                "a failed connect marks the server DOWN until its next good check",
            ),
            "port" | "addr" => (NotTranslated, "the check goes to the server's own address and port"),
            k if k.starts_with("send-proxy") => (NotTranslated, "the ingress does not send the PROXY protocol"),
            "crt" => (NotTranslated, "the ingress presents no client certificate to servers"),
            "fastinter" | "downinter" => (NotTranslated, "one check interval per pool"),
            _ => (NotTranslated, "no equivalent in the ingress"),
        };
        report.note_no(*l, k, verdict, msg);
    }
    report.used(line.no);
    Some(ServerPlan {
        def: ServerDef {
            name: name.to_owned(),
            host,
            port,
            sni: None,
            maxconn: None,
        },
        state,
        line: line.no,
    })
}

/// A server address: host and port (`None` when absent).
pub(super) fn server_addr(a: &str) -> Result<(String, Option<u16>), String> {
    let a = a.strip_prefix("ipv4@").or_else(|| a.strip_prefix("ipv6@")).unwrap_or(a);
    if a.contains('@') || a.starts_with('/') {
        return Err("only TCP addresses".to_owned());
    }
    if a.starts_with('[') {
        let (h, p) = parse_host_port(a)?;
        return Ok((h, a.contains("]:").then_some(p)));
    }
    let Some((host, port)) = a.rsplit_once(':') else {
        return parse_host_port(a).map(|(h, _)| (h, None));
    };
    if port.starts_with(['+', '-']) {
        return Err("a port offset has no equivalent".to_owned());
    }
    let port: u16 = port.parse().map_err(|_| format!("`{port}` is not a port"))?;
    let probe = if host.contains(':') {
        format!("[{host}]:1")
    } else {
        format!("{host}:1")
    };
    Ok((parse_host_port(&probe)?.0, Some(port)))
}
