//! Control path: the `process_*` figures Prometheus client libraries
//! export (open and allowed descriptors, resident memory, CPU seconds,
//! start time), read from `/proc/self` at each scrape.

/// One reading; `None` where `/proc` did not say.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Process {
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub resident_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
}

/// Reads this process's figures.
pub fn read() -> Process {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|t| t as f64);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|p| p as u64);
    let mut p = from_stat(&stat, tick, page, btime);
    p.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
    p.max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    p
}

/// CPU, memory and start time from a `/proc/<pid>/stat` line: the fields
/// after the command name (which may hold spaces and parentheses).
fn from_stat(stat: &str, tick: Option<f64>, page: Option<u64>, btime: Option<u64>) -> Process {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Process::default();
    };
    // rest[0] is field 3 (state); utime 14, stime 15, starttime 22, rss 24.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| f.get(field - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu = match (num(14), num(15), tick) {
        (Some(u), Some(s), Some(t)) if t > 0.0 => Some((u + s) as f64 / t),
        _ => None,
    };
    let start = match (num(22), tick, btime) {
        (Some(st), Some(t), Some(b)) if t > 0.0 => Some(b as f64 + st as f64 / t),
        _ => None,
    };
    Process {
        open_fds: None,
        max_fds: None,
        resident_bytes: num(24).zip(page).map(|(r, p)| r * p),
        cpu_seconds: cpu,
        start_time_seconds: start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (ingress (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 1000 123456789 2048 18446744073709551615";
        let p = from_stat(stat, Some(100.0), Some(4096), Some(1_700_000_000));
        assert_eq!(p.cpu_seconds, Some(3.0));
        assert_eq!(p.start_time_seconds, Some(1_700_000_010.0));
        assert_eq!(p.resident_bytes, Some(2048 * 4096));
        assert_eq!(from_stat("garbage", Some(100.0), Some(4096), None), Process::default());
    }

    #[test]
    fn this_process_is_read() {
        let p = read();
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(p.max_fds.is_some_and(|n| n >= p.open_fds.unwrap()), "{p:?}");
        assert!(p.resident_bytes.is_some_and(|b| b > 0), "{p:?}");
        assert!(p.start_time_seconds.is_some_and(|s| s > 1.6e9), "{p:?}");
    }
}
