//! `ingress ctl`: the admin API's command line, over the unix socket. Prints
//! readable tables (or JSON); exits 0 on success, 1 when the daemon refused,
//! 2 when it could not be reached.

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

/// Turns an answer into output and an exit code.
pub fn report(answer: &Answer, human: impl FnOnce(&Value) -> String) -> (String, i32) {
    if (200..300).contains(&answer.status) {
        (human(&answer.body), 0)
    } else {
        let reason = answer.body["error"]
            .as_str()
            .map_or_else(|| answer.body.to_string(), str::to_owned);
        (format!("refused ({}): {reason}\n", answer.status), 1)
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
