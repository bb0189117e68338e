//! Data path: what is told of a call — its two log lines (routed, ended),
//! the set-up and duration histograms, the tunnel's byte and close counters —
//! and of a request refused before routing (a rate-limited line).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{DataCtx, tunnel::TunnelStats};

/// The front connection a call came on: its TLS handshake as the call log
/// and `ingress_tls_handshake_seconds` tell it.
#[derive(Clone, Debug)]
pub struct Front {
    pub handshake: Duration,
    /// `TLSv1.2`, `TLSv1.3`.
    pub tls_version: &'static str,
    /// The server name the carrier asked for, if any.
    pub sni: Option<Arc<str>>,
}

impl Front {
    pub fn of(conn: &rustls::ServerConnection, handshake: Duration) -> Self {
        let tls_version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "-",
        };
        Self {
            handshake,
            tls_version,
            sni: conn.server_name().map(Arc::from),
        }
    }
}

/// How long the successful attempt's steps took.
#[derive(Clone, Copy, Debug, Default)]
pub struct Steps {
    /// TCP and TLS to the fleet.
    pub connect: Duration,
    /// The upgrade sent to the fleet's answer head.
    pub answer: Duration,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// A call as it is logged, owned so that it can outlive the handshake.
#[derive(Debug)]
pub struct CallLog {
    pub bot_id: String,
    pub route: String,
    pub pool: Arc<str>,
    /// Accept (or, on a keep-alive connection, the upgrade request).
    pub started: Instant,
    pub peer: SocketAddr,
    pub front: Front,
    /// When the 101 reached the carrier.
    upgraded: Option<Instant>,
}

impl CallLog {
    pub fn new(bot_id: &str, route: &str, pool: Arc<str>, started: Instant, peer: SocketAddr, front: Front) -> Self {
        Self {
            bot_id: bot_id.to_owned(),
            route: route.to_owned(),
            pool,
            started,
            peer,
            front,
            upgraded: None,
        }
    }

    /// The 101 was sent: the set-up histogram and the call's first line.
    pub fn routed(&mut self, shared: &DataCtx, server: &str, attempts: u32, steps: Steps) {
        let now = Instant::now();
        self.upgraded = Some(now);
        let setup = now.duration_since(self.started);
        shared.metrics.call_setup.observe(setup.as_secs_f64());
        tracing::info!(
            target: "call",
            event = "routed",
            bot_id = %self.bot_id,
            route = %self.route,
            pool = %self.pool,
            server,
            attempts,
            setup_ms = ms(setup),
            handshake_ms = ms(self.front.handshake),
            connect_ms = ms(steps.connect),
            upgrade_ms = ms(steps.answer),
            tls = self.front.tls_version,
            sni = self.front.sni.as_deref().unwrap_or("-"),
            client = %self.peer,
            "call routed"
        );
    }

    /// A call no fleet took: the fleet's answer passed on, or our own
    /// (502, 504, 503). Our 503s come in floods (every call while the
    /// pools are full), so their lines share the refusals' budget.
    pub fn unrouted(&self, shared: &DataCtx, status: u16, attempts: u32, server: &str, reason: &str) {
        let left_out = if status == 503 {
            match shared.metrics.refusal_log.allow() {
                Some(n) => Some(n),
                None => return,
            }
        } else {
            None
        };
        self.emit(status, attempts, server, (0, 0), (reason, None, left_out));
    }

    /// The call's last line: bytes (to the server, to the client); how it
    /// ended: its reason, `closed_by` for a call past its 101, and for a
    /// rate-limited line how many were left out before it.
    fn emit(
        &self,
        status: u16,
        attempts: u32,
        server: &str,
        (to_server, to_client): (u64, u64),
        (reason, closed_by, left_out): (&str, Option<&str>, Option<u64>),
    ) {
        tracing::info!(
            target: "call",
            event = "ended",
            bot_id = %self.bot_id,
            route = %self.route,
            pool = %self.pool,
            server,
            status,
            attempts,
            duration_ms = self.started.elapsed().as_millis() as u64,
            bytes_to_server = to_server,
            bytes_to_client = to_client,
            close_reason = reason,
            closed_by,
            left_out,
            client = %self.peer,
            "call"
        );
    }

    /// A call past its 101 ended: its metrics and its log line, with who ended it.
    pub fn ended(&self, shared: &DataCtx, attempts: u32, server: &str, stats: &TunnelStats) {
        let (reason, closed_by) = (stats.reason.as_str(), stats.reason.closed_by());
        shared.metrics.tunnel_bytes(stats.to_server, stats.to_client);
        shared.metrics.tunnel_closed(reason, closed_by);
        if let Some(at) = self.upgraded {
            shared
                .metrics
                .call_duration
                .get_or_create(&crate::telemetry::PoolLabel {
                    pool: self.pool.to_string(),
                })
                .observe(at.elapsed().as_secs_f64());
        }
        self.emit(
            101,
            attempts,
            server,
            (stats.to_server, stats.to_client),
            (reason, Some(closed_by), None),
        );
    }
}

/// A request the ingress answered itself before any fleet saw it (400, 404,
/// 408, 431): counted by status, and logged with its reason at most a few
/// times a second (a budget its own 503s share, see [`CallLog::unrouted`]).
pub fn refused(shared: &DataCtx, peer: SocketAddr, status: u16, reason: &str, detail: &str) {
    shared.metrics.response(status);
    if let Some(left_out) = shared.metrics.refusal_log.allow() {
        tracing::info!(
            target: "refused",
            status,
            reason,
            detail,
            client = %peer,
            left_out,
            "request refused"
        );
    }
}
