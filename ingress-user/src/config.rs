//! Control path: the TOML configuration, its defaults and its validation.
//! Unknown keys are rejected by serde; values that parse but make no sense
//! are rejected by [`Config::validate`] with the key's name and the reason.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, de};

use crate::{pool::AdminState, routes::RoutePattern};

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

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
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
}

/// One address or a list of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addrs(pub Vec<SocketAddr>);

impl<'de> Deserialize<'de> for Addrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let list = match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        list.iter()
            .map(|s| {
                s.parse::<SocketAddr>()
                    .map_err(|e| de::Error::custom(format!("`{s}` is not an address:port ({e})")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Addrs)
    }
}

/// A duration written as `800ms`, `1s`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| de::Error::custom(format!("`{s}` is not a duration like 800ms, 1s, 1h ({e})")))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Lowest TLS version the front accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
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
    /// Largest request head accepted; more answers 431.
    pub max_header_bytes: usize,
    /// Most header lines accepted; more answers 431.
    pub max_headers: usize,
    /// From TCP accept through the TLS handshake to the end of the request head.
    pub header_timeout: Dur,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_header_bytes: 16_384,
            max_headers: 100,
            header_timeout: Dur(Duration::from_secs(10)),
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
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Dur(Duration::from_secs(2)),
            upgrade_response: Dur(Duration::from_secs(5)),
            tunnel_idle: Dur(Duration::from_secs(3600)),
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

/// What a route proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    #[default]
    Websocket,
    Http,
}

/// How a pool picks a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Fewest tunnels held by the ingress, then most effective capacity.
    Leastconn,
    /// In turn.
    Roundrobin,
    /// Consistent (rendezvous) hashing of `hash_key`: adding or removing one
    /// of N servers moves about 1/N of the keys.
    #[serde(rename = "uri-hash")]
    UriHash,
    /// Sticky: new clients by least-conn, pinned with a cookie.
    Cookie,
}

/// What happens to a server's tunnels when its health check takes it DOWN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum OnMarkedDown {
    /// Live calls carry on (default).
    #[default]
    #[serde(rename = "keep")]
    Keep,
    /// Live calls are cut at once.
    #[serde(rename = "shutdown-sessions")]
    ShutdownSessions,
}

/// `tls = false` (plain TCP to the servers) or a `[pools.NAME.tls]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PoolTlsSetting {
    Enabled(bool),
    Settings(PoolTls),
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

/// What makes an upgrade attempt retried on another server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub enum RetryOn {
    /// TCP connect or TLS handshake failed or timed out.
    #[serde(rename = "conn-failure")]
    ConnFailure,
    /// The server closed before sending any byte of a response.
    #[serde(rename = "empty-response")]
    EmptyResponse,
    /// No complete response head within `timeouts.upgrade_response`.
    #[serde(rename = "response-timeout")]
    ResponseTimeout,
    /// The fleet answered 429 (all its workers busy).
    #[serde(rename = "429")]
    TooManyRequests,
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
}

impl Default for PoolTls {
    fn default() -> Self {
        Self {
            verify: true,
            ca: None,
            sni: None,
        }
    }
}

/// `[pools.NAME.check]`.
#[derive(Debug, Clone, Deserialize)]
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
    /// Bearer token required from non-loopback peers.
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/ingress/admin.sock"),
            listen: None,
            token: None,
        }
    }
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, else generic (SKB) mode.
    Auto,
    Native,
    Skb,
    /// No XDP: shedding in userspace only.
    Off,
}

/// What shedding does to a carrier SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAction {
    Drop,
    Rst,
}

/// `[xdp]`.
#[derive(Debug, Clone, Deserialize)]
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

/// A server after parsing, from either source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerDef {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub sni: Option<String>,
    pub maxconn: Option<u32>,
}

