//! The router's table of interest: topic → the shards that want it, per encoding.
//!
//! It holds one entry per topic any local connection holds, so at least one per
//! connected user (their connections' `user:<sub>`): with most users connected once,
//! its entry size is paid per connection. The shard sets themselves repeat: a user's topic is wanted by one shard
//! in one encoding, so a node has few distinct pairs of sets however many topics it
//! routes. Each distinct pair is kept once, with a count of the topics that have it,
//! and a topic holds the pair's index: a 24-byte entry instead of 48 (two 16-byte
//! masks beside the name).

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use coregate_protocol::{Encoding, Topic};
use coregate_shards::ShardSet;

/// Per encoding ([`Encoding::index`]), the shards with at least one local subscriber.
pub type Wanted = [ShardSet; 2];

/// See the module docs.
#[derive(Debug, Default)]
pub struct InterestTable {
    topics: HashMap<Topic, PairId>,
    pairs: DistinctPairs,
}

/// Whether a topic was wanted before a change and is after it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub was_wanted: bool,
    pub is_wanted: bool,
}

impl InterestTable {
    /// The shards that want `topic`, if any do.
    pub fn get(&self, topic: &Topic) -> Option<Wanted> {
        self.topics.get(topic).map(|id| self.pairs.get(*id))
    }

    pub fn contains(&self, topic: &Topic) -> bool {
        self.topics.contains_key(topic)
    }

    /// How many topics some shard wants.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.topics.keys()
    }

    /// Adds `shard_id` to (`wanted`) or removes it from the shards that want `topic` in
    /// `encoding`; a topic left with no shard is forgotten.
    pub fn set(
        &mut self,
        topic: &Topic,
        encoding: Encoding,
        shard_id: usize,
        wanted: bool,
    ) -> Transition {
        let apply = |mut pair: Wanted| {
            let set = &mut pair[encoding.index()];
            if wanted {
                set.insert(shard_id);
            } else {
                set.remove(shard_id);
            }
            pair
        };
        let is_empty = |pair: &Wanted| pair.iter().all(ShardSet::is_empty);
        match self.topics.entry(topic.clone()) {
            Entry::Occupied(mut entry) => {
                let id = *entry.get();
                let before = self.pairs.get(id);
                let after = apply(before);
                if after != before {
                    self.pairs.release(id);
                    if is_empty(&after) {
                        entry.remove();
                    } else {
                        entry.insert(self.pairs.intern(after));
                    }
                }
                Transition {
                    was_wanted: true,
                    is_wanted: !is_empty(&after),
                }
            }
            Entry::Vacant(entry) => {
                let after = apply(Wanted::default());
                let is_wanted = !is_empty(&after);
                if is_wanted {
                    entry.insert(self.pairs.intern(after));
                }
                Transition {
                    was_wanted: false,
                    is_wanted,
                }
            }
        }
    }

    /// How many distinct pairs of sets are kept.
    #[cfg(test)]
    fn distinct_pairs(&self) -> usize {
        self.pairs.ids.len()
    }
}

/// The index of a pair in [`DistinctPairs`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct PairId(u32);

/// Each distinct [`Wanted`] once, counted; a place whose count falls to zero is reused.
#[derive(Debug, Default)]
struct DistinctPairs {
    /// By [`PairId`]: the pair and how many topics hold its id.
    pairs: Vec<(Wanted, u32)>,
    ids: HashMap<Wanted, PairId>,
    free: Vec<PairId>,
}

impl DistinctPairs {
    fn get(&self, id: PairId) -> Wanted {
        self.pairs[id.0 as usize].0
    }

    /// The id of `pair`, counted once more.
    fn intern(&mut self, pair: Wanted) -> PairId {
        if let Some(&id) = self.ids.get(&pair) {
            self.pairs[id.0 as usize].1 += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.pairs[id.0 as usize] = (pair, 1);
                id
            }
            None => {
                // At most one pair per topic, and far fewer: u32 is ample.
                self.pairs.push((pair, 1));
                PairId((self.pairs.len() - 1) as u32)
            }
        };
        self.ids.insert(pair, id);
        id
    }

    /// One topic fewer holds `id`.
    fn release(&mut self, id: PairId) {
        let (pair, count) = &mut self.pairs[id.0 as usize];
        *count -= 1;
        if *count == 0 {
            self.ids.remove(pair);
            self.free.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::parse(s).expect("topic")
    }

    #[test]
    fn an_entry_is_a_name_and_an_index() {
        assert_eq!(std::mem::size_of::<(Topic, PairId)>(), 24);
    }

    #[test]
    fn a_topic_is_wanted_until_its_last_shard_in_either_encoding_goes() {
        let mut table = InterestTable::default();
        let t = topic("channel:1");
        let step = |table: &mut InterestTable, encoding, shard, wanted| {
            let s = table.set(&t, encoding, shard, wanted);
            (s.was_wanted, s.is_wanted)
        };
        assert_eq!(step(&mut table, Encoding::Json, 0, true), (false, true));
        assert_eq!(step(&mut table, Encoding::MsgPack, 1, true), (true, true));
        let mut expected = Wanted::default();
        expected[Encoding::Json.index()].insert(0);
        expected[Encoding::MsgPack.index()].insert(1);
        assert_eq!(table.get(&t), Some(expected));
        assert_eq!(step(&mut table, Encoding::Json, 0, false), (true, true));
        assert_eq!(step(&mut table, Encoding::MsgPack, 1, false), (true, false));
        assert_eq!(table.get(&t), None);
        assert_eq!(table.len(), 0);
        assert_eq!(
            step(&mut table, Encoding::MsgPack, 1, false),
            (false, false)
        );
        assert_eq!(table.distinct_pairs(), 0, "nothing left behind");
    }

    #[test]
    fn topics_wanted_alike_share_one_pair_and_it_goes_with_the_last() {
        let mut table = InterestTable::default();
        let users: Vec<Topic> = (0..1000).map(|i| topic(&format!("user:{i}"))).collect();
        for (i, t) in users.iter().enumerate() {
            table.set(t, Encoding::Json, i % 2, true);
        }
        assert_eq!(table.len(), 1000);
        assert_eq!(table.distinct_pairs(), 2, "shard 0 or shard 1, in JSON");
        // A user's topic moving to both shards makes a third pair, and its old pair
        // stays while other topics hold it.
        table.set(&users[0], Encoding::Json, 1, true);
        assert_eq!(table.distinct_pairs(), 3);
        let mut both = Wanted::default();
        both[Encoding::Json.index()].insert(0);
        both[Encoding::Json.index()].insert(1);
        assert_eq!(table.get(&users[0]), Some(both));
        let mut one = Wanted::default();
        one[Encoding::Json.index()].insert(1);
        assert_eq!(table.get(&users[1]), Some(one), "its neighbour unchanged");
        for (i, t) in users.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
            table.set(t, Encoding::Json, i % 2, false);
        }
        assert_eq!(table.len(), 500);
        assert_eq!(
            table.distinct_pairs(),
            2,
            "shard 1's pair went with its last topic"
        );
        // Its freed place is reused rather than the vector grown.
        table.set(&users[1], Encoding::MsgPack, 3, true);
        assert_eq!(table.pairs.pairs.len(), 3);
        assert_eq!(table.distinct_pairs(), 3);
    }
}
