//! Import: ACLs and the `if`/`unless` conditions that use them, read into
//! what a route can say — a path pattern and a Host — or the reason why not.

use std::collections::BTreeMap;

use super::{Report, parse::Line};

/// A test on the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PathTest {
    /// `path P`.
    Exact(String),
    /// `path_beg P`.
    Prefix(String),
    /// `path_dir P`.
    Dir(String),
}

impl PathTest {
    /// The route pattern matching these paths, and what it matches beyond
    /// them (for a comment).
    pub fn pattern(&self) -> (String, Option<String>) {
        match self {
            PathTest::Exact(p) => (p.clone(), None),
            PathTest::Prefix(p) if p == "/" => ("/*".to_owned(), None),
            PathTest::Prefix(p) if p.ends_with('/') => (
                format!("{p}*"),
                Some(format!("also matches `{}` itself", p.trim_end_matches('/'))),
            ),
            PathTest::Prefix(p) | PathTest::Dir(p) => (format!("{}/*", p.trim_end_matches('/')), None),
        }
    }

    /// Whether HAProxy's test holds for `path` (as far as a route can tell).
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathTest::Exact(p) => path == p,
            PathTest::Prefix(p) => path.starts_with(p.as_str()),
            PathTest::Dir(p) => {
                let p = p.trim_end_matches('/');
                path == p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/'))
            }
        }
    }

    /// A path the test holds for.
    pub fn sample(&self) -> String {
        match self {
            PathTest::Exact(p) => p.clone(),
            PathTest::Prefix(p) => format!("{p}x"),
            PathTest::Dir(p) => format!("{}/x", p.trim_end_matches('/')),
        }
    }
}

/// One way a condition holds: a path test and a Host (`None`: any), with
/// the ACL lines it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Alt {
    pub path: Option<PathTest>,
    pub host: Option<String>,
    pub lines: Vec<usize>,
}

impl Alt {
    fn and(&self, other: &Alt) -> Result<Alt, String> {
        let path = match (&self.path, &other.path) {
            (Some(a), Some(b)) if a != b => return Err("two path tests in one condition".to_owned()),
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        let host = match (&self.host, &other.host) {
            (Some(a), Some(b)) if a != b => return Err("two Host tests in one condition".to_owned()),
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        let mut lines = self.lines.clone();
        lines.extend(&other.lines);
        Ok(Alt { path, host, lines })
    }

    /// Whether the alternative holds for a request to `path` on `host`.
    pub fn holds(&self, path: &str, host: Option<&str>) -> bool {
        self.path.as_ref().is_none_or(|p| p.matches(path)) && self.host.as_deref().is_none_or(|h| host == Some(h))
    }
}

/// One test in a condition: an ACL name or `{ anonymous ACL }`, maybe negated.
#[derive(Debug, Clone)]
struct Atom {
    negated: bool,
    named: Option<String>,
    anon: Vec<String>,
}

/// `if …` or `unless …`: terms joined by `||`, atoms in a term by AND.
#[derive(Debug, Clone)]
pub(super) struct Cond {
    pub unless: bool,
    terms: Vec<Vec<Atom>>,
}

/// The words of a rule before its `if`/`unless`, and its condition.
pub(super) fn split_rule(words: &[String]) -> (&[String], Option<Result<Cond, String>>) {
    match words.iter().position(|w| w == "if" || w == "unless") {
        Some(i) => (&words[..i], Some(parse_cond(&words[i..]))),
        None => (words, None),
    }
}

fn parse_cond(words: &[String]) -> Result<Cond, String> {
    let unless = words[0] == "unless";
    let mut terms = vec![Vec::new()];
    let mut negate = false;
    let mut i = 1;
    while i < words.len() {
        let w = words[i].as_str();
        match w {
            "||" | "or" => terms.push(Vec::new()),
            "!" => negate = !negate,
            "{" | "!{" => {
                let end = words[i..].iter().position(|w| w == "}").ok_or("`{` without `}`")?;
                let anon = words[i + 1..i + end].to_vec();
                if let Some(t) = terms.last_mut() {
                    t.push(Atom {
                        negated: negate != (w == "!{"),
                        named: None,
                        anon,
                    });
                }
                negate = false;
                i += end;
            }
            _ => {
                let (neg, name) = match w.strip_prefix('!') {
                    Some(n) => (true, n),
                    None => (false, w),
                };
                if let Some(t) = terms.last_mut() {
                    t.push(Atom {
                        negated: negate != neg,
                        named: Some(name.to_owned()),
                        anon: Vec::new(),
                    });
                }
                negate = false;
            }
        }
        i += 1;
    }
    if terms.iter().any(Vec::is_empty) {
        return Err(format!("`{}` is not a condition", words.join(" ")));
    }
    Ok(Cond { unless, terms })
}

/// The named ACLs of one frontend (with those of its defaults).
#[derive(Debug, Default)]
pub(super) struct Acls<'a> {
    named: BTreeMap<&'a str, Vec<&'a Line>>,
}

impl<'a> Acls<'a> {
    pub fn collect(lines: impl IntoIterator<Item = &'a Line>) -> Self {
        let mut named: BTreeMap<&str, Vec<&Line>> = BTreeMap::new();
        for l in lines {
            if l.word(0) == "acl" && l.words.len() > 2 {
                named.entry(l.words[1].as_str()).or_default().push(l);
            }
        }
        Self { named }
    }

