//! Logs as an operator reads them, from a real systemd-journald: with
//! `INGRESS_LOG_FORMAT=journald` a routed call has a line when it starts
//! (bot, pool, server, handshake/connect/upgrade times, TLS version, SNI)
//! and one when it ends (who ended it); local refusals are logged with their
//! reason, a few a second; and `journalctl -p warning` shows a fleet going
//! DOWN and none of the routine lines.
//!
//! journald runs in a mount namespace of its own (a tmpfs on /run, its
//! journal files bound into the test's directory); the daemon is started in
//! that namespace, so its journal socket is this journald's.

use std::{collections::BTreeMap, process::Command, time::Duration};

use ingress_tests::{Fleet, Ingress, Pki, TestDir, client, config, echo};

/// A journal entry's fields.
type Entry = BTreeMap<String, serde_json::Value>;

fn field<'a>(e: &'a Entry, k: &str) -> &'a str {
    e.get(k).and_then(|v| v.as_str()).unwrap_or("")
}

/// Kills the namespace's journald when the test ends, passed or not.
struct Journald(std::path::PathBuf);

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// `journalctl -D DIR -o json [-p PRIO]`, as entries.
fn entries(dir: &std::path::Path, priority: Option<&str>) -> Vec<Entry> {
    let mut cmd = Command::new("journalctl");
    cmd.arg("-D").arg(dir).args(["-o", "json", "--no-pager"]);
    if let Some(p) = priority {
        cmd.args(["-p", p]);
    }
    let out = cmd.output().expect("journalctl (Debian's systemd)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &Entry| field(e, "SYSLOG_IDENTIFIER") == "ingress")
        .collect()
}

/// Waits until the journal's entries give `found` something (journald
/// writes as it receives; this bounds the read, it does not pace it).
async fn wait_journal<T>(dir: &std::path::Path, what: &str, found: impl Fn(Vec<Entry>) -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = found(entries(dir, None)) {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no journal entry {what}: {:#?}",
            entries(dir, None).iter().rev().take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for an entry matching `want`.
async fn wait_entry(dir: &std::path::Path, what: &str, want: impl Fn(&Entry) -> bool) -> Entry {
    wait_journal(dir, what, |entries| entries.into_iter().find(&want)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_has_call_lines_refusals_and_priorities() {
    let dir = TestDir::new("journal");
    let pki = Pki::new(&dir);
    let f1 = Fleet::start(&dir, &pki, "fleet1", 4);
    // /run/log in the namespace; journald writes under its journal/.
    let run_log = dir.path("run-log");
    std::fs::create_dir_all(&run_log).unwrap();
    let journal = run_log.join("journal");
    let pid_file = dir.path("journald.pid");
    let _journald = Journald(pid_file.clone());
    // The journald binary's readiness is its socket; the daemon starts after it.
    let script = format!(
        "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/systemd/journal /run/log; \
         mount --bind '{run_log}' /run/log; \
         /lib/systemd/systemd-journald >'{log}' 2>&1 & echo $! >'{pid}'; \
         for i in $(seq 200); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done; \
         exec \"$@\"",
        run_log = run_log.display(),
        log = dir.path("journald.log").display(),
        pid = pid_file.display(),
    );
    let prefix: Vec<String> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "bash",
        "-c",
        &script,
        "journald-ns",
    ]
    .map(str::to_owned)
    .to_vec();
    let cfg = config(&dir, &pki, &[("fleet1", f1.https)], "", "");
    let ingress = Ingress::start_prefixed(&dir, &cfg, &prefix, &[("INGRESS_LOG_FORMAT", "journald")]);
    ingress.wait_state(&["fleet1"], "UP").await;

    // A routed call, then its end.
    let mut call = client::connect(ingress.https, "localhost", "/ws/journal-bot", pki.client_tls())
        .await
        .unwrap();
    echo(&mut call, "hello").await.unwrap();
    let routed = wait_entry(&journal, "for the routed call", |e| {
        field(e, "EVENT") == "routed" && field(e, "BOT_ID") == "journal-bot"
    })
    .await;
    assert_eq!(field(&routed, "POOL"), "fleets", "{routed:#?}");
    assert_eq!(field(&routed, "SERVER"), "fleet1");
    assert_eq!(field(&routed, "SNI"), "localhost");
    assert!(field(&routed, "TLS").starts_with("TLSv1."), "{routed:#?}");
    for step in ["HANDSHAKE_MS", "CONNECT_MS", "UPGRADE_MS", "SETUP_MS"] {
        let ms: f64 = field(&routed, step)
            .parse()
            .unwrap_or_else(|_| panic!("{step}: {routed:#?}"));
        assert!(ms > 0.0 && ms < 5000.0, "{step} = {ms}");
    }
    assert_eq!(field(&routed, "PRIORITY"), "5", "info is notice");
    drop(call);
    let ended = wait_entry(&journal, "for the ended call", |e| {
        field(e, "EVENT") == "ended" && field(e, "BOT_ID") == "journal-bot"
    })
    .await;
    assert_eq!(field(&ended, "CLOSED_BY"), "carrier", "{ended:#?}");
    assert_eq!(field(&ended, "STATUS"), "101");

    // Refusals: each with its reason, at most 10 lines a second, and the
    // first line after a cut tells how many were left out.
    let refuse = |i: usize| {
        let (https, tls) = (ingress.https, pki.client_tls());
        async move {
            let Err(e) = client::connect(https, "localhost", &format!("/nope/{i}"), tls).await else {
                panic!("/nope/{i} has no route")
            };
            assert_eq!(e.status(), Some(404), "{e}");
        }
    };
    let flood = std::time::Instant::now();
    futures_util::future::join_all((0..40).map(refuse)).await;
    let seconds = flood.elapsed().as_secs_f64().ceil() + 1.0;
    // A new second's budget, then one more: it carries the count left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    refuse(40).await;
    let told = |lines: &[Entry]| {
        lines.len() as u64
            + lines
                .iter()
                .map(|e| field(e, "LEFT_OUT").parse::<u64>().unwrap_or(0))
                .sum::<u64>()
    };
    let lines = wait_journal(&journal, "telling of 41 refusals", |entries| {
        let lines: Vec<Entry> = entries
            .into_iter()
            .filter(|e| field(e, "MESSAGE") == "request refused")
            .collect();
        (told(&lines) >= 41).then_some(lines)
    })
    .await;
    assert_eq!(
        told(&lines),
        41,
        "every refusal logged or counted as left out: {lines:#?}"
    );
    assert!(
        (lines.len() as f64) <= 10.0 * seconds + 1.0 && lines.len() < 41,
        "{} lines for 41 refusals over about {seconds} s",
        lines.len()
    );
    assert_eq!(
        ingress_tests::metric(&ingress.metrics().await, "ingress_log_lines_suppressed_total", &[]),
        Some((41 - lines.len()) as f64),
        "the lines left out are counted"
    );
    let refusal = &lines[0];
    assert_eq!(field(refusal, "STATUS"), "404", "{refusal:#?}");
    assert_eq!(field(refusal, "REASON"), "no_route");
    assert!(field(refusal, "CLIENT").starts_with("127.0.0.1:"), "{refusal:#?}");

    // A fleet DOWN is a warning; the routine lines are not.
    f1.control("/health?mode=500").await;
    ingress.wait_state(&["fleet1"], "DOWN").await;
    let down = wait_entry(&journal, "for DOWN", |e| field(e, "TO") == "DOWN").await;
    assert_eq!(field(&down, "PRIORITY"), "4", "{down:#?}");
    let warnings = entries(&journal, Some("warning"));
    assert!(warnings.iter().any(|e| field(e, "TO") == "DOWN"), "{warnings:#?}");
    assert!(
        !warnings
            .iter()
            .any(|e| field(e, "TARGET") == "call" || field(e, "TARGET") == "refused"),
        "call and refusal lines are below warning: {warnings:#?}"
    );
}
