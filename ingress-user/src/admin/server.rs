//! Control path: the admin API server (HTTP + JSON) on a unix socket (0600)
//! and, optionally, a TCP address that also serves `/metrics` and `/stats`:
//! path match, the peer's access (see [`super::access`]), connection cap and
//! head timeout, and the mapping of control errors to statuses.
//! Answers are JSON, errors `{"error": …}`.

use std::{convert::Infallible, sync::Arc};

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

use super::{
    access::{self, Access, Creds, Peer, Policy},
    prometheus, stats,
};
use crate::{
    control::{
        Control, ControlError, Shared,
        desired::StateError,
        lifecycle::{self, Requests},
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

/// What the admin server needs per request.
#[derive(Debug, Clone)]
pub struct Admin {
    pub shared: Arc<Shared>,
    pub control: Arc<Mutex<Control>>,
    /// Who may use the socket (`[admin] group`, fixed at start); the
    /// tokens are read from `Shared::admin_tokens` per request.
    pub group: Option<u32>,
    /// `ctl upgrade` and `ctl stop` go to the daemon's loop.
    pub lifecycle: Requests,
    /// Admin connections open (a process handing over waits for its answer
    /// to `ctl upgrade` to have gone out).
    pub open: Arc<std::sync::atomic::AtomicUsize>,
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
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let tokens = admin.shared.admin_tokens.load();
    let policy = Policy {
        token: tokens.token.clone(),
        pick_token: tokens.pick_token.clone(),
        group: admin.group,
    };
    let access = policy.access(peer, presented);
    if let Access::Refused(status, why) = access {
        return Ok(error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
            why,
        ));
    }
    let shared = &admin.shared;
    let decoded: Vec<String> = path.trim_start_matches('/').split('/').map(percent_decode).collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let is_pick =
        matches!(segments.as_slice(), ["api", "pick", _]) && (method == Method::GET || method == Method::POST);
    if access == Access::Pick && !is_pick {
        return Ok(error(StatusCode::FORBIDDEN, "the pick token allows picks only"));
    }
    // A hold takes capacity: the pick token, or the right to change.
    if method != Method::GET
        && !(is_pick && access == Access::Pick)
        && let Some(why) = access::change_refused(access)
    {
        return Ok(error(StatusCode::FORBIDDEN, why));
    }
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
        (&Method::POST, ["api", "pick", pool]) => hold(shared, pool, req.uri().query()),
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
                /// With `drain`: its calls end with a Close 1001 after this long.
                close_after: Option<String>,
            }
            match body_json::<Body>(req).await {
                Err(r) => r,
                Ok(b) => match (AdminState::parse(&b.state), b.close_after.as_deref()) {
                    (None, _) => error(
                        StatusCode::BAD_REQUEST,
                        &format!("state `{}` is not drain, ready or maint", b.state),
                    ),
                    (Some(st), None) => outcome(admin.control.lock().await.set_state(pool, name, st, None)),
                    (Some(AdminState::Drain), Some(after)) => match humantime::parse_duration(after) {
                        Ok(d) => outcome(
                            admin
                                .control
                                .lock()
                                .await
                                .set_state(pool, name, AdminState::Drain, Some(d)),
                        ),
                        Err(e) => error(
                            StatusCode::BAD_REQUEST,
                            &format!("close_after `{after}` is not a duration (e.g. 2s, 10m): {e}"),
                        ),
                    },
                    (Some(_), Some(_)) => error(StatusCode::BAD_REQUEST, "close_after goes with state drain only"),
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
        (&Method::POST, ["api", "upgrade"]) => {
            let (reply, answer) = tokio::sync::oneshot::channel();
            if admin.lifecycle.send(lifecycle::Request::Upgrade(reply)).await.is_err() {
                error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping")
            } else {
                match answer.await {
                    Ok(Ok(up)) => json(StatusCode::OK, &up),
                    Ok(Err(why)) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("upgrade abandoned: {why}")),
                    Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping"),
                }
            }
        }
        (&Method::POST, ["api", "stop"]) => match admin.lifecycle.send(lifecycle::Request::Stop).await {
            Ok(()) => json(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "stopping": true, "pid": std::process::id() }),
            ),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping"),
        },
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

/// The longest hold a dialer may ask for.
const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(60);

