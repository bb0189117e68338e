//! Import (control side, a leaf that names only `config` and `model`):
//! `ingress import haproxy.cfg` — a configuration shaped like the seeds'
//! HAProxy setup read ([`parse`]), translated ([`translate`]: [`global`],
//! [`front`] with [`bind`] and [`cond`], [`back`] with [`servers`],
//! [`policy`] and [`check`]) and written as
//! ingress.toml ([`render`]), then parsed and validated by the daemon's own
//! config code before anything is returned. Every line that gives no
//! setting is named in a [`Note`]: not needed, not translated, or
//! approximated, and why.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
};

use crate::config::{Config, ConfigError, FileServers, invalid, parse_servers_file};

mod back;
mod bind;
mod check;
mod cond;
mod front;
mod global;
mod keywords;
mod parse;
mod policy;
mod render;
mod servers;
mod translate;

use parse::{Kind, Line, Parsed, Section};

/// What became of a line that gave no setting (or not the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The ingress does it anyway, or it does not matter here.
    NotNeeded,
    /// No equivalent: its effect is lost.
    NotTranslated,
    /// Translated, but not to exactly the same behaviour.
    Approximated,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::NotNeeded => "not needed",
            Verdict::NotTranslated => "not translated",
            Verdict::Approximated => "approximated",
        })
    }
}

/// One reported line: `haproxy.cfg:12: option httplog: not translated: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub file: String,
    pub line: usize,
    pub keyword: String,
    pub verdict: Verdict,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}: {}",
            self.file, self.line, self.keyword, self.verdict, self.message
        )
    }
}

/// A translation that passed the daemon's config checks.
#[derive(Debug)]
pub struct Imported {
    /// The ingress.toml text.
    pub toml: String,
    /// The servers files to write (`--servers-file`): path as given, text.
    pub servers_files: Vec<(PathBuf, String)>,
    /// `toml`, parsed and validated.
    pub config: Config,
    /// The servers files' contents as the daemon reads them, by pool.
    pub files: BTreeMap<String, FileServers>,
    /// Every line that gave no setting, or an approximate one, in line order.
    pub notes: Vec<Note>,
}

/// Why a file could not be turned into a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{file}:{line}: {message}")]
    At { file: String, line: usize, message: String },
    #[error("{file}: {message}")]
    Whole { file: String, message: String },
    #[error("{file}: the translation does not pass the ingress's config checks: {error}")]
    Refused { file: String, error: ConfigError },
}

/// An import that failed, with what was reported before it did.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Failed {
    pub error: ImportError,
    pub notes: Vec<Note>,
}

/// Translates the file at `path`. With `servers_file`, the pools' servers
/// go to that file (a second pool's to `STEM-POOL.EXT` beside it) instead
/// of inline.
pub fn import_file(path: &Path, servers_file: Option<&Path>) -> Result<Imported, Failed> {
    let text = std::fs::read_to_string(path).map_err(|error| Failed {
        error: ImportError::Read {
            path: path.to_owned(),
            error,
        },
        notes: Vec::new(),
    })?;
    import_str(&text, &path.display().to_string(), servers_file)
}

/// Translates haproxy.cfg text; `file` names it in notes, errors and comments.
pub fn import_str(text: &str, file: &str, servers_file: Option<&Path>) -> Result<Imported, Failed> {
    let mut report = Report::default();
    let result = run(text, file, servers_file, &mut report);
    let notes = report.notes(file);
    match result {
        Ok((toml, servers_files, config, files)) => Ok(Imported {
            toml,
            servers_files,
            config,
            files,
            notes,
        }),
        Err(error) => Err(Failed { error, notes }),
    }
}

type Output = (String, Vec<(PathBuf, String)>, Config, BTreeMap<String, FileServers>);

