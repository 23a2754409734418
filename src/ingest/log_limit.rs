//! Warnings about events that can repeat thousands of times a second (a full shard
//! queue, a backend publishing garbage, Redis down): logged once a second at most,
//! with how many were suppressed in between, so that logs stay readable and cheap.

use std::time::{Duration, Instant};

/// At most one log line per `every`.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub const fn per_second() -> LogLimit {
        LogLimit {
            every: Duration::from_secs(1),
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_a_second_with_the_suppressed_count() {
        let mut limit = LogLimit::per_second();
        let t0 = Instant::now();
        assert_eq!(limit.allow(t0), Some(0));
        assert_eq!(limit.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(limit.allow(t0 + Duration::from_millis(999)), None);
        assert_eq!(limit.allow(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(limit.allow(t0 + Duration::from_millis(1500)), None);
    }
}