/// `POST /api/pick/{pool}?hold=10s`: the fleet with the most capacity, a
/// slot held there for the dialer until a report on a probe sent a second
/// after the pick (its call has had time to reach the fleet) or the hold's
/// end.
fn hold(shared: &Shared, pool: &str, query: Option<&str>) -> Response<Full<Bytes>> {
    let hold = match query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("hold="))
        .map(humantime::parse_duration)
    {
        None => std::time::Duration::from_secs(10),
        Some(Ok(d)) if !d.is_zero() && d <= MAX_HOLD => d,
        Some(Ok(d)) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("hold={}: more than 0 and at most 60s", humantime::format_duration(d)),
            );
        }
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("hold: {e}")),
    };
    let rt = shared.data.runtime.load();
    let Some(p) = rt.pools.iter().find(|p| *p.name == *pool) else {
        return error(StatusCode::NOT_FOUND, &format!("no pool named `{pool}`"));
    };
    let Some(held) = p.hold_most_capacity() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("no server of `{pool}` has capacity"),
        );
    };
    let s = std::sync::Arc::clone(&held.server);
    let until = std::time::SystemTime::now() + hold;
    tokio::spawn(held.keep(hold));
    json(
        StatusCode::OK,
        &serde_json::json!({
            "pool": pool,
            "name": s.name(),
            "addr": s.def.addr(),
            "url": format!("wss://{}", s.def.addr()),
            "effective": s.effective(),
            "hold_until": humantime::format_rfc3339_millis(until).to_string(),
        }),
    )
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

/// Admin connections served at once, per listener; more are closed at accept.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Slots on top of those kept for local peers (the unix socket, loopback):
/// remote peers filling the 64 never lock out the operator or the scraper
/// on the box.
const LOCAL_RESERVE: usize = 8;

async fn serve_conn<I>(io: I, admin: Admin, peer: Peer)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // `[limits] header_timeout` also bounds an admin connection without a
    // complete head (idle between requests included).
    let header_timeout = admin.shared.data.runtime.load().limits.header_timeout.0;
    let svc = service_fn(move |req| handle(admin.clone(), peer, req));
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(64 * 1024)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Accepts until `stop`: at most [`MAX_ADMIN_CONNECTIONS`] at once, plus
/// [`LOCAL_RESERVE`] more for local peers; a connection beyond is closed.
async fn serve_listener<L, A, F>(mut accept: A, admin: Admin, mut stop: watch::Receiver<bool>)
where
    A: FnMut() -> F,
    F: std::future::Future<Output = std::io::Result<(L, Peer)>>,
    L: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let reserve = Arc::new(tokio::sync::Semaphore::new(LOCAL_RESERVE));
    loop {
        let accepted = tokio::select! {
            r = accept() => r,
            _ = stop.changed() => return,
        };
        let (s, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let local = match peer {
            Peer::Unix(_) => true,
            Peer::Tcp(a) => a.ip().to_canonical().is_loopback(),
        };
        let slot = Arc::clone(&slots).try_acquire_owned().or_else(|e| {
            if local {
                Arc::clone(&reserve).try_acquire_owned()
            } else {
                Err(e)
            }
        });
        let Ok(slot) = slot else {
            tracing::debug!(?peer, "admin connections at their cap; closed");
            continue;
        };
        let admin = admin.clone();
        let open = Arc::clone(&admin.open);
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            serve_conn(s, admin, peer).await;
            drop(slot);
            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

/// Serves the admin API on TCP until `stop`.
pub async fn serve_tcp(listener: TcpListener, admin: Admin, stop: watch::Receiver<bool>) {
    let listener = Arc::new(listener);
    let accept = move || {
        let l = Arc::clone(&listener);
        async move { l.accept().await.map(|(s, a)| (s, Peer::Tcp(a))) }
    };
    serve_listener(accept, admin, stop).await;
}

/// Serves the admin API on the unix socket until `stop`; each peer is
/// known by its credentials.
pub async fn serve_unix(listener: UnixListener, admin: Admin, stop: watch::Receiver<bool>) {
    let listener = Arc::new(listener);
    let group = admin.group;
    let accept = move || {
        let l = Arc::clone(&listener);
        async move {
            let (s, _) = l.accept().await?;
            let creds = s.peer_cred().ok().map(|c| Creds::of(c.uid(), c.gid(), c.pid(), group));
            Ok((s, Peer::Unix(creds)))
        }
    };
    serve_listener(accept, admin, stop).await;
}
