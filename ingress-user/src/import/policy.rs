//! Import: a backend's policies — `balance`, `hash-type` and `cookie` read
//! into the pool's balance mode; `retries` and `retry-on` into its retry
//! policy.

use super::{
    Report,
    parse::Line,
    render::{Item, list, s},
};

/// `balance` (with `hash-type` and `cookie`) as the pool's balance items.
pub(super) fn balance_items(
    balance: Option<&Line>,
    hash: Option<&Line>,
    cookie: Option<&Line>,
    report: &mut Report,
) -> Vec<Item> {
    let mut items = Vec::new();
    let base = match balance {
        None => Item::new("balance", s("roundrobin"), 0).note("HAProxy's default"),
        Some(l) => match l.word(1) {
            "leastconn" => Item::new("balance", s("leastconn"), l.no),
            "roundrobin" | "static-rr" => Item::new("balance", s("roundrobin"), l.no),
            "uri" => {
                for opt in &l.words[2..] {
                    let msg = match opt.as_str() {
                        "whole" => "the path is hashed without its query string",
                        _ => "the whole path (without query) is hashed",
                    };
                    report.approx(l, opt, msg);
                }
                items.push(Item::new("hash_key", s("path"), l.no));
                Item::new("balance", s("uri-hash"), l.no)
                    .note("rendezvous hashing: one of N servers added moves ~1/N keys")
            }
            "random" => {
                report.approx(l, "balance random", "translated as roundrobin");
                Item::new("balance", s("roundrobin"), l.no)
            }
            other => {
                let msg = format!(
                    "`{other}` has no equivalent: leastconn is used (or set balance = \"cookie\" / \"uri-hash\")"
                );
                report.not_translated(l, "balance", msg);
                Item::new("balance", s("leastconn"), 0).note(format!("HAProxy: balance {other}, not translated"))
            }
        },
    };
    if let Some(h) = hash {
        let uri = base.value == s("uri-hash");
        match (h.word(1), uri) {
            ("consistent", true) => report.not_needed(h, "hash-type", "uri-hash always hashes consistently"),
            (_, true) => report.approx(
                h,
                "hash-type",
                "uri-hash hashes consistently: one server added moves ~1/N keys",
            ),
            (_, false) => report.not_needed(h, "hash-type", "only a hashing balance uses it"),
        }
    }
    let Some(c) = cookie else {
        items.insert(0, base);
        return items;
    };
    let name = c.word(1);
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        report.not_translated(
            c,
            "cookie",
            format!("`{name}`: a cookie name is letters, digits, _ or -"),
        );
        items.insert(0, base);
        return items;
    }
    for opt in &c.words[2..] {
        match opt.as_str() {
            "insert" => {}
            "indirect" => report.not_needed(c, opt, "the cookie is stripped from what the server sees"),
            "httponly" => report.not_needed(c, opt, "the cookie is set HttpOnly"),
            "rewrite" | "prefix" => report.approx(c, opt, "the ingress inserts a cookie of its own"),
            _ => report.not_translated(c, opt, "the cookie is set as NAME=ID; Path=/; HttpOnly"),
        }
    }
    if base.value != s("leastconn") {
        let was = balance.map_or("roundrobin", |l| l.word(1));
        report.approx(
            c,
            "cookie",
            format!("new clients are picked by least-conn (HAProxy: {was})"),
        );
    }
    if let Some(b) = balance {
        report.used(b.no);
    }
    vec![
        Item::new("balance", s("cookie"), c.no).note("sticky: new clients by least-conn, pinned by the cookie"),
        Item::new("cookie", s(name), c.no),
    ]
}

/// `retries` and `retry-on` as the pool's retry policy; a fleet's 429 is added.
pub(super) fn retry_items(retries: Option<&Line>, retry_on: Option<&Line>, report: &mut Report) -> Vec<Item> {
    let mut on: Vec<&str> = Vec::new();
    let line = match retry_on {
        None => {
            on.push("conn-failure");
            0
        }
        Some(l) => {
            for kind in &l.words[1..] {
                match kind.as_str() {
                    k @ ("conn-failure" | "empty-response" | "response-timeout") => on.push(k),
                    "all-retryable-errors" => {
                        on.extend(["conn-failure", "empty-response", "response-timeout"]);
                        let msg = "junk-response and 5xx statuses are not retried: only these three and 429";
                        report.approx(l, kind, msg);
                    }
                    "none" => {}
                    "0rtt-rejected" => report.not_needed(l, kind, "the ingress does not send early data"),
                    k if k.parse::<u16>().is_ok() => {
                        report.not_translated(l, k, "of statuses, only a fleet's 429 is retried")
                    }
                    k => report.not_translated(l, k, "no equivalent retry condition"),
                }
            }
            l.no
        }
    };
    on.dedup();
    on.push("429");
    let note = if line == 0 {
        "HAProxy's default conn-failure; \"429\" added: a fleet's 429 is retried on another (remove it to pass 429s through)"
    } else {
        "\"429\" added: HAProxy could not retry a fleet's 429; the ingress can (remove it to pass 429s through)"
    };
    let mut items = vec![Item::new("retry_on", list(&on), line).note(note)];
    match retries.map(|l| (l, l.word(1).parse::<u32>())) {
        Some((l, Ok(n))) => items.push(Item::new("retries", n.to_string(), l.no)),
        Some((l, Err(_))) => report.not_translated(l, "retries", "not a number"),
        None => items.push(Item::new("retries", "3".to_owned(), 0).note("HAProxy's default")),
    }
    items
}
