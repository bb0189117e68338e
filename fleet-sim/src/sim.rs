//! The fleet simulator: a host with N call workers. HTTPS `GET
//! /health/fleet` reports capacity as JSON; `/ws/{bot}` and `/exotel/{bot}`
//! are WebSocket echo calls holding one worker each, 429 when none is free.
//! A plain-HTTP control port changes its behaviour (see [`control`]).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::{WebSocketStream, tungstenite::protocol::Role};

/// How `/health/fleet` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthMode {
    Normal,
    /// Answers after a delay.
    Slow(Duration),
    /// JSON cut in the middle.
    Truncated,
    /// Not JSON at all.
    Garbage,
    /// HTTP 500.
    Error500,
    /// `fleet_available` missing.
    MissingKey,
    /// Never answers.
    Hang,
    /// 302 to /login (an app that redirects; `expect_status = "^[23]"` accepts it).
    Redirect,
}

impl HealthMode {
    pub fn parse(mode: &str, delay_ms: Option<u64>) -> Option<Self> {
        Some(match mode {
            "normal" => Self::Normal,
            "slow" => Self::Slow(Duration::from_millis(delay_ms.unwrap_or(2000))),
            "truncated" => Self::Truncated,
            "garbage" => Self::Garbage,
            "500" => Self::Error500,
            "missing" => Self::MissingKey,
            "hang" => Self::Hang,
            "redirect" => Self::Redirect,
            _ => return None,
        })
    }
}

/// How call upgrades are answered (fault injection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeMode {
    Normal,
    /// Close the connection without answering.
    Reset,
    /// A 101 whose head is not HTTP.
    Malformed,
    /// Half a 101 head, then close.
    Partial,
    /// A proper 101, then silence: no echo, no close.
    Stall,
    /// A proper 101 after one second (a call still being set up).
    Slow,
}

impl UpgradeMode {
    pub fn parse(mode: &str) -> Option<Self> {
        Some(match mode {
            "normal" => Self::Normal,
            "reset" => Self::Reset,
            "malformed" => Self::Malformed,
            "partial" => Self::Partial,
            "stall" => Self::Stall,
            "slow" => Self::Slow,
            _ => return None,
        })
    }
}

/// The simulator's live state.
#[derive(Debug)]
pub struct Fleet {
    pub workers: AtomicU32,
    /// Workers held by WebSocket calls through this server.
    pub calls: AtomicU32,
    /// Workers occupied directly (traffic that bypasses the ingress).
    pub occupied: AtomicU32,
    pub calls_total: AtomicU64,
    /// Plain HTTP requests answered under `/api/`.
    pub http_requests: AtomicU64,
    /// How this fleet names itself in `/api/` answers (its HTTPS address).
    pub label: std::sync::Mutex<String>,
    pub answered_429: AtomicU64,
    /// How each call ended, by WebSocket close code (1005: a Close without
    /// a code, 1006: no Close at all).
    pub close_codes: std::sync::Mutex<Vec<u16>>,
    /// The last data messages received (length, sum of the bytes mod 2³²),
    /// at most [`MESSAGES_KEPT`].
    pub messages: std::sync::Mutex<std::collections::VecDeque<(usize, u32)>>,
    pub health_checks: AtomicU64,
    /// Host header of the last health check.
    pub last_health_host: std::sync::Mutex<String>,
    pub available_first: AtomicBool,
    pub decoy: AtomicBool,
    /// New connections to the call and health port are closed as soon as
    /// they are accepted (those already open carry on): a fleet whose
    /// listener broke.
    pub refuse_new: AtomicBool,
    health: std::sync::Mutex<(HealthMode, Option<u32>)>,
    upgrade: std::sync::Mutex<(UpgradeMode, Option<u32>)>,
    /// Bumped to close every open call.
    close_all: watch::Sender<u64>,
    /// Set to stop the process.
    pub exit: watch::Sender<bool>,
}

impl Fleet {
    pub fn new(workers: u32) -> Arc<Self> {
        Arc::new(Self {
            workers: AtomicU32::new(workers),
            calls: AtomicU32::new(0),
            occupied: AtomicU32::new(0),
            calls_total: AtomicU64::new(0),
            http_requests: AtomicU64::new(0),
            label: std::sync::Mutex::new(String::new()),
            answered_429: AtomicU64::new(0),
            close_codes: std::sync::Mutex::new(Vec::new()),
            messages: std::sync::Mutex::new(std::collections::VecDeque::new()),
            health_checks: AtomicU64::new(0),
            last_health_host: std::sync::Mutex::new(String::new()),
            available_first: AtomicBool::new(false),
            decoy: AtomicBool::new(false),
            refuse_new: AtomicBool::new(false),
            health: std::sync::Mutex::new((HealthMode::Normal, None)),
            upgrade: std::sync::Mutex::new((UpgradeMode::Normal, None)),
            close_all: watch::channel(0).0,
            exit: watch::channel(false).0,
        })
    }

