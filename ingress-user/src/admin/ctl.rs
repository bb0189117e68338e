//! `ingress ctl`: the admin API's command line, over the unix socket. Prints
//! a readable table or line per answer (or, with `--json`, the answer as it
//! came); exits 0 on success, 1 when the daemon refused, 2 when it could not
//! be reached, 64 on a usage error.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// An answer from the admin API.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the admin socket {path}: {reason}")]
    Connect { path: String, reason: String },
    #[error("admin API: {0}")]
    Http(String),
}

/// One request over the unix socket.
pub async fn request(socket: &Path, method: &str, path: &str, body: Option<Value>) -> Result<Answer, CtlError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| CtlError::Connect {
            path: socket.display().to_string(),
            reason: e.to_string(),
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| CtlError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "ingress")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| CtlError::Http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| CtlError::Http(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| CtlError::Http(e.to_string()))?
        .to_bytes();
    let body =
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    Ok(Answer { status, body })
}

/// Splits `POOL/NAME`.
pub fn split_target(target: &str) -> Result<(&str, &str), String> {
    target
        .split_once('/')
        .filter(|(p, n)| !p.is_empty() && !n.is_empty())
        .ok_or_else(|| format!("`{target}`: expected POOL/NAME"))
}

/// Percent-encodes a path segment (server names are often `host:port`).
pub fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `stat` table.
pub fn servers_table(body: &Value) -> String {
    let mut rows = vec![
        [
            "POOL",
            "SERVER",
            "ADDR",
            "STATE",
            "ACTIVE",
            "MAXCONN",
            "HELD",
            "REPORTED",
            "EFFECTIVE",
            "LAST CHECK",
        ]
        .map(str::to_owned),
    ];
    for s in body["servers"].as_array().into_iter().flatten() {
        let text = |k: &str| match &s[k] {
            Value::String(v) => v.clone(),
            Value::Null => "-".to_owned(),
            v => v.to_string(),
        };
        let check = &s["check"];
        let latency = check["latency_ms"]
            .as_f64()
            .map(|l| format!(" ({l:.0} ms)"))
            .unwrap_or_default();
        rows.push([
            text("pool"),
            text("name"),
            text("addr"),
            text("state"),
            text("active"),
            text("maxconn"),
            text("held"),
            text("reported"),
            text("effective"),
            format!("{}{latency}", check["reason"].as_str().unwrap_or("-")),
        ]);
    }
    let widths: Vec<usize> = (0..10)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Exit codes, as `ingress ctl --help` tells them.
pub const EXIT_DONE: i32 = 0;
pub const EXIT_REFUSED: i32 = 1;
pub const EXIT_UNREACHABLE: i32 = 2;
/// A command line that does not parse (sysexits' EX_USAGE; clap's own 2 is
/// the unreachable daemon's here).
pub const EXIT_USAGE: i32 = 64;

/// One level of an object as `key=value` words (nested values as compact JSON).
fn words(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("-")
}

/// `, persisted to FILE` and the note, when the answer has them.
fn tail(v: &Value) -> String {
    let mut out = String::new();
    if let Some(f) = v["persisted"].as_str() {
        out.push_str(&format!(", persisted to {f}"));
    }
    if let Some(n) = v["note"].as_str() {
        out.push_str(&format!(" ({n})"));
    }
    out
}

/// `ctl status`: the daemon in a few lines.
pub fn status_lines(v: &Value) -> String {
    let mut out = format!(
        "pid {}  version {}  generation {}  calls open {}{}\n",
        v["pid"],
        s(v, "version"),
        v["generation"],
        v["calls_open"],
        match (v["leaving"].as_bool(), v["withdrawn"].as_bool()) {
            (_, Some(true)) => "  LEAVING (withdrawn)",
            (Some(true), _) => "  LEAVING",
            _ => "",
        }
    );
    for p in v["pools"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "pool {}: {} free on {} servers\n",
            s(p, "name"),
            p["effective"],
            p["servers"]
        ));
    }
    out.push_str(&format!("xdp: {}\n", words(&v["xdp"])));
    for c in v["certs"].as_array().into_iter().flatten() {
        let names: Vec<&str> = c[1]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push_str(&format!(
            "cert {}: {}\n",
            c[0].as_str().unwrap_or("-"),
            names.join(", ")
        ));
    }
    if !v["last_reload"].is_null() {
        out.push_str(&format!("last reload: {}\n", words(&v["last_reload"])));
    }
    out
}