impl ServerDef {
    /// `host:port` as written for connecting (IPv6 in brackets).
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Splits `host[:port]` (IPv6 as `[addr]:port`), port 443 by default.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty address".to_owned());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| format!("`{s}`: missing `]`"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("`{s}`: expected `:port` after `]`"))?,
                ),
            ),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return Err(format!("`{s}`: write IPv6 addresses as [addr]:port")),
            None => (s, None),
        }
    };
    // `[`, `]` and `#` could not be written back to a servers_file (found by fuzzing).
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | '[' | ']' | '#'))
    {
        return Err(format!("`{s}`: bad host"));
    }
    let port = match port {
        None => 443,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{s}`: bad port `{p}`"))?,
    };
    Ok((host.to_owned(), port))
}

/// Parses a `servers_file`: one `ADDR [name=NAME] [sni=HOST] [maxconn=N]
/// [state=drain|maint]` per line; `#` starts a comment; blank lines are ignored.
pub fn parse_servers_file(text: &str) -> Result<Vec<(ServerDef, AdminState)>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let lineno = i + 1;
        let mut words = line.split_whitespace();
        let addr = words.next().unwrap_or_default();
        let (host, port) = parse_host_port(addr).map_err(|e| format!("line {lineno}: {e}"))?;
        let mut def = ServerDef {
            name: addr.to_owned(),
            host,
            port,
            sni: None,
            maxconn: None,
        };
        let mut state = AdminState::Ready;
        for word in words {
            let (k, v) = word
                .split_once('=')
                .ok_or_else(|| format!("line {lineno}: `{word}` is not key=value"))?;
            match k {
                "name" => def.name = v.to_owned(),
                "sni" => def.sni = Some(v.to_owned()),
                "maxconn" => {
                    def.maxconn = Some(
                        v.parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| format!("line {lineno}: maxconn `{v}` is not a positive integer"))?,
                    )
                }
                "state" => {
                    state = AdminState::parse(v)
                        .ok_or_else(|| format!("line {lineno}: state `{v}` is not ready, drain or maint"))?
                }
                other => {
                    return Err(format!(
                        "line {lineno}: unknown key `{other}` (expected name, sni, maxconn, state)"
                    ));
                }
            }
        }
        out.push((def, state));
    }
    Ok(out)
}

/// Writes servers in the `servers_file` format (inverse of [`parse_servers_file`]).
pub fn render_servers_file(servers: &[(ServerDef, AdminState)]) -> String {
    let mut out = String::new();
    for (s, state) in servers {
        out.push_str(&s.addr());
        if s.name != s.addr() {
            out.push_str(&format!(" name={}", s.name));
        }
        if let Some(sni) = &s.sni {
            out.push_str(&format!(" sni={sni}"));
        }
        if let Some(m) = s.maxconn {
            out.push_str(&format!(" maxconn={m}"));
        }
        if *state != AdminState::Ready {
            out.push_str(&format!(" state={}", state.as_str()));
        }
        out.push('\n');
    }
    out
}

