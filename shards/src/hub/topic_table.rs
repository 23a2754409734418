//! The shard's subscription table: topic → the local connections subscribed to it.
//!
//! Owned by one shard and touched only there, so routing an event takes no lock. It
//! also tracks, per topic, how many subscribers use each encoding, so that it can tell
//! the ingestor exactly when a (topic, encoding) gains its first or loses its last
//! local subscriber — the ingestor subscribes to Redis and encodes lazily from that.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use coregate_protocol::{Encoding, Topic};

use super::ConnKey;
use crate::bus::InterestChange;

#[derive(Default)]
struct TopicEntry {
    subscribers: Subscribers,
    per_encoding: [u32; 2],
}

/// The connections subscribed to one topic. Most topics of a busy node have a single
/// local subscriber (every connection's own `user:<sub>`), so that case is kept inline
/// instead of in a set's heap allocation, and the set is boxed so that the table's
/// entries stay small (24 bytes instead of 88: one per connection, at least). The set
/// is a hash set of raw keys in slab order ([`SlabOrder`]; ~9 bytes a member at its
/// fullest, 18 just after it doubled): `global` holds every connection of the shard,
/// and an insertion-ordered set paid 16 bytes a member for its entries besides the
/// same index (~80 bytes a connection at 5,000).
#[derive(Default)]
enum Subscribers {
    #[default]
    None,
    One(ConnKey),
    // Boxed on purpose (see above): a set inline is 32 bytes in every entry.
    #[allow(clippy::box_collection)]
    Many(Box<SubscriberSet>),
}

/// Raw [`ConnKey`]s, placed and walked in slab order.
type SubscriberSet = HashSet<u64, BuildHasherDefault<SlabOrder>>;

/// Hashes a raw connection key to its slab index in the low bits, which place it in
/// the table, so that a set's iteration follows the slab: a fan-out walks the sessions
/// in the order they were made, mostly the order they sit in memory, as the
/// insertion-ordered set did, instead of at random (which cost ~7% of the deliveries
/// per CPU-second at 1M/s). The top seven bits, which the table compares first when it
/// probes, are mixed from the whole key.
#[derive(Default)]
struct SlabOrder(u64);

impl Hasher for SlabOrder {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) | u64::from(*byte);
        }
    }

    fn write_u64(&mut self, raw_key: u64) {
        self.0 = raw_key;
    }

    fn finish(&self) -> u64 {
        const TOP_SEVEN: u64 = 0x7f << 57;
        let index = self.0 & u64::from(u32::MAX);
        index | (self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) & TOP_SEVEN)
    }
}

impl Subscribers {
    /// Adds `conn`; `false` when it was already there.
    fn insert(&mut self, conn: ConnKey) -> bool {
        match self {
            Subscribers::None => {
                *self = Subscribers::One(conn);
                true
            }
            Subscribers::Many(set) => set.insert(conn.to_raw()),
            Subscribers::One(only) if *only == conn => false,
            Subscribers::One(only) => {
                let mut set = SubscriberSet::with_capacity_and_hasher(2, Default::default());
                set.insert(only.to_raw());
                set.insert(conn.to_raw());
                *self = Subscribers::Many(Box::new(set));
                true
            }
        }
    }

