//! The shipped alert rules (`ops/prometheus/alerts.yml`) and dashboard
//! (`ops/grafana/ingress.json`): the rules' own unit tests pass under
//! `promtool test rules`, the dashboard's queries parse as PromQL, and every
//! metric either names is on a live `/metrics`, with the figures the rules
//! read: descriptors, whether XDP is expected, whether the last reload was
//! refused; and after one call, the set-up and duration histograms.

use std::{collections::BTreeSet, path::Path, process::Command};

use ingress_tests::{Fleet, Ingress, Pki, TestDir, client, config, metric, run_ok};

fn ops(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ops/prometheus")
        .join(rel)
}

/// The metric names an expression mentions (`ingress_…`, `process_…`).
fn names_in(expr: &str, out: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        if (rest.starts_with("ingress_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.insert(rest[..end].to_owned());
            i += end;
        } else {
            i += 1;
        }
    }
}

/// The alert rules' expressions.
fn alert_exprs() -> Vec<String> {
    let rules = std::fs::read_to_string(ops("alerts.yml")).unwrap();
    rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect()
}

/// The dashboard's panel queries, with `$instance` matching any instance.
fn dashboard_exprs() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/grafana/ingress.json");
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a target's expr").replace("$instance", ".*"))
        .collect()
}

#[test]
fn dashboard_queries_are_promql() {
    // promtool parses every query as a recording rule's expression.
    let dir = TestDir::new("dashboard");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard_panel_{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let file = dir.write("dashboard-rules.yml", &rules);
    run_ok(Command::new("promtool").args(["check", "rules"]).arg(&file));
}

#[test]
fn alert_rules_pass_their_promtool_tests() {
    // promtool: Debian's prometheus package, installed by cargo xtask setup.
    run_ok(
        Command::new("promtool")
            .args(["test", "rules"])
            .arg(ops("alerts.test.yml")),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_read_is_exported() {
    let dir = TestDir::new("alerts");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 4);
    let cfg = config(&dir, &pki, &[("fleet1", f1.https)], "", "");
    let ingress = Ingress::start(&dir, &cfg);
    ingress.wait_state(&["fleet1"], "UP").await;
    // A failed TLS handshake, so its labelled counter has a series.
    {
        use tokio::io::AsyncWriteExt as _;
        let mut tcp = tokio::net::TcpStream::connect(ingress.https).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut [0; 64]).await;
    }
    ingress
        .wait_metric(
            "ingress_tls_handshake_errors_total",
            &[],
            std::time::Duration::from_secs(5),
            |v| v >= 1.0,
        )
        .await;
    // One call, routed and ended, so that every histogram has a series.
    let mut call = client::connect(ingress.https, "localhost", "/ws/alerts-1", pki.client_tls())
        .await
        .unwrap();
    ingress_tests::echo(&mut call, "hello").await.unwrap();
    drop(call);
    ingress
        .wait_metric(
            "ingress_call_duration_seconds_count",
            &[("pool", "fleets")],
            std::time::Duration::from_secs(5),
            |v| v >= 1.0,
        )
        .await;
    let metrics = ingress.metrics().await;
    let one = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            metric(&metrics, name, labels),
            Some(1.0),
            "{name} {labels:?}:\n{metrics}"
        );
    };
    one("ingress_tls_handshake_seconds_count", &[]);
    one("ingress_call_setup_seconds_count", &[]);
    let server = [("pool", "fleets"), ("server", "fleet1")];
    one("ingress_fleet_connect_seconds_count", &server);
    one("ingress_upgrade_response_seconds_count", &server);
    one(
        "ingress_server_upgrade_answers_total",
        &[("pool", "fleets"), ("server", "fleet1"), ("status", "101")],
    );
    let setup = metric(&metrics, "ingress_call_setup_seconds_sum", &[]).unwrap();
    let parts = metric(&metrics, "ingress_tls_handshake_seconds_sum", &[]).unwrap()
        + metric(&metrics, "ingress_fleet_connect_seconds_sum", &server).unwrap()
        + metric(&metrics, "ingress_upgrade_response_seconds_sum", &server).unwrap();
    assert!(
        setup >= parts && setup < 5.0,
        "set-up {setup} s covers its steps ({parts} s)"
    );
    assert!(
        metric(&metrics, "ingress_tunnel_bytes_total", &[("direction", "to_server")]).unwrap() > 0.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains("-1\n"),
        "no sentinel values (a report not yet made is an absent series):\n{metrics}"
    );

    let mut names = BTreeSet::new();
    for e in alert_exprs().iter().chain(&dashboard_exprs()) {
        names_in(e, &mut names);
    }
    assert!(names.len() >= 15, "{names:?}");
    // A sample's name, or a family declared with none yet (a labelled
    // counter before its first event, XDP's counters with XDP off).
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split(' ').next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .collect();
    let missing: Vec<_> = names.iter().filter(|n| !exported.contains(n.as_str())).collect();
    assert!(
        missing.is_empty(),
        "named by alerts.yml, not on /metrics: {missing:?}\n{metrics}"
    );

    let get = |m: &str, name: &str| metric(m, name, &[]).unwrap_or_else(|| panic!("{name}:\n{m}"));
    let open = get(&metrics, "process_open_fds");
    assert!(open >= 5.0 && open < get(&metrics, "process_max_fds"), "{metrics}");
    assert!(get(&metrics, "process_resident_memory_bytes") > 1e6);
    assert!(get(&metrics, "process_start_time_seconds") > 1.6e9);
    assert_eq!(
        get(&metrics, "ingress_xdp_configured"),
        0.0,
        "the test config has mode = off"
    );
    assert_eq!(get(&metrics, "ingress_config_last_reload_successful"), 1.0);

    // A refused reload shows, and the next good one clears it.
    let good = std::fs::read_to_string(&ingress.config).unwrap();
    std::fs::write(&ingress.config, "[listen]\nnot toml at all").unwrap();
    let (code, _, _) = ingress.ctl(&["reload"]).await;
    assert_eq!(code, 1, "the broken file is refused");
    assert_eq!(
        get(&ingress.metrics().await, "ingress_config_last_reload_successful"),
        0.0
    );
    std::fs::write(&ingress.config, good).unwrap();
    let (code, out, err) = ingress.ctl(&["reload"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        get(&ingress.metrics().await, "ingress_config_last_reload_successful"),
        1.0
    );
}
