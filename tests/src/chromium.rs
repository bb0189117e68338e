//! Headless Chromium (Debian's) for the stats page tests, its whole process
//! group killed afterwards.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Runs headless Chromium (Debian's) on `url` with `extra` flags; returns
/// what it printed. Its whole process group is killed afterwards, so no
/// helper process outlives the test or holds a pipe open.
pub fn headless_chromium(profile: &Path, extra: &[String], url: &str) -> String {
    use std::os::unix::process::CommandExt as _;
    let out_path = profile.with_extension("stdout");
    let out = std::fs::File::create(&out_path).expect("chromium stdout file");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,700",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(std::fs::File::create(profile.with_extension("stderr")).expect("chromium stderr file"))
        .process_group(0)
        .spawn()
        .expect("chromium (installed by cargo xtask setup)");
    let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    std::fs::read_to_string(&out_path).unwrap_or_default()
}
