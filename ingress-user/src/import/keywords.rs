//! Import: what each HAProxy keyword that gives no setting is reported as —
//! not needed (the ingress does it anyway, or it is irrelevant) or not
//! translated (no equivalent), with the reason — and which keywords the
//! frontend and backend readers translate.

use super::Verdict::{self, NotNeeded, NotTranslated};

const LOGGING: &str = "the ingress logs structured lines per call to the journal (INGRESS_LOG_FORMAT=journald, as its unit sets) or stderr";
const STATS: &str = "replaced by the admin API: `ingress ctl stat`, and /stats, /metrics on `[admin] listen`";

/// Keywords reported wherever they are, with their verdict and reason.
pub(super) fn fixed(keyword: &str) -> Option<(Verdict, &'static str)> {
    let k = keyword;
    Some(match k {
        "mode http" => (NotNeeded, "the ingress proxies HTTP/1.1 and WebSocket"),
        "mode tcp" => (NotTranslated, "the ingress proxies HTTP/1.1 and WebSocket only"),
        "log"
        | "log-format"
        | "log-tag"
        | "log-send-hostname"
        | "option httplog"
        | "option tcplog"
        | "option dontlognull"
        | "option log-health-checks"
        | "option log-separate-errors"
        | "option logasap"
        | "option dontlog-normal"
        | "error-log-format" => (NotTranslated, LOGGING),
        "option forwardfor" => (
            NotNeeded,
            "the ingress sets X-Forwarded-For, -Proto and -Port itself (and drops what the client sent)",
        ),
        "option http-server-close"
        | "option http-keep-alive"
        | "option httpclose"
        | "option http-pretend-keepalive"
        | "option http-no-delay"
        | "http-reuse" => (
            NotNeeded,
            "the ingress keeps client and fleet connections alive on kind = \"http\" routes; a call is a tunnel",
        ),
        "option redispatch" => (NotNeeded, "a retry always goes to another server"),
        "option http-use-htx"
        | "option contstats"
        | "option socket-stats"
        | "option independent-streams"
        | "option http-ignore-probes"
        | "option splice-auto"
        | "option splice-request"
        | "option splice-response" => (NotNeeded, "no equivalent needed"),
        "daemon" | "master-worker" | "pidfile" | "nbproc" => (
            NotNeeded,
            "systemd runs the daemon (Type=notify); `ingress ctl upgrade` replaces its binary without dropping calls",
        ),
        "user" | "group" | "uid" | "gid" => (NotNeeded, "the package runs the daemon as its own user"),
        "chroot" => (NotTranslated, "the systemd unit confines the daemon"),
        "nbthread" | "cpu-map" | "thread-groups" => (NotTranslated, "the daemon runs one worker thread per CPU"),
        "ulimit-n" | "fd-hard-limit" => (NotTranslated, "set LimitNOFILE in the systemd unit"),
        "stats socket" | "stats timeout" | "stats maxconn" | "stats enable" | "stats uri" | "stats refresh"
        | "stats auth" | "stats realm" | "stats admin" | "stats hide-version" | "stats show-legends"
        | "stats show-node" | "stats bind-process" | "stats scope" | "stats show-desc" => (NotTranslated, STATS),
        "ssl-default-bind-ciphers"
        | "ssl-default-bind-ciphersuites"
        | "ssl-default-server-ciphers"
        | "ssl-default-server-ciphersuites"
        | "ssl-default-bind-curves"
        | "ssl-default-bind-sigalgs" => (NotTranslated, "the ingress uses rustls's safe default cipher suites"),
        "ssl-default-server-options" => (NotTranslated, "set [pools.NAME.tls] per pool"),
        "tune.ssl.default-dh-param" => (NotNeeded, "rustls negotiates ECDHE only"),
        "tune.bufsize" => (
            NotTranslated,
            "limits.max_header_bytes bounds a request head (default 16384)",
        ),
        "server-state-file" | "server-state-base" | "load-server-state-from-file" => (
            NotNeeded,
            "servers keep their state across a reload; a servers_file keeps drain and maint",
        ),
        "node" | "description" | "enabled" => (NotNeeded, "informational"),
        "errorfile" | "errorloc" | "errorloc302" | "errorloc303" | "http-error" | "errorfiles" => {
            (NotTranslated, "the ingress answers its own errors (short text bodies)")
        }
        "compression" | "filter" => (NotTranslated, "the ingress does not change bodies"),
        "capture" | "declare capture" | "unique-id-format" | "unique-id-header" => {
            (NotTranslated, "the call log line names bot_id, pool, server and status")
        }
        "stick-table" | "stick" => (
            NotTranslated,
            "no stick tables: balance = \"cookie\" or \"uri-hash\" keeps a client on one server",
        ),
        _ if k.starts_with("tcp-request") || k.starts_with("tcp-response") => (NotTranslated, "no TCP-level rules"),
        "rate-limit" => (
            NotTranslated,
            "limits.max_connections caps connections; the XDP program sheds SYNs when no fleet has room",
        ),
        "fullconn" => (NotTranslated, "the ingress caps each server at its maxconn"),
        "hash-balance-factor" => (NotTranslated, "uri-hash keeps keys on their server while it is UP"),
        "option allbackups" => (NotTranslated, "backup servers are not translated"),
        "email-alert" => (NotTranslated, "alert on ingress_server_state in /metrics"),
        "lua-load" | "lua-prepend-path" | "setenv" | "presetenv" | "resetenv" | "unsetenv" => {
            (NotTranslated, "no equivalent")
        }
        _ if k.starts_with("tune.") => (NotTranslated, "global tuning has no equivalent"),
        _ => return None,
    })
}

/// Keywords a frontend's reader translates (or reports itself).
pub(super) fn frontend_side(keyword: &str) -> bool {
    matches!(
        keyword,
        "bind"
            | "acl"
            | "use_backend"
            | "default_backend"
            | "monitor-uri"
            | "maxconn"
            | "timeout client"
            | "timeout http-request"
            | "timeout http-keep-alive"
            | "timeout client-fin"
            | "redirect"
    ) || keyword.starts_with("http-request ")
        || keyword.starts_with("http-response ")
        || keyword.starts_with("http-after-response ")
}

/// Keywords a backend's reader translates (or reports itself).
pub(super) fn backend_side(keyword: &str) -> bool {
    matches!(
        keyword,
        "balance"
            | "hash-type"
            | "cookie"
            | "server"
            | "default-server"
            | "server-template"
            | "option httpchk"
            | "option ssl-hello-chk"
            | "option tcp-check"
            | "option persist"
            | "option prefer-last-server"
            | "option abortonclose"
            | "retries"
            | "retry-on"
            | "slowstart"
            | "timeout connect"
            | "timeout server"
            | "timeout tunnel"
            | "timeout check"
            | "timeout queue"
            | "timeout server-fin"
    ) || keyword.starts_with("http-check ")
        || keyword.starts_with("tcp-check ")
}
