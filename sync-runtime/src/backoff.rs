//! Exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter: the `n`-th retry waits a uniformly random time in
/// `[floor, min(cap, base * 2^(n-1))]`, and never less than a server's `Retry-After`.
/// Full jitter spreads retries of many clients apart (no thundering herd); the floor keeps a
/// zero draw from turning into a hot loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry's wait.
    pub base: Duration,
    /// The largest ceiling.
    pub cap: Duration,
    /// The shortest wait.
    pub floor: Duration,
}

impl Default for Backoff {
    /// Base 1 s, cap 5 min, floor 50 ms.
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
            floor: Duration::from_millis(50),
        }
    }
}

impl Backoff {
    /// The ceiling of the wait before retry number `attempt` (1-based).
    ///
    /// ```
    /// use d1_sync::Backoff;
    /// use std::time::Duration;
    /// let b = Backoff::default();
    /// assert_eq!(b.ceiling(1), Duration::from_secs(1));
    /// assert_eq!(b.ceiling(4), Duration::from_secs(8));
    /// assert_eq!(b.ceiling(40), Duration::from_secs(300));
    /// ```
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(40);
        let factor = 1u64 << exp;
        let ms = u64::try_from(self.base.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(factor);
        Duration::from_millis(ms).min(self.cap).max(self.floor)
    }

    /// A jittered wait before retry number `attempt`, at least `at_least` (a `Retry-After`).
    pub fn delay<R: Rng + ?Sized>(
        &self,
        attempt: u32,
        rng: &mut R,
        at_least: Option<Duration>,
    ) -> Duration {
        let ceiling = self.ceiling(attempt);
        let span = ceiling.saturating_sub(self.floor);
        let jitter = Duration::from_millis(
            rng.random_range(0..=u64::try_from(span.as_millis()).unwrap_or(u64::MAX)),
        );
        (self.floor + jitter).max(at_least.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_stay_within_floor_and_ceiling_and_spread_out() {
        let b = Backoff::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 1..=12 {
            let ds: Vec<Duration> = (0..200).map(|_| b.delay(attempt, &mut rng, None)).collect();
            assert!(
                ds.iter().all(|d| *d >= b.floor && *d <= b.ceiling(attempt)),
                "attempt {attempt}"
            );
            let distinct: std::collections::HashSet<_> = ds.iter().collect();
            assert!(
                distinct.len() > 50,
                "jitter spreads retries: attempt {attempt}"
            );
        }
    }

    #[test]
    fn retry_after_is_a_lower_bound() {
        let b = Backoff::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..100 {
            assert!(b.delay(1, &mut rng, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        }
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let b = Backoff {
            base: Duration::from_secs(u64::MAX / 2),
            ..Backoff::default()
        };
        assert_eq!(b.ceiling(u32::MAX), b.cap);
    }
}
