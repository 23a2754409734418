//! A token bucket for rates: per-connection event limits and per-address connect
//! limits. Sans-IO: the caller passes `now`, so tests drive time by hand.

use std::time::{Duration, Instant};

/// Allows `burst` events at once and `rate` events per `per` on average.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    refill_per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, per: Duration, burst: u32, now: Instant) -> TokenBucket {
        let capacity = f64::from(burst.max(1));
        TokenBucket {
            capacity,
            tokens: capacity,
            refill_per_sec: f64::from(rate) / per.as_secs_f64().max(f64::EPSILON),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_sec).min(self.capacity);
        self.last = now;
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled completely: its owner has been quiet for long
    /// enough that forgetting it changes nothing.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }

    /// How long until the next token, for `retry_after_ms`.
    pub fn retry_after(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 || self.refill_per_sec <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.refill_per_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        // 120 per 60 s = 2 per second, burst 20.
        let mut bucket = TokenBucket::new(120, Duration::from_secs(60), 20, t0);
        for _ in 0..20 {
            assert!(bucket.try_take(t0));
        }
        assert!(!bucket.try_take(t0), "burst spent");
        assert_eq!(bucket.retry_after(t0), Duration::from_millis(500));
        let t1 = t0 + Duration::from_millis(499);
        assert!(!bucket.try_take(t1));
        let t2 = t0 + Duration::from_millis(500);
        assert!(bucket.try_take(t2), "one token after half a second");
        assert!(!bucket.try_take(t2));
        let t3 = t2 + Duration::from_secs(3600);
        for _ in 0..20 {
            assert!(bucket.try_take(t3));
        }
        assert!(!bucket.try_take(t3), "refill is capped at the burst");
    }
}
