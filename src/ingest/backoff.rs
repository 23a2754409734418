//! Reconnection delays: capped exponential backoff with jitter, so that a fleet of
//! nodes that lost Redis together does not reconnect in lock-step, and so that a node
//! notices Redis coming back soon (PROTOCOL's recovery target is 2 s).
//!
//! How soon is set by the cap: once the delays reach it, Redis coming back waits for the
//! next scheduled attempt, up to a whole capped delay later. A restart that falls just
//! after a refused attempt showed it (issue 18): with a 1 s cap, resumption took up to
//! 1 s after Redis answered again, and two nodes' independent jitter put one up to a
//! second behind the other. Most outages are short (a restart, a failover), so while an
//! outage is young the cap is low ([`Backoff::young`]); past that, attempts thin out to
//! the long cap, which bounds what a long outage costs Redis and the nodes.
//!
//! Sans-IO: the caller passes `now` and the jitter, and sleeps.

use std::time::{Duration, Instant};

/// The delay before each reconnection attempt.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// The lower cap while the outage is younger than `young_for`.
    young_cap: Duration,
    young_for: Duration,
    attempt: u32,
    /// When the current outage began (the first delay asked since a reset).
    since: Option<Instant>,
}

impl Backoff {
    /// `base · 2^attempt`, capped at `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            young_cap: cap,
            young_for: Duration::ZERO,
            attempt: 0,
            since: None,
        }
    }

    /// For the first `young_for` of an outage, the cap is `young_cap` instead.
    pub fn young(mut self, young_cap: Duration, young_for: Duration) -> Backoff {
        self.young_cap = young_cap.min(self.cap);
        self.young_for = young_for;
        self
    }

    /// The next delay at `now`: `base · 2^attempt`, capped (lower while the outage is
    /// young), then scaled by `jitter` in [0, 1) into [½, 1] of itself (never zero,
    /// never over the cap). The first call after a reset starts the outage.
    pub fn next_delay(&mut self, now: Instant, jitter: f64) -> Duration {
        let since = *self.since.get_or_insert(now);
        let cap = if now.saturating_duration_since(since) < self.young_for {
            self.young_cap
        } else {
            self.cap
        };
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        exp.min(cap).mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// How long the current outage has lasted at `now` (zero outside one).
    pub fn outage_age(&self, now: Instant) -> Duration {
        self.since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// Connected again: the next loss starts a new outage, from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn grows_exponentially_up_to_the_cap_with_jitter() {
        let now = Instant::now();
        let mut b = Backoff::new(ms(50), ms(500));
        let top: Vec<Duration> = (0..6).map(|_| b.next_delay(now, 1.0)).collect();
        assert_eq!(top, [50, 100, 200, 400, 500, 500].map(ms));
        assert_eq!(b.next_delay(now, 0.0), ms(250));
        b.reset();
        assert_eq!(b.next_delay(now, 0.0), ms(25));
        for _ in 0..100 {
            assert!(b.next_delay(now, 0.999) <= ms(500));
        }
    }

    /// The link's policy: 50 ms doubling, capped at 250 ms for the first 10 s of an
    /// outage, then at 1 s.
    fn policy() -> Backoff {
        Backoff::new(ms(50), Duration::from_secs(1)).young(ms(250), Duration::from_secs(10))
    }

    #[test]
    fn the_cap_is_low_while_the_outage_is_young() {
        let start = Instant::now();
        let mut b = policy();
        let mut now = start;
        let mut delays = Vec::new();
        while now < start + Duration::from_secs(10) {
            let delay = b.next_delay(now, 1.0);
            delays.push(delay);
            now += delay;
        }
        assert_eq!(delays[..5], [50, 100, 200, 250, 250].map(ms));
        assert!(delays.iter().all(|d| *d <= ms(250)), "{delays:?}");
        assert_eq!(b.outage_age(now), now - start);
        // Past 10 s, attempts thin out to the long cap.
        assert_eq!(b.next_delay(now, 1.0), ms(1000));
        assert_eq!(b.next_delay(now, 0.0), ms(500));
        // Connected again: the next outage is young again.
        b.reset();
        assert_eq!(b.outage_age(now), Duration::ZERO);
        let later = now + Duration::from_secs(60);
        assert_eq!(b.next_delay(later, 1.0), ms(50));
        for _ in 0..20 {
            assert!(b.next_delay(later + Duration::from_secs(9), 0.999) <= ms(250));
        }
    }

    /// The attempts made from `start` with `jitter`, until `until`.
    fn attempts(b: &mut Backoff, start: Instant, until: Instant, jitter: f64) -> Vec<Instant> {
        let mut at = vec![];
        let mut now = start;
        while now <= until {
            now += b.next_delay(now, jitter);
            at.push(now);
        }
        at
    }

    /// Redis back at any point of a young outage: the next attempt comes within the
    /// young cap, however the restart falls against the backoff's phase (the slow
    /// rounds of issue 18 were restarts just after a refused attempt).
    #[test]
    fn redis_back_during_a_young_outage_is_noticed_within_a_quarter_second() {
        let lost = Instant::now();
        for jitter in [0.0, 0.3, 0.5, 0.7, 0.999] {
            let at = attempts(&mut policy(), lost, lost + Duration::from_secs(11), jitter);
            for back_ms in (0..10_000).step_by(7) {
                let back = lost + ms(back_ms);
                let next = at.iter().find(|a| **a >= back).expect("an attempt");
                let wait = *next - back;
                assert!(wait <= ms(250), "back at {back_ms} ms waits {wait:?}");
            }
            // An old outage: within the long cap.
            let back = lost + Duration::from_secs(10) + ms(500);
            let next = at.iter().find(|a| **a >= back).expect("an attempt");
            assert!(*next - back <= Duration::from_secs(1));
        }
    }

    #[test]
    fn the_young_cap_never_exceeds_the_cap() {
        let now = Instant::now();
        let mut b = Backoff::new(ms(50), ms(100)).young(ms(250), Duration::from_secs(10));
        for _ in 0..10 {
            assert!(b.next_delay(now, 1.0) <= ms(100));
        }
    }
}
