//! Import: a backend's HTTP health check — `option httpchk`, `http-check
//! send`, `http-check expect` — read into `[pools.X.check]`. An `rstring`
//! whose regex reads a number after a JSON key (`"fleet_available":([1-9]|…)`)
//! becomes a capacity pointer (`/fleet_available`); other body tests leave a
//! liveness-only check.

use std::collections::BTreeSet;

use super::{
    Report,
    parse::Line,
    render::{Item, s},
};

/// The check's settings other than timing.
#[derive(Debug)]
pub(super) struct Check {
    /// An HTTP check was configured (`option httpchk`); else HAProxy checked TCP only.
    pub http: bool,
    pub items: Vec<Item>,
    /// The check reads a capacity.
    pub capacity: bool,
}

/// Reads the check lines of a backend (its defaults' first).
pub(super) fn read(lines: &[&Line], report: &mut Report) -> Check {
    let (mut http, mut method, mut path, mut host) = (None, ("OPTIONS".to_owned(), 0), ("/".to_owned(), 0), None);
    let (mut status, mut capacity): (Option<Item>, Option<Item>) = (None, None);
    let mut body_test = None;
    for line in lines {
        let kw = line.keyword();
        let args = line.args();
        match kw.as_str() {
            "option httpchk" => {
                http = Some(line.no);
                report.used(line.no);
                match args {
                    [] => {}
                    [uri] => path = (uri.clone(), line.no),
                    [m, uri, rest @ ..] => {
                        method = (m.clone(), line.no);
                        path = (uri.clone(), line.no);
                        // Old style: `HTTP/1.1\r\nHost:\ name` in the version.
                        for header in rest.iter().flat_map(|v| v.split("\r\n").skip(1)) {
                            match header.split_once(':') {
                                Some((n, v)) if n.trim().eq_ignore_ascii_case("host") => {
                                    host = Some((v.trim().to_owned(), line.no))
                                }
                                _ => report.not_translated(line, &kw, format!("header `{header}`: only Host is sent")),
                            }
                        }
                    }
                }
            }
            "http-check send" => {
                report.used(line.no);
                let mut i = 0;
                while i < args.len() {
                    let v = args.get(i + 1).cloned().unwrap_or_default();
                    match args[i].as_str() {
                        "meth" => method = (v, line.no),
                        "uri" => path = (v, line.no),
                        "ver" => {}
                        "hdr" if v.eq_ignore_ascii_case("host") => {
                            host = args.get(i + 2).map(|h| (h.clone(), line.no));
                            i += 1;
                        }
                        "hdr" => {
                            report.not_translated(line, "hdr", format!("`{v}`: only Host is sent"));
                            i += 1;
                        }
                        "comment" => {}
                        o => report.not_translated(line, o, "the probe has a method, a path and a Host only"),
                    }
                    i += 2;
                }
            }
            "http-check expect" => expect(line, &mut status, &mut capacity, &mut body_test, report),
            "http-check comment" => report.not_needed(line, &kw, "informational"),
            "http-check connect" => {
                report.not_translated(line, &kw, "the probe goes to the server's address with the pool's TLS")
            }
            "http-check disable-on-404" | "http-check send-state" | "http-check set-var" | "http-check unset-var" => {
                report.not_translated(line, &kw, "no equivalent in the ingress's check")
            }
            "option ssl-hello-chk" | "option tcp-check" => {
                report.not_translated(line, &kw, "the ingress checks over HTTP (see the check's path)")
            }
            _ if kw.starts_with("tcp-check") => {
                report.not_translated(line, &kw, "the ingress checks over HTTP (see the check's path)")
            }
            _ => {}
        }
    }
    if http.is_none() {
        return Check {
            http: false,
            items: vec![
                Item::new("method", s("GET"), 0),
                Item::new("path", s("/"), 0).note("HAProxy checked TCP only: any HTTP answer counts"),
                Item::new("expect_status", s("^[1-5]"), 0),
                Item::new("capacity", s(""), 0).note("liveness only"),
            ],
            capacity: false,
        };
    }
    let has_capacity = capacity.is_some();
    let status = status.unwrap_or_else(|| match (has_capacity, body_test) {
        (true, _) => Item::new("expect_status", s("^2"), 0).note("HAProxy's rstring did not look at the status"),
        (false, Some(l)) => Item::new("expect_status", s("^[23]"), l).note("the body test is not translated"),
        (false, None) => Item::new("expect_status", s("^[23]"), 0).note("HAProxy's default: 2xx and 3xx"),
    });
    let capacity = capacity.unwrap_or_else(|| Item::new("capacity", s(""), 0).note("liveness only"));
    let mut items = vec![
        Item::new("method", s(&method.0), method.1),
        Item::new("path", s(&path.0), path.1),
    ];
    if let Some((h, l)) = host {
        items.push(Item::new("host", s(&h), l));
    }
    items.extend([status, capacity]);
    Check {
        http: true,
        items,
        capacity: has_capacity,
    }
}

