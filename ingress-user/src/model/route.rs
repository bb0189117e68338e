//! Leaf: the route table — path patterns (`/ws/{bot_id}`) compiled once and
//! matched per request without allocation beyond the captured parameters.
//! Pure, so the configuration validates patterns with the same code the
//! data path matches them with.

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    /// `*` as the last segment: any rest, possibly empty.
    Rest,
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    segments: Vec<Segment>,
}

impl RoutePattern {
    /// Parses `/a/{name}/b`; `{name}` matches exactly one non-empty segment.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let rest = pattern
            .strip_prefix('/')
            .ok_or_else(|| format!("`{pattern}` must start with /"))?;
        let mut segments = Vec::new();
        let parts: Vec<&str> = rest.split('/').collect();
        for (i, seg) in parts.iter().copied().enumerate() {
            if seg == "*" {
                if i + 1 != parts.len() {
                    return Err(format!("`{pattern}`: `*` must be the last segment"));
                }
                segments.push(Segment::Rest);
                continue;
            }
            if let Some(inner) = seg.strip_prefix('{') {
                let name = inner
                    .strip_suffix('}')
                    .ok_or_else(|| format!("`{pattern}`: `{seg}` is missing `}}`"))?;
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "`{pattern}`: parameter name `{name}` must be letters, digits or _"
                    ));
                }
                segments.push(Segment::Param(name.to_owned()));
            } else if seg.contains(['{', '}', '*']) {
                return Err(format!("`{pattern}`: `{seg}` mixes text and a parameter"));
            } else {
                segments.push(Segment::Literal(seg.to_owned()));
            }
        }
        Ok(Self { segments })
    }

    /// Matches a path (no query string); returns the captured parameters.
    pub fn matches<'p>(&self, path: &'p str) -> Option<Vec<(&str, &'p str)>> {
        let rest = path.strip_prefix('/')?;
        let mut params = Vec::new();
        let mut parts = rest.split('/');
        for seg in &self.segments {
            if *seg == Segment::Rest {
                return Some(params);
            }
            let part = parts.next()?;
            match seg {
                Segment::Rest => return Some(params),
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(name) => params.push((name.as_str(), part)),
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(params)
    }
}

/// A route: pattern → pool index.
#[derive(Debug, Clone)]
pub struct Route {
    pub pattern: RoutePattern,
    pub path: String,
    pub pool: usize,
    pub kind: crate::model::RouteKind,
    /// Lower-case host this route is limited to.
    pub host: Option<String>,
}

/// What a request path leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'p> {
    /// The local health path.
    Health,
    /// A route: pool index and captured parameters.
    Pool {
        route: usize,
        pool: usize,
        params: Vec<(String, &'p str)>,
    },
    NotFound,
}

/// What a matched route tells the pick and the call log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CallKeys {
    /// For `balance = "uri-hash"`: `hash_key = "path"` hashes the path
    /// without its query; any other name, that route parameter.
    pub hash_key: Option<String>,
    /// The `{bot_id}` parameter, for the call log.
    pub bot_id: Option<String>,
}

impl CallKeys {
    /// The keys of a request for `target` whose route captured `params`,
    /// towards a pool hashing on `key_name`.
    pub fn of(target: &str, params: &[(String, &str)], key_name: &str) -> Self {
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| (*v).to_owned());
        Self {
            hash_key: if key_name == "path" {
                Some(target.split(['?', '#']).next().unwrap_or("").to_owned())
            } else {
                param(key_name)
            },
            bot_id: param("bot_id"),
        }
    }
}

/// Routes in configured order plus the local health path.
#[derive(Debug, Clone)]
pub struct RouteTable {
    pub health_path: String,
    pub routes: Vec<Route>,
}

impl RouteTable {
    /// Looks a request target up (the query string is ignored); `host` is
    /// the request's Host header.
    pub fn lookup<'p>(&self, target: &'p str, host: Option<&str>) -> Target<'p> {
        let path = target.split(['?', '#']).next().unwrap_or("");
        if path == self.health_path {
            return Target::Health;
        }
        let host = host.map(|h| {
            let h = h.trim();
            let bare = if h.starts_with('[') {
                // Up to and with the `]`; an unclosed `[` is kept whole (it sliced past the end).
                h.find(']').map_or(h, |i| &h[..=i])
            } else {
                h.rsplit_once(':').map_or(h, |(a, _)| a)
            };
            bare.to_ascii_lowercase()
        });
        for (i, r) in self.routes.iter().enumerate() {
            if r.host
                .as_ref()
                .is_some_and(|want| host.as_deref() != Some(want.as_str()))
            {
                continue;
            }
            if let Some(params) = r.pattern.matches(path) {
                return Target::Pool {
                    route: i,
                    pool: r.pool,
                    params: params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                };
            }
        }
        Target::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let mk = |p: &str, pool| Route {
            pattern: RoutePattern::parse(p).unwrap(),
            path: p.to_owned(),
            pool,
            kind: crate::model::RouteKind::Websocket,
            host: None,
        };
        RouteTable {
            health_path: "/haproxy-health".into(),
            routes: vec![mk("/ws/{bot_id}", 0), mk("/exotel/{bot_id}", 0)],
        }
    }

    #[test]
    fn seed_route_table() {
        let t = table();
        assert_eq!(t.lookup_path("/haproxy-health"), Target::Health);
        match t.lookup_path("/ws/bot-7?token=x") {
            Target::Pool { pool: 0, params, .. } => assert_eq!(params, vec![("bot_id".to_owned(), "bot-7")]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(t.lookup_path("/exotel/abc"), Target::Pool { route: 1, .. }));
        for p in [
            "/attach",
            "/livekit/dialout",
            "/livekit/widget",
            "/ws",
            "/ws/",
            "/ws/a/b",
            "/",
            "*",
        ] {
            assert_eq!(t.lookup_path(p), Target::NotFound, "{p}");
        }
    }

    impl RouteTable {
        fn lookup_path<'p>(&self, target: &'p str) -> Target<'p> {
            self.lookup(target, None)
        }
    }

    #[test]
    fn rest_segments_and_hosts() {
        let mut t = table();
        t.routes.push(Route {
            pattern: RoutePattern::parse("/api/*").unwrap(),
            path: "/api/*".into(),
            pool: 1,
            kind: crate::model::RouteKind::Http,
            host: Some("api.example.com".into()),
        });
        assert!(matches!(
            t.lookup("/api/v1/health", Some("API.example.com:443")),
            Target::Pool { pool: 1, .. }
        ));
        assert!(matches!(
            t.lookup("/api/", Some("api.example.com")),
            Target::Pool { pool: 1, .. }
        ));
        assert_eq!(
            t.lookup("/api/v1", Some("calls.example.com")),
            Target::NotFound,
            "another host"
        );
        assert_eq!(t.lookup("/api/v1", None), Target::NotFound);
        assert!(RoutePattern::parse("/a/*/b").is_err());
    }

    #[test]
    fn bad_patterns_are_refused() {
        for p in ["ws/{x}", "/ws/{x", "/ws/a{x}", "/ws/{}", "/ws/{a-b}"] {
            assert!(RoutePattern::parse(p).is_err(), "{p}");
        }
    }
}
