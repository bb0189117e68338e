//! Data path: what a request names, made unambiguous before it is routed:
//! the target in origin form (an absolute-form target's authority becomes
//! the Host, RFC 9112 §3.2.2), its path without dot segments (RFC 3986
//! §5.2.4, `%2e` counted as a dot), and exactly one Host on HTTP/1.1 (§3.2).
//! The route table and the fleet then see the same path.

use super::http1::RequestHead;

/// A request target made unambiguous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The authority of an absolute-form target (it replaces the Host header).
    pub authority: Option<String>,
    /// Origin form: `/path?query`, dot segments removed.
    pub origin: String,
}

/// Why a target or its Host is refused (answered 400).
pub type Refusal = &'static str;

/// The target in origin form with its dot segments removed.
pub fn normalize(target: &str) -> Result<Normalized, Refusal> {
    let (authority, rest) = if target.starts_with('/') {
        (None, target)
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let after = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return Err("the request target must be a path or an absolute http(s) URI");
        };
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let authority = &after[..end];
        if authority.is_empty() || authority.contains('@') {
            return Err("an absolute request target needs a plain host");
        }
        (Some(authority.to_owned()), &after[end..])
    };
    let (path, query) = match rest.find('?') {
        Some(q) => (&rest[..q], Some(&rest[q..])),
        None => (rest, None),
    };
    let mut origin = remove_dot_segments(if path.is_empty() { "/" } else { path })?;
    if let Some(q) = query {
        origin.push_str(q);
    }
    Ok(Normalized { authority, origin })
}

/// Whether a segment is `.` or `..`, also percent-encoded.
fn dots(segment: &str) -> usize {
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    match decoded.as_str() {
        "." => 1,
        ".." => 2,
        _ => 0,
    }
}

fn remove_dot_segments(path: &str) -> Result<String, Refusal> {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match dots(seg) {
            1 => trailing_slash = i == last,
            2 => {
                if out.pop().is_none() {
                    return Err("the request path climbs above the root");
                }
                trailing_slash = i == last;
            }
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut joined = String::with_capacity(path.len());
    for seg in &out {
        joined.push('/');
        joined.push_str(seg);
    }
    if trailing_slash || joined.is_empty() {
        joined.push('/');
    }
    Ok(joined)
}

/// Settles a head read by the front: exactly one Host on HTTP/1.1, the
/// target in origin form without dot segments, an absolute target's
/// authority as the Host.
pub fn settle(head: &mut RequestHead) -> Result<(), Refusal> {
    let hosts = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
        .count();
    if let Some(why) = host_error(hosts, head.minor_version) {
        return Err(why);
    }
    let n = normalize(&head.target)?;
    head.target = n.origin;
    if let Some(authority) = n.authority {
        head.headers.retain(|(name, _)| !name.eq_ignore_ascii_case("host"));
        head.headers.push(("Host".to_owned(), authority.into_bytes()));
    }
    Ok(())
}

/// Why the Host headers are refused: HTTP/1.1 needs exactly one.
pub fn host_error(host_headers: usize, minor_version: u8) -> Option<Refusal> {
    match host_headers {
        1 => None,
        0 if minor_version == 0 => None,
        0 => Some("HTTP/1.1 needs a Host header"),
        _ => Some("more than one Host header"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(t: &str) -> Result<String, Refusal> {
        normalize(t).map(|n| n.origin)
    }

    #[test]
    fn dot_segments_are_removed_before_routing() {
        assert_eq!(origin("/api/../internal").unwrap(), "/internal");
        assert_eq!(origin("/ws/./x").unwrap(), "/ws/x");
        assert_eq!(origin("/ws/%2E%2e/exotel/b?q=/../x").unwrap(), "/exotel/b?q=/../x");
        assert_eq!(origin("/ws/x/..").unwrap(), "/ws/");
        assert_eq!(origin("/ws/x/.").unwrap(), "/ws/x/");
        assert_eq!(origin("/a//b").unwrap(), "/a//b", "empty segments are kept");
        assert_eq!(origin("/").unwrap(), "/");
        assert_eq!(origin("/..").unwrap_err(), "the request path climbs above the root");
        assert_eq!(
            origin("/ws/x/../../..").unwrap_err(),
            "the request path climbs above the root"
        );
        assert_eq!(origin("/ws/..x").unwrap(), "/ws/..x");
    }

    #[test]
    fn absolute_form_becomes_origin_form_and_names_the_host() {
        assert_eq!(
            normalize("http://calls.example.com/ws/x?a=1").unwrap(),
            Normalized {
                authority: Some("calls.example.com".into()),
                origin: "/ws/x?a=1".into()
            }
        );
        assert_eq!(normalize("HTTPS://h:8443").unwrap().origin, "/");
        assert_eq!(normalize("https://h?x").unwrap().origin, "/?x");
        assert!(normalize("http://user@h/").is_err());
        assert!(normalize("ftp://h/").is_err());
        assert!(normalize("*").is_err());
        assert!(normalize("h:443").is_err());
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        assert_eq!(host_error(1, 1), None);
        assert_eq!(host_error(0, 0), None);
        assert!(host_error(0, 1).is_some());
        assert!(host_error(2, 1).is_some());
        assert!(host_error(2, 0).is_some());
    }
}
