//! Control path: the admin API server (HTTP + JSON) on a unix socket (0600)
//! and, optionally, a TCP address that also serves `/metrics` and `/stats`:
//! path match, peer check, and the mapping of control errors to statuses.
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

use super::{prometheus, stats};
use crate::{
    control::{
        Control, ControlError, Shared,
        desired::StateError,
        servers::{self, AddRequest},
    },
    model::AdminState,
};

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

/// The status a refused change answers with.
fn status_of(e: &ControlError) -> StatusCode {
    match e {
        ControlError::State(StateError::NoPool(_) | StateError::NoServer { .. }) | ControlError::NotFound(_) => {
            StatusCode::NOT_FOUND
        }
        ControlError::State(_) => StatusCode::CONFLICT,
        ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
        ControlError::Unhealthy(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ControlError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn outcome<T: Serialize>(r: Result<T, ControlError>) -> Response<Full<Bytes>> {
    match r {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(status_of(&e), &e.to_string()),
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
        (&Method::GET, ["api", "servers"]) => json(
            StatusCode::OK,
            &serde_json::json!({ "servers": shared.data.runtime.load().server_views() }),
        ),
        (&Method::GET, ["api", "status"]) => {
            let last_reload = admin.control.lock().await.last_reload.clone();
            let mut v = stats::status_json(shared);
            v["last_reload"] = serde_json::to_value(last_reload).unwrap_or_default();
            json(StatusCode::OK, &v)
        }
        (&Method::GET, ["api", "pick", pool]) => pick(shared, pool),
        (&Method::GET, ["metrics"]) => text("text/plain; version=0.0.4; charset=utf-8", prometheus::render(shared)),
        (&Method::GET, ["stats.json"]) => json(
            StatusCode::OK,
            &serde_json::json!({ "servers": shared.data.runtime.load().server_views(), "status": stats::status_json(shared) }),
        ),
        (&Method::GET, ["stats"]) => text("text/html; charset=utf-8", stats::stats_html(shared)),
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
            Ok(b) => outcome(servers::add_server(&admin.control, pool, b).await),
        },
        (&Method::DELETE, ["api", "servers", pool, name]) => {
            let now = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "now=1" || kv == "now=true"));
            outcome(servers::remove_server(&admin.control, pool, name, now).await)
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
    let rt = shared.data.runtime.load();
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
///
/// The socket is bound inside a fresh directory only the daemon's user can
/// enter, made 0600 there, and then renamed into place: under any umask it
/// is never reachable by others, not even between bind and chmod.
/// A stale socket at `path` is replaced; anything else there is an error.
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket: refusing to replace it",
                path.display()
            )));
        }
        _ => {}
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // A fresh name: `create` fails rather than reuse anything already there.
    let private = dir.join(format!(".ingress-admin.{}.{nanos:09}", std::process::id()));
    let staged = private.join("admin.sock");
    // sun_path holds 107 bytes and a NUL, and the staged name is the longer one.
    if staged.as_os_str().len() > 107 || path.as_os_str().len() > 107 {
        return Err(std::io::Error::other(format!(
            "{}: too long for a unix socket (its directory's path must stay under about 60 bytes)",
            path.display()
        )));
    }
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = UnixListener::bind(&staged).and_then(|l| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound
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
