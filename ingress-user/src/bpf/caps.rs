//! Whether this process may load and attach the XDP program: the effective
//! capabilities it needs (`CAP_BPF` to load programs and create maps,
//! `CAP_NET_ADMIN` to attach to an interface and for the XDP program type,
//! `CAP_PERFMON` so the verifier accepts the program's pointer arithmetic
//! without the unprivileged speculation limits), read from
//! `/proc/self/status`, so a daemon run as its own user with only these
//! capabilities attaches, and one without them says which are missing.

/// Capability numbers from `linux/capability.h`.
const NEEDED: &[(u32, &str)] = &[(12, "CAP_NET_ADMIN"), (38, "CAP_PERFMON"), (39, "CAP_BPF")];

/// The needed capabilities this process lacks.
pub fn missing() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    missing_from(&status)
}

fn missing_from(status: &str) -> Vec<&'static str> {
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    // The kernel takes CAP_SYS_ADMIN for CAP_BPF and CAP_PERFMON (kernels
    // before 5.8, runtimes that do not know the newer bits).
    let sys_admin = eff & (1 << 21) != 0;
    NEEDED
        .iter()
        .filter(|(bit, _)| eff & (1 << bit) == 0 && !(sys_admin && *bit != 12))
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_capabilities_are_read_by_bit() {
        assert!(missing_from("CapEff:\t000001ffffffffff\n").is_empty());
        // CAP_NET_ADMIN and CAP_BPF only.
        let two = (1u64 << 12) | (1 << 39);
        assert_eq!(missing_from(&format!("CapEff:\t{two:016x}\n")), ["CAP_PERFMON"]);
        assert_eq!(missing_from("Name:\tingress\n").len(), 3);
        // CAP_SYS_ADMIN stands for CAP_BPF and CAP_PERFMON, not CAP_NET_ADMIN.
        let old_root = 1u64 << 21;
        assert_eq!(missing_from(&format!("CapEff:\t{old_root:016x}\n")), ["CAP_NET_ADMIN"]);
    }
}
