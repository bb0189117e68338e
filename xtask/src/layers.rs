//! `cargo xtask layers` (also the first step of `cargo xtask test`): checks
//! `ingress-user`'s layering from its source. Each top-level module ("room")
//! has a rank; a room may name (`use crate::…`, or a `crate::…` path in code)
//! only rooms of lower rank, so the leaves import nothing from the crate and
//! the data path never reaches the control side. Within a room, the files
//! may not import each other in a circle (a child naming its parent module
//! is not counted: that is how Rust modules share their parent's items, and
//! what a parent re-exports is exempt with it). Naming the crate root itself
//! (`use crate::*`, `use crate as x`) is refused, since it would hide the
//! rooms behind it. `super` and `self` inside inline `mod x { … }` blocks
//! resolve through them.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// The rooms, lowest first. Same rank: neither may import the other.
pub const RANKS: &[(&str, u32)] = &[
    ("model", 0),
    ("telemetry", 0),
    ("config", 1),
    ("balance", 2),
    // `ingress import`: a leaf of the control side that names only config and model.
    ("import", 2),
    ("snapshot", 3),
    ("data", 4),
    ("bpf", 5),
    ("control", 6),
    ("admin", 7),
    ("lifecycle", 8),
    ("daemon", 9),
];

/// One module file: its path in the crate (`["control", "servers"]`) and
/// the crate paths it names, each already made absolute.
#[derive(Debug)]
struct Module {
    file: PathBuf,
    path: Vec<String>,
    refs: Vec<(usize, Vec<String>)>,
}

