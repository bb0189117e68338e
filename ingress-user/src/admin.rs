//! Control path: the admin API (HTTP + JSON) on a unix socket (0600) and,
//! optionally, a TCP address that also serves `/metrics` and `/stats`.
//! Changes are accepted from the unix socket and loopback peers only; other
//! peers (a non-loopback `listen`, which needs a `token`) may only read.
//! Answers are JSON, errors `{"error": …}`.

use std::{convert::Infallible, path::Path, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::{Mutex, watch},
};

use crate::{
    control::{AddRequest, Control, Refusal},
    pool::{AdminState, CheckStatus},
    runtime::Shared,
};

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
    let rt = shared.runtime.load();
    let mut pools = String::new();
    for p in &rt.pools {
        pools.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&p.name),
            p.servers.load().len(),
            p.total_effective(),
            p.no_capacity_total.load(std::sync::atomic::Ordering::Relaxed),
            p.retries_total.load(std::sync::atomic::Ordering::Relaxed),
            p.passed_429_total.load(std::sync::atomic::Ordering::Relaxed),
        ));
    }
    let mut rows = String::new();
    for s in servers(shared) {
        let max = f64::from(s.maxconn.max(1));
        let active_pct = (f64::from(s.active) / max * 100.0).min(100.0);
        let free_pct = (f64::from(s.effective) / max * 100.0).min(100.0 - active_pct);
        rows.push_str(&format!(
            "<tr class=\"{state}\"><td>{pool}</td><td>{name}</td><td>{addr}</td><td>{state}</td>\
<td><div class=\"bar\" title=\"active {active}, free {effective}, maxconn {maxconn}\"><span class=\"act\" style=\"width:{active_pct:.0}%\"></span><span class=\"free\" style=\"width:{free_pct:.0}%\"></span></div></td>\
<td>{active}/{maxconn}</td><td>{reported}</td><td>{effective}</td><td>{reason}</td></tr>\n",
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
        let counters: Vec<String> = xdp.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!(
            "XDP attached on {} ({}), shedding: <b>{}</b> &middot; {}",
            escape(xdp.interface.as_deref().unwrap_or("?")),
            xdp.mode.as_deref().unwrap_or("?"),
            if xdp.shedding { "ON" } else { "off" },
            counters.join(", ")
        )
    } else {
        format!("XDP not attached: {}", escape(xdp.error.as_deref().unwrap_or("-")))
    };
    let m = &shared.metrics;
    // One statement per family lookup: a guard held across two lookups of the same family would deadlock.
    let status = |code: &str| {
        m.responses
            .get_or_create(&crate::metrics::StatusLabel { status: code.into() })
            .get()
    };
    let (ok101, full503, busy429) = (status("101"), status("503"), status("429"));
    let refused = m
        .refused
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: "max_connections".into(),
        })
        .get();
    let counters = format!(
        "TLS handshakes {} &middot; 101 {ok101} &middot; 503 {full503} &middot; 429 {busy429} &middot; refused at accept {refused}",
        m.tls_handshakes.get(),
    );
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\"><title>ingress stats</title>\
<style>body{{font-family:sans-serif;margin:1em}}td,th{{padding:2px 10px;text-align:left}}.UP{{background:#cfc}}.FULL{{background:#ffc}}.DOWN{{background:#fcc}}.DRAIN,.MAINT{{background:#ddd}}\
.bar{{width:160px;height:12px;background:#eee;border:1px solid #999;display:flex}}.act{{background:#369}}.free{{background:#6c6}}</style></head>\
<body><h1>ingress</h1><p>generation {generation} &middot; {xdp_line}</p><p>{counters}</p>\
<h2>pools</h2><table><tr><th>pool</th><th>servers</th><th>effective capacity</th><th>503 no capacity</th><th>retries</th><th>429 passed</th></tr>\n{pools}</table>\
<h2>servers</h2><table><tr><th>pool</th><th>server</th><th>addr</th><th>state</th><th>capacity (active | free)</th><th>active/maxconn</th><th>reported</th><th>effective</th><th>last check</th></tr>\n{rows}</table></body></html>\n",
        generation = rt.generation,
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Who is calling: the unix socket (trusted by its 0600 mode) or a TCP peer.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Unix,
    Tcp(std::net::SocketAddr),
}

/// What the admin server needs per request.
#[derive(Debug, Clone)]
pub struct Admin {
    pub shared: Arc<Shared>,
    pub control: Arc<Mutex<Control>>,
    /// Bearer token required from non-loopback TCP peers (`[admin] token`).
    pub token: Option<String>,
}

fn refusal(r: &Refusal) -> Response<Full<Bytes>> {
    error(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &r.reason,
    )
}

