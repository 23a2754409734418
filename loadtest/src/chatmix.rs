//! The `chat` scenario's mix, as pure functions of a connection index (or a publication
//! number) and a seed, so every worker process derives the same plan without talking to
//! the others, and tests can check its proportions.
//!
//! Topics are `channel:0 .. channel:<L-1>` (the large channels, every user is in one) and
//! `channel:<L> .. channel:<L+S-1>` (the small ones, each user is in a few). A fraction of
//! users churn (resubscribe or reconnect every so often); a fraction type.

use serde::{Deserialize, Serialize};

/// The shape of a chat run; travels to worker processes inside the fleet spec.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChatMix {
    /// Large channels (`channel:0 .. L-1`); user i is in `i mod L`.
    pub large_channels: u32,
    /// Small channels (`channel:L .. L+S-1`).
    pub small_channels: u32,
    /// Small channels each user joins.
    pub channels_per_user: u32,
    /// Share of publications that go to large channels (0..=1).
    pub large_share: f64,
    /// Fraction of users that churn (they are not checked for losses).
    pub churn_fraction: f64,
    /// Mean time between two churn actions of one churning user, ms.
    pub churn_period_ms: u64,
    /// Fraction of users that send typing bursts.
    pub typing_fraction: f64,
    /// Mean time between two typing bursts of one typing user, ms.
    pub typing_period_ms: u64,
    /// `typing_start` ops in one burst (sent one second apart, as clients re-send them).
    pub typing_burst: u32,
    pub seed: u64,
}

/// What a churning user does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChurnAction {
    /// Leave small channel slot `slot` of its list and join `channel:<to>` instead.
    Resubscribe { slot: u32, to: u32 },
    /// Close the connection and open a new one with the same subscriptions.
    Reconnect,
}

/// SplitMix64: a fast, well-mixed hash of one word, enough to spread a plan evenly.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A uniform value in [0, 1) from a hash.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether `i` is in the evenly spread fraction (exactly ⌊n·f⌋ of the first n), shifted by
/// `phase` so two fractions over the same users do not pick the same ones.
pub fn spread(i: u64, fraction: f64, phase: u64) -> bool {
    let f = fraction.clamp(0.0, 1.0);
    let j = i.wrapping_add(phase);
    ((j + 1) as f64 * f).floor() > (j as f64 * f).floor()
}

impl ChatMix {
    /// Every topic index in use (`published` vectors have this length).
    pub fn topics(&self) -> u32 {
        self.large_channels + self.small_channels
    }

    fn h(&self, a: u64, b: u64) -> u64 {
        mix64(mix64(self.seed ^ a).wrapping_add(b))
    }

    /// The channels user `i` joins at connect time: its large channel, then distinct small
    /// ones.
    pub fn topics_of(&self, i: u64) -> Vec<u32> {
        let mut out = Vec::new();
        if self.large_channels > 0 {
            out.push((i % u64::from(self.large_channels)) as u32);
        }
        let want = self.channels_per_user.min(self.small_channels);
        let mut k = 0u64;
        while (out.len() as u32) < want + u32::from(self.large_channels > 0) {
            let small = (self.h(i, k) % u64::from(self.small_channels)) as u32;
            let topic = self.large_channels + small;
            if !out.contains(&topic) {
                out.push(topic);
            }
            k += 1;
        }
        out
    }

    pub fn is_churner(&self, i: u64) -> bool {
        spread(i, self.churn_fraction, 0)
    }

    pub fn is_typist(&self, i: u64) -> bool {
        spread(i, self.typing_fraction, 1 + self.seed % 7919)
    }

    /// The topic of publication number `n`.
    pub fn publication_topic(&self, n: u64) -> u32 {
        let h = self.h(u64::MAX, n);
        let to_large =
            self.large_channels > 0 && (self.small_channels == 0 || unit(h) < self.large_share);
        let pick = mix64(h);
        if to_large {
            (pick % u64::from(self.large_channels)) as u32
        } else {
            self.large_channels + (pick % u64::from(self.small_channels.max(1))) as u32
        }
    }

