//! Import: frontends — their binds (read by [`super::bind`]), the
//! `http-request` rules (the local health answer, denials), `use_backend`
//! and `default_backend` read into routes, and the `:80` frontend's ACME
//! forwarding.

use super::{
    Report, bind,
    bind::Bind,
    cond::{Acls, Alt, split_rule},
    keywords,
    parse::{Line, Section, duration},
};
use crate::model::route::RoutePattern;

/// A denial (`http-request deny`, `return status 404`), kept to check the routes against.
#[derive(Debug)]
struct Deny<'a> {
    unless: bool,
    alts: Vec<Alt>,
    line: &'a Line,
}

/// A route as read from `use_backend` or `default_backend`.
#[derive(Debug, Clone)]
pub(super) struct Draft {
    pub path: String,
    pub host: Option<String>,
    pub backend: String,
    pub lines: Vec<usize>,
    pub note: Option<String>,
}

/// What a frontend says, read.
#[derive(Debug, Default)]
pub(super) struct Front<'a> {
    pub binds: Vec<Bind>,
    /// The local health path, its rule and the ACL lines it names.
    pub health: Option<(String, &'a Line, Vec<usize>)>,
    denies: Vec<Deny<'a>>,
    /// Denials whose condition could not be read: nothing can be routed by default then.
    unread_denies: usize,
    /// `use_backend` rules: backend, alternatives, line.
    uses: Vec<(String, Vec<Alt>, &'a Line)>,
    default: Option<&'a Line>,
    pub maxconn: Option<(u64, usize)>,
    pub timeouts: Vec<(&'static str, std::time::Duration, usize)>,
}

/// Reads a frontend (with its defaults' frontend keywords first).
pub(super) fn read<'a>(section: &'a Section, defaults: Option<&'a Section>, report: &mut Report) -> Front<'a> {
    let lines: Vec<&Line> = defaults
        .into_iter()
        .flat_map(|d| &d.lines)
        .chain(&section.lines)
        .filter(|l| keywords::frontend_side(&l.keyword()))
        .collect();
    let acls = Acls::collect(section.lines.iter());
    let mut f = Front::default();
    for line in lines {
        let kw = line.keyword();
        let alts = |report: &mut Report| match split_rule(&line.words).1 {
            None => Ok((false, vec![Alt::default()])),
            Some(Err(e)) => Err(e),
            Some(Ok(c)) => acls.alternatives(&c, line, report).map(|a| (c.unless, a)),
        };
        match kw.as_str() {
            "bind" => f.binds.push(bind::bind(line, report)),
            "acl" => {}
            "monitor-uri" => match line.args().first() {
                Some(p) if p.starts_with('/') && f.health.is_none() => {
                    f.health = Some((p.clone(), line, Vec::new()));
                    report.used(line.no);
                }
                _ => report.not_translated(line, &kw, "only one local health path, starting with /"),
            },
            "maxconn" => match line.word(1).parse() {
                Ok(n) => f.maxconn = Some((n, line.no)),
                Err(_) => report.not_translated(line, &kw, "not a number"),
            },
            "timeout client" | "timeout http-request" | "timeout http-keep-alive" => match duration(line.word(2)) {
                Some(d) => {
                    let which = match kw.as_str() {
                        "timeout client" => "client",
                        "timeout http-request" => "http-request",
                        _ => "http-keep-alive",
                    };
                    f.timeouts.push((which, d, line.no));
                }
                None => report.not_translated(line, &kw, format!("`{}` is not a time", line.word(2))),
            },
            "use_backend" | "default_backend" if line.word(1).contains('%') => {
                report.not_translated(line, &kw, "a backend chosen by an expression has no route equivalent")
            }
            "use_backend" => match alts(report) {
                Ok((false, a)) => f.uses.push((line.word(1).to_owned(), a, line)),
                Ok((true, _)) => {
                    report.not_translated(line, &kw, "`unless`: a route cannot say what it does not match")
                }
                Err(e) => report.not_translated(line, &kw, e),
            },
            "default_backend" => f.default = Some(line),
            "http-request return"
            | "http-request deny"
            | "http-request reject"
            | "http-request tarpit"
            | "http-request silent-drop" => {
                let status = status_of(line);
                let health = kw == "http-request return" && status == 200;
                match alts(report) {
                    Err(e) => {
                        f.unread_denies += usize::from(!health);
                        report.not_translated(line, &kw, e);
                    }
                    Ok((false, a)) if health => match a.as_slice() {
                        [
                            Alt {
                                path: Some(super::cond::PathTest::Exact(p)),
                                host: None,
                                lines,
                            },
                        ] if f.health.is_none() => {
                            if let Some(body) = line.words.iter().position(|w| w == "string")
                                && line.word(body + 1) != "ok"
                            {
                                let msg = format!("the ingress answers `ok`, not `{}`", line.word(body + 1));
                                report.approx(line, &kw, msg);
                            }
                            f.health = Some((p.clone(), line, lines.clone()));
                            report.used(line.no);
                        }
                        _ => report.not_translated(line, &kw, "a 200 answer other than the one local health path"),
                    },
                    Ok(_) if health => report.not_translated(line, &kw, "a 200 answer for what is not one path"),
                    Ok((unless, alts)) if line.words.iter().any(|w| w == "if" || w == "unless") => {
                        if status != 404 {
                            let msg = format!("the ingress answers 404 to what it does not route (HAProxy: {status})");
                            report.approx(line, &kw, msg);
                        }
                        f.denies.push(Deny { unless, alts, line });
                    }
                    Ok(_) => report.not_translated(line, &kw, "a denial of every request"),
                }
            }
            "http-request set-header" | "http-request add-header"
                if line.word(2).to_ascii_lowercase().starts_with("x-forwarded-") =>
            {
                report.not_needed(line, &kw, "the ingress sets X-Forwarded-For, -Proto and -Port itself")
            }
            "http-request redirect" | "redirect" => report.not_translated(line, &kw, "the ingress does not redirect"),
            "timeout client-fin" => report.not_needed(line, &kw, "a call ends with its tunnel"),
            _ if kw.starts_with("http-response") || kw.starts_with("http-after-response") => {
                report.not_translated(line, &kw, "fleet answers are passed on as they are")
            }
            _ => report.not_translated(line, &kw, "no equivalent in the ingress"),
        }
    }
    f
}

fn status_of(line: &Line) -> u16 {
    let at = |k: &str| {
        line.words
            .iter()
            .position(|w| w == k)
            .and_then(|i| line.word(i + 1).parse().ok())
    };
    match line.word(1) {
        "return" => at("status").unwrap_or(200),
        _ => at("deny_status").unwrap_or(403),
    }
}

/// The routes a TLS frontend's rules say, in HAProxy's order, with the
/// denials checked against them; and the lines (rules and their ACLs) of
/// the denials that need nothing.
pub(super) fn routes(f: &Front, report: &mut Report) -> (Vec<Draft>, Vec<usize>) {
    let mut out: Vec<Draft> = Vec::new();
    let add = |out: &mut Vec<Draft>, backend: &str, alt: &Alt, line: &Line, report: &mut Report| {
        let (path, note) = alt.path.as_ref().map_or(("/*".to_owned(), None), |p| p.pattern());
        if let Err(e) = RoutePattern::parse(&path) {
            report.not_translated(line, &line.keyword(), format!("no route pattern: {e}"));
            return;
        }
        if let Some(d) = out.iter().find(|d| d.path == path && d.host == alt.host) {
            let at = d.lines.first().copied().unwrap_or(0);
            report.not_needed(
                line,
                &line.keyword(),
                format!("`{path}` is routed by line {at} already"),
            );
            return;
        }
        let mut lines = vec![line.no];
        lines.extend(&alt.lines);
        out.push(Draft {
            path,
            host: alt.host.clone(),
            backend: backend.to_owned(),
            lines,
            note,
        });
        report.used(line.no);
    };
    for (backend, alts, line) in &f.uses {
        for alt in alts {
            add(&mut out, backend, alt, line, report);
        }
    }
    if let Some(line) = f.default {
        let backend = line.word(1);
        let gate = f.denies.iter().find(|d| d.unless);
        match gate {
            Some(d) => {
                for alt in &d.alts {
                    add(&mut out, backend, alt, line, report);
                }
            }
            None if f.denies.is_empty() && f.unread_denies == 0 => {
                add(&mut out, backend, &Alt::default(), line, report)
            }
            None => report.not_translated(
                line,
                "default_backend",
                format!("the ingress cannot deny paths under a route: add [[routes]] for what {backend} serves"),
            ),
        }
    }
    let mut needless = Vec::new();
    for d in &f.denies {
        if check_denial(d, &out, report) {
            needless.push(d.line.no);
            needless.extend(d.alts.iter().flat_map(|a| a.lines.iter().copied()));
        }
    }
    needless.sort_unstable();
    needless.dedup();
    (out, needless)
}

/// A denial is not needed when the ingress routes nothing it denied (true); else it is reported.
fn check_denial(d: &Deny, routes: &[Draft], report: &mut Report) -> bool {
    let kw = d.line.keyword();
    let sample = |r: &Draft| {
        r.path
            .replace('*', "x")
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/")
    };
    let leak = if d.unless {
        routes
            .iter()
            .find(|r| !d.alts.iter().any(|a| a.holds(&sample(r), r.host.as_deref())))
            .map(|r| (sample(r), r))
    } else {
        d.alts.iter().find_map(|a| {
            let p = a.path.as_ref().map_or("/x".to_owned(), |p| p.sample());
            routes
                .iter()
                .find(|r| {
                    RoutePattern::parse(&r.path).is_ok_and(|pat| pat.matches(&p).is_some())
                        && (r.host.is_none() || a.host.is_none() || r.host == a.host)
                })
                .map(|r| (p, r))
        })
    };
    match &leak {
        None => report.not_needed(d.line, &kw, "the ingress answers 404 to anything it does not route"),
        Some((p, r)) => report.not_translated(
            d.line,
            &kw,
            format!(
                "the ingress has no deny rule: `{p}` is routed to {} (route `{}`)",
                r.backend, r.path
            ),
        ),
    }
    leak.is_none()
}

/// The rule by which a plain-HTTP frontend sends ACME challenges to a
/// backend, with its ACL lines; every other rule reported.
pub(super) fn acme_backend<'a>(f: &Front<'a>, report: &mut Report) -> Option<(&'a Line, Vec<usize>)> {
    const ACME: &str = "/.well-known/acme-challenge/x";
    let mut found = None;
    for (backend, alts, line) in &f.uses {
        let acme = alts.iter().any(|a| {
            a.path.as_ref().is_some_and(|p| p.matches(ACME)) && a.path.as_ref().is_some_and(|p| !p.matches("/x"))
        });
        if acme && found.is_none() {
            found = Some((*line, alts.iter().flat_map(|a| a.lines.iter().copied()).collect()));
            report.used(line.no);
        } else {
            report.not_translated(
                line,
                "use_backend",
                format!("the http listener forwards ACME challenges only ({backend} is not reached)"),
            );
        }
    }
    if let Some(line) = f.default {
        report.not_translated(
            line,
            "default_backend",
            "the http listener answers 404 outside ACME challenges",
        );
    }
    for d in &f.denies {
        report.not_needed(
            d.line,
            &d.line.keyword(),
            "the http listener answers 404 outside ACME challenges",
        );
    }
    if let Some((_, line, _)) = &f.health {
        let msg = "the local health path is answered on the https listener only";
        report.not_translated(line, &line.keyword(), msg);
    }
    found
}