fn expect(
    line: &Line,
    status: &mut Option<Item>,
    capacity: &mut Option<Item>,
    body_test: &mut Option<usize>,
    report: &mut Report,
) {
    let kw = line.keyword();
    let args = line.args();
    let mut i = 0;
    // Options before the test.
    while let Some(o) = args.get(i).map(String::as_str) {
        match o {
            "comment" => i += 2,
            "min-recv" | "ok-status" | "error-status" | "tout-status" | "on-success" | "on-error" | "status-code" => {
                report.not_translated(line, o, "no equivalent in the ingress's check");
                i += 2;
            }
            _ => break,
        }
    }
    let negated = args.get(i).is_some_and(|a| a == "!");
    i += usize::from(negated);
    let (test, pattern) = (
        args.get(i).map_or("", String::as_str),
        args.get(i + 1).map_or("", String::as_str),
    );
    let not = if negated { "! " } else { "" };
    match (negated, test) {
        (false, "status") => match status_regex(pattern) {
            Some(re) => set(status, Item::new("expect_status", s(&re), line.no), line, report),
            None => report.not_translated(line, &kw, format!("`{pattern}` is not a status code, list or range")),
        },
        (false, "rstatus") => match regex::Regex::new(pattern) {
            Ok(_) => set(status, Item::new("expect_status", s(pattern), line.no), line, report),
            Err(e) => report.not_translated(line, &kw, format!("`{pattern}` is not a regex the ingress reads: {e}")),
        },
        (_, "rstring") => match capacity_pointer(pattern, negated) {
            Some((pointer, bound)) => {
                let mut note =
                    "the body is parsed as JSON: key order and decoy keys do not matter; 0 is FULL".to_owned();
                if let Some(b) = bound {
                    note.push_str(&format!(
                        "; HAProxy's regex refused more than {b}, the pointer has no bound"
                    ));
                }
                set(
                    capacity,
                    Item::new("capacity", s(&pointer), line.no).note(note),
                    line,
                    report,
                );
            }
            None => {
                *body_test = Some(line.no);
                report.not_translated(
                    line,
                    &kw,
                    format!("{not}rstring is not a number after a JSON key: the check is liveness only (status)"),
                );
            }
        },
        (_, "string") => {
            *body_test = Some(line.no);
            report.not_translated(
                line,
                &kw,
                format!("{not}string: the ingress does not search bodies; the check is liveness only (status)"),
            );
        }
        _ => report.not_translated(line, &kw, format!("{not}{test}: no equivalent in the ingress's check")),
    }
}

fn set(slot: &mut Option<Item>, item: Item, line: &Line, report: &mut Report) {
    if slot.is_some() {
        report.not_translated(line, &line.keyword(), "a second test of this kind: the first is kept");
    } else {
        *slot = Some(item);
        report.used(line.no);
    }
}

