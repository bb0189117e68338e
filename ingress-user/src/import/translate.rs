//! Import: the translation as a whole — which frontend serves calls and
//! which one ACME challenges, which backends become pools, which sections
//! have no equivalent — and the settings several sections decide together
//! (limits, timeouts).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    ImportError, Report, Verdict, back, bind, front, global,
    parse::{Kind, Parsed, Section, dur_str},
    render::{Item, Plan, RoutePlan, s},
    servers,
};

/// Builds the plan; notes go to `report`.
pub(super) fn plan(
    p: &Parsed,
    file: &str,
    servers_file: Option<&Path>,
    report: &mut Report,
) -> Result<Plan, ImportError> {
    let at = |line: usize, message: String| ImportError::At {
        file: file.to_owned(),
        line,
        message,
    };
    let secs = &p.sections;
    for s in secs {
        match s.kind {
            Kind::Other => report.cover(s, Verdict::NotTranslated, "no equivalent section in the ingress"),
            Kind::Listen if s.lines.iter().any(|l| l.word(0) == "stats") => report.cover(
                s,
                Verdict::NotTranslated,
                "replaced by the admin API: `ingress ctl stat`, and /stats, /metrics on `[admin] listen`",
            ),
            Kind::Listen => report.cover(
                s,
                Verdict::NotTranslated,
                "write it as a frontend and a backend to have it translated",
            ),
            _ => {}
        }
    }
    let globals: Vec<&Section> = secs.iter().filter(|s| s.kind == Kind::Global).collect();
    let g = global::read(&globals, report);
    let fronts: Vec<usize> = (0..secs.len()).filter(|i| secs[*i].kind == Kind::Frontend).collect();
    let Some(&first) = fronts.first() else {
        return Err(ImportError::Whole {
            file: file.to_owned(),
            message: "no frontend: nothing receives requests".to_owned(),
        });
    };
    let is_tls = |s: &Section| {
        s.lines
            .iter()
            .any(|l| l.word(0) == "bind" && l.words.iter().any(|w| w == "ssl") && l.words.iter().any(|w| w == "crt"))
    };
    let Some(&ti) = fronts.iter().find(|i| is_tls(&secs[**i])) else {
        let msg = format!(
            "{}: no frontend binds with `ssl crt …`: the ingress serves calls over TLS only",
            secs[first].title()
        );
        return Err(at(secs[first].header.no, msg));
    };
    let hi = fronts.iter().copied().find(|i| !is_tls(&secs[*i]));
    for &i in fronts.iter().filter(|i| **i != ti && Some(**i) != hi) {
        let msg = if is_tls(&secs[i]) {
            "a second TLS frontend: the ingress has one set of https listeners; merge its binds and routes by hand"
        } else {
            "a second plain-HTTP frontend: the ingress's http listener serves ACME challenges only"
        };
        report.cover(&secs[i], Verdict::NotTranslated, msg);
    }
    let tls = &secs[ti];
    let f = front::read(tls, defaults_for(secs, ti), report);
    let mut plan = Plan {
        listen: bind::listen_items(&f.binds, &g, report, tls)
            .map_err(|e| at(tls.header.no, format!("{}: {e}", tls.title())))?,
        ..Plan::default()
    };
    match &f.health {
        Some((path, line, acls)) => {
            let mut item = Item::new("health_path", s(path), line.no).note("answered 200 ok here");
            item.lines.extend(acls);
            plan.listen.push(item);
        }
        None => plan
            .listen_comments
            .push("health_path keeps its default, /haproxy-health (HAProxy answered no local health path)".to_owned()),
    }
    let (drafts, needless) = front::routes(&f, report);
    if !needless.is_empty() {
        let at = needless.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        let name = Path::new(file)
            .file_name()
            .map_or_else(|| file.into(), |n| n.to_string_lossy());
        plan.listen_comments.push(format!(
            "{name}:{at}: the `http-request deny` / `return status 404` rules need nothing:\n# the ingress answers 404 to anything it does not route."
        ));
    }
    let mut acme = None;
    if let Some(hi) = hi {
        acme = acme_listener(secs, hi, &mut plan, report).map_err(|(l, e)| at(l, e))?;
    }
    let mut names: Vec<&str> = Vec::new();
    for d in &drafts {
        if !names.contains(&d.backend.as_str()) {
            names.push(&d.backend);
        }
    }
    let mut fleet_timeouts = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let Some(bi) = backend(secs, name) else {
            let line = drafts
                .iter()
                .find(|d| d.backend == *name)
                .and_then(|d| d.lines.first())
                .copied()
                .unwrap_or(0);
            return Err(at(line, format!("no backend named `{name}`")));
        };
        let sf = servers_file.map(|p| pool_file(p, name, k == 0));
        let b = back::read(&secs[bi], defaults_for(secs, bi), &g, sf, report);
        if b.pool.servers.is_empty() {
            let msg = "no servers: the pool starts empty (add some with `ingress ctl add`)";
            report.approx(&secs[bi].header, &secs[bi].title(), msg);
        }
        fleet_timeouts.extend(b.timeouts);
        plan.pools.push(b.pool);
    }
    for (i, s) in secs.iter().enumerate().filter(|(_, s)| s.kind == Kind::Backend) {
        let name = s.name.as_deref().unwrap_or("");
        if !names.contains(&name) && acme.as_deref() != Some(name) {
            report.cover(&secs[i], Verdict::NotTranslated, "no translated route uses it");
        }
    }
    match plan.pools.first() {
        None => {
            let msg = format!(
                "{}: routes no request to a backend that could be translated",
                tls.title()
            );
            return Err(at(tls.header.no, msg));
        }
        Some(p) if plan.pools.iter().all(|p| p.servers.is_empty()) => {
            return Err(at(p.line, format!("backend {}: no server could be translated", p.name)));
        }
        Some(_) => {}
    }
    plan.routes = drafts
        .into_iter()
        .map(|d| {
            let calls = plan.pools.iter().any(|p| p.name == d.backend && p.capacity);
            RoutePlan {
                path: d.path,
                host: d.host,
                pool: d.backend,
                kind: if calls { "websocket" } else { "http" },
                lines: d.lines,
                note: d.note,
            }
        })
        .collect();
    plan.limits = limits(&g, &f, report);
    plan.timeouts = timeouts(&f, &fleet_timeouts, report);
    let items = plan.listen.iter().chain(&plan.limits).chain(&plan.timeouts);
    let pools = plan
        .pools
        .iter()
        .flat_map(|p| p.items.iter().chain(&p.check).chain(p.tls.iter().flatten()));
    let lines: Vec<usize> = items
        .chain(pools)
        .flat_map(|i| i.lines.iter().copied())
        .chain(plan.routes.iter().flat_map(|r| r.lines.iter().copied()))
        .chain(plan.pools.iter().flat_map(|p| p.servers.iter().map(|s| s.line)))
        .collect();
    for l in lines {
        report.used(l);
    }
    Ok(plan)
}