    pub fn busy(&self) -> u32 {
        self.calls.load(SeqCst) + self.occupied.load(SeqCst)
    }

    pub fn available(&self) -> u32 {
        self.workers.load(SeqCst).saturating_sub(self.busy())
    }

    /// Takes a worker for a call; false when all are busy.
    fn take_worker(&self) -> bool {
        self.calls
            .fetch_update(SeqCst, SeqCst, |c| {
                (c + self.occupied.load(SeqCst) < self.workers.load(SeqCst)).then_some(c + 1)
            })
            .is_ok()
    }

    /// Sets the health mode, for `count` answers (then back to normal) or for good.
    pub fn set_health(&self, mode: HealthMode, count: Option<u32>) {
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = (mode, count);
    }

    fn next_health_mode(&self) -> HealthMode {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let mode = h.0;
        if let Some(n) = h.1.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                *h = (HealthMode::Normal, None);
            }
        }
        mode
    }

    /// Sets how the next `count` upgrades (or all) are answered.
    pub fn set_upgrade(&self, mode: UpgradeMode, count: Option<u32>) {
        *self.upgrade.lock().unwrap_or_else(|e| e.into_inner()) = (mode, count);
    }

    fn current_upgrade_mode(&self) -> UpgradeMode {
        self.upgrade.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn next_upgrade_mode(&self) -> UpgradeMode {
        let mut u = self.upgrade.lock().unwrap_or_else(|e| e.into_inner());
        let mode = u.0;
        if let Some(n) = u.1.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                *u = (UpgradeMode::Normal, None);
            }
        }
        mode
    }

    pub fn close_all(&self) {
        self.close_all.send_modify(|g| *g += 1);
    }

    /// The health body as the mode wants it.
    pub fn health_body(&self) -> String {
        let workers = self.workers.load(SeqCst);
        let busy = self.busy().min(workers);
        let available = self.available();
        let decoy = if self.decoy.load(SeqCst) {
            format!(",\"prev_fleet_available\":{}", workers)
        } else {
            String::new()
        };
        if self.available_first.load(SeqCst) {
            format!("{{\"fleet_available\":{available},\"fleet_workers\":{workers},\"fleet_busy\":{busy}{decoy}}}")
        } else {
            format!("{{\"fleet_workers\":{workers},\"fleet_busy\":{busy}{decoy},\"fleet_available\":{available}}}")
        }
    }

    pub fn state_json(&self) -> String {
        serde_json::json!({
            "workers": self.workers.load(SeqCst),
            "calls": self.calls.load(SeqCst),
            "occupied": self.occupied.load(SeqCst),
            "available": self.available(),
            "calls_total": self.calls_total.load(SeqCst),
            "http_requests": self.http_requests.load(SeqCst),
            "answered_429": self.answered_429.load(SeqCst),
            "close_codes": self.close_codes.lock().map(|c| c.clone()).unwrap_or_default(),
            "messages": self.messages.lock().map(|m| m.iter().copied().collect::<Vec<_>>()).unwrap_or_default(),
            "health_checks": self.health_checks.load(SeqCst),
            "last_health_host": self.last_health_host.lock().map(|h| h.clone()).unwrap_or_default(),
        })
        .to_string()
    }
}

type Resp = Response<Full<Bytes>>;

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(body.into()))
        .unwrap_or_default()
}

