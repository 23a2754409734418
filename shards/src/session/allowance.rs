//! Per-connection rate limits: an [`Allowance`] turns a flood into `rate_limited`
//! replies and then a close. Sans-IO: the caller passes `now`, so tests drive time by
//! hand.

use std::time::{Duration, Instant};

use crate::rate_limit::TokenBucket;

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

/// A rate for one kind of message plus the count of refusals in a row: a client that
/// slows down when told is served again, one that keeps sending is closed.
#[derive(Clone, Debug)]
pub struct Allowance {
    bucket: TokenBucket,
    refused_in_a_row: u32,
    flood_after: u32,
}

impl Allowance {
    /// `rate` per `per`, `burst` at once; past `flood_after` refusals in a row, [`Charge::Flood`].
    pub fn new(rate: u32, per: Duration, burst: u32, flood_after: u32, now: Instant) -> Self {
        Allowance {
            bucket: TokenBucket::new(rate, per, burst, now),
            refused_in_a_row: 0,
            flood_after,
        }
    }

    /// Charges one message.
    pub fn charge(&mut self, now: Instant) -> Charge {
        if self.bucket.try_take(now) {
            self.refused_in_a_row = 0;
            return Charge::Allowed;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row > self.flood_after {
            return Charge::Flood;
        }
        Charge::Refused {
            retry_after: self.bucket.retry_after(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_in_a_row_end_in_a_flood_and_an_allowed_message_resets_them() {
        let t0 = Instant::now();
        let mut allowance = Allowance::new(1, Duration::from_secs(1), 1, 2, t0);
        assert_eq!(allowance.charge(t0), Charge::Allowed);
        assert!(matches!(allowance.charge(t0), Charge::Refused { .. }));
        assert!(matches!(allowance.charge(t0), Charge::Refused { .. }));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(allowance.charge(t1), Charge::Allowed, "slowed down: served");
        assert!(matches!(allowance.charge(t1), Charge::Refused { .. }));
        assert!(matches!(allowance.charge(t1), Charge::Refused { .. }));
        assert_eq!(allowance.charge(t1), Charge::Flood);
    }
}
