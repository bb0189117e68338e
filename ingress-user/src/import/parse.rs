//! Import: a haproxy.cfg read as HAProxy reads it — words (quotes, escapes,
//! comments) and sections — each line kept with its number and its text.
//! Pure: no file system.

/// One configuration line, split into words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Line {
    /// 1-based line number in the file.
    pub no: usize,
    pub words: Vec<String>,
    /// The line as written, without its comment and surrounding blanks.
    pub raw: String,
    /// It names an environment variable (`$NAME`, `${NAME}`), which is not expanded here.
    pub env: bool,
}

/// The keyword families whose second word is part of the keyword.
const TWO_WORDS: &[&str] = &[
    "mode",
    "option",
    "timeout",
    "stats",
    "http-request",
    "http-response",
    "http-after-response",
    "http-check",
    "tcp-request",
    "tcp-response",
    "tcp-check",
];

impl Line {
    /// How many of the words make up the keyword (`option httpchk`: 2, `no option x`: 3).
    pub fn keyword_len(&self) -> usize {
        match self.words.first().map(String::as_str) {
            Some("no") if self.words.get(1).is_some_and(|w| w == "option") => 3.min(self.words.len()),
            Some(w) if TWO_WORDS.contains(&w) => 2.min(self.words.len()),
            Some(_) => 1,
            None => 0,
        }
    }

    /// The keyword as reported: `bind`, `option httpchk`, `timeout connect`.
    pub fn keyword(&self) -> String {
        self.words[..self.keyword_len()].join(" ")
    }

    /// The words after the keyword.
    pub fn args(&self) -> &[String] {
        &self.words[self.keyword_len()..]
    }

    /// A template placeholder (`__INGRESS_DOMAIN__`) in one of its words.
    pub fn placeholder(&self) -> Option<&str> {
        self.words.iter().find_map(|w| {
            let start = w.find("__")?;
            let len = w[start + 2..].find("__")?;
            let name = &w[start..start + len + 4];
            (len > 0
                && name[2..len + 2]
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
            .then_some(name)
        })
    }

    /// Word `i`, or "" past the end.
    pub fn word(&self, i: usize) -> &str {
        self.words.get(i).map_or("", String::as_str)
    }
}

/// What a section is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Global,
    Defaults,
    Frontend,
    Backend,
    Listen,
    /// `userlist`, `peers`, `resolvers`, `mailers`, `cache`, `program`, …
    Other,
}

const OTHER_SECTIONS: &[&str] = &[
    "userlist",
    "peers",
    "resolvers",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "fcgi-app",
    "crt-store",
    "traces",
];

/// A section: its header line and the lines under it.
#[derive(Debug, Clone)]
pub(super) struct Section {
    pub kind: Kind,
    pub header: Line,
    /// `frontend NAME`, `defaults NAME`.
    pub name: Option<String>,
    /// `frontend NAME from DEFAULTS` (named defaults).
    pub from: Option<String>,
    pub lines: Vec<Line>,
}

impl Section {
    /// `frontend wss`, `defaults`.
    pub fn title(&self) -> String {
        match &self.name {
            Some(n) => format!("{} {n}", self.header.word(0)),
            None => self.header.word(0).to_owned(),
        }
    }
}

/// A whole file.
#[derive(Debug, Clone, Default)]
pub(super) struct Parsed {
    pub sections: Vec<Section>,
    /// Lines HAProxy reads outside any section's keywords: before the first
    /// section, and conditional-block directives (`.if`, `.endif`, …).
    pub stray: Vec<Line>,
}

