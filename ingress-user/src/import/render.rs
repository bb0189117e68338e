//! Import: the translation's result (the plan) written as ingress.toml,
//! each setting commented with the haproxy.cfg lines it came from, and the
//! pools' servers files in the daemon's own format.

use std::{fmt::Write as _, path::PathBuf};

use crate::{
    config::render_servers_file,
    model::{AdminState, ServerDef},
};

/// One `key = value`, the lines it came from, and a remark.
#[derive(Debug, Clone)]
pub(super) struct Item {
    pub key: &'static str,
    /// Already a TOML value.
    pub value: String,
    pub lines: Vec<usize>,
    pub note: Option<String>,
}

impl Item {
    pub fn new(key: &'static str, value: String, line: usize) -> Self {
        Self {
            key,
            value,
            lines: if line == 0 { Vec::new() } else { vec![line] },
            note: None,
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// A TOML string.
pub(super) fn s(v: &str) -> String {
    toml::Value::String(v.to_owned()).to_string()
}

/// A TOML array of strings.
pub(super) fn list(v: &[&str]) -> String {
    format!("[{}]", v.iter().map(|x| s(x)).collect::<Vec<_>>().join(", "))
}

/// A key as TOML writes it (quoted unless bare).
pub(super) fn key(k: &str) -> String {
    if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        k.to_owned()
    } else {
        s(k)
    }
}

#[derive(Debug, Clone)]
pub(super) struct RoutePlan {
    pub path: String,
    pub host: Option<String>,
    /// The backend's name (the pool's).
    pub pool: String,
    pub kind: &'static str,
    pub lines: Vec<usize>,
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) struct ServerPlan {
    pub def: ServerDef,
    pub state: AdminState,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub(super) struct PoolPlan {
    pub name: String,
    pub line: usize,
    pub items: Vec<Item>,
    /// `None`: `tls = false`.
    pub tls: Option<Vec<Item>>,
    pub check: Vec<Item>,
    pub servers: Vec<ServerPlan>,
    /// Where its servers go, when not inline.
    pub servers_file: Option<PathBuf>,
    /// Its check reads a capacity (a call fleet).
    pub capacity: bool,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Plan {
    pub listen: Vec<Item>,
    /// Comment lines at the end of `[listen]`.
    pub listen_comments: Vec<String>,
    pub limits: Vec<Item>,
    pub timeouts: Vec<Item>,
    pub routes: Vec<RoutePlan>,
    pub pools: Vec<PoolPlan>,
}

/// Writes the whole file; `name` is the haproxy.cfg's file name, for comments.
pub(super) fn toml(plan: &Plan, name: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Translated from {name} by `ingress import`. Each setting names the {name} line(s)\n\
         # it came from; what gave no setting is listed on stderr, with its line.\n\
         # Check the result with `ingress check --config FILE --probe` before use."
    );
    let src = |lines: &[usize], note: &Option<String>| {
        let at = lines.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        match (at.is_empty(), note) {
            (true, None) => String::new(),
            (true, Some(n)) => format!("  # {n}"),
            (false, None) => format!("  # {name}:{at}"),
            (false, Some(n)) => format!("  # {name}:{at}: {n}"),
        }
    };
    let items = |out: &mut String, items: &[Item]| {
        for i in items {
            let _ = writeln!(out, "{} = {}{}", i.key, i.value, src(&i.lines, &i.note));
        }
    };
    out.push_str("\n[listen]\n");
    items(&mut out, &plan.listen);
    for c in &plan.listen_comments {
        let _ = writeln!(out, "# {c}");
    }
    if !plan.limits.is_empty() {
        out.push_str("\n[limits]\n");
        items(&mut out, &plan.limits);
    }
    if !plan.timeouts.is_empty() {
        out.push_str("\n[timeouts]\n");
        items(&mut out, &plan.timeouts);
    }
    out.push_str(
        "\n[xdp]\n\
         # HAProxy had no kernel fast path. To shed carrier SYNs in the kernel while no\n\
         # fleet has room, name the carrier-facing interface and set mode = \"auto\".\n\
         mode = \"off\"\n\
         \n\
         # [admin] keeps its defaults: the socket /run/ingress/admin.sock, for `ingress ctl`.\n",
    );
    for r in &plan.routes {
        let _ = writeln!(out, "\n[[routes]]");
        let _ = writeln!(out, "path = {}{}", s(&r.path), src(&r.lines, &r.note));
        if let Some(h) = &r.host {
            let _ = writeln!(out, "host = {}", s(h));
        }
        if r.kind == "http" {
            let _ = writeln!(
                out,
                "kind = \"http\"  # every request is proxied, as HAProxy did; upgrades are calls"
            );
        } else {
            let _ = writeln!(
                out,
                "# kind = \"websocket\" (default): calls only; a request that is not an upgrade gets 400"
            );
        }
        let _ = writeln!(out, "pool = {}", s(&r.pool));
    }
    for p in &plan.pools {
        let table = format!("pools.{}", key(&p.name));
        let _ = writeln!(out, "\n[{table}]  # {name}:{}", p.line);
        items(&mut out, &p.items);
        match &p.servers_file {
            Some(f) => {
                let _ = writeln!(out, "servers_file = {}", s(&f.display().to_string()));
            }
            None => {
                out.push_str("servers = [\n");
                for sv in &p.servers {
                    let _ = writeln!(out, "  {},  # {name}:{}", inline_server(&sv.def), sv.line);
                }
                out.push_str("]\n");
            }
        }
        match &p.tls {
            None => out.push_str("tls = false\n"),
            Some(t) => {
                let _ = writeln!(out, "\n[{table}.tls]");
                items(&mut out, t);
            }
        }
        let _ = writeln!(out, "\n[{table}.check]");
        items(&mut out, &p.check);
    }
    out
}

fn inline_server(d: &ServerDef) -> String {
    let addr = d.addr();
    if d.name == addr && d.sni.is_none() && d.maxconn.is_none() {
        return s(&addr);
    }
    let mut t = format!("{{ addr = {}", s(&addr));
    if d.name != addr {
        let _ = write!(t, ", name = {}", s(&d.name));
    }
    if let Some(sni) = &d.sni {
        let _ = write!(t, ", sni = {}", s(sni));
    }
    if let Some(m) = d.maxconn {
        let _ = write!(t, ", maxconn = {m}");
    }
    t.push_str(" }");
    t
}

/// A pool's servers file: a header, then the daemon's own format.
pub(super) fn servers_file(pool: &PoolPlan, name: &str) -> String {
    let servers: Vec<(ServerDef, AdminState)> = pool.servers.iter().map(|s| (s.def.clone(), s.state)).collect();
    format!(
        "# Servers of pool {}, from backend {} in {name} (`ingress import`).\n\
         # ADDR [name=NAME] [sni=HOST] [maxconn=N] [state=drain|maint]; `ingress ctl add/remove` rewrite it.\n{}",
        pool.name,
        pool.name,
        render_servers_file(&servers)
    )
}
