//! Import: a backend read into a pool — balance and cookie, servers (with
//! `default-server` merged), TLS towards them, the check's timing, retries,
//! slowstart — and the fleet-side timeouts it sets.

use std::{path::PathBuf, time::Duration};

use super::{
    Report, check,
    global::Global,
    keywords,
    parse::{Line, Section, dur_str, duration},
    policy,
    render::{Item, PoolPlan, ServerPlan, s},
    servers::{self, Params},
};

/// A pool read from a backend, and the fleet-side timeouts it sets.
#[derive(Debug)]
pub(super) struct Back {
    pub pool: PoolPlan,
    pub timeouts: Vec<(&'static str, Duration, usize)>,
}

/// Reads `section` (its defaults' backend keywords first) into a pool.
pub(super) fn read(
    section: &Section,
    defaults: Option<&Section>,
    g: &Global,
    servers_file: Option<PathBuf>,
    report: &mut Report,
) -> Back {
    let lines: Vec<&Line> = defaults
        .into_iter()
        .flat_map(|d| &d.lines)
        .chain(&section.lines)
        .filter(|l| keywords::backend_side(&l.keyword()))
        .collect();
    let check = check::read(&lines, report);
    let (mut balance, mut hash, mut cookie, mut retries, mut retry_on) = (None, None, None, None, None);
    let mut defaults_params = Params::new();
    let mut declared: Vec<(&Line, Params)> = Vec::new();
    let mut timeouts = Vec::new();
    for line in &lines {
        let kw = line.keyword();
        match kw.as_str() {
            "balance" => balance = Some(*line),
            "hash-type" => hash = Some(*line),
            "cookie" => cookie = Some(*line),
            "retries" => retries = Some(*line),
            "retry-on" => retry_on = Some(*line),
            "default-server" => servers::merge(&mut defaults_params, servers::params(&line.words[1..], line, report)),
            "server" => {
                let mut p = defaults_params.clone();
                servers::merge(
                    &mut p,
                    servers::params(&line.words[3.min(line.words.len())..], line, report),
                );
                declared.push((line, p));
            }
            "timeout connect" | "timeout server" | "timeout tunnel" | "timeout check" => match duration(line.word(2)) {
                Some(d) => timeouts.push((static_timeout(&kw[8..]), d, line.no)),
                None => report.not_translated(line, &kw, format!("`{}` is not a time", line.word(2))),
            },
            "timeout queue" => {
                report.not_translated(line, &kw, "no queue: a call with no free server gets 503 at once")
            }
            "timeout server-fin" => report.not_needed(line, &kw, "a call ends with its tunnel"),
            "server-template" => report.not_translated(line, &kw, "list the servers, or use a servers_file"),
            "option persist" | "option prefer-last-server" | "option abortonclose" => {
                report.not_translated(line, &kw, "no equivalent in the ingress")
            }
            _ => {}
        }
    }
    let mut items = policy::balance_items(balance, hash, cookie, report);
    let mut pool = PoolPlan {
        name: section.name.clone().unwrap_or_default(),
        line: section.header.no,
        items: Vec::new(),
        tls: None,
        check: Vec::new(),
        servers: Vec::new(),
        servers_file,
        capacity: check.capacity,
    };
    let cookie_pool = items.iter().any(|i| i.key == "balance" && i.value == s("cookie"));
    pool.servers = declared
        .iter()
        .filter_map(|(line, p)| servers::server(line, p, pool.servers_file.is_some(), cookie_pool, report))
        .collect();
    let kept: Vec<Kept> = declared
        .iter()
        .filter(|(l, _)| pool.servers.iter().any(|sv| sv.line == l.no))
        .map(|(l, p)| (*l, p))
        .collect();
    items.extend(maxconn(&mut pool.servers, &kept, report));
    items.extend(policy::retry_items(retries, retry_on, report));
    if let Some((v, l)) = pool_wide(&kept, "slowstart", report) {
        match duration(&v) {
            Some(d) => items.push(Item::new("slowstart", s(&dur_str(d)), l)),
            None => report.note_no(
                l,
                "slowstart",
                super::Verdict::NotTranslated,
                format!("`{v}` is not a time"),
            ),
        }
    }
    if let Some((v, l)) = pool_wide(&kept, "on-marked-down", report) {
        match v.as_str() {
            "shutdown-sessions" => items.push(Item::new("on_marked_down", s("shutdown-sessions"), l)),
            _ => report.note_no(
                l,
                "on-marked-down",
                super::Verdict::NotTranslated,
                format!("`{v}`: no equivalent"),
            ),
        }
    }
    pool.items = items;
    pool.tls = tls(&kept, &mut pool.servers, g, report);
    pool.check = check.items;
    let timing = timing(&kept, &timeouts, section, report);
    pool.check
        .splice(2.min(pool.check.len())..2.min(pool.check.len()), timing);
    if !check.http {
        for (line, _) in kept.iter().filter(|(_, p)| p.contains_key("check")) {
            let msg = "HAProxy checked TCP only: the ingress sends GET / and takes any HTTP answer";
            report.approx(line, "check", msg);
        }
    }
    Back { pool, timeouts }
}

fn static_timeout(k: &str) -> &'static str {
    match k {
        "connect" => "connect",
        "server" => "server",
        "tunnel" => "tunnel",
        _ => "check",
    }
}

