//! `health::evaluate` on an arbitrary status, body and JSON pointer, with the
//! default `expect_status = "^2"`.
//! Input: 2 bytes status (big-endian), 1 byte pointer length N, N bytes of
//! pointer (UTF-8; else the default "/fleet_available"), then the body.
#![no_main]

use std::sync::LazyLock;

use ingress_user::control::health::evaluate;
use libfuzzer_sys::fuzz_target;
use regex::Regex;

static EXPECT: LazyLock<Regex> = LazyLock::new(|| Regex::new("^2").unwrap());

fuzz_target!(|data: &[u8]| {
    let [s0, s1, n, rest @ ..] = data else {
        return;
    };
    let status = u16::from_be_bytes([*s0, *s1]);
    let n = usize::from(*n).min(rest.len());
    let (pointer, body) = rest.split_at(n);
    let pointer = std::str::from_utf8(pointer)
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or("/fleet_available");
    match evaluate(status, &EXPECT, body, pointer) {
        Ok(Some(n)) => {
            // What the pointer holds; above u32::MAX saturated (pool.rs clamps below its
            // "no report" value u32::MAX again).
            let v: serde_json::Value = serde_json::from_slice(body).expect("evaluate accepted it as JSON");
            let raw = v
                .pointer(pointer)
                .and_then(serde_json::Value::as_u64)
                .expect("a u64 at the pointer");
            let expected = u32::try_from(raw).unwrap_or(u32::MAX - 1);
            assert_eq!(n, expected, "{raw} read as {n}");
        }
        Ok(None) => unreachable!("a pointer was given, a capacity or an error is expected"),
        Err(_) => {}
    }
    // Liveness only (empty pointer): decided by the status alone.
    let live = evaluate(status, &EXPECT, body, "");
    assert_eq!(live.is_ok(), status.to_string().starts_with('2'), "{live:?}");
});
