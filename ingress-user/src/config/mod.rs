//! Configuration: the TOML schema and its defaults (this file), validation
//! ([`validate`], pure), reading it from disk ([`load`]), the `servers_file`
//! format ([`servers_file`]) and `[group]` ([`group`]).
//! Unknown keys are rejected by serde; values that parse but make no sense
//! are rejected by [`Config::validate`] with the key's name and the reason.
//! Imports only the leaves.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

mod group;
mod load;
mod servers_file;
mod validate;
mod values;

pub use group::GroupConfig;
pub use servers_file::{
    FileServers, parse_servers_file, read_all as read_servers_files, render_servers_file, seed_is_newer,
    write_atomically,
};
pub use values::{Addrs, Dur};

use crate::model::{Balance, OnMarkedDown, RetryOn, RouteKind, TlsVersion, XdpAction, XdpMode};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Front listeners, certificates, local health path, ACME forwarding.
    pub listen: Listen,
    /// Limits on what one client may cost.
    #[serde(default)]
    pub limits: Limits,
    /// Timeouts towards fleets and for tunnels.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Path patterns and the pool each one is proxied to, tried in order.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Pools of fleet servers, by name.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
    /// The admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The XDP fast path.
    #[serde(default)]
    pub xdp: XdpConfig,
    /// Leaving a group of ingresses; announced addresses.
    #[serde(default)]
    pub group: GroupConfig,
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// TLS listener address(es), e.g. `"0.0.0.0:443"` or a list.
    pub https: Addrs,
    /// Plain HTTP listener address(es) for ACME HTTP-01; none when absent.
    #[serde(default)]
    pub http: Option<Addrs>,
    /// `"1.2"` (default) or `"1.3"`.
    #[serde(default = "default_tls_min")]
    pub tls_min_version: TlsVersion,
    /// Directory of PEM bundles (chain + key), chosen by SNI. Relative to the config file.
    pub certs: PathBuf,
    /// File stem of the bundle served when SNI matches none (default: the first by name).
    #[serde(default)]
    pub default_cert: Option<String>,
    /// Path answered `200 ok` locally, for monitors.
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// Where `/.well-known/acme-challenge/*` on the HTTP listener is forwarded.
    #[serde(default = "default_acme_upstream")]
    pub acme_upstream: String,
}

fn default_tls_min() -> TlsVersion {
    TlsVersion::Tls12
}
fn default_health_path() -> String {
    "/haproxy-health".to_owned()
}
fn default_acme_upstream() -> String {
    "127.0.0.1:8888".to_owned()
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Client connections held at once (TLS front and HTTP front together); more are closed at accept.
    pub max_connections: usize,
    /// Connections kept for loopback peers beyond `max_connections` (a
    /// local health check, keepalived's tracked one: remote clients that
    /// take every slot cannot fail it). Read at start.
    pub local_reserve: usize,
    /// Largest request head accepted; more answers 431.
    pub max_header_bytes: usize,
    /// Most header lines accepted; more answers 431.
    pub max_headers: usize,
    /// From TCP accept through the TLS handshake to the end of the request head.
    pub header_timeout: Dur,
    /// On SIGTERM: how long live calls may go on (listeners already closed)
    /// before each gets a WebSocket Close 1001.
    pub shutdown_grace: Dur,
    /// After a binary upgrade: how long the old process keeps its calls
    /// (the new one takes every new call) before each gets a Close 1001.
    pub upgrade_grace: Dur,
    /// How long a new binary may take to say ready before the upgrade is
    /// abandoned (the old process serving on).
    pub upgrade_timeout: Dur,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            local_reserve: 0,
            max_header_bytes: 16_384,
            max_headers: 100,
            header_timeout: Dur(Duration::from_secs(10)),
            shutdown_grace: Dur(Duration::from_secs(60)),
            upgrade_grace: Dur(Duration::from_secs(3600)),
            upgrade_timeout: Dur(Duration::from_secs(30)),
        }
    }
}

/// `[timeouts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake to a fleet server.
    pub connect: Dur,
    /// From sending the upgrade request to the end of the fleet's response head.
    pub upgrade_response: Dur,
    /// A tunnel with no byte either way for this long is closed.
    pub tunnel_idle: Dur,
    /// An `http` route's keep-alive connection with no request in flight is
    /// closed after this long (a later head, once begun, has `header_timeout`).
    pub keepalive_idle: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Dur(Duration::from_secs(2)),
            upgrade_response: Dur(Duration::from_secs(5)),
            tunnel_idle: Dur(Duration::from_secs(3600)),
            keepalive_idle: Dur(Duration::from_secs(60)),
        }
    }
}

