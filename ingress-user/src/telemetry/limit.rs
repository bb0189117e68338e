//! Leaf: a per-second budget for log lines a client can cause (refusals), so
//! a flood of bad requests cannot flood the journal; what was left out is
//! counted and told on the next line let through.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    time::Instant,
};

/// At most `per_second` lines in each second of the process's clock.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u32,
    origin: Instant,
    /// The second the budget is for, and what it has spent.
    second: AtomicU64,
    spent: AtomicU32,
    /// Lines left out since the last one let through.
    suppressed: AtomicU64,
    /// Lines ever left out.
    suppressed_total: AtomicU64,
}

impl LogLimiter {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            origin: Instant::now(),
            second: AtomicU64::new(0),
            spent: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
            suppressed_total: AtomicU64::new(0),
        }
    }

    /// `Some(left out since the last line)` when this line may be written.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(self.origin.elapsed().as_secs())
    }

    /// Lines ever left out (`ingress_log_lines_suppressed_total`).
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total.load(Relaxed)
    }

    fn allow_at(&self, now: u64) -> Option<u64> {
        let second = self.second.load(Relaxed);
        if now != second && self.second.compare_exchange(second, now, Relaxed, Relaxed).is_ok() {
            self.spent.store(0, Relaxed);
        }
        if self.spent.fetch_add(1, Relaxed) < self.per_second {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            self.suppressed_total.fetch_add(1, Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_a_second_and_the_left_out_told() {
        let l = LogLimiter::new(2);
        assert_eq!(l.allow_at(0), Some(0));
        assert_eq!(l.allow_at(0), Some(0));
        assert_eq!(l.allow_at(0), None);
        assert_eq!(l.allow_at(0), None);
        assert_eq!(l.allow_at(1), Some(2), "the next second's first line tells of two");
        assert_eq!(l.allow_at(1), Some(0));
        assert_eq!(l.allow_at(1), None);
        assert_eq!(l.allow_at(5), Some(1));
        assert_eq!(l.suppressed_total(), 3);
    }
}