impl Config {
    /// Reads, parses and validates a file; relative paths inside it are made
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without touching the file system.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.listen.certs);
        for pool in self.pools.values_mut() {
            if let Some(f) = pool.servers_file.as_mut() {
                fix(f);
            }
            if let PoolTlsSetting::Settings(t) = &mut pool.tls
                && let Some(ca) = t.ca.as_mut()
            {
                fix(ca);
            }
        }
        if self.admin.socket.is_relative() {
            self.admin.socket = base.join(&self.admin.socket);
        }
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.https.0.is_empty() {
            return Err(invalid("listen.https", "at least one address is needed"));
        }
        if !self.listen.health_path.starts_with('/') {
            return Err(invalid("listen.health_path", "must start with /"));
        }
        parse_host_port(&self.listen.acme_upstream).map_err(|e| invalid("listen.acme_upstream", e))?;
        if self.limits.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if self.limits.max_header_bytes < 256 {
            return Err(invalid("limits.max_header_bytes", "must be at least 256"));
        }
        if self.limits.max_headers == 0 {
            return Err(invalid("limits.max_headers", "must be at least 1"));
        }
        for (key, d) in [
            ("limits.header_timeout", self.limits.header_timeout),
            ("timeouts.connect", self.timeouts.connect),
            ("timeouts.upgrade_response", self.timeouts.upgrade_response),
            ("timeouts.tunnel_idle", self.timeouts.tunnel_idle),
        ] {
            if d.0.is_zero() {
                return Err(invalid(key, "must be more than 0"));
            }
        }
        let mut seen_paths = BTreeSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            RoutePattern::parse(&route.path).map_err(|e| invalid(format!("{key}.path"), e))?;
            if !seen_paths.insert((route.host.clone(), route.path.clone())) {
                return Err(invalid(
                    format!("{key}.path"),
                    format!("`{}` is listed twice", route.path),
                ));
            }
            if !self.pools.contains_key(&route.pool) {
                return Err(invalid(
                    format!("{key}.pool"),
                    format!("no pool named `{}`", route.pool),
                ));
            }
        }
        for (name, pool) in &self.pools {
            self.validate_pool(name, pool)?;
        }
        if let Some(a) = self.admin.listen
            && !a.ip().is_loopback()
            && self.admin.token.as_deref().is_none_or(str::is_empty)
        {
            return Err(invalid(
                "admin.listen",
                format!("{a} is not a loopback address: set admin.token to expose the read-only API there"),
            ));
        }
        if self.xdp.mode != XdpMode::Off && self.xdp.interface.is_none() {
            return Err(invalid("xdp.interface", "required unless mode = \"off\""));
        }
        for (i, c) in self.xdp.carriers.iter().enumerate() {
            crate::xdp::parse_prefix(c).map_err(|e| invalid(format!("xdp.carriers[{i}]"), e))?;
        }
        if self.xdp.lease.0 < Duration::from_millis(500) {
            return Err(invalid("xdp.lease", "must be at least 500ms"));
        }
        Ok(())
    }

    fn validate_pool(&self, name: &str, pool: &PoolConfig) -> Result<(), ConfigError> {
        let key = format!("pools.{name}");
        if pool.maxconn == 0 {
            return Err(invalid(format!("{key}.maxconn"), "must be at least 1"));
        }
        if pool.cookie.is_empty()
            || !pool
                .cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                format!("{key}.cookie"),
                "a cookie name: letters, digits, _ or -",
            ));
        }
        if pool.balance == Balance::UriHash && pool.hash_key != "path" {
            let used = self
                .routes
                .iter()
                .filter(|r| r.pool == name)
                .all(|r| r.path.contains(&format!("{{{}}}", pool.hash_key)));
            if !used {
                return Err(invalid(
                    format!("{key}.hash_key"),
                    format!(
                        "`{}` is neither \"path\" nor a parameter of every route to this pool",
                        pool.hash_key
                    ),
                ));
            }
        }
        let check = &pool.check;
        if check.fall == 0 || check.rise == 0 {
            return Err(invalid(format!("{key}.check"), "fall and rise must be at least 1"));
        }
        if check.interval.0.is_zero() || check.timeout.0.is_zero() {
            return Err(invalid(
                format!("{key}.check"),
                "interval and timeout must be more than 0",
            ));
        }
        if !check.path.starts_with('/') {
            return Err(invalid(format!("{key}.check.path"), "must start with /"));
        }
        if check.method.is_empty() || !check.method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid(
                format!("{key}.check.method"),
                "must be an upper-case HTTP method",
            ));
        }
        regex::Regex::new(&check.expect_status)
            .map_err(|e| invalid(format!("{key}.check.expect_status"), e.to_string()))?;
        if !check.capacity.is_empty() && !check.capacity.starts_with('/') {
            return Err(invalid(
                format!("{key}.check.capacity"),
                "a JSON pointer starts with / (or is \"\" for liveness-only)",
            ));
        }
        let servers = self.pool_servers(name, pool)?;
        let mut names = BTreeSet::new();
        for s in &servers {
            if !names.insert(s.name.clone()) {
                return Err(invalid(
                    format!("{key}.servers"),
                    format!("server name `{}` is used twice", s.name),
                ));
            }
        }
        Ok(())
    }

    /// Every server of a pool: inline ones, then the `servers_file`'s.
    pub fn pool_servers(&self, name: &str, pool: &PoolConfig) -> Result<Vec<ServerDef>, ConfigError> {
        Ok(self
            .pool_servers_with_origin(name, pool)?
            .into_iter()
            .map(|(d, _, _)| d)
            .collect())
    }

    /// Every server of a pool with its operator state and where it is written.
    pub fn pool_servers_with_origin(
        &self,
        name: &str,
        pool: &PoolConfig,
    ) -> Result<Vec<(ServerDef, AdminState, crate::state::Origin)>, ConfigError> {
        let key = format!("pools.{name}");
        let mut out = Vec::new();
        for (i, spec) in pool.servers.iter().enumerate() {
            let def = match spec {
                ServerSpec::Addr(a) => {
                    let (host, port) = parse_host_port(a).map_err(|e| invalid(format!("{key}.servers[{i}]"), e))?;
                    ServerDef {
                        name: a.clone(),
                        host,
                        port,
                        sni: None,
                        maxconn: None,
                    }
                }
                ServerSpec::Table(t) => {
                    let (host, port) =
                        parse_host_port(&t.addr).map_err(|e| invalid(format!("{key}.servers[{i}].addr"), e))?;
                    if t.maxconn == Some(0) {
                        return Err(invalid(format!("{key}.servers[{i}].maxconn"), "must be at least 1"));
                    }
                    ServerDef {
                        name: t.name.clone().unwrap_or_else(|| t.addr.clone()),
                        host,
                        port,
                        sni: t.sni.clone(),
                        maxconn: t.maxconn,
                    }
                }
            };
            out.push((def, AdminState::Ready, crate::state::Origin::Inline));
        }
        if let Some(file) = &pool.servers_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                invalid(
                    format!("{key}.servers_file"),
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            let defs = parse_servers_file(&text)
                .map_err(|e| invalid(format!("{key}.servers_file"), format!("{}: {e}", file.display())))?;
            out.extend(defs.into_iter().map(|(d, s)| (d, s, crate::state::Origin::File)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [listen]
        https = "127.0.0.1:8443"
        certs = "certs"
        [xdp]
        mode = "off"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.health_path, "/haproxy-health");
        assert_eq!(c.listen.tls_min_version, TlsVersion::Tls12);
        assert_eq!(c.limits.max_headers, 100);
        assert_eq!(c.timeouts.connect.0, Duration::from_secs(2));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse(&format!("{MINIMAL}\n[limits]\nmax_conections = 5\n")).unwrap_err();
        assert!(err.to_string().contains("max_conections"), "{err}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = Config::parse(&format!("{MINIMAL}\n[timeouts]\nconnect = \"2 parsecs\"\n")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("2 parsecs") && msg.contains("connect"), "{msg}");
    }

    #[test]
    fn route_to_missing_pool_is_refused() {
        let c = Config::parse(&format!(
            "{MINIMAL}\n[[routes]]\npath = \"/ws/{{bot_id}}\"\npool = \"nope\"\n"
        ))
        .unwrap();
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("routes[0].pool") && msg.contains("nope"), "{msg}");
    }

    #[test]
    fn xdp_needs_interface() {
        let text = MINIMAL.replace("mode = \"off\"", "mode = \"auto\"");
        let msg = Config::parse(&text).unwrap().validate().unwrap_err().to_string();
        assert!(msg.contains("xdp.interface"), "{msg}");
    }

    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../README.md");
        let section = readme.split("## Configuration reference").nth(1).expect("section");
        let example = section
            .split("```toml")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("toml block");
        let c = Config::parse(example).unwrap_or_else(|e| panic!("{e}"));
        c.validate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen.https.0.len(), 2);
        assert_eq!(c.pool_servers("fleets", &c.pools["fleets"]).unwrap().len(), 2);
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("fleet.example.com").unwrap(),
            ("fleet.example.com".into(), 443)
        );
        assert_eq!(parse_host_port("10.0.0.5:8443").unwrap(), ("10.0.0.5".into(), 8443));
        assert_eq!(parse_host_port("[::1]:9000").unwrap(), ("::1".into(), 9000));
        assert_eq!(parse_host_port("[::1]").unwrap(), ("::1".into(), 443));
        assert!(parse_host_port("::1").is_err());
        assert!(parse_host_port("host:0").is_err());
        assert!(parse_host_port("host:http").is_err());
    }

    #[test]
    fn servers_file_round_trips() {
        let text =
            "# fleets\nfleet.example.com\n10.0.0.5:8443 name=fleet2 sni=fleet2.example.com maxconn=20 state=drain\n\n";
        let defs = parse_servers_file(text).unwrap();
        assert_eq!(defs.len(), 2);
        assert_eq!(defs[1].0.name, "fleet2");
        assert_eq!(defs[1].0.maxconn, Some(20));
        assert_eq!(defs[1].1, AdminState::Drain);
        assert_eq!(parse_servers_file(&render_servers_file(&defs)).unwrap(), defs);
    }

    #[test]
    fn servers_file_errors_name_the_line() {
        let err = parse_servers_file("ok.example.com\nbad.example.com weight=3\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("weight"), "{err}");
    }
}