/// `200`, `200,204`, `200-399` as a regex over the status code.
pub(super) fn status_regex(spec: &str) -> Option<String> {
    let mut codes = BTreeSet::new();
    for part in spec.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        if !(100..=599).contains(&a) || !(100..=599).contains(&b) || a > b {
            return None;
        }
        codes.extend(a..=b);
    }
    let mut alts = Vec::new();
    for h in 1..=5u16 {
        if (h * 100..h * 100 + 100).all(|c| codes.contains(&c)) {
            alts.push(format!("{h}\\d\\d"));
            continue;
        }
        for t in 0..10u16 {
            let base = h * 100 + t * 10;
            if (base..base + 10).all(|c| codes.contains(&c)) {
                alts.push(format!("{h}{t}\\d"));
            } else {
                alts.extend((base..base + 10).filter(|c| codes.contains(c)).map(|c| c.to_string()));
            }
        }
    }
    Some(match alts.as_slice() {
        [one] => format!("^{one}$"),
        many => format!("^({})$", many.join("|")),
    })
}

/// The JSON pointer an `rstring` regex of the shape `"KEY":NUMBER[,}]`
/// reads, when NUMBER's pattern holds for 1 and not for 0 (or, `negated`,
/// for 0 only); with the largest count it held for, when it had a bound.
pub(super) fn capacity_pointer(re: &str, negated: bool) -> Option<(String, Option<u32>)> {
    let (key, value) = json_key(re)?;
    let mut value = value;
    for end in [
        "[,}]", "[},]", "[,} ]", "[, }]", "[,}\\s]", "(,|})", "(?:,|})", "\\b", "\\D", "[^0-9]", "[^\\d]", "$",
    ] {
        if let Some(v) = value.strip_suffix(end) {
            value = v;
            break;
        }
    }
    let numeric = value
        .chars()
        .all(|c| c.is_ascii_digit() || "[]()|?*+{},-\\d:".contains(c));
    if value.is_empty() || !numeric || value.contains("\\") && value.replace("\\d", "").contains('\\') {
        return None;
    }
    let number = regex::Regex::new(&format!("^(?:{value})$")).ok()?;
    let holds = |n: u32| number.is_match(&n.to_string());
    let bound = if negated {
        (holds(0) && !holds(1)).then_some(None)?
    } else {
        if holds(0) || !holds(1) {
            return None;
        }
        let first_miss = (1..=10_000).find(|n| !holds(*n));
        if let Some(m) = first_miss
            && (m..=10_000).any(holds)
        {
            return None; // holes: not a lower bound on spare capacity
        }
        first_miss.map(|m| m - 1)
    };
    let pointer = format!("/{}", key.replace('~', "~0").replace('/', "~1"));
    Some((pointer, bound))
}

/// `"KEY"` (quotes possibly escaped), blanks and a colon at the start of a
/// regex: the key and the rest.
fn json_key(re: &str) -> Option<(String, &str)> {
    fn quote(s: &str) -> Option<&str> {
        s.strip_prefix("\\\"").or_else(|| s.strip_prefix('"'))
    }
    let mut rest = quote(re)?;
    let mut key = String::new();
    loop {
        if let Some(r) = quote(rest) {
            rest = r;
            break;
        }
        let mut cs = rest.chars();
        match cs.next()? {
            '\\' => match cs.next()? {
                c if c.is_ascii_punctuation() => key.push(c),
                _ => return None,
            },
            c if !".^$*+?()[]{}|\"".contains(c) && !c.is_whitespace() => key.push(c),
            _ => return None,
        }
        rest = cs.as_str();
    }
    fn blanks(mut s: &str) -> &str {
        while let Some(r) = ["\\s*", "\\s+", "\\s?", " *", " ?", " +", " "]
            .iter()
            .find_map(|b| s.strip_prefix(b))
        {
            s = r;
        }
        s
    }
    let rest = blanks(blanks(rest).strip_prefix(':')?);
    (!key.is_empty()).then_some((key, rest))
}