/// Runs the check over `src` (ingress-user's `src/`); the error lists every violation.
pub fn check(src: &Path) -> anyhow::Result<()> {
    let modules = load(src)?;
    let problems = violations(&modules);
    if problems.is_empty() {
        println!("layers: ok ({} modules of ingress-user)", modules.len());
        return Ok(());
    }
    for p in &problems {
        eprintln!("layers: {p}");
    }
    bail!(
        "{} layering violation(s) in ingress-user (rooms, lowest first: {})",
        problems.len(),
        RANKS
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn rank(room: &str) -> Option<u32> {
    RANKS.iter().find(|(r, _)| *r == room).map(|(_, n)| *n)
}

fn load(src: &Path) -> anyhow::Result<Vec<Module>> {
    let mut files = Vec::new();
    walk(src, &mut files)?;
    let mut modules = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap_or(&file);
        let mut path: Vec<String> = rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path.last().is_some_and(|l| l == "mod") {
            path.pop();
        }
        // The binary is a crate of its own (it names `ingress_user::`, not `crate::`).
        if path == ["main"] {
            continue;
        }
        if path == ["lib"] {
            path.clear();
        }
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let refs = crate_paths(&text, &path);
        modules.push(Module { file, path, refs });
    }
    Ok(modules)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// Every `crate::`, `super::` and `self::` path in `text` (comments and
/// string literals skipped), as absolute module paths, with its line.
/// `here` is the module the file's top level is in (a mod.rs names its directory).
fn crate_paths(text: &str, here: &[String]) -> Vec<(usize, Vec<String>)> {
    let code = strip_comments_and_strings(text);
    let bytes = code.as_bytes();
    let inline = inline_modules(bytes);
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != b':';
        // The module this text is in: the file's, plus any inline `mod x { … }` around it.
        let local = || {
            let mut p = here.to_vec();
            p.extend(
                inline
                    .iter()
                    .filter(|m| m.start < i && i < m.end)
                    .map(|m| m.name.clone()),
            );
            p
        };
        let base: Option<(usize, Vec<String>)> = if !at_word_start {
            None
        } else if code[i..].starts_with("crate::") {
            Some((7, Vec::new()))
        } else if code[i..].starts_with("super::") {
            let mut p = local();
            p.pop();
            Some((7, p))
        } else if code[i..].starts_with("self::") {
            Some((6, local()))
        } else {
            None
        };
        if at_word_start && code[i..].starts_with("crate as ") {
            // `use crate as root;` would hide every path behind the alias.
            out.push((code[..i].matches('\n').count() + 1, Vec::new()));
            i += 1;
            continue;
        }
        let Some((skip, mut prefix)) = base else {
            i += 1;
            continue;
        };
        let line = code[..i].matches('\n').count() + 1;
        let mut j = i + skip;
        // Further `super::` segments.
        while code[j..].starts_with("super::") {
            prefix.pop();
            j += 7;
        }
        let mut paths = Vec::new();
        j = parse_tree(bytes, j, &prefix, &mut paths);
        out.extend(paths.into_iter().map(|p| (line, p)));
        i = j.max(i + 1);
    }
    out
}

/// An inline `mod name { … }` block: its name and byte range.
#[derive(Debug)]
struct Inline {
    name: String,
    start: usize,
    end: usize,
}

/// Every inline module block in (comment- and string-free) code.
fn inline_modules(b: &[u8]) -> Vec<Inline> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 < b.len() {
        let word_start = i == 0 || !is_ident(b[i - 1]);
        if !(word_start && b[i..].starts_with(b"mod") && b[i + 3].is_ascii_whitespace()) {
            i += 1;
            continue;
        }
        let mut j = skip_ws(b, i + 3);
        let name_start = j;
        while j < b.len() && is_ident(b[j]) {
            j += 1;
        }
        let name = String::from_utf8_lossy(&b[name_start..j]).into_owned();
        j = skip_ws(b, j);
        if name.is_empty() || b.get(j) != Some(&b'{') {
            i += 3;
            continue;
        }
        let (start, mut depth) = (j, 0usize);
        let mut end = b.len();
        for (k, c) in b.iter().enumerate().skip(j) {
            match c {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push(Inline { name, start, end });
        i = start + 1;
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn skip_ws(bytes: &[u8], mut j: usize) -> usize {
    while j < bytes.len() && bytes[j].is_ascii_whitespace() {
        j += 1;
    }
    j
}

/// Parses a use tree (`a::b`, `{a, b::{c, d}}`, `*`) after `prefix::`.
fn parse_tree(bytes: &[u8], j: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut j = skip_ws(bytes, j);
    if j < bytes.len() && bytes[j] == b'{' {
        j += 1;
        loop {
            j = skip_ws(bytes, j);
            if j >= bytes.len() {
                return j;
            }
            if bytes[j] == b'}' {
                return j + 1;
            }
            if bytes[j] == b',' {
                j += 1;
                continue;
            }
            let before = j;
            j = parse_tree(bytes, j, prefix, out);
            if j == before {
                return j + 1;
            }
        }
    }
    let start = j;
    while j < bytes.len() && is_ident(bytes[j]) {
        j += 1;
    }
    if start == j {
        // `*` or nothing: the prefix itself is named.
        if j < bytes.len() && bytes[j] == b'*' {
            j += 1;
        }
        out.push(prefix.to_vec());
        return j;
    }
    let ident = String::from_utf8_lossy(&bytes[start..j]).into_owned();
    let mut path = prefix.to_vec();
    if ident != "self" {
        path.push(ident);
    }
    if bytes[j..].starts_with(b"::") {
        return parse_tree(bytes, j + 2, &path, out);
    }
    out.push(path);
    j
}

/// The code with comments and string/char literals blanked (newlines kept).
fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            while i < b.len() && !b[i..].starts_with(b"*/") {
                if b[i] == b'\n' {
                    out.push(b'\n');
                }
                i += 1;
            }
            i += 2;
        } else if let Some(n) = char_literal(&b[i..]) {
            // `'"'`, `b'\''`: a quote inside must not open a string. Lifetimes are not literals.
            out.push(b' ');
            i += n;
        } else if b[i] == b'"' || raw_string_start(b, i).is_some() {
            // Plain or raw string: blank it.
            let raw = raw_string_start(b, i);
            let hashes = raw.unwrap_or(0);
            if raw.is_some() {
                // Past `r`/`br` and the hashes, onto the quote.
                while b[i] != b'"' {
                    i += 1;
                }
            }
            i += 1;
            while i < b.len() {
                if raw.is_none() && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i] == b'"' && b[i + 1..].iter().take(hashes).filter(|c| **c == b'#').count() == hashes {
                    i += 1 + hashes;
                    break;
                }
                if b[i] == b'\n' {
                    out.push(b'\n');
                }
                i += 1;
            }
            out.push(b' ');
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The length of a char or byte literal at the start of `b` (`'x'`,
/// `'\n'`, `'\u{1f600}'`, `b'"'`), None for anything else (a lifetime).
fn char_literal(b: &[u8]) -> Option<usize> {
    let start = usize::from(b.first() == Some(&b'b'));
    if b.get(start) != Some(&b'\'') {
        return None;
    }
    let body = &b[start + 1..];
    let len = match body.first()? {
        b'\\' => 1 + body[1..].iter().position(|c| *c == b'\'')?,
        _ => {
            // One UTF-8 character, then the closing quote.
            let ch = std::str::from_utf8(&body[..body.len().min(4)])
                .or_else(|e| std::str::from_utf8(&body[..e.valid_up_to()]))
                .ok()?
                .chars()
                .next()?;
            let n = ch.len_utf8();
            if body.get(n) != Some(&b'\'') {
                return None;
            }
            n
        }
    };
    Some(start + 1 + len + 1)
}

/// The number of `#`s when a raw string (`r"`, `r#"`, `br"`) starts at `i`
/// as a token of its own (not the tail of an identifier, not `r#ident`).
fn raw_string_start(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && is_ident(b[i - 1]) {
        return None;
    }
    let mut j = i;
    if b.get(j) == Some(&b'b') {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|c| **c == b'#').count();
    (b.get(j + hashes) == Some(&b'"')).then_some(hashes)
}

fn violations(modules: &[Module]) -> Vec<String> {
    let known: BTreeSet<&[String]> = modules.iter().map(|m| m.path.as_slice()).collect();
    // The longest prefix of `p` that is a module file.
    let resolve = |p: &[String]| -> Vec<String> {
        (0..=p.len())
            .rev()
            .map(|n| &p[..n])
            .find(|q| known.contains(q))
            .unwrap_or_default()
            .to_vec()
    };
    let mut problems = Vec::new();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for m in modules {
        let Some(room) = m.path.first() else { continue };
        let Some(own) = rank(room) else {
            problems.push(format!(
                "{}: `{room}` is not a known room; add it to xtask/src/layers.rs with a rank",
                m.file.display()
            ));
            continue;
        };
        for (line, p) in &m.refs {
            let Some(target_room) = p.first() else {
                problems.push(format!(
                    "{}:{line}: names the crate root itself (`use crate::*` or `crate as`): name the room",
                    m.file.display()
                ));
                continue;
            };
            if target_room == room {
                let target = resolve(p);
                // A child naming an ancestor (its parent's items) is how modules share; not an edge.
                if !m.path.starts_with(&target) && !target.starts_with(&m.path) {
                    edges.entry(m.path.clone()).or_default().insert(target);
                }
                continue;
            }
            match rank(target_room) {
                None => problems.push(format!(
                    "{}:{line}: names unknown module `crate::{}`",
                    m.file.display(),
                    p.join("::")
                )),
                Some(r) if r >= own => problems.push(format!(
                    "{}:{line}: `{room}` (rank {own}) may not import `crate::{}` (`{target_room}`, rank {r})",
                    m.file.display(),
                    p.join("::")
                )),
                Some(_) => {}
            }
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        problems.push(format!(
            "import cycle: {}",
            cycle.iter().map(|p| p.join("::")).collect::<Vec<_>>().join(" -> ")
        ));
    }
    problems
}

fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    fn visit(
        n: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(pos) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(n.clone());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.clone());
        for next in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.clone());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(path: &str, file: &str, text: &str) -> Module {
        let path: Vec<String> = path.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect();
        let refs = crate_paths(text, &path);
        Module {
            file: PathBuf::from(file),
            path,
            refs,
        }
    }

    #[test]
    fn grouped_and_relative_paths_are_resolved() {
        let refs = crate_paths(
            "use crate::{a::{b, c::D}, e};\nuse super::f::G;\n// crate::comment::ignored\nlet s = \"crate::string\";\nx = crate::h::i();",
            &["data".to_owned(), "http".to_owned()],
        );
        let paths: Vec<String> = refs.iter().map(|(_, p)| p.join("::")).collect();
        assert_eq!(paths, ["a::b", "a::c::D", "e", "data::f::G", "h::i"]);
    }

    #[test]
    fn literals_do_not_hide_paths() {
        let text = "let q = '\"'; let b = b'\\''; let r#type = 1; let s = r\"a\\\"; x = crate::control::Shared;\nfn f<'a>(x: &'a str) { crate::admin::y(); }";
        let paths: Vec<String> = crate_paths(text, &["data".to_owned()])
            .iter()
            .map(|(_, p)| p.join("::"))
            .collect();
        assert_eq!(paths, ["control::Shared", "admin::y"]);
    }

    #[test]
    fn super_inside_an_inline_module_is_the_file_module() {
        let text = "use super::x;\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::y::Z;\n}\n";
        let here = ["model".to_owned(), "route".to_owned()];
        let paths: Vec<String> = crate_paths(text, &here).iter().map(|(_, p)| p.join("::")).collect();
        assert_eq!(paths, ["model::x", "model::route", "model::y::Z"]);
        let top = ["model".to_owned()];
        let paths: Vec<String> = crate_paths("mod tests { use super::*; }", &top)
            .iter()
            .map(|(_, p)| p.join("::"))
            .collect();
        assert_eq!(paths, ["model"]);
    }

    #[test]
    fn the_crate_root_cannot_be_globbed_or_aliased() {
        let modules = [
            module("data", "data/mod.rs", "use crate::*;"),
            module("data::http", "data/http.rs", "use crate as root;"),
        ];
        assert_eq!(violations(&modules).len(), 2);
    }

    #[test]
    fn data_importing_control_is_refused() {
        let modules = [
            module("data", "data/mod.rs", ""),
            module("data::http", "data/http.rs", "use crate::control::Shared;"),
            module("control", "control/mod.rs", "use crate::data::DataCtx;"),
        ];
        let v = violations(&modules);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("`data` (rank 4) may not import `crate::control::Shared`"),
            "{v:?}"
        );
    }

    #[test]
    fn leaves_import_nothing_from_the_crate() {
        let modules = [
            module("model", "model/mod.rs", "use crate::telemetry::Metrics;"),
            module("telemetry", "telemetry.rs", ""),
        ];
        assert_eq!(violations(&modules).len(), 1);
    }

    #[test]
    fn a_cycle_inside_a_room_is_found_but_a_child_naming_its_parent_is_not() {
        let modules = [
            module("control", "control/mod.rs", "use self::servers::Added;"),
            module(
                "control::servers",
                "control/servers.rs",
                "use super::Control; use super::health::probe;",
            ),
            module(
                "control::health",
                "control/health.rs",
                "use super::servers::AddRequest;",
            ),
        ];
        let v = violations(&modules);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].starts_with("import cycle: control::health -> control::servers -> control::health"),
            "{v:?}"
        );
    }
}