/// The line for an answer to a change, by what was asked.
pub fn change_line(command: &str, v: &Value) -> String {
    let line = match command {
        "state" => format!("{}/{}: {}{}", s(v, "pool"), s(v, "server"), s(v, "state"), tail(v)),
        "add" if v["dry_run"].as_bool() == Some(true) => {
            let a = &v["would_add"];
            format!(
                "would add {}/{} at {} (maxconn {}, {}); prechecks: {}",
                s(a, "pool"),
                s(a, "name"),
                s(a, "addr"),
                a["maxconn"],
                s(a, "capacity"),
                s(v, "prechecks")
            )
        }
        "add" => {
            let a = &v["added"];
            format!(
                "added {}/{} at {}: {}; prechecks: {}{}",
                s(a, "pool"),
                s(a, "name"),
                s(a, "addr"),
                s(v, "state"),
                s(v, "prechecks"),
                tail(v)
            )
        }
        "remove" if v["draining"].as_bool() == Some(true) => format!(
            "{}/{}: draining, {} calls left{}",
            s(v, "pool"),
            s(v, "server"),
            v["active"],
            tail(v)
        ),
        "remove" => format!(
            "removed {}/{} ({} calls cut){}",
            s(v, "pool"),
            s(v, "server"),
            v["cut_calls"],
            tail(v)
        ),
        "reload" => {
            let commands = v["commands"].as_array().map_or(0, Vec::len);
            let mut l = format!("reloaded: generation {}, {commands} changes", v["generation"]);
            let waiting: Vec<&str> = v["not_applied"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !waiting.is_empty() {
                l.push_str(&format!(
                    "; changed but applied only by an upgrade or a restart: [{}]",
                    waiting.join("], [")
                ));
            }
            for c in v["commands"].as_array().into_iter().flatten() {
                l.push_str(&format!("\n  {}", words(c)));
            }
            l
        }
        "upgrade" => format!(
            "upgraded: pid {} (version {}); the old pid {} keeps {} calls",
            v["pid"],
            s(v, "version"),
            v["old_pid"],
            v["calls_kept"]
        ),
        "stop" => format!("stopping: pid {}", v["pid"]),
        "pick" => {
            let mut l = format!("{}  {}  {} free", s(v, "name"), s(v, "addr"), v["effective"]);
            if let Some(until) = v["hold_until"].as_str() {
                l.push_str(&format!("  held until {until}"));
            }
            l
        }
        _ => words(v),
    };
    line + "\n"
}

/// Turns an answer into output and an exit code.
pub fn report(answer: &Answer, human: impl FnOnce(&Value) -> String) -> (String, i32) {
    if (200..300).contains(&answer.status) {
        (human(&answer.body), EXIT_DONE)
    } else {
        let reason = answer.body["error"]
            .as_str()
            .map_or_else(|| answer.body.to_string(), str::to_owned);
        (format!("refused ({}): {reason}\n", answer.status), EXIT_REFUSED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_segments() {
        assert_eq!(split_target("fleets/fleet1"), Ok(("fleets", "fleet1")));
        assert!(split_target("fleet1").is_err());
        assert_eq!(seg("10.0.0.5:443"), "10.0.0.5:443");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn lines_for_changes() {
        let v = serde_json::json!({"pool": "fleets", "server": "fleet1", "state": "drain", "persisted": "/etc/ingress/fleet-servers.txt"});
        assert_eq!(
            change_line("state", &v),
            "fleets/fleet1: drain, persisted to /etc/ingress/fleet-servers.txt\n"
        );
        let v = serde_json::json!({"pid": 7, "version": "0.1.0", "old_pid": 5, "calls_kept": 3});
        assert_eq!(
            change_line("upgrade", &v),
            "upgraded: pid 7 (version 0.1.0); the old pid 5 keeps 3 calls\n"
        );
        let v = serde_json::json!({"name": "fleet2", "addr": "10.0.0.2:443", "effective": 9, "hold_until": "2026-12-02T01:00:00.000Z"});
        assert!(change_line("pick", &v).starts_with("fleet2  10.0.0.2:443  9 free  held until 2026"));
        assert_eq!(
            change_line("other", &serde_json::json!({"a": 1, "b": "x", "c": null})),
            "a=1 b=x\n"
        );
        let v = serde_json::json!({"generation": 4, "commands": [], "not_applied": ["xdp", "admin"]});
        assert_eq!(
            change_line("reload", &v),
            "reloaded: generation 4, 0 changes; changed but applied only by an upgrade or a restart: [xdp], [admin]\n"
        );
    }

    #[test]
    fn table_lines_up() {
        let body = serde_json::json!({"servers": [{"pool": "fleets", "name": "fleet1", "addr": "10.0.0.1:443", "state": "UP",
            "active": 3, "maxconn": 16, "held": 2, "reported": 9, "effective": 9, "check": {"ok": true, "reason": "9 available", "latency_ms": 2.4}}]});
        let t = servers_table(&body);
        assert!(t.starts_with("POOL"), "{t}");
        assert!(
            t.contains("fleet1") && t.contains("9 available (2 ms)") && t.contains("HELD"),
            "{t}"
        );
    }
}