    /// The alternatives under which `cond` (of the rule on line `rule`)
    /// holds, its `unless` ignored (the caller reads it), or why they cannot
    /// be said. ACL lines used are marked, and approximations reported.
    pub fn alternatives(&self, cond: &Cond, rule: &Line, report: &mut Report) -> Result<Vec<Alt>, String> {
        let mut out = Vec::new();
        for term in &cond.terms {
            let mut combos = vec![Alt::default()];
            for atom in term {
                let shown = atom
                    .named
                    .clone()
                    .unwrap_or_else(|| format!("{{ {} }}", atom.anon.join(" ")));
                if atom.negated {
                    return Err(format!("`!{shown}`: a negated test has no route pattern"));
                }
                let alts = self.atom(atom, rule, report)?;
                let mut next = Vec::new();
                for c in &combos {
                    for a in &alts {
                        next.push(c.and(a).map_err(|e| format!("{shown}: {e}"))?);
                    }
                }
                if next.len() > 256 {
                    return Err("too many combinations of tests".to_owned());
                }
                combos = next;
            }
            out.extend(combos);
        }
        Ok(out)
    }

    fn atom(&self, atom: &Atom, rule: &Line, report: &mut Report) -> Result<Vec<Alt>, String> {
        let Some(name) = &atom.named else {
            let (alts, notes) = criterion(&atom.anon)?;
            for (kw, msg) in notes {
                report.approx(rule, &kw, msg);
            }
            return Ok(alts);
        };
        match name.as_str() {
            "TRUE" | "HTTP" => return Ok(vec![Alt::default()]),
            _ => {}
        }
        let lines = self
            .named
            .get(name.as_str())
            .ok_or_else(|| format!("no acl named `{name}`"))?;
        let mut out = Vec::new();
        for l in lines {
            let (alts, notes) = criterion(&l.words[2..]).map_err(|e| format!("acl {name} (line {}): {e}", l.no))?;
            for (kw, msg) in notes {
                report.approx(l, &kw, msg);
            }
            report.used(l.no);
            out.extend(alts.into_iter().map(|mut a| {
                a.lines.push(l.no);
                a
            }));
        }
        Ok(out)
    }
}

/// What one ACL's criterion (`path_beg -i /ws/ /exotel/`) can say, with the
/// approximations made (keyword, message).
type Criterion = (Vec<Alt>, Vec<(String, String)>);

fn criterion(words: &[String]) -> Result<Criterion, String> {
    let (fetch, rest) = words.split_first().ok_or("an empty test")?;
    let (name, arg) = match fetch.split_once('(') {
        Some((n, a)) => (n, Some(a.trim_end_matches(')'))),
        None => (fetch.as_str(), None),
    };
    let (mut ci, mut method, mut values, mut flags) = (false, None, Vec::new(), true);
    let mut it = rest.iter();
    while let Some(w) = it.next() {
        if flags && w.starts_with('-') && w.len() > 1 {
            match w.as_str() {
                "-i" => ci = true,
                "-m" => method = it.next().map(String::as_str),
                "-n" => {}
                "-u" => drop(it.next()),
                "--" => flags = false,
                "-f" | "-M" => return Err(format!("`{w}` reads its values from a file")),
                _ => return Err(format!("flag `{w}`")),
            }
        } else {
            flags = false;
            values.push(w.as_str());
        }
    }
    if values.is_empty() {
        return match name {
            "always_true" => Ok((vec![Alt::default()], Vec::new())),
            _ => Err(format!("`{fetch}` without a value")),
        };
    }
    let (base, suffix) = match name.rsplit_once('_') {
        Some((b, s)) if ["beg", "dir", "dom", "end", "len", "reg", "sub", "cnt", "ip", "val"].contains(&s) => {
            (b, Some(s))
        }
        _ => (name, None),
    };
    let matching = method.or(suffix).unwrap_or("str");
    let host_header = matches!(base, "hdr" | "req.hdr" | "req.fhdr")
        && arg.is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|h| h.trim().eq_ignore_ascii_case("host"))
        });
    let sni = matches!(base, "ssl_fc_sni" | "req.ssl_sni");
    let mut notes = Vec::new();
    let alts = if base == "path" {
        if ci {
            notes.push(("-i".to_owned(), "route paths are matched case-sensitively".to_owned()));
        }
        if matching == "dir" {
            notes.push((
                fetch.clone(),
                "path_dir also held for the directory deeper in the path; translated as a prefix".to_owned(),
            ));
        }
        if !matches!(matching, "str" | "beg" | "dir") {
            return Err(format!("path -m {matching} has no route pattern"));
        }
        values
            .iter()
            .map(|v| {
                if !v.starts_with('/') {
                    return Err(format!("`{v}` does not start with /"));
                }
                let v = (*v).to_owned();
                let path = match matching {
                    "str" => PathTest::Exact(v),
                    "beg" if v.ends_with('/') || v == "/" => PathTest::Prefix(v),
                    "beg" => {
                        notes.push((
                            fetch.clone(),
                            format!("`{v}` translated as `{v}/*`: paths that continue `{v}` without a / do not match"),
                        ));
                        PathTest::Dir(v)
                    }
                    _ => PathTest::Dir(v),
                };
                Ok(Alt {
                    path: Some(path),
                    ..Alt::default()
                })
            })
            .collect::<Result<Vec<_>, String>>()?
    } else if host_header || sni {
        match matching {
            "str" => {}
            "dom" => notes.push((
                fetch.clone(),
                "a route's host is matched whole, not as a domain within the Host".to_owned(),
            )),
            m => return Err(format!("a Host test with -m {m} has no route equivalent")),
        }
        if sni {
            notes.push((fetch.clone(), "routes match the Host header, not the SNI".to_owned()));
        }
        values
            .iter()
            .map(|v| {
                let host = v.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok());
                if let Some((h, _)) = host {
                    notes.push((
                        fetch.clone(),
                        format!("`{v}`: a route's host is matched without the port"),
                    ));
                    return h.to_ascii_lowercase();
                }
                v.to_ascii_lowercase()
            })
            .map(|h| Alt {
                host: Some(h),
                ..Alt::default()
            })
            .collect()
    } else {
        return Err(format!("`{fetch}` is neither a path nor a Host test"));
    };
    Ok((alts, notes))
}