/// A kept server: its line and its merged options.
type Kept<'a> = (&'a Line, &'a Params);

/// The value servers give a pool-wide option (the first server's), each
/// differing server reported.
fn pool_wide(kept: &[Kept], key: &str, report: &mut Report) -> Option<(String, usize)> {
    let first = kept
        .iter()
        .find_map(|(_, p)| p.get(key))
        .map(|(v, l)| (v.clone().unwrap_or_default(), *l))?;
    for (line, p) in kept {
        let v = p.get(key).map(|(v, _)| v.clone().unwrap_or_default());
        if v.as_deref() != Some(first.0.as_str()) {
            let shown = v.unwrap_or_else(|| "(none)".to_owned());
            let msg = format!(
                "`{shown}`: one value per pool; `{}` from line {} is used",
                first.0, first.1
            );
            report.approx(line, key, msg);
        }
    }
    Some(first)
}

fn maxconn(sv: &mut [ServerPlan], kept: &[Kept], report: &mut Report) -> Vec<Item> {
    let values: Vec<Option<(u32, usize)>> = kept
        .iter()
        .map(|(_, p)| {
            p.get("maxconn")
                .and_then(|(v, l)| Some((v.as_deref()?.parse().ok()?, *l)))
        })
        .collect();
    let Some((pool, line)) = values.iter().flatten().next().copied() else {
        let note = "HAProxy did not cap these servers; 16 is one call per fleet worker: set what a server takes";
        if let Some((first, _)) = kept.first() {
            report.approx(
                first,
                "maxconn",
                "none: HAProxy did not cap these servers; the pool's maxconn is 16",
            );
        }
        return vec![Item::new("maxconn", "16".to_owned(), 0).note(note)];
    };
    for ((server, v), (l, _)) in sv.iter_mut().zip(&values).zip(kept) {
        match v {
            Some((n, _)) if *n != pool => server.def.maxconn = Some(*n),
            Some(_) => {}
            None => report.approx(
                l,
                "maxconn",
                format!("none: HAProxy did not cap it; the pool's {pool} applies"),
            ),
        }
    }
    vec![Item::new("maxconn", pool.to_string(), line)]
}