    /// Delay before user `i`'s `k`-th action of a kind with mean `period_ms`: uniform in
    /// [0.5, 1.5) × the period, so actions don't line up across users.
    pub fn delay_ms(&self, i: u64, k: u64, period_ms: u64) -> u64 {
        let u = unit(self.h(i ^ 0x5EED, k));
        ((0.5 + u) * period_ms as f64) as u64
    }

    /// User `i`'s `k`-th churn action, given how many small channels it holds now.
    pub fn churn_action(&self, i: u64, k: u64, small_held: u32) -> ChurnAction {
        let h = self.h(i ^ 0xC4A7, k);
        if small_held == 0 || self.small_channels < 2 || h.is_multiple_of(3) {
            return ChurnAction::Reconnect;
        }
        let slot = (mix64(h) % u64::from(small_held)) as u32;
        let to = self.large_channels + (mix64(h ^ 1) % u64::from(self.small_channels)) as u32;
        ChurnAction::Resubscribe { slot, to }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix() -> ChatMix {
        ChatMix {
            large_channels: 2,
            small_channels: 100,
            channels_per_user: 3,
            large_share: 0.25,
            churn_fraction: 0.2,
            churn_period_ms: 4000,
            typing_fraction: 0.3,
            typing_period_ms: 5000,
            typing_burst: 3,
            seed: 42,
        }
    }

    #[test]
    fn every_user_gets_one_large_and_distinct_small_channels() {
        let m = mix();
        let mut per_topic = vec![0u32; m.topics() as usize];
        for i in 0..1000 {
            let t = m.topics_of(i);
            assert_eq!(t.len(), 4, "{t:?}");
            assert_eq!(t[0], (i % 2) as u32);
            assert!(t[1..].iter().all(|&x| (2..102).contains(&x)));
            let mut d = t.clone();
            d.dedup();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 4);
            for x in t {
                per_topic[x as usize] += 1;
            }
        }
        // Large channels hold half the users each; small ones about 30 (3000 / 100).
        assert_eq!(per_topic[0], 500);
        assert_eq!(per_topic[1], 500);
        let small = &per_topic[2..];
        assert!(small.iter().all(|&n| (5..=70).contains(&n)), "{small:?}");
        assert_eq!(small.iter().sum::<u32>(), 3000);
        // Deterministic.
        assert_eq!(m.topics_of(7), m.topics_of(7));
    }

    #[test]
    fn fractions_and_shares() {
        let m = mix();
        assert_eq!((0..1000).filter(|&i| m.is_churner(i)).count(), 200);
        let typists = (0..1000).filter(|&i| m.is_typist(i)).count();
        assert!((299..=301).contains(&typists), "{typists}");
        let to_large = (0..10_000).filter(|&n| m.publication_topic(n) < 2).count();
        assert!((2300..2700).contains(&to_large), "{to_large}");
        assert!((0..10_000).all(|n| m.publication_topic(n) < m.topics()));
        let only_large = ChatMix {
            small_channels: 0,
            ..mix()
        };
        assert!((0..100).all(|n| only_large.publication_topic(n) < 2));
    }

    #[test]
    fn delays_and_churn_actions() {
        let m = mix();
        for k in 0..100 {
            let d = m.delay_ms(3, k, 4000);
            assert!((2000..6000).contains(&d), "{d}");
        }
        let actions: Vec<_> = (0..300).map(|k| m.churn_action(5, k, 3)).collect();
        let reconnects = actions
            .iter()
            .filter(|a| **a == ChurnAction::Reconnect)
            .count();
        assert!((60..140).contains(&reconnects), "{reconnects}");
        for a in actions {
            if let ChurnAction::Resubscribe { slot, to } = a {
                assert!(slot < 3);
                assert!((2..102).contains(&to));
            }
        }
        assert_eq!(m.churn_action(5, 0, 0), ChurnAction::Reconnect);
    }
}
