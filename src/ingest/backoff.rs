//! Reconnection delays: capped exponential backoff with jitter, so that a fleet of
//! nodes that lost Redis together does not reconnect in lock-step, and so that a node
//! notices Redis coming back within the cap (PROTOCOL's recovery target is 2 s).

use std::time::Duration;

/// The delay before each reconnection attempt.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay: `base · 2^attempt`, capped, then scaled by `jitter` in [0, 1)
    /// into [½, 1] of itself (never zero, never over the cap).
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = exp.min(self.cap);
        ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// Connected again: the next loss starts from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        let top: Vec<Duration> = (0..6).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(
            top,
            [50, 100, 200, 400, 500, 500].map(Duration::from_millis)
        );
        assert_eq!(b.next_delay(0.0), Duration::from_millis(250));
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(25));
        for _ in 0..100 {
            assert!(b.next_delay(0.999) <= Duration::from_millis(500));
        }
    }
}