/// `[[routes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path pattern; `{name}` matches one path segment, e.g. `/ws/{bot_id}`;
    /// a last segment `*` matches any rest (`/api/*`).
    pub path: String,
    /// Pool the matching requests are proxied to.
    pub pool: String,
    /// `websocket` (default: upgrades only, anything else 400) or `http`
    /// (ordinary requests proxied with keep-alive, and upgrades too).
    #[serde(default)]
    pub kind: RouteKind,
    /// Only requests for this Host (port ignored, case-insensitive).
    #[serde(default)]
    pub host: Option<String>,
}

/// `tls = false` (plain TCP to the servers) or a `[pools.NAME.tls]` table.
#[derive(Debug, Clone)]
pub enum PoolTlsSetting {
    Enabled(bool),
    Settings(PoolTls),
}

impl<'de> Deserialize<'de> for PoolTlsSetting {
    /// A bool or the table, with the table's own error (an unknown key, a
    /// bad version, at its place) rather than "no variant matched".
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Setting;
        impl<'de> serde::de::Visitor<'de> for Setting {
            type Value = PoolTlsSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or a table")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(PoolTlsSetting::Enabled(b))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                PoolTls::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(PoolTlsSetting::Settings)
            }
        }
        d.deserialize_any(Setting)
    }
}

impl Default for PoolTlsSetting {
    fn default() -> Self {
        PoolTlsSetting::Settings(PoolTls::default())
    }
}

impl PoolTlsSetting {
    /// The TLS settings, or None for plain TCP.
    pub fn settings(&self) -> Option<PoolTls> {
        match self {
            PoolTlsSetting::Enabled(false) => None,
            PoolTlsSetting::Enabled(true) => Some(PoolTls::default()),
            PoolTlsSetting::Settings(t) => Some(t.clone()),
        }
    }
}

/// A server written inline: `"host[:port]"` or a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ServerSpec {
    Addr(String),
    Table(ServerTable),
}

/// A server as a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTable {
    /// `host[:port]`, port 443 by default.
    pub addr: String,
    /// Name shown in `stat` and metrics (default: the address).
    #[serde(default)]
    pub name: Option<String>,
    /// TLS server name (default: the pool's `tls.sni`, else the host).
    #[serde(default)]
    pub sni: Option<String>,
    /// Overrides the pool's `maxconn`.
    #[serde(default)]
    pub maxconn: Option<u32>,
}

/// `[pools.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Only `"leastconn"` for now.
    #[serde(default = "default_balance")]
    pub balance: Balance,
    /// Per-server limit on tunnels (one call per fleet worker).
    #[serde(default = "default_maxconn")]
    pub maxconn: u32,
    /// File with one server per line: `ADDR [name=NAME] [sni=HOST] [maxconn=N]`. Relative to the config file.
    #[serde(default)]
    pub servers_file: Option<PathBuf>,
    /// The list `servers_file` starts as: read while `servers_file` does not
    /// exist (the first runtime change writes it). Relative to the config file.
    #[serde(default)]
    pub servers_seed: Option<PathBuf>,
    /// Servers written inline.
    #[serde(default)]
    pub servers: Vec<ServerSpec>,
    /// Failures retried on another server before anything reached the carrier.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Most retries per call (attempts = retries + 1).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// TLS towards the servers (`tls = false` for plain TCP).
    #[serde(default)]
    pub tls: PoolTlsSetting,
    /// For `balance = "uri-hash"`: `"path"` (without query) or a route parameter such as `"bot_id"`.
    #[serde(default = "default_hash_key")]
    pub hash_key: String,
    /// For `balance = "cookie"`: the cookie's name.
    #[serde(default = "default_cookie")]
    pub cookie: String,
    /// A server back UP ramps its share linearly over this window.
    #[serde(default)]
    pub slowstart: Option<Dur>,
    /// `"keep"` (default) or `"shutdown-sessions"`.
    #[serde(default)]
    pub on_marked_down: OnMarkedDown,
    /// The active health check.
    #[serde(default)]
    pub check: CheckConfig,
}

fn default_balance() -> Balance {
    Balance::Leastconn
}
fn default_hash_key() -> String {
    "path".to_owned()
}
fn default_cookie() -> String {
    "SERVERID".to_owned()
}
fn default_maxconn() -> u32 {
    16
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnFailure,
        RetryOn::EmptyResponse,
        RetryOn::ResponseTimeout,
        RetryOn::TooManyRequests,
    ]
}
fn default_retries() -> u32 {
    3
}

