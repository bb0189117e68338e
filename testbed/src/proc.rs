//! A child process that prints one JSON line on stdout when it is ready (the
//! `ingress` daemon, fleet simulators, load generators). Stdout is drained
//! after that line so the child never blocks on a full pipe; stderr goes to
//! a log file or, without one, to ours. Dropping a `Proc` stops it (SIGTERM,
//! SIGKILL after 10 s) and, during a panic, prints the tail of its log.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct Proc {
    pub name: String,
    pub child: Child,
    /// The ready line, or `Null` when none was awaited.
    pub ready: Value,
    /// Where stderr goes, if not to ours.
    pub log: Option<PathBuf>,
    pub stdin: Option<ChildStdin>,
}

impl Proc {
    /// Starts `cmd` with stdin piped and stderr to `log` (ours when `None`).
    /// With `ready`, waits that long for the first stdout line, which must be
    /// JSON; the error carries the tail of the log.
    pub fn start(name: &str, cmd: &mut Command, log: Option<&Path>, ready: Option<Duration>) -> anyhow::Result<Self> {
        let stderr = match log {
            Some(path) => {
                Stdio::from(std::fs::File::create(path).with_context(|| format!("log file {}", path.display()))?)
            }
            None => Stdio::inherit(),
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .stdin(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        let mut p = Self {
            name: name.to_owned(),
            child,
            ready: Value::Null,
            log: log.map(Path::to_path_buf),
            stdin,
        };
        if let Some(limit) = ready {
            let line = rx.recv_timeout(limit).unwrap_or_default();
            p.ready = serde_json::from_str(line.trim()).map_err(|_| {
                p.stop();
                anyhow::anyhow!(
                    "{name} did not print its ready line within {limit:?} (got {line:?}); its log ends:\n{}",
                    p.log_tail(40)
                )
            })?;
        }
        Ok(p)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `sig`; an error names the process.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        kill(Pid::from_raw(self.pid()), sig).with_context(|| format!("signal {sig} to {}", self.name))
    }

    /// SIGTERM; a second one after a moment (a daemon that keeps its calls
    /// for a grace ends them at once on the second); SIGKILL after the
    /// grace period; the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let started = Instant::now();
        let mut again = Some(started + Duration::from_millis(200));
        let deadline = started + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if again.is_some_and(|t| Instant::now() >= t) {
                let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
                again = None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// The whole log (empty when stderr is not logged).
    pub fn logs(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A command for `program`, with `taskset -c CORE` in front when `core` is
/// given and `nsenter --net=` before that when `netns` is (both exec, so the
/// child's PID is the program's and bpffs stays visible).
pub fn launcher(program: &Path, netns: Option<&str>, core: Option<u32>) -> Command {
    let mut words: Vec<std::ffi::OsString> = Vec::new();
    if let Some(ns) = netns {
        words.extend(["nsenter".into(), format!("--net=/run/netns/{ns}").into()]);
    }
    if let Some(core) = core {
        words.extend(["taskset".into(), "-c".into(), core.to_string().into()]);
    }
    words.push(program.into());
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..]);
    cmd
}

/// A `kB` field of `/proc/{pid}/status` (`VmRSS`, `VmHWM`, …); 0 when the
/// process or the field is gone.
pub fn status_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() && self.log.is_some() {
            eprintln!("--- last log lines of {} ---\n{}", self.name, self.log_tail(40));
        }
    }
}
