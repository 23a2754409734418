//! Loss, duplicate and reordering detection from per-topic sequence numbers.
//!
//! Each subscriber expects every topic's sequence to start at 0 (it subscribed before the
//! first publication) and to end at the count the publisher reports.

use std::collections::BTreeSet;

/// Skipped sequence numbers held at most; a gap larger than this is counted as lost at
/// once (a later arrival of one of those is then miscounted as a duplicate).
const MAX_OUTSTANDING: u64 = 1_000_000;

/// Tracks one topic's sequence as seen by one subscriber.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    /// Every seq below this has been seen or is in `missing`.
    next: u64,
    /// Skipped seqs not (yet) seen.
    missing: BTreeSet<u64>,
    /// Counted as lost without being held (huge gaps).
    written_off: u64,
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

/// The verdict for one tracker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GapStats {
    pub received: u64,
    pub losses: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

impl std::ops::AddAssign for GapStats {
    fn add_assign(&mut self, o: GapStats) {
        self.received += o.received;
        self.losses += o.losses;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
    }
}

impl SeqTracker {
    pub fn observe(&mut self, seq: u64) {
        self.received += 1;
        if seq == self.next {
            self.next += 1;
        } else if seq > self.next {
            let gap = seq - self.next;
            if gap > MAX_OUTSTANDING {
                self.written_off += gap;
            } else {
                self.missing.extend(self.next..seq);
            }
            self.next = seq + 1;
        } else if self.missing.remove(&seq) {
            self.reordered += 1;
        } else {
            self.duplicates += 1;
        }
    }

    /// Final figures once `published` publications were made on the topic.
    pub fn finish(&self, published: u64) -> GapStats {
        GapStats {
            received: self.received,
            losses: self.missing.len() as u64
                + self.written_off
                + published.saturating_sub(self.next),
            duplicates: self.duplicates,
            reordered: self.reordered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64], published: u64) -> GapStats {
        let mut t = SeqTracker::default();
        for &s in seqs {
            t.observe(s);
        }
        t.finish(published)
    }

    #[test]
    fn in_order() {
        let s = run(&[0, 1, 2, 3, 4], 5);
        assert_eq!(
            s,
            GapStats {
                received: 5,
                ..Default::default()
            }
        );
    }

    #[test]
    fn gap_and_tail_loss() {
        let s = run(&[0, 1, 4, 5], 8);
        assert_eq!(s.losses, 2 + 2);
        assert_eq!(s.duplicates, 0);
        let s = run(&[], 3);
        assert_eq!(s.losses, 3);
    }

    #[test]
    fn duplicates() {
        let s = run(&[0, 1, 1, 2, 0], 3);
        assert_eq!(s.losses, 0);
        assert_eq!(s.duplicates, 2);
        assert_eq!(s.received, 5);
    }

    #[test]
    fn reordered_is_not_lost() {
        let s = run(&[0, 2, 1, 3, 5, 4], 6);
        assert_eq!(s.losses, 0);
        assert_eq!(s.duplicates, 0);
        assert_eq!(s.reordered, 2);
        // A reordered seq seen again is a duplicate.
        let s = run(&[0, 2, 1, 1], 3);
        assert_eq!((s.losses, s.duplicates, s.reordered), (0, 1, 1));
    }

    #[test]
    fn huge_gap_is_written_off() {
        let s = run(&[0, MAX_OUTSTANDING + 10], MAX_OUTSTANDING + 11);
        assert_eq!(s.losses, MAX_OUTSTANDING + 9);
    }
}
