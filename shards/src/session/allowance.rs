//! Per-connection rate limits: an [`Allowance`] turns a flood into `rate_limited`
//! replies and then a close. Sans-IO: the caller passes `now`, so tests drive time by
//! hand.

use std::time::{Duration, Instant};

use crate::rate_limit::{Bucket, Rate};

/// What an [`Allowance`] says about one more message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Charge {
    Allowed,
    /// Over the rate: refuse it with `rate_limited` and this `retry_after`.
    Refused {
        retry_after: Duration,
    },
    /// Refused too many times in a row: the client is flooding; close 4008.
    Flood,
}

/// One connection's tokens for one kind of message, with its bucket's count of
/// refusals in a row: a client that slows down when told is served again, one that
/// keeps sending is closed. The rate is the caller's, kept once per shard.
#[derive(Clone, Debug)]
pub struct Allowance {
    bucket: Bucket,
}

impl Allowance {
    pub fn new(rate: &Rate, now: Instant) -> Self {
        Allowance {
            bucket: Bucket::full(rate, now),
        }
    }

    /// Charges one message at `rate`; past `flood_after` refusals in a row, [`Charge::Flood`].
    pub fn charge(&mut self, rate: &Rate, flood_after: u32, now: Instant) -> Charge {
        if self.bucket.try_take(rate, now) {
            return Charge::Allowed;
        }
        if self.bucket.refused_in_a_row() > flood_after {
            return Charge::Flood;
        }
        Charge::Refused {
            retry_after: self.bucket.retry_after(rate, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_in_a_row_end_in_a_flood_and_an_allowed_message_resets_them() {
        let t0 = Instant::now();
        let rate = Rate::new(1, Duration::from_secs(1), 1);
        let mut allowance = Allowance::new(&rate, t0);
        assert_eq!(allowance.charge(&rate, 2, t0), Charge::Allowed);
        assert!(matches!(
            allowance.charge(&rate, 2, t0),
            Charge::Refused { .. }
        ));
        assert!(matches!(
            allowance.charge(&rate, 2, t0),
            Charge::Refused { .. }
        ));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            allowance.charge(&rate, 2, t1),
            Charge::Allowed,
            "slowed down: served"
        );
        assert!(matches!(
            allowance.charge(&rate, 2, t1),
            Charge::Refused { .. }
        ));
        assert!(matches!(
            allowance.charge(&rate, 2, t1),
            Charge::Refused { .. }
        ));
        assert_eq!(allowance.charge(&rate, 2, t1), Charge::Flood);
    }
}
