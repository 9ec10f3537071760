//! How large the next request may be, learned from the target's answers.
//!
//! Under D1's budget of about 4 requests a second, rows per request set the rate, so the worker
//! fills each request up to the target's [`PackLimits`] (by default 10,000 rows and 8 MB). Two
//! answers narrow that:
//!
//! - **slow**: a request applied in more than the expected time (default 10 s, a third of D1's
//!   30 s per request) makes the next ones smaller in proportion; a request that *failed* after
//!   running that long (a timeout, or D1's own limit) halves them. Requests applied in under a
//!   quarter of the time grow back, by half again each, up to the target's limit;
//! - **too large**: HTTP 413 halves the bytes per request below the size refused, for as long
//!   as the worker runs (a body limit does not move).
//!
//! Pure: the worker feeds it each outcome and asks it for the limits of the next batch.

use std::time::Duration;

use crate::pack::PackLimits;

/// The fewest rows a slow answer shrinks a request to.
const MIN_ROWS: usize = 100;
/// The fewest bytes a 413 shrinks a request to.
const MIN_BYTES: usize = 64 * 1024;

/// The rows and bytes the next request may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizing {
    rows: usize,
    bytes: usize,
    expected: Duration,
}

impl Sizing {
    /// Starts at the target's limits; `expected` is the longest a request should take.
    pub fn new(limits: &PackLimits, expected: Duration) -> Sizing {
        Sizing {
            rows: limits.max_rows_per_request,
            bytes: limits.max_request_bytes,
            expected,
        }
    }

    /// The limits for the next batch: the target's, narrowed.
    pub fn limits(&self, target: &PackLimits) -> PackLimits {
        PackLimits {
            max_rows_per_request: target.max_rows_per_request.min(self.rows).max(1),
            max_request_bytes: target.max_request_bytes.min(self.bytes),
            ..*target
        }
    }

    /// A request of `rows` rows was applied in `took`.
    pub fn applied(&mut self, rows: usize, took: Duration, target: &PackLimits) {
        if took > self.expected && rows > MIN_ROWS {
            let fits = rows as f64 * self.expected.as_secs_f64() / took.as_secs_f64();
            self.rows = self.rows.min((fits as usize).max(MIN_ROWS));
        } else if took < self.expected / 4 && rows * 2 >= self.rows {
            self.rows = (self.rows + self.rows / 2 + 1).min(target.max_rows_per_request);
        }
    }

    /// A request of `rows` rows failed after `took` (not refused for its content).
    pub fn failed(&mut self, rows: usize, took: Duration) {
        if took >= self.expected && rows > MIN_ROWS {
            self.rows = self.rows.min((rows / 2).max(MIN_ROWS));
        }
    }

    /// The target refused a request of `bytes` bytes as too large.
    pub fn too_large(&mut self, bytes: usize) {
        self.bytes = self.bytes.min((bytes / 2).max(MIN_BYTES));
    }

    /// The rows the next request may hold.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The bytes the next request may hold.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Bytes of a request's statements, as sent (SQL text and parameters).
pub fn request_bytes(statements: &[crate::pack::Statement]) -> usize {
    statements
        .iter()
        .map(|s| {
            s.sql.len()
                + s.params
                    .iter()
                    .map(|p| match p {
                        crate::pack::Param::Text(t) => t.len() + 2,
                        crate::pack::Param::Real(_) => 24,
                    })
                    .sum::<usize>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_slow_request_shrinks_the_next_in_proportion_and_fast_ones_grow_back() {
        let target = PackLimits::default();
        let mut s = Sizing::new(&target, 10 * S);
        assert_eq!(s.limits(&target), target, "starts at the target's limits");
        s.applied(10_000, 20 * S, &target);
        assert_eq!(s.rows(), 5_000);
        s.applied(5_000, 6 * S, &target);
        assert_eq!(s.rows(), 5_000, "within the expected time: no change");
        s.applied(5_000, S, &target);
        assert_eq!(s.rows(), 7_501);
        for _ in 0..5 {
            s.applied(s.rows(), S, &target);
        }
        assert_eq!(s.rows(), 10_000, "never above the target's limit");
        s.applied(10, 60 * S, &target);
        assert_eq!(
            s.rows(),
            10_000,
            "a small slow request says nothing about size"
        );
        assert_eq!(s.limits(&target).max_rows_per_request, 10_000);
    }

    #[test]
    fn a_request_failing_after_the_expected_time_halves_the_rows() {
        let target = PackLimits::default();
        let mut s = Sizing::new(&target, 10 * S);
        s.failed(10_000, 2 * S);
        assert_eq!(s.rows(), 10_000, "a quick failure is not about size");
        s.failed(10_000, 31 * S);
        assert_eq!(s.rows(), 5_000);
        for _ in 0..20 {
            s.failed(s.rows(), 31 * S);
        }
        assert_eq!(s.rows(), MIN_ROWS);
    }

    #[test]
    fn a_413_halves_the_bytes_below_the_size_refused_for_good() {
        let target = PackLimits::default();
        let mut s = Sizing::new(&target, 10 * S);
        s.too_large(6_000_000);
        assert_eq!(s.limits(&target).max_request_bytes, 3_000_000);
        s.too_large(5_000_000);
        assert_eq!(s.bytes(), 2_500_000);
        s.applied(100, S, &target);
        assert_eq!(s.bytes(), 2_500_000, "a body limit does not move");
        for _ in 0..40 {
            s.too_large(s.bytes());
        }
        assert_eq!(s.bytes(), MIN_BYTES);
    }
}