async fn health(fleet: &Fleet) -> Resp {
    fleet.health_checks.fetch_add(1, SeqCst);
    let json = |body: String| {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    match fleet.next_health_mode() {
        HealthMode::Normal => json(fleet.health_body()),
        HealthMode::Slow(d) => {
            tokio::time::sleep(d).await;
            json(fleet.health_body())
        }
        HealthMode::Truncated => {
            let body = fleet.health_body();
            json(body[..body.len() / 2].to_owned())
        }
        HealthMode::Garbage => plain(StatusCode::OK, "<html>502 Bad Gateway</html>"),
        HealthMode::Error500 => plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        HealthMode::MissingKey => json("{\"fleet_workers\":16,\"fleet_busy\":0}".to_owned()),
        HealthMode::Hang => std::future::pending().await,
        HealthMode::Redirect => Response::builder()
            .status(StatusCode::FOUND)
            .header("location", "/login")
            .body(Full::new(Bytes::new()))
            .unwrap_or_default(),
    }
}

/// Data messages whose length and sum `state` shows.
const MESSAGES_KEPT: usize = 64;

impl Fleet {
    fn received(&self, data: &[u8]) {
        let sum = data.iter().fold(0u32, |a, b| a.wrapping_add(u32::from(*b)));
        if let Ok(mut m) = self.messages.lock() {
            if m.len() == MESSAGES_KEPT {
                m.pop_front();
            }
            m.push_back((data.len(), sum));
        }
    }
}

fn is_call_path(path: &str) -> bool {
    let rest = path.strip_prefix("/ws/").or_else(|| path.strip_prefix("/exotel/"));
    rest.is_some_and(|bot| !bot.is_empty() && !bot.contains('/'))
}

/// One call: echo every text and binary message until either side closes.
async fn echo(fleet: Arc<Fleet>, upgraded: hyper::upgrade::Upgraded, stall: bool) {
    let mut close_all = fleet.close_all.subscribe();
    if stall {
        // Hold the connection, never read or write.
        let _ = close_all.changed().await;
        drop(upgraded);
        fleet.calls.fetch_sub(1, SeqCst);
        return;
    }
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    let code = loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(m)) if m.is_text() || m.is_binary() => {
                    fleet.received(m.clone().into_data().as_ref());
                    if ws.send(m).await.is_err() { break 1006; }
                }
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                    // Answer it (the library may have queued its reply: flush it out).
                    let _ = ws.close(None).await;
                    let _ = ws.flush().await;
                    break frame.map_or(1005, |f| u16::from(f.code));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break 1006,
            },
            _ = close_all.changed() => { let _ = ws.close(None).await; break 1000; }
        }
    };
    if let Ok(mut codes) = fleet.close_codes.lock() {
        codes.push(code);
    }
    fleet.calls.fetch_sub(1, SeqCst);
}

async fn serve_https(fleet: Arc<Fleet>, mut req: Request<Incoming>) -> Result<Resp, std::io::Error> {
    let path = req.uri().path().to_owned();
    if path == "/health/fleet" || path == "/" {
        if let Some(host) = req.headers().get("host").and_then(|h| h.to_str().ok())
            && let Ok(mut last) = fleet.last_health_host.lock()
        {
            *last = host.to_owned();
        }
        return Ok(health(&fleet).await);
    }
    let is_upgrade = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    // Under `/api/` a plain request is answered as an API call; an upgrade is a call.
    if path.starts_with("/api/") && !is_upgrade {
        use http_body_util::BodyExt as _;
        fleet.http_requests.fetch_add(1, SeqCst);
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (method, xff, cookie) = (req.method().to_string(), header("x-forwarded-for"), header("cookie"));
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let label = fleet.label.lock().map(|l| l.clone()).unwrap_or_default();
        let answer = serde_json::json!({
            "server": label, "method": method, "path": path, "xff": xff, "cookie": cookie, "body_len": body.len(),
        });
        return Ok(Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(answer.to_string())))
            .unwrap_or_default());
    }
    if !is_call_path(&path) && !path.starts_with("/api/") {
        return Ok(plain(StatusCode::NOT_FOUND, "not found"));
    }
    let key = req.headers().get("sec-websocket-key").map(|k| k.as_bytes().to_vec());
    let Some(key) = key.filter(|_| is_upgrade) else {
        return Ok(plain(StatusCode::BAD_REQUEST, "WebSocket upgrade expected"));
    };
    let mode = fleet.next_upgrade_mode();
    if mode == UpgradeMode::Reset {
        return Err(std::io::Error::other("fault injection: reset before answering"));
    }
    if !fleet.take_worker() {
        fleet.answered_429.fetch_add(1, SeqCst);
        return Ok(plain(StatusCode::TOO_MANY_REQUESTS, "all workers busy"));
    }
    fleet.calls_total.fetch_add(1, SeqCst);
    if mode == UpgradeMode::Slow {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let f = Arc::clone(&fleet);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => echo(f, up, mode == UpgradeMode::Stall).await,
            Err(_) => {
                f.calls.fetch_sub(1, SeqCst);
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default())
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| v.to_owned())
    })
}

fn num(req: &Request<Incoming>, key: &str) -> Option<u64> {
    query(req, key).and_then(|v| v.parse().ok())
}

