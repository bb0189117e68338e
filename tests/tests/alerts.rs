//! The shipped alert rules (`ops/prometheus/alerts.yml`): their own unit
//! tests pass under `promtool test rules`, and every metric they name is on
//! a live `/metrics`, with the figures they read: descriptors, whether XDP
//! is expected, whether the last reload was refused.

use std::{collections::BTreeSet, path::Path, process::Command};

use ingress_tests::{Fleet, Ingress, Pki, TestDir, config, metric};

fn ops(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ops/prometheus")
        .join(rel)
}

/// The metric names an expression file mentions (`ingress_…`, `process_…`).
fn metric_names(rules: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in rules.lines().filter(|l| l.trim_start().starts_with("expr:")) {
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let rest = &line[i..];
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
    out
}

#[test]
fn alert_rules_pass_their_promtool_tests() {
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(ops("alerts.test.yml"))
        .output()
        .expect("promtool (Debian package prometheus, installed by cargo xtask setup)");
    assert!(
        out.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
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
    let metrics = ingress.metrics().await;

    let rules = std::fs::read_to_string(ops("alerts.yml")).unwrap();
    let names = metric_names(&rules);
    assert!(names.len() >= 9, "{names:?}");
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
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
