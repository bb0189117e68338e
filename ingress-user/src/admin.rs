//! Control path: the admin API (HTTP + JSON) on a unix socket (0600) and,
//! optionally, a loopback TCP address that also serves `/metrics` and
//! `/stats`. Read-only routes here; answers are JSON, errors `{"error": …}`.

use std::{convert::Infallible, path::Path, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
};

use crate::{pool::CheckStatus, runtime::Shared};

/// One server as `GET /api/servers` shows it.
#[derive(Debug, Serialize)]
pub struct ServerView {
    pub pool: String,
    pub name: String,
    pub addr: String,
    pub state: crate::pool::State,
    pub active: u32,
    pub maxconn: u32,
    pub reported: Option<u32>,
    pub effective: u32,
    pub check: CheckStatus,
}

pub fn servers(shared: &Shared) -> Vec<ServerView> {
    let rt = shared.runtime.load();
    let mut out = Vec::new();
    for pool in &rt.pools {
        for s in pool.servers.load().iter() {
            out.push(ServerView {
                pool: pool.name.to_string(),
                name: s.name().to_owned(),
                addr: s.def.addr(),
                state: s.state(),
                active: s.active(),
                maxconn: s.maxconn,
                reported: s.reported(),
                effective: s.effective(),
                check: s.check_status(),
            });
        }
    }
    out
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": msg }))
}

fn text(content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn status_json(shared: &Shared) -> serde_json::Value {
    let rt = shared.runtime.load();
    serde_json::json!({
        "generation": rt.generation,
        "xdp": shared.xdp.snapshot(),
        "certs": shared.certs.summary(),
        "pools": rt.pools.iter().map(|p| serde_json::json!({
            "name": p.name.as_ref(),
            "effective": p.total_effective(),
            "servers": p.servers.load().len(),
        })).collect::<Vec<_>>(),
    })
}

fn stats_html(shared: &Shared) -> String {
    let mut rows = String::new();
    for s in servers(shared) {
        rows.push_str(&format!(
            "<tr class=\"{state}\"><td>{pool}</td><td>{name}</td><td>{addr}</td><td>{state}</td><td>{active}/{maxconn}</td><td>{reported}</td><td>{effective}</td><td>{reason}</td></tr>\n",
            pool = escape(&s.pool),
            name = escape(&s.name),
            addr = escape(&s.addr),
            state = s.state,
            active = s.active,
            maxconn = s.maxconn,
            reported = s.reported.map_or("-".to_owned(), |r| r.to_string()),
            effective = s.effective,
            reason = escape(&s.check.reason),
        ));
    }
    let xdp = shared.xdp.snapshot();
    let xdp_line = if xdp.attached {
        format!(
            "XDP attached on {} ({}), shedding: {}",
            escape(xdp.interface.as_deref().unwrap_or("?")),
            xdp.mode.as_deref().unwrap_or("?"),
            if xdp.shedding { "ON" } else { "off" }
        )
    } else {
        format!("XDP not attached: {}", escape(xdp.error.as_deref().unwrap_or("-")))
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\"><title>ingress stats</title>\
<style>body{{font-family:sans-serif}}td,th{{padding:2px 10px;text-align:left}}.UP{{background:#cfc}}.FULL{{background:#ffc}}.DOWN{{background:#fcc}}.DRAIN,.MAINT{{background:#ddd}}</style></head>\
<body><h1>ingress</h1><p>{xdp_line}</p><table><tr><th>pool</th><th>server</th><th>addr</th><th>state</th><th>active/maxconn</th><th>reported</th><th>effective</th><th>last check</th></tr>\n{rows}</table></body></html>\n"
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/api/servers") => json(StatusCode::OK, &serde_json::json!({ "servers": servers(&shared) })),
        (&Method::GET, "/api/status") => json(StatusCode::OK, &status_json(&shared)),
        (&Method::GET, "/metrics") => text(
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(&shared),
        ),
        (&Method::GET, "/stats.json") => json(
            StatusCode::OK,
            &serde_json::json!({ "servers": servers(&shared), "status": status_json(&shared) }),
        ),
        (&Method::GET, "/stats") => text("text/html; charset=utf-8", stats_html(&shared)),
        (_, "/api/servers" | "/api/status" | "/metrics" | "/stats" | "/stats.json") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no admin route {path}")),
    };
    Ok(resp)
}

async fn serve_conn<I>(io: I, shared: Arc<Shared>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(Arc::clone(&shared), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Serves the admin API on loopback TCP until `stop`.
pub async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => if let Ok((s, _)) = r { tokio::spawn(serve_conn(s, Arc::clone(&shared))); },
            _ = stop.changed() => return,
        }
    }
}

/// Binds the unix socket with mode 0600 (replacing a stale socket file).
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the admin API on the unix socket until `stop`.
pub async fn serve_unix(listener: UnixListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => if let Ok((s, _)) = r { tokio::spawn(serve_conn(s, Arc::clone(&shared))); },
            _ = stop.changed() => return,
        }
    }
}
