//! `RoutePattern::parse` + `matches`, and `RouteTable::lookup`.
//! Input: lines; the pattern, the health path, the host the route is limited
//! to (empty: any), the request's Host header (empty: none), then request
//! targets.
#![no_main]

use ingress_user::{
    model::RouteKind,
    model::route::{Route, RoutePattern, RouteTable, Target},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let pattern = lines.next().unwrap_or_default();
    let health = lines.next().unwrap_or_default();
    let route_host = lines.next().filter(|h| !h.is_empty()).map(str::to_ascii_lowercase);
    let host_header = lines.next().filter(|h| !h.is_empty());
    let targets: Vec<&str> = lines.collect();
    let Ok(compiled) = RoutePattern::parse(pattern) else {
        return;
    };
    let params_in_pattern = pattern.split('/').filter(|s| s.starts_with('{')).count();
    for t in &targets {
        if let Some(params) = compiled.matches(t) {
            assert_eq!(params.len(), params_in_pattern, "{pattern} on {t}: {params:?}");
            for (name, value) in &params {
                assert!(!value.is_empty() && !value.contains('/'), "{name}={value:?} from {t}");
                assert!(pattern.contains(&format!("{{{name}}}")), "{name} is not in {pattern}");
            }
        }
    }
    let table = RouteTable {
        health_path: health.to_owned(),
        routes: vec![Route {
            pattern: compiled.clone(),
            path: pattern.to_owned(),
            pool: 0,
            kind: RouteKind::Websocket,
            host: route_host.clone(),
        }],
    };
    for t in targets.iter().copied().chain([pattern, health]) {
        let path = t.split(['?', '#']).next().unwrap_or("");
        match table.lookup(t, host_header) {
            Target::Health => assert_eq!(path, health),
            Target::Pool { route, pool, params } => {
                assert_eq!((route, pool), (0, 0));
                let direct = compiled
                    .matches(path)
                    .expect("lookup found a route that does not match");
                assert_eq!(params.len(), direct.len());
            }
            Target::NotFound => assert!(
                path != health && (route_host.is_some() || compiled.matches(path).is_none()),
                "{t}"
            ),
        }
    }
});
