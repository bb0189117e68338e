//! Leaf: parsing of `host[:port]` (servers, ACME upstream) and of carrier
//! prefixes (`192.0.2.0/24`, `2001:db8::/32`).

use std::net::IpAddr;

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

/// Parses `192.0.2.0/24`, `2001:db8::/32` or a bare address.
pub fn parse_prefix(s: &str) -> Result<(IpAddr, u32), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.trim().parse().map_err(|e| format!("`{s}`: {e}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
    };
    Ok((ip, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(
            parse_prefix("192.0.2.0/24").unwrap(),
            ("192.0.2.0".parse().unwrap(), 24)
        );
        assert_eq!(parse_prefix("2001:db8::/32").unwrap().1, 32);
        assert_eq!(parse_prefix("10.0.0.1").unwrap().1, 32);
        assert!(parse_prefix("10.0.0.0/33").is_err());
        assert!(parse_prefix("fleet/8").is_err());
    }
}
