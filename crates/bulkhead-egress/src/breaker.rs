//! A circuit breaker per endpoint: after `threshold` consecutive failures (transport errors
//! and 5xx) calls fail fast for `cooldown`, then one trial call decides whether to close.

use std::time::{Duration, Instant};

pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold,
            cooldown,
            consecutive_failures: 0,
            open_until: None,
        }
    }

    /// Whether a call may go out now. After the cooldown the breaker lets calls through
    /// (half-open); the next result closes it or opens it again.
    pub(crate) fn allows(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|until| now >= until)
    }

    pub(crate) fn record_success(&mut self) {
        self.consecutive_failures = 0;
        self.open_until = None;
    }

    pub(crate) fn record_failure(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.consecutive_failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_half_opens_after_the_cooldown() {
        let start = Instant::now();
        let mut breaker = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            breaker.record_failure(start);
        }
        assert!(breaker.allows(start));
        breaker.record_failure(start);
        assert!(!breaker.allows(start + Duration::from_secs(9)));
        assert!(breaker.allows(start + Duration::from_secs(10)));
        // A failed trial opens it again at once; a success closes it.
        breaker.record_failure(start + Duration::from_secs(10));
        assert!(!breaker.allows(start + Duration::from_secs(11)));
        breaker.record_success();
        assert!(breaker.allows(start + Duration::from_secs(11)));
    }
}