/// The defaults section a proxy at `i` takes: the one it names with
/// `from`, else the last one before it.
fn defaults_for(secs: &[Section], i: usize) -> Option<&Section> {
    let before = secs[..i].iter().rev().filter(|s| s.kind == Kind::Defaults);
    match &secs[i].from {
        Some(name) => before.clone().find(|s| s.name.as_ref() == Some(name)),
        None => before.clone().next(),
    }
}

fn backend(secs: &[Section], name: &str) -> Option<usize> {
    secs.iter()
        .position(|s| s.kind == Kind::Backend && s.name.as_deref() == Some(name))
}

/// The servers file of a pool: the one given for the first pool, `STEM-POOL.EXT` beside it for others.
fn pool_file(given: &Path, pool: &str, first: bool) -> PathBuf {
    if first {
        return given.to_owned();
    }
    let stem = given
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let name = match given.extension() {
        Some(e) => format!("{stem}-{pool}.{}", e.to_string_lossy()),
        None => format!("{stem}-{pool}"),
    };
    given.with_file_name(name)
}

/// The plain-HTTP frontend: `[listen] http` and `acme_upstream` when it
/// sends ACME challenges to a backend; the backend's name.
fn acme_listener(
    secs: &[Section],
    hi: usize,
    plan: &mut Plan,
    report: &mut Report,
) -> Result<Option<String>, (usize, String)> {
    let hs = &secs[hi];
    let hf = front::read(hs, defaults_for(secs, hi), report);
    let Some((rule, acls)) = front::acme_backend(&hf, report) else {
        let msg = "the ingress's http listener serves ACME challenges only, and this frontend sends none to a backend";
        report.cover(hs, Verdict::NotTranslated, msg);
        return Ok(None);
    };
    let name = rule.word(1);
    let binds: Vec<&bind::Bind> = hf.binds.iter().filter(|b| !b.addrs.is_empty()).collect();
    let addrs: Vec<String> = binds.iter().flat_map(|b| b.addrs.iter().map(|a| s(a))).collect();
    let value = match addrs.as_slice() {
        [] => return Err((hs.header.no, format!("{}: no bind with an IP address", hs.title()))),
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    plan.listen.push(Item {
        key: "http",
        value,
        lines: binds.iter().map(|b| b.line).collect(),
        note: Some("ACME HTTP-01 only; anything else there is answered 404".to_owned()),
    });
    let bi = backend(secs, name).ok_or((rule.no, format!("no backend named `{name}`")))?;
    let mut upstream = None;
    for l in &secs[bi].lines {
        match l.word(0) {
            "server" if upstream.is_none() => match servers::server_addr(l.word(2)) {
                Ok((h, Some(port))) => {
                    let addr = if h.contains(':') {
                        format!("[{h}]:{port}")
                    } else {
                        format!("{h}:{port}")
                    };
                    let mut item = Item::new("acme_upstream", s(&addr), l.no).note("certbot's standalone listener");
                    item.lines.push(rule.no);
                    item.lines.extend(&acls);
                    plan.listen.push(item);
                    upstream = Some(l.no);
                }
                Ok((_, None)) => return Err((l.no, format!("`{}`: the ACME upstream needs a port", l.word(2)))),
                Err(e) => return Err((l.no, format!("`{}`: {e}", l.word(2)))),
            },
            "server" => report.not_translated(l, "server", "one ACME upstream: the first server is used"),
            _ => report.not_needed(l, &l.keyword(), "the ACME upstream takes no options"),
        }
    }
    if upstream.is_none() {
        return Err((
            secs[bi].header.no,
            format!("backend {name}: no server for ACME challenges"),
        ));
    }
    Ok(Some(name.to_owned()))
}

fn limits(g: &global::Global, f: &front::Front, report: &mut Report) -> Vec<Item> {
    let mut items = Vec::new();
    match (g.maxconn, f.maxconn) {
        (Some((n, l)), other) => {
            items.push(Item::new("max_connections", n.to_string(), l));
            if let Some((_, fl)) = other {
                let msg = format!("max_connections is the global maxconn ({n}), for both listeners");
                report.note_no(fl, "maxconn", Verdict::Approximated, msg);
            }
        }
        (None, Some((n, l))) => items.push(Item::new("max_connections", n.to_string(), l)),
        (None, None) => {}
    }
    if let Some((n, l)) = g.max_headers {
        items.push(Item::new("max_headers", n.to_string(), l));
    }
    if let Some((_, d, l)) = f.timeouts.iter().rev().find(|t| t.0 == "http-request") {
        items.push(Item::new("header_timeout", s(&dur_str(*d)), *l).note("and the TLS handshake before it"));
    }
    if let Some((d, l)) = g.hard_stop_after {
        for key in ["shutdown_grace", "upgrade_grace"] {
            items.push(Item::new(key, s(&dur_str(d)), l).note("then each call gets a Close 1001"));
        }
    }
    keep_nonzero(items, report)
}

/// Drops zero limits (HAProxy's "none"), which the ingress refuses, reporting them.
fn keep_nonzero(mut items: Vec<Item>, report: &mut Report) -> Vec<Item> {
    items.retain(|i| {
        let zero = i.value == "0" || i.value == s("0s");
        for l in i.lines.iter().filter(|_| zero) {
            report.note_no(
                *l,
                i.key,
                Verdict::NotTranslated,
                "0 (no limit): the ingress keeps its default",
            );
        }
        !zero
    });
    items
}

fn timeouts(f: &front::Front, fleet: &[(&str, Duration, usize)], report: &mut Report) -> Vec<Item> {
    let last = |k: &str| fleet.iter().rev().find(|t| t.0 == k).map(|t| (t.1, t.2));
    let client = f.timeouts.iter().rev().find(|t| t.0 == "client").map(|t| (t.1, t.2));
    let mut items = Vec::new();
    let distinct = |k: &str| {
        let mut v: Vec<Duration> = fleet.iter().filter(|t| t.0 == k).map(|t| t.1).collect();
        v.dedup();
        v.len() > 1
    };
    for k in ["connect", "tunnel"] {
        if distinct(k) {
            for (_, _, l) in fleet.iter().filter(|t| t.0 == k) {
                let msg = "one value for all pools: the last one read is used";
                report.note_no(*l, &format!("timeout {k}"), Verdict::Approximated, msg);
            }
        }
    }
    if let Some((d, l)) = last("connect") {
        items.push(Item::new("connect", s(&dur_str(d)), l).note("TCP and TLS to a fleet"));
    }
    let server = last("server");
    match (last("tunnel"), client, server) {
        (Some((d, l)), _, _) if !d.is_zero() => {
            items.push(Item::new("tunnel_idle", s(&dur_str(d)), l));
            if let Some((_, l)) = client {
                let msg = "header_timeout bounds a request head, tunnel_idle a call";
                report.note_no(l, "timeout client", Verdict::NotNeeded, msg);
            }
            if let Some((_, l)) = server {
                let msg = "upgrade_response (5s) bounds the wait for a fleet's answer, tunnel_idle a call";
                report.note_no(l, "timeout server", Verdict::NotNeeded, msg);
            }
        }
        (_, c, sv) if c.is_some() || sv.is_some() => {
            let (d, l) = c.into_iter().chain(sv).min_by_key(|(d, _)| *d).unwrap_or_default();
            let mut item = Item::new("tunnel_idle", s(&dur_str(d)), l)
                .note("no `timeout tunnel`: HAProxy's idle limit was the lower of timeout client and server");
            item.lines = c.into_iter().chain(sv).map(|(_, l)| l).collect();
            items.push(item);
        }
        _ => {}
    }
    if let Some((_, d, l)) = f.timeouts.iter().rev().find(|t| t.0 == "http-keep-alive") {
        items.push(Item::new("keepalive_idle", s(&dur_str(*d)), *l).note("kind = \"http\" routes"));
    }
    keep_nonzero(items, report)
}