fn run(text: &str, file: &str, servers_file: Option<&Path>, report: &mut Report) -> Result<Output, ImportError> {
    let parsed = parse::parse(text).map_err(|(line, message)| ImportError::At {
        file: file.to_owned(),
        line,
        message,
    })?;
    let lines = parsed.stray.iter().chain(
        parsed
            .sections
            .iter()
            .flat_map(|s| std::iter::once(&s.header).chain(&s.lines)),
    );
    for l in lines {
        if let Some(name) = l.placeholder() {
            return Err(ImportError::At {
                file: file.to_owned(),
                line: l.no,
                message: format!("{name} is a placeholder of a template: import the rendered haproxy.cfg"),
            });
        }
    }
    let plan = translate::plan(&parsed, file, servers_file, report)?;
    report.sweep(&parsed);
    let name = Path::new(file)
        .file_name()
        .map_or_else(|| file.to_owned(), |n| n.to_string_lossy().into_owned());
    let toml = render::toml(&plan, &name);
    let refused = |error| ImportError::Refused {
        file: file.to_owned(),
        error,
    };
    let config = Config::parse(&toml).map_err(refused)?;
    config.validate().map_err(refused)?;
    let mut files = BTreeMap::new();
    let mut servers_files = Vec::new();
    for pool in &plan.pools {
        let Some(path) = &pool.servers_file else { continue };
        let text = render::servers_file(pool, &name);
        let servers =
            parse_servers_file(&text).map_err(|e| refused(invalid(format!("pools.{}.servers_file", pool.name), e)))?;
        files.insert(pool.name.clone(), servers);
        servers_files.push((path.clone(), text));
    }
    Ok((toml, servers_files, config, files))
}

/// What has been done with each line, and the notes so far.
#[derive(Debug, Default)]
struct Report {
    notes: Vec<(usize, String, Verdict, String)>,
    done: BTreeSet<usize>,
}

impl Report {
    /// Line `no` gave a setting.
    fn used(&mut self, no: usize) {
        self.done.insert(no);
    }

    fn note_no(&mut self, no: usize, keyword: &str, verdict: Verdict, message: impl Into<String>) {
        self.done.insert(no);
        let n = (no, keyword.to_owned(), verdict, message.into());
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }

    fn not_needed(&mut self, line: &Line, keyword: &str, message: impl Into<String>) {
        self.note_no(line.no, keyword, Verdict::NotNeeded, message);
    }

    fn not_translated(&mut self, line: &Line, keyword: &str, message: impl Into<String>) {
        self.note_no(line.no, keyword, Verdict::NotTranslated, message);
    }

    fn approx(&mut self, line: &Line, keyword: &str, message: impl Into<String>) {
        self.note_no(line.no, keyword, Verdict::Approximated, message);
    }

    /// A whole section not translated: one note on its header, its lines done.
    fn cover(&mut self, s: &Section, verdict: Verdict, message: impl Into<String>) {
        self.note_no(s.header.no, &s.title(), verdict, message);
        self.done.extend(s.lines.iter().map(|l| l.no));
    }

    /// Names every line nothing has said anything about.
    fn sweep(&mut self, parsed: &Parsed) {
        for l in &parsed.stray {
            if !self.done.contains(&l.no) {
                let msg = match l.word(0).starts_with('.') {
                    true => "conditional blocks are not evaluated: every line is read",
                    false => "outside any section",
                };
                self.note_no(l.no, &l.keyword(), Verdict::NotTranslated, msg);
            }
        }
        for s in &parsed.sections {
            self.done.insert(s.header.no);
            let open: Vec<&Line> = s.lines.iter().filter(|l| !self.done.contains(&l.no)).collect();
            for l in open {
                let kw = l.keyword();
                let (verdict, msg) = match keywords::fixed(&kw) {
                    Some((v, m)) => (v, m),
                    None if kw == "acl" => (Verdict::NotNeeded, "no translated rule uses it"),
                    None if s.kind == Kind::Defaults
                        && (keywords::frontend_side(&kw) || keywords::backend_side(&kw)) =>
                    {
                        (Verdict::NotTranslated, "no translated frontend or backend uses it")
                    }
                    None => (Verdict::NotTranslated, "no equivalent known to the importer"),
                };
                self.note_no(l.no, &kw, verdict, msg);
            }
        }
    }

    fn notes(&self, file: &str) -> Vec<Note> {
        let mut out: Vec<Note> = self
            .notes
            .iter()
            .map(|(line, keyword, verdict, message)| Note {
                file: file.to_owned(),
                line: *line,
                keyword: keyword.clone(),
                verdict: *verdict,
                message: message.clone(),
            })
            .collect();
        out.sort_by_key(|n| n.line);
        out
    }
}

#[cfg(test)]
mod tests;