/// `[pools.NAME.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolTls {
    /// Verify the server's certificate chain and name.
    pub verify: bool,
    /// PEM file of trusted roots (default: the system's roots). Relative to the config file.
    pub ca: Option<PathBuf>,
    /// TLS server name for every server of the pool (default: each server's host).
    pub sni: Option<String>,
    /// Versions offered to the servers (default both; a server that speaks
    /// 1.3 gets it, whatever the order). `["1.2"]` lets a fleet resume a
    /// session from its ticket or session ID without a key exchange (TLS
    /// 1.3 resumption still does one): cheaper set-ups, at the price of
    /// forward secrecy for every TLS 1.2 session the fleet keeps (whoever
    /// gets its ticket key or session cache reads the full handshake's call
    /// and every resumption).
    pub versions: Vec<crate::model::TlsVersion>,
}

impl Default for PoolTls {
    fn default() -> Self {
        Self {
            verify: true,
            ca: None,
            sni: None,
            versions: vec![crate::model::TlsVersion::Tls13, crate::model::TlsVersion::Tls12],
        }
    }
}

/// `[pools.NAME.check]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckConfig {
    /// HTTP method of the probe.
    pub method: String,
    /// Path of the probe.
    pub path: String,
    /// Host header (default: the server's host).
    pub host: Option<String>,
    /// Time between probes.
    pub interval: Dur,
    /// A probe not answered within this fails.
    pub timeout: Dur,
    /// Consecutive failed probes that take a server DOWN.
    pub fall: u32,
    /// Consecutive good probes that bring a DOWN server back.
    pub rise: u32,
    /// Regex the status code must match, e.g. `^2` or `^[23]`.
    pub expect_status: String,
    /// JSON pointer to the spare capacity in the body; `""` for liveness-only pools.
    pub capacity: String,
    /// Probe on the connection the last probe used while the fleet keeps
    /// it open (HTTP keep-alive), instead of a new TCP + TLS connection
    /// each time: far less CPU at short intervals and many fleets, but a
    /// probe then no longer proves the fleet accepts new connections.
    pub reuse_connection: bool,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            method: "GET".to_owned(),
            path: "/health/fleet".to_owned(),
            host: None,
            interval: Dur(Duration::from_secs(1)),
            timeout: Dur(Duration::from_millis(800)),
            fall: 2,
            rise: 2,
            expect_status: "^2".to_owned(),
            capacity: "/fleet_available".to_owned(),
            reuse_connection: false,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Unix socket of the admin API (mode 0600).
    pub socket: PathBuf,
    /// Optional TCP address for the admin API, `/metrics` and `/stats`;
    /// a non-loopback address needs `token`, and there only reads are served.
    pub listen: Option<SocketAddr>,
    /// Bearer token: required for any read from a non-loopback peer, and
    /// for changes over TCP (from loopback only).
    pub token: Option<String>,
    /// Group (name or id) whose members may use the unix socket, changes
    /// included: the socket is then mode 0660 and owned by it.
    pub group: Option<String>,
    /// Bearer token that lets a dialer, from any address, pick a fleet
    /// (`GET` or `POST /api/pick/{pool}`) and nothing else.
    pub pick_token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/ingress/admin.sock"),
            listen: None,
            token: None,
            group: None,
            pick_token: None,
        }
    }
}

/// `[xdp]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    /// Carrier-facing interface; required unless `mode = "off"`.
    pub interface: Option<String>,
    /// `auto` (default), `native`, `skb` or `off`.
    pub mode: XdpMode,
    /// `drop` (default) or `rst`.
    pub action: XdpAction,
    /// Listener ports whose SYNs may be shed (default: the https listen ports).
    pub ports: Vec<u16>,
    /// Carrier source prefixes, e.g. `["192.0.2.0/24", "2001:db8::/32"]` (default: all sources).
    pub carriers: Vec<String>,
    /// How long shedding holds without the daemon renewing it.
    pub lease: Dur,
    /// bpffs directory the maps are pinned in.
    pub pin_path: PathBuf,
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self {
            interface: None,
            mode: XdpMode::Auto,
            action: XdpAction::Drop,
            ports: Vec::new(),
            carriers: Vec::new(),
            lease: Dur(Duration::from_secs(3)),
            pin_path: PathBuf::from(ingress_common::PIN_DIR),
        }
    }
}

#[cfg(test)]
mod tests;
