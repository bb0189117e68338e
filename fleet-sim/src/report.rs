//! What `loadgen` prints: one JSON line per run, typed here so that the load
//! generator writes and `cargo xtask bench`/`soak` read the same structs
//! (the line carries `"mode"`; a reader that knows the mode it asked for
//! parses the mode's struct directly).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How many attempts ended in each way (`101`, `429`, `refused`, `timeout`, …).
pub type Outcomes = BTreeMap<String, u64>;

/// The line `loadgen` prints, tagged with its mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Report {
    Setups(Setups),
    Echo(Echo),
    /// `idle` prints this when its calls are open …
    #[serde(rename = "idle")]
    IdleOpen(IdleOpen),
    /// … and this when it closed them (the same tag: a reader of the first
    /// line never reads this one, so it is never parsed).
    #[serde(rename = "idle", skip_deserializing)]
    IdleClosed {
        closed: bool,
    },
    S4(S4),
    Soak(Soak),
}

/// Percentiles of a sample (None when it is empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    pub fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        let at = |p: f64| -> Option<f64> {
            if v.is_empty() {
                return None;
            }
            let idx = ((p / 100.0) * v.len() as f64).ceil() as usize;
            Some(v[idx.clamp(1, v.len()) - 1])
        };
        Self {
            n: v.len(),
            p50: at(50.0),
            p99: at(99.0),
            p999: at(99.9),
            max: v.last().copied(),
        }
    }
}

/// `setups`: full TLS handshakes + upgrades.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setups {
    pub attempts: u32,
    /// Attempts answered 101.
    pub ok: u64,
    pub outcomes: Outcomes,
    pub elapsed_s: f64,
    pub ok_per_s: f64,
    pub attempts_per_s: f64,
    /// Time to the 101, milliseconds.
    pub ok_ms: Percentiles,
    /// Time to the failure, milliseconds.
    pub fail_ms: Percentiles,
}

/// `echo`: round trips at a fixed offered load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Echo {
    pub calls: u32,
    pub open: u32,
    /// Calls that did not open, by outcome.
    pub failed: Outcomes,
    pub rate: u32,
    pub size: usize,
    pub seconds: u64,
    pub sent: u64,
    pub received: u64,
    /// Messages not echoed, counting those of calls that never opened.
    pub lost: u64,
    /// Round trips, microseconds.
    pub rtt_us: Percentiles,
    pub elapsed_s: f64,
}

/// `idle`: the calls it holds open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleOpen {
    pub calls: u32,
    pub open: usize,
    pub failed: Outcomes,
    pub open_s: f64,
}

/// One call of `s4`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct S4Call {
    pub i: u32,
    pub at_ms: u64,
    pub status: String,
    /// The fleets (by index) whose counters moved during the call.
    pub fleets: Vec<usize>,
}

/// `s4`: a fleet fills behind the ingress's back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct S4 {
    /// Outcomes of the held calls.
    pub statuses: Vec<String>,
    pub carrier_429: usize,
    pub carrier_not_101: usize,
    pub full_fleet_hits: usize,
    /// From "full" to the first call after which none reached it; None when it never stopped.
    pub stop_ms: Option<u64>,
    /// From "freed" to the first call that reached it again; None within the window.
    pub recover_ms: Option<u64>,
    pub recover_window_ms: u64,
    pub calls: Vec<S4Call>,
}

/// A call of `soak` that did not end well.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SoakExample {
    Broken {
        broken_after_ms: u64,
        why: String,
    },
    Failed {
        failed: String,
        at_s: f64,
        took_ms: u64,
        /// The flapper's state when it started (bit i set = fleet i full).
        full_mask: Option<u32>,
    },
}

/// `soak`: calls at a steady rate while fleets flap.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Soak {
    pub attempts: u64,
    pub ok: u64,
    pub echoed: u64,
    /// Failures while every fleet was full.
    pub expected: u64,
    pub expected_by_kind: Outcomes,
    /// Failures while some fleet had room.
    pub lost: u64,
    pub lost_by_kind: Outcomes,
    /// Calls whose echo stopped.
    pub broken: u64,
    pub examples: Vec<SoakExample>,
    pub flips: u64,
    pub all_full_s: f64,
    pub elapsed_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_carries_its_mode_and_parses_as_the_modes_struct() {
        let line = serde_json::to_string(&Report::Setups(Setups {
            attempts: 2,
            ok: 1,
            outcomes: Outcomes::from([("101".to_owned(), 1), ("429".to_owned(), 1)]),
            elapsed_s: 0.5,
            ok_per_s: 2.0,
            attempts_per_s: 4.0,
            ok_ms: Percentiles::of(vec![3.0]),
            fail_ms: Percentiles::of(Vec::new()),
        }))
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["mode"], "setups", "{line}");
        assert_eq!(v["fail_ms"]["p50"], serde_json::Value::Null, "{line}");
        let back: Setups = serde_json::from_str(&line).unwrap();
        assert_eq!((back.ok, back.outcomes["429"], back.ok_ms.p50), (1, 1, Some(3.0)));
        let idle = serde_json::to_string(&Report::IdleClosed { closed: true }).unwrap();
        assert_eq!(idle, r#"{"mode":"idle","closed":true}"#);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let p = Percentiles::of((1..=100).rev().map(f64::from).collect());
        assert_eq!(
            (p.n, p.p50, p.p99, p.p999, p.max),
            (100, Some(50.0), Some(99.0), Some(100.0), Some(100.0))
        );
    }

    #[test]
    fn soak_examples_keep_their_two_shapes() {
        let ex = vec![
            SoakExample::Broken {
                broken_after_ms: 5,
                why: "closed".into(),
            },
            SoakExample::Failed {
                failed: "503".into(),
                at_s: 1.5,
                took_ms: 2,
                full_mask: Some(3),
            },
        ];
        let text = serde_json::to_string(&ex).unwrap();
        assert_eq!(
            text,
            r#"[{"broken_after_ms":5,"why":"closed"},{"failed":"503","at_s":1.5,"took_ms":2,"full_mask":3}]"#
        );
        let back: Vec<SoakExample> = serde_json::from_str(&text).unwrap();
        assert!(matches!(back[1], SoakExample::Failed { took_ms: 2, .. }));
    }
}
