//! Token buckets for rates: per-connection event limits and per-address connect
//! limits. Sans-IO: the caller passes `now`, so tests drive time by hand.

use std::time::{Duration, Instant};

/// A rate: `burst` events at once and `rate` per `per` on average. Kept once per kind
/// of limit (per shard or node), not in every bucket.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Rate {
    capacity: f64,
    refill_per_sec: f64,
}

impl Rate {
    pub fn new(rate: u32, per: Duration, burst: u32) -> Rate {
        Rate {
            capacity: f64::from(burst.max(1)),
            refill_per_sec: f64::from(rate) / per.as_secs_f64().max(f64::EPSILON),
        }
    }
}

/// One owner's tokens under a [`Rate`] the caller passes in: 24 bytes, since there is
/// one per connection (two, events and pings) and one per address.
#[derive(Clone, Debug)]
pub struct Bucket {
    tokens: f32,
    /// Takes refused since the last one granted: what tells a client that slows down
    /// when told from one that floods. Kept here, beside `tokens`, in what would
    /// otherwise be the struct's padding.
    refused_in_a_row: u32,
    last: Instant,
}

impl Bucket {
    /// A bucket holding its whole burst.
    pub fn full(rate: &Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.capacity as f32,
            refused_in_a_row: 0,
            last: now,
        }
    }

    fn refill(&mut self, rate: &Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let tokens = f64::from(self.tokens) + elapsed * rate.refill_per_sec;
        self.tokens = tokens.min(rate.capacity) as f32;
        self.last = now;
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, rate: &Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            true
        } else {
            self.refused_in_a_row = self.refused_in_a_row.saturating_add(1);
            false
        }
    }

    /// How many takes in a row were refused, up to now.
    pub fn refused_in_a_row(&self) -> u32 {
        self.refused_in_a_row
    }

    /// Whether the bucket has refilled completely: its owner has been quiet for long
    /// enough that forgetting it changes nothing.
    pub fn is_full(&mut self, rate: &Rate, now: Instant) -> bool {
        self.refill(rate, now);
        f64::from(self.tokens) >= rate.capacity
    }

    /// How long until the next token, for `retry_after_ms`.
    pub fn retry_after(&mut self, rate: &Rate, now: Instant) -> Duration {
        self.refill(rate, now);
        if self.tokens >= 1.0 || rate.refill_per_sec <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - f64::from(self.tokens)) / rate.refill_per_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        // 120 per 60 s = 2 per second, burst 20.
        let rate = Rate::new(120, Duration::from_secs(60), 20);
        let mut bucket = Bucket::full(&rate, t0);
        for _ in 0..20 {
            assert!(bucket.try_take(&rate, t0));
        }
        assert!(!bucket.try_take(&rate, t0), "burst spent");
        assert_eq!(bucket.retry_after(&rate, t0), Duration::from_millis(500));
        let t1 = t0 + Duration::from_millis(499);
        assert!(!bucket.try_take(&rate, t1));
        assert_eq!(bucket.refused_in_a_row(), 2);
        let t2 = t0 + Duration::from_millis(500);
        assert!(bucket.try_take(&rate, t2), "one token after half a second");
        assert_eq!(bucket.refused_in_a_row(), 0);
        assert!(!bucket.try_take(&rate, t2));
        let t3 = t2 + Duration::from_secs(3600);
        for _ in 0..20 {
            assert!(bucket.try_take(&rate, t3));
        }
        assert!(!bucket.try_take(&rate, t3), "refill is capped at the burst");
    }

    #[test]
    fn a_bucket_and_its_count_of_refusals_fit_in_24_bytes() {
        // Two per connection: the count lives in what would be padding.
        assert_eq!(std::mem::size_of::<Bucket>(), 24);
    }
}