/// The control port (plain HTTP, GET or POST alike):
/// `/occupy?n=N`, `/free?n=N`, `/capacity?workers=N`,
/// `/health?mode=normal|slow|truncated|garbage|500|missing|hang[&delay_ms=D][&count=C]`,
/// `/upgrade?mode=normal|reset|malformed|partial|stall|slow[&count=C]`,
/// `/order?available_first=0|1`, `/decoy?on=0|1`, `/accept?mode=refuse|normal`, `/close-all`,
/// `/exit`, `/state`.
async fn control(fleet: Arc<Fleet>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let ok = |f: &Fleet| plain(StatusCode::OK, f.state_json());
    let resp = match req.uri().path() {
        "/state" => ok(&fleet),
        "/occupy" => {
            let n = num(&req, "n").unwrap_or(1) as u32;
            fleet.occupied.fetch_add(n, SeqCst);
            ok(&fleet)
        }
        "/free" => {
            let n = num(&req, "n").unwrap_or(1) as u32;
            let _ = fleet
                .occupied
                .fetch_update(SeqCst, SeqCst, |o| Some(o.saturating_sub(n)));
            ok(&fleet)
        }
        "/capacity" => match num(&req, "workers") {
            Some(w) => {
                fleet.workers.store(w as u32, SeqCst);
                ok(&fleet)
            }
            None => plain(StatusCode::BAD_REQUEST, "workers=N expected"),
        },
        "/health" => {
            let mode = query(&req, "mode").unwrap_or_default();
            match HealthMode::parse(&mode, num(&req, "delay_ms")) {
                Some(m) => {
                    fleet.set_health(m, num(&req, "count").map(|c| c as u32));
                    ok(&fleet)
                }
                None => plain(StatusCode::BAD_REQUEST, format!("unknown health mode `{mode}`")),
            }
        }
        "/order" => {
            fleet
                .available_first
                .store(num(&req, "available_first").unwrap_or(1) != 0, SeqCst);
            ok(&fleet)
        }
        "/decoy" => {
            fleet.decoy.store(num(&req, "on").unwrap_or(1) != 0, SeqCst);
            ok(&fleet)
        }
        "/upgrade" => {
            let mode = query(&req, "mode").unwrap_or_default();
            match UpgradeMode::parse(&mode) {
                Some(m) => {
                    fleet.set_upgrade(m, num(&req, "count").map(|c| c as u32));
                    ok(&fleet)
                }
                None => plain(StatusCode::BAD_REQUEST, format!("unknown upgrade mode `{mode}`")),
            }
        }
        "/accept" => match query(&req, "mode").as_deref() {
            Some(mode @ ("refuse" | "normal")) => {
                fleet.refuse_new.store(mode == "refuse", SeqCst);
                ok(&fleet)
            }
            other => plain(
                StatusCode::BAD_REQUEST,
                format!("accept mode `{}`: refuse or normal expected", other.unwrap_or_default()),
            ),
        },
        "/close-all" => {
            fleet.close_all();
            ok(&fleet)
        }
        "/exit" => {
            let _ = fleet.exit.send(true);
            ok(&fleet)
        }
        other => plain(StatusCode::NOT_FOUND, format!("no control route {other}")),
    };
    Ok(resp)
}

/// Serves HTTPS on `https` and control on `control` until `/exit`.
/// `acceptor` None serves plain HTTP (a `tls = false` backend).
pub async fn run(fleet: Arc<Fleet>, https: TcpListener, control_listener: TcpListener, acceptor: Option<TlsAcceptor>) {
    let mut exit = fleet.exit.subscribe();
    let f = Arc::clone(&fleet);
    let https_task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = https.accept().await else { continue };
            if f.refuse_new.load(SeqCst) {
                drop(tcp);
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let f = Arc::clone(&f);
            tokio::spawn(async move {
                let raw = matches!(f.current_upgrade_mode(), UpgradeMode::Malformed | UpgradeMode::Partial);
                let svc = service_fn({
                    let f = Arc::clone(&f);
                    move |req| serve_https(Arc::clone(&f), req)
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        if raw {
                            serve_raw(&f, tls).await;
                            return;
                        }
                        let _ = builder.serve_connection(TokioIo::new(tls), svc).with_upgrades().await;
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).with_upgrades().await;
                    }
                }
            });
        }
    });
    let f = Arc::clone(&fleet);
    let control_task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = control_listener.accept().await else {
                continue;
            };
            let f = Arc::clone(&f);
            tokio::spawn(async move {
                let svc = service_fn(move |req| control(Arc::clone(&f), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let _ = exit.wait_for(|e| *e).await;
    https_task.abort();
    control_task.abort();
}

/// Fault injection below HTTP: reads one request head by hand; a call gets a
/// malformed or cut 101, a health check a minimal correct answer.
async fn serve_raw<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(fleet: &Fleet, mut io: S) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let answer: Vec<u8> = if is_call_path(&path) {
        match fleet.next_upgrade_mode() {
            UpgradeMode::Partial => b"HTTP/1.1 101 Switching Pro".to_vec(),
            _ => b"HTTP/1.1 101 Switching Protocols\r\nthis is not a header\r\n\r\n".to_vec(),
        }
    } else if path == "/health/fleet" {
        fleet.health_checks.fetch_add(1, SeqCst);
        let body = fleet.health_body();
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    } else {
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
    };
    let _ = io.write_all(&answer).await;
    let _ = io.shutdown().await;
}

/// Local addresses, as printed in the ready line.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub https: SocketAddr,
    pub control: SocketAddr,
}
