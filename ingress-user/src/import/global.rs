//! Import: the `global` section — process-wide limits, the TLS defaults of
//! binds and servers, and the base directories of certificate paths.

use std::time::Duration;

use super::{
    Report,
    parse::{Section, duration},
};

/// What `global` says that the translation uses.
#[derive(Debug, Default)]
pub(super) struct Global {
    pub maxconn: Option<(u64, usize)>,
    pub max_headers: Option<(u64, usize)>,
    pub hard_stop_after: Option<(Duration, usize)>,
    /// From `ssl-default-bind-options`.
    pub bind_min_tls: Option<(&'static str, usize)>,
    /// `ssl-server-verify none|required`.
    pub server_verify: Option<(bool, usize)>,
    pub crt_base: Option<String>,
    pub ca_base: Option<String>,
}

/// Reads every `global` section; reports what it does not use.
pub(super) fn read(sections: &[&Section], report: &mut Report) -> Global {
    let mut g = Global::default();
    for line in sections.iter().flat_map(|s| &s.lines) {
        let kw = line.keyword();
        let arg = line.word(1);
        let number = || arg.parse::<u64>().ok();
        match kw.as_str() {
            "maxconn" => match number() {
                Some(n) => {
                    g.maxconn = Some((n, line.no));
                    report.used(line.no);
                }
                None => report.not_translated(line, &kw, format!("`{arg}` is not a number")),
            },
            "tune.http.maxhdr" => match number() {
                Some(n) => {
                    g.max_headers = Some((n, line.no));
                    report.used(line.no);
                }
                None => report.not_translated(line, &kw, format!("`{arg}` is not a number")),
            },
            "hard-stop-after" => match duration(arg) {
                Some(d) => {
                    g.hard_stop_after = Some((d, line.no));
                    report.used(line.no);
                }
                None => report.not_translated(line, &kw, format!("`{arg}` is not a time")),
            },
            "ssl-default-bind-options" => {
                let (floor, others) = tls_floor(line, &line.words[1..], report);
                g.bind_min_tls = floor.map(|v| (v, line.no));
                for o in others {
                    report.not_translated(line, &o, "no equivalent among the ingress's TLS settings");
                }
            }
            "ssl-server-verify" => match arg {
                "none" | "required" => {
                    g.server_verify = Some((arg == "required", line.no));
                    report.used(line.no);
                }
                _ => report.not_translated(line, &kw, format!("`{arg}` is neither none nor required")),
            },
            "crt-base" => {
                g.crt_base = Some(arg.to_owned());
                report.used(line.no);
            }
            "ca-base" => {
                g.ca_base = Some(arg.to_owned());
                report.used(line.no);
            }
            _ => {}
        }
    }
    g
}

/// The TLS floor a list of bind options sets (`ssl-min-ver TLSv1.2`,
/// `no-tlsv10 no-tlsv11`); reports the version options it cannot say.
/// Marks the line used when it found a floor. The options that are not
/// about TLS versions are returned, for the caller.
pub(super) fn tls_floor(
    line: &super::parse::Line,
    opts: &[String],
    report: &mut Report,
) -> (Option<&'static str>, Vec<String>) {
    let mut floor = None;
    let mut no = Vec::new();
    let mut others = Vec::new();
    let mut i = 0;
    while i < opts.len() {
        let o = opts[i].as_str();
        match o {
            "ssl-min-ver" | "force-tlsv12" | "force-tlsv13" => {
                let v = if o == "ssl-min-ver" {
                    i += 1;
                    opts.get(i).map_or("", String::as_str)
                } else if o == "force-tlsv13" {
                    "TLSv1.3"
                } else {
                    "TLSv1.2"
                };
                match v {
                    "TLSv1.3" => floor = Some("1.3"),
                    "TLSv1.2" => floor = Some("1.2"),
                    "TLSv1.1" | "TLSv1.0" | "SSLv3" => {
                        floor = Some("1.2");
                        report.approx(line, o, format!("{v}: the ingress accepts TLS 1.2 at least"));
                    }
                    _ => report.not_translated(line, o, format!("`{v}` is not a TLS version")),
                }
            }
            "no-sslv3" | "no-tlsv10" | "no-tlsv11" | "no-tlsv12" => no.push(o),
            "ssl-max-ver" | "force-sslv3" | "force-tlsv10" | "force-tlsv11" => {
                if o == "ssl-max-ver" {
                    i += 1;
                }
                report.not_translated(line, o, "the ingress offers TLS 1.2 and 1.3 (from tls_min_version up)");
            }
            _ => others.push(o.to_owned()),
        }
        i += 1;
    }
    if floor.is_none() && !no.is_empty() {
        floor = Some(if no.contains(&"no-tlsv12") { "1.3" } else { "1.2" });
    }
    if floor.is_some() {
        report.used(line.no);
    }
    (floor, others)
}
