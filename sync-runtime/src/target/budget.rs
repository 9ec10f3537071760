//! A client-side request budget: at most `max` requests in any sliding `window`.
//!
//! D1's API allows 1,200 requests per 5 minutes per token, shared with everything else the
//! token does; going over blocks *every* call for 5 minutes. Waiting a little before that
//! line is far cheaper than a 5-minute block, so [`crate::D1Http`] keeps under a budget of its
//! own (default 1,000 per 5 minutes, leaving room for the token's other uses).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// At most `max` requests in any `window`.
#[derive(Debug, Clone)]
pub struct RequestBudget {
    max: usize,
    window: Duration,
    sent: VecDeque<Instant>,
}

impl RequestBudget {
    /// A budget of `max` requests per `window` (`max` of 0 is taken as 1).
    pub fn new(max: usize, window: Duration) -> RequestBudget {
        RequestBudget {
            max: max.max(1),
            window,
            sent: VecDeque::new(),
        }
    }

    /// Takes a slot at `now` and returns `None`, or returns how long to wait before asking
    /// again.
    pub fn reserve(&mut self, now: Instant) -> Option<Duration> {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.max {
            self.sent.push_back(now);
            return None;
        }
        let oldest = self.sent.front().copied().unwrap_or(now);
        Some(
            (oldest + self.window)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_max_in_any_window() {
        let t0 = Instant::now();
        let mut b = RequestBudget::new(3, Duration::from_secs(10));
        for i in 0..3 {
            assert_eq!(b.reserve(t0 + Duration::from_secs(i)), None);
        }
        // The fourth waits until the first leaves the window.
        assert_eq!(
            b.reserve(t0 + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(b.reserve(t0 + Duration::from_secs(10)), None);
        assert_eq!(
            b.reserve(t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_long_pause_frees_the_whole_budget() {
        let t0 = Instant::now();
        let mut b = RequestBudget::new(2, Duration::from_secs(1));
        assert!(b.reserve(t0).is_none() && b.reserve(t0).is_none());
        assert!(b.reserve(t0).is_some());
        let later = t0 + Duration::from_secs(5);
        assert!(b.reserve(later).is_none() && b.reserve(later).is_none());
    }
}