/// `[pools.X.tls]`, or `None` for plain TCP; per-server SNI where servers differ.
fn tls(kept: &[Kept], sv: &mut [ServerPlan], g: &Global, report: &mut Report) -> Option<Vec<Item>> {
    let ssl = kept.first().is_some_and(|(_, p)| p.contains_key("ssl"));
    for (line, p) in kept {
        if p.contains_key("ssl") != ssl {
            report.approx(line, "ssl", "one TLS setting per pool: the first server's is used");
        }
    }
    if !ssl {
        return None;
    }
    let mut items = Vec::new();
    match (pool_wide(kept, "verify", report), g.server_verify) {
        (Some((v, l)), _) => items.push(Item::new("verify", (v != "none").to_string(), l)),
        (None, Some((b, l))) => items.push(Item::new("verify", b.to_string(), l)),
        (None, None) => items.push(Item::new("verify", "true".to_owned(), 0).note("HAProxy's default: required")),
    }
    if let Some((v, l)) = pool_wide(kept, "ca-file", report) {
        let path = match &g.ca_base {
            Some(base) if PathBuf::from(&v).is_relative() => PathBuf::from(base).join(&v),
            _ => PathBuf::from(&v),
        };
        match v.as_str() {
            "@system-ca" => report.note_no(
                l,
                "ca-file",
                super::Verdict::NotNeeded,
                "the system roots are the default",
            ),
            _ => items.push(Item::new("ca", s(&path.display().to_string()), l)),
        }
    }
    let snis: Vec<Option<(String, usize)>> = kept
        .iter()
        .map(|(_, p)| {
            let (v, l) = p.get("sni")?;
            match sni_value(v.as_deref().unwrap_or("")) {
                Ok(h) => Some((h, *l)),
                Err(e) => {
                    report.note_no(*l, "sni", super::Verdict::NotTranslated, e);
                    None
                }
            }
        })
        .collect();
    let same = snis
        .first()
        .and_then(Option::as_ref)
        .filter(|first| snis.iter().all(|x| x.as_ref().is_some_and(|(h, _)| *h == first.0)));
    match same {
        Some((h, l)) => items.push(Item::new("sni", s(h), *l)),
        None => {
            for (server, sni) in sv.iter_mut().zip(&snis) {
                server.def.sni = sni.as_ref().map(|(h, _)| h.clone());
            }
        }
    }
    for ((line, p), sni) in kept.iter().zip(&snis) {
        for k in ["check-sni", "verifyhost"] {
            let Some((v, _)) = p.get(k) else { continue };
            let v = v.clone().unwrap_or_default();
            if sni.as_ref().is_some_and(|(h, _)| *h == v) {
                report.not_needed(
                    line,
                    k,
                    "the same as the server's SNI, which checks and verification use",
                );
            } else {
                report.not_translated(line, k, "checks and verification use the server's SNI");
            }
        }
    }
    Some(items)
}

fn sni_value(v: &str) -> Result<String, &'static str> {
    match v.strip_prefix("str(").and_then(|r| r.strip_suffix(')')) {
        Some(h) if !h.is_empty() => Ok(h.to_owned()),
        _ if v.contains("hdr(host)") || v.contains("ssl_fc_sni") => {
            Err("the ingress sends a fixed SNI: the pool's tls.sni, else each server's host")
        }
        _ => Err("only a fixed name, str(NAME), has an equivalent"),
    }
}

/// The check's interval, timeout, fall and rise, from the servers that have `check`.
fn timing(kept: &[Kept], timeouts: &[(&str, Duration, usize)], section: &Section, report: &mut Report) -> Vec<Item> {
    let checked: Vec<Kept> = kept.iter().filter(|(_, p)| p.contains_key("check")).copied().collect();
    if checked.is_empty() && !kept.is_empty() {
        let msg = "no server has `check`: HAProxy never checked them; the ingress checks each one as its check says";
        report.approx(&section.header, "check", msg);
    }
    let mut items = Vec::new();
    let inter = match pool_wide(&checked, "inter", report) {
        Some((v, l)) => match duration(&v) {
            Some(d) => {
                items.push(Item::new("interval", s(&dur_str(d)), l));
                d
            }
            None => {
                report.note_no(
                    l,
                    "inter",
                    super::Verdict::NotTranslated,
                    format!("`{v}` is not a time"),
                );
                Duration::from_secs(2)
            }
        },
        None => {
            items.push(Item::new("interval", s("2s"), 0).note("HAProxy's default inter"));
            Duration::from_secs(2)
        }
    };
    match timeouts.iter().rev().find(|(k, _, _)| *k == "check") {
        Some((_, d, l)) => {
            report.used(*l);
            items.push(Item::new("timeout", s(&dur_str(*d)), *l));
        }
        None => items.push(
            Item::new("timeout", s(&dur_str(inter)), 0)
                .note("without `timeout check`, HAProxy's check timeout is inter"),
        ),
    }
    for (key, default) in [("fall", 3), ("rise", 2)] {
        match pool_wide(&checked, key, report).map(|(v, l)| (v.parse::<u32>(), l)) {
            Some((Ok(n), l)) => items.push(Item::new(key, n.to_string(), l)),
            Some((Err(_), l)) => report.note_no(l, key, super::Verdict::NotTranslated, "not a number"),
            None => items.push(Item::new(key, default.to_string(), 0).note(format!("HAProxy's default {key}"))),
        }
    }
    items
}