    /// Removes `conn`; `false` when it was not there.
    fn remove(&mut self, conn: ConnKey) -> bool {
        match self {
            Subscribers::One(only) if *only == conn => {
                *self = Subscribers::None;
                true
            }
            Subscribers::None | Subscribers::One(_) => false,
            Subscribers::Many(set) => set.remove(&conn.to_raw()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Subscribers::None => 0,
            Subscribers::One(_) => 1,
            Subscribers::Many(set) => set.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn iter(&self) -> impl Iterator<Item = ConnKey> + '_ {
        let (one, many) = match self {
            Subscribers::None => (None, None),
            Subscribers::One(only) => (Some(*only), None),
            Subscribers::Many(set) => (None, Some(set.iter().copied().map(ConnKey::from_raw))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// topic → local subscribers; see the module docs.
#[derive(Default)]
pub struct LocalTopicTable {
    topics: HashMap<Topic, TopicEntry>,
}

impl LocalTopicTable {
    /// Adds `conn` to `topic`. Returns the interest change for the ingestor, if any.
    /// Adding a connection already subscribed changes nothing.
    pub fn subscribe(
        &mut self,
        topic: &Topic,
        conn: ConnKey,
        encoding: Encoding,
    ) -> Option<InterestChange> {
        let entry = match self.topics.get_mut(topic) {
            Some(entry) => entry,
            None => self.topics.entry(topic.clone()).or_default(),
        };
        if !entry.subscribers.insert(conn) {
            return None;
        }
        let count = &mut entry.per_encoding[encoding.index()];
        *count += 1;
        (*count == 1).then_some(InterestChange::Gained)
    }

    /// Removes `conn` from `topic`. Returns the interest change for the ingestor, if any.
    pub fn unsubscribe(
        &mut self,
        topic: &Topic,
        conn: ConnKey,
        encoding: Encoding,
    ) -> Option<InterestChange> {
        let entry = self.topics.get_mut(topic)?;
        if !entry.subscribers.remove(conn) {
            return None;
        }
        let count = &mut entry.per_encoding[encoding.index()];
        *count -= 1;
        let lost = *count == 0;
        if entry.subscribers.is_empty() {
            self.topics.remove(topic);
        }
        lost.then_some(InterestChange::Lost)
    }

    /// The local subscribers of `topic`, in no particular order.
    pub fn subscribers(&self, topic: &Topic) -> impl Iterator<Item = ConnKey> + '_ {
        self.topics
            .get(topic)
            .into_iter()
            .flat_map(|entry| entry.subscribers.iter())
    }

    pub fn subscriber_count(&self, topic: &Topic) -> usize {
        self.topics.get(topic).map_or(0, |e| e.subscribers.len())
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::parse(s).expect("valid topic")
    }

    fn key(index: u32) -> ConnKey {
        ConnKey {
            index,
            generation: 0,
        }
    }

    #[test]
    fn interest_changes_only_at_first_and_last_subscriber_per_encoding() {
        let mut table = LocalTopicTable::default();
        let t = topic("channel:1");
        assert_eq!(
            table.subscribe(&t, key(1), Encoding::Json),
            Some(InterestChange::Gained)
        );
        assert_eq!(table.subscribe(&t, key(2), Encoding::Json), None);
        assert_eq!(table.subscribe(&t, key(2), Encoding::Json), None, "repeat");
        assert_eq!(
            table.subscribe(&t, key(3), Encoding::MsgPack),
            Some(InterestChange::Gained)
        );
        assert_eq!(table.subscriber_count(&t), 3);
        assert_eq!(table.unsubscribe(&t, key(1), Encoding::Json), None);
        assert_eq!(
            table.unsubscribe(&t, key(2), Encoding::Json),
            Some(InterestChange::Lost)
        );
        assert_eq!(
            table.unsubscribe(&t, key(2), Encoding::Json),
            None,
            "repeat"
        );
        assert_eq!(
            table.unsubscribe(&t, key(3), Encoding::MsgPack),
            Some(InterestChange::Lost)
        );
        assert_eq!(table.topic_count(), 0, "empty topics are dropped");
        assert_eq!(table.subscribers(&t).count(), 0);
    }

    #[test]
    fn an_entry_stays_small() {
        // One per connection at least (its `user:<sub>`), in a table kept half full
        // on average: every byte here counts about twice per idle connection.
        assert!(std::mem::size_of::<TopicEntry>() <= 24);
    }

    #[test]
    fn a_topics_subscribers_are_walked_in_slab_order() {
        let mut table = LocalTopicTable::default();
        let t = topic("global");
        let keys: Vec<ConnKey> = (0..1000)
            .map(|index| ConnKey {
                index,
                generation: index.wrapping_mul(31),
            })
            .collect();
        for &key in keys.iter().rev() {
            table.subscribe(&t, key, Encoding::Json);
        }
        assert_eq!(table.subscribers(&t).collect::<Vec<_>>(), keys);
    }

    #[test]
    fn a_single_subscriber_grows_into_a_set_and_back() {
        let mut table = LocalTopicTable::default();
        let t = topic("user:alice");
        table.subscribe(&t, key(7), Encoding::Json);
        assert_eq!(table.subscribers(&t).collect::<Vec<_>>(), vec![key(7)]);
        assert_eq!(table.subscribe(&t, key(7), Encoding::Json), None, "repeat");
        table.subscribe(&t, key(9), Encoding::Json);
        let mut both: Vec<_> = table.subscribers(&t).collect();
        both.sort_unstable_by_key(|k| k.index);
        assert_eq!(both, vec![key(7), key(9)]);
        assert_eq!(
            table.unsubscribe(&t, key(3), Encoding::Json),
            None,
            "not there"
        );
        table.unsubscribe(&t, key(7), Encoding::Json);
        assert_eq!(table.subscribers(&t).collect::<Vec<_>>(), vec![key(9)]);
        assert_eq!(
            table.unsubscribe(&t, key(9), Encoding::Json),
            Some(InterestChange::Lost)
        );
        assert_eq!(table.topic_count(), 0);
    }
}
