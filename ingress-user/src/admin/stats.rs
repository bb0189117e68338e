//! Control path: the status page at `/stats` (HTML with capacity bars) and
//! the status object behind `/api/status` and `/stats.json`.

use crate::control::Shared;

pub fn status_json(shared: &Shared) -> serde_json::Value {
    let rt = shared.data.runtime.load();
    serde_json::json!({
        "pid": std::process::id(),
        "version": crate::model::VERSION,
        "calls_open": shared.data.calls_open(),
        "leaving": shared.data.is_leaving(),
        "withdrawn": shared.data.is_withdrawn(),
        "generation": rt.generation,
        "xdp": shared.xdp.view(),
        "certs": shared.certs.summary(),
        "pools": rt.pools.iter().map(|p| serde_json::json!({
            "name": p.name.as_ref(),
            "effective": p.total_effective(),
            "servers": p.servers.load().len(),
        })).collect::<Vec<_>>(),
    })
}

pub fn stats_html(shared: &Shared) -> String {
    let rt = shared.data.runtime.load();
    let mut pools = String::new();
    for p in &rt.pools {
        pools.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&p.name),
            p.servers.load().len(),
            p.total_effective(),
            p.no_capacity_total.load(std::sync::atomic::Ordering::Relaxed),
            p.retries_total.load(std::sync::atomic::Ordering::Relaxed),
            p.passed.get(429),
        ));
    }
    let mut rows = String::new();
    for s in rt.server_views() {
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
    let xdp = shared.xdp.view();
    let xdp_line = if xdp.attached {
        let counters: Vec<String> = xdp.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!(
            "XDP attached on {} ({}{}), shedding: <b>{}</b> &middot; {}",
            escape(xdp.interface.as_deref().unwrap_or("?")),
            xdp.mode.as_deref().unwrap_or("?"),
            xdp.mode_reason
                .as_deref()
                .map(|r| format!(": {}", escape(r)))
                .unwrap_or_default(),
            if xdp.shedding { "ON" } else { "off" },
            counters.join(", ")
        )
    } else {
        format!("XDP not attached: {}", escape(xdp.error.as_deref().unwrap_or("-")))
    };
    let m = &shared.data.metrics;
    // One statement per family lookup: a guard held across two lookups of the same family would deadlock.
    let status = |code: &str| {
        m.responses
            .get_or_create(&crate::telemetry::StatusLabel { status: code.into() })
            .get()
    };
    let (ok101, full503, busy429) = (status("101"), status("503"), status("429"));
    let refused = m
        .refused
        .get_or_create(&crate::telemetry::ReasonLabel {
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