/// Splits a file into sections of lines; an error names the line.
pub(super) fn parse(text: &str) -> Result<Parsed, (usize, String)> {
    let mut out = Parsed::default();
    for (i, raw) in text.lines().enumerate() {
        let line = tokenize(raw, i + 1).map_err(|e| (i + 1, e))?;
        let Some(first) = line.words.first() else { continue };
        if first.starts_with('.') {
            out.stray.push(line);
            continue;
        }
        let kind = match first.as_str() {
            "global" => Some(Kind::Global),
            "defaults" => Some(Kind::Defaults),
            "frontend" => Some(Kind::Frontend),
            "backend" => Some(Kind::Backend),
            "listen" => Some(Kind::Listen),
            w if OTHER_SECTIONS.contains(&w) => Some(Kind::Other),
            _ => None,
        };
        match kind {
            Some(kind) => {
                let name = line.words.get(1).filter(|w| *w != "from").cloned();
                let from = line
                    .words
                    .iter()
                    .position(|w| w == "from")
                    .and_then(|i| line.words.get(i + 1))
                    .cloned();
                out.sections.push(Section {
                    kind,
                    header: line,
                    name,
                    from,
                    lines: Vec::new(),
                });
            }
            None => match out.sections.last_mut() {
                Some(s) => s.lines.push(line),
                None => out.stray.push(line),
            },
        }
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

/// Splits one line into words as HAProxy does: blanks separate words;
/// `"…"` keeps blanks and takes `\"`, `\\` and `$VAR`; `'…'` takes
/// everything as written; outside quotes a backslash escapes a blank, `#`,
/// a quote or itself; `\r`, `\n`, `\t` and `\xNN` are control characters
/// anywhere but in single quotes; any other backslash is kept (regexes keep
/// `\d`); an unquoted `#` starts a comment.
pub(super) fn tokenize(text: &str, no: usize) -> Result<Line, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = Quote::None;
    let mut env = false;
    let mut end = text.len();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match (quote, c) {
            (Quote::Single, '\'') | (Quote::Double, '"') => quote = Quote::None,
            (Quote::Single, c) => word.push(c),
            (Quote::None, '\'') => (quote, in_word) = (Quote::Single, true),
            (Quote::None, '"') => (quote, in_word) = (Quote::Double, true),
            (Quote::None, '#') => {
                end = at;
                break;
            }
            (Quote::None, ' ' | '\t') => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (_, '\\') => {
                in_word = true;
                let Some((_, next)) = chars.next() else {
                    word.push('\\');
                    break;
                };
                match next {
                    'r' => word.push('\r'),
                    'n' => word.push('\n'),
                    't' => word.push('\t'),
                    'x' => {
                        let hex: String = (0..2).filter_map(|_| chars.next().map(|(_, c)| c)).collect();
                        let byte =
                            u8::from_str_radix(&hex, 16).map_err(|_| format!("`\\x{hex}` is not a hex escape"))?;
                        word.push(char::from(byte));
                    }
                    '"' | '\\' => word.push(next),
                    ' ' | '#' | '\'' if quote == Quote::None => word.push(next),
                    other => {
                        word.push('\\');
                        word.push(other);
                    }
                }
            }
            (_, '$') => {
                env |= chars
                    .peek()
                    .is_some_and(|(_, n)| *n == '{' || n.is_ascii_alphabetic() || *n == '_');
                in_word = true;
                word.push('$');
            }
            (_, c) => {
                in_word = true;
                word.push(c);
            }
        }
    }
    match quote {
        Quote::Single => return Err("a single quote is not closed".to_owned()),
        Quote::Double => return Err("a double quote is not closed".to_owned()),
        Quote::None => {}
    }
    if in_word {
        words.push(word);
    }
    Ok(Line {
        no,
        words,
        raw: text[..end].trim().to_owned(),
        env,
    })
}

/// A time as HAProxy writes it (`5000` is milliseconds; `us`, `ms`, `s`,
/// `m`, `h`, `d`), as the ingress writes it (`5s`, `1h`).
pub(super) fn duration(text: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = text[..digits].parse().ok()?;
    Some(match &text[digits..] {
        "" | "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        "d" => Duration::from_secs(n.checked_mul(86_400)?),
        _ => return None,
    })
}

/// A duration written the ingress's way (`1s`, `800ms`, `1h`).
pub(super) fn dur_str(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}
