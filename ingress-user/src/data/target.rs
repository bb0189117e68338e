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

/// Whether `target` is already what [`normalize`] makes of it (the usual
/// `/ws/{bot_id}`): origin form, no percent sign, backslash, fragment, dot
/// segment or leading `//`. Checked first, so a plain target costs a scan
/// and no allocation.
pub fn is_settled(target: &str) -> bool {
    target.starts_with('/')
        && !target.starts_with("//")
        && !target.contains("/.")
        && !target.bytes().any(|b| matches!(b, b'%' | b'\\' | b'#'))
}

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
    if query.is_some_and(|q| q.contains('#')) {
        return Err("a fragment is not part of a request target");
    }
    let path = decode_unreserved(if path.is_empty() { "/" } else { path })?;
    let mut origin = remove_dot_segments(&path)?;
    if origin.starts_with("//") {
        // `/.//b` or `/a/..//b`: read by some servers as a network path.
        return Err("a request path that starts with //");
    }
    if let Some(q) = query {
        origin.push_str(q);
    }
    Ok(Normalized { authority, origin })
}

/// The path with percent-encoded unreserved characters decoded (RFC 3986
/// §6.2.2.2: `%61pi` is `api`, `%2e` is `.`), so that the route table and
/// any fleet read the same path. Refused: what servers disagree about — an
/// encoded `/` or `\`, a backslash, a fragment, an encoded NUL or control.
fn decode_unreserved(path: &str) -> Result<String, Refusal> {
    if path.contains('\\') || path.contains('#') {
        return Err("a backslash or a fragment in the request path");
    }
    if path.starts_with("//") {
        return Err("a request path that starts with //");
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err("a malformed percent-encoding in the request path");
            };
            match b {
                b'/' | b'\\' => return Err("an encoded slash or backslash in the request path"),
                b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => out.push(char::from(b)),
                b if b < 0x20 || b == 0x7f => return Err("an encoded control character in the request path"),
                _ => out.push_str(&path[i..i + 3]),
            }
            i += 3;
            continue;
        }
        let len = path[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&path[i..i + len]);
        i += len;
    }
    Ok(out)
}

/// Whether a segment is `.` or `..` (after decoding; `..;x` counts, as
/// servers that strip path parameters read it).
fn dots(segment: &str) -> usize {
    match segment.split(';').next().unwrap_or_default() {
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
    if is_settled(&head.target) {
        return Ok(());
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
        assert_eq!(
            origin("/%61pi/x").unwrap(),
            "/api/x",
            "unreserved characters are decoded"
        );
        assert_eq!(origin("/api/..;/internal").unwrap(), "/internal");
        assert_eq!(origin("/api/a%20b").unwrap(), "/api/a%20b", "others stay encoded");
        for refused in [
            "/api/..%2finternal",
            "/api/..%5Cinternal",
            "/api/..\\internal",
            "//evil.example/x",
            "/ws/x/..#",
            "/ws/x?a#b",
            "/api/%zz",
            "/api/%00",
            "/.//b",
            "/a/..//b",
        ] {
            assert!(normalize(refused).is_err(), "{refused:?} is accepted");
        }
    }

    #[test]
    fn a_settled_target_is_what_normalize_makes_of_it() {
        for t in ["/", "/ws/bot-1", "/exotel/x?a=1&b=/c", "/a//b", "/a/", "/api/x?q=a.b"] {
            assert!(is_settled(t), "{t}");
            assert_eq!(origin(t).unwrap(), t);
        }
        for t in ["/a/../b", "/%61", "//x", "/a#b", "/a\\b", "http://h/", "/.well-known/x"] {
            assert!(!is_settled(t), "{t}");
        }
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