fn outcome(r: Result<serde_json::Value, Refusal>) -> Response<Full<Bytes>> {
    match r {
        Ok(v) => json(StatusCode::OK, &v),
        Err(r) => refusal(&r),
    }
}

async fn body_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Response<Full<Bytes>>> {
    use http_body_util::BodyExt as _;
    let bytes = http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("bad JSON body: {e}")))
}

async fn handle(admin: Admin, peer: Peer, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let loopback = match peer {
        Peer::Unix => true,
        Peer::Tcp(a) => a.ip().is_loopback(),
    };
    if !loopback {
        let presented = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (&admin.token, presented) {
            (Some(t), Some(p)) if constant_time_eq(t.as_bytes(), p.as_bytes()) => {}
            _ => {
                return Ok(error(
                    StatusCode::UNAUTHORIZED,
                    "a bearer token is required from this address",
                ));
            }
        }
        if method != Method::GET {
            return Ok(error(
                StatusCode::FORBIDDEN,
                "changes are accepted from loopback or the unix socket only",
            ));
        }
    }
    let shared = &admin.shared;
    let decoded: Vec<String> = path.trim_start_matches('/').split('/').map(percent_decode).collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let resp = match (&method, segments.as_slice()) {
        (&Method::GET, ["api", "servers"]) => json(StatusCode::OK, &serde_json::json!({ "servers": servers(shared) })),
        (&Method::GET, ["api", "status"]) => {
            let last_reload = admin.control.lock().await.last_reload.clone();
            let mut v = status_json(shared);
            v["last_reload"] = serde_json::to_value(last_reload).unwrap_or_default();
            json(StatusCode::OK, &v)
        }
        (&Method::GET, ["api", "pick", pool]) => pick(shared, pool),
        (&Method::GET, ["metrics"]) => text(
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(shared),
        ),
        (&Method::GET, ["stats.json"]) => json(
            StatusCode::OK,
            &serde_json::json!({ "servers": servers(shared), "status": status_json(shared) }),
        ),
        (&Method::GET, ["stats"]) => text("text/html; charset=utf-8", stats_html(shared)),
        (&Method::POST, ["api", "servers", pool, name, "state"]) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                state: String,
            }
            match body_json::<Body>(req).await {
                Err(r) => r,
                Ok(b) => match AdminState::parse(&b.state) {
                    None => error(
                        StatusCode::BAD_REQUEST,
                        &format!("state `{}` is not drain, ready or maint", b.state),
                    ),
                    Some(st) => outcome(admin.control.lock().await.set_state(pool, name, st)),
                },
            }
        }
        (&Method::POST, ["api", "pools", pool, "servers"]) => match body_json::<AddRequest>(req).await {
            Err(r) => r,
            Ok(b) => outcome(crate::control::add_server(&admin.control, pool, b).await),
        },
        (&Method::DELETE, ["api", "servers", pool, name]) => {
            let now = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "now=1" || kv == "now=true"));
            outcome(crate::control::remove_server(&admin.control, pool, name, now).await)
        }
        (&Method::POST, ["api", "reload"]) => outcome(admin.control.lock().await.reload().await),
        (_, ["api", ..] | ["metrics"] | ["stats"] | ["stats.json"]) => {
            error(StatusCode::NOT_FOUND, &format!("no admin route {method} {path}"))
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no admin route {path}")),
    };
    Ok(resp)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn pick(shared: &Shared, pool: &str) -> Response<Full<Bytes>> {
    let rt = shared.runtime.load();
    let Some(p) = rt.pools.iter().find(|p| *p.name == *pool) else {
        return error(StatusCode::NOT_FOUND, &format!("no pool named `{pool}`"));
    };
    match p.most_capacity() {
        Some(s) => json(
            StatusCode::OK,
            &serde_json::json!({ "pool": pool, "name": s.name(), "addr": s.def.addr(), "host": s.def.host, "effective": s.effective(), "state": s.state() }),
        ),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("no server of `{pool}` has capacity"),
        ),
    }
}

async fn serve_conn<I>(io: I, admin: Admin, peer: Peer)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(admin.clone(), peer, req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Serves the admin API on TCP until `stop`.
pub async fn serve_tcp(listener: TcpListener, admin: Admin, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => if let Ok((s, peer)) = r { tokio::spawn(serve_conn(s, admin.clone(), Peer::Tcp(peer))); },
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
pub async fn serve_unix(listener: UnixListener, admin: Admin, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => if let Ok((s, _)) = r { tokio::spawn(serve_conn(s, admin.clone(), Peer::Unix)); },
            _ = stop.changed() => return,
        }
    }
}
