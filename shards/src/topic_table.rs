//! The shard's subscription table: topic → the local connections subscribed to it.
//!
//! Owned by one shard and touched only there, so routing an event takes no lock. It
//! also tracks, per topic, how many subscribers use each encoding, so that it can tell
//! the ingestor exactly when a (topic, encoding) gains its first or loses its last
//! local subscriber — the ingestor subscribes to Redis and encodes lazily from that.

use std::collections::HashMap;

use coregate_protocol::{Encoding, Topic};
use indexmap::IndexSet;

use crate::bus::InterestChange;

/// A connection's key in the shard's connection slab.
pub type ConnKey = usize;

#[derive(Default)]
struct TopicEntry {
    subscribers: IndexSet<ConnKey>,
    per_encoding: [u32; 2],
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
        if !entry.subscribers.swap_remove(&conn) {
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
            .flat_map(|entry| entry.subscribers.iter().copied())
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

    #[test]
    fn interest_changes_only_at_first_and_last_subscriber_per_encoding() {
        let mut table = LocalTopicTable::default();
        let t = topic("channel:1");
        assert_eq!(
            table.subscribe(&t, 1, Encoding::Json),
            Some(InterestChange::Gained)
        );
        assert_eq!(table.subscribe(&t, 2, Encoding::Json), None);
        assert_eq!(table.subscribe(&t, 2, Encoding::Json), None, "repeat");
        assert_eq!(
            table.subscribe(&t, 3, Encoding::MsgPack),
            Some(InterestChange::Gained)
        );
        assert_eq!(table.subscriber_count(&t), 3);
        assert_eq!(table.unsubscribe(&t, 1, Encoding::Json), None);
        assert_eq!(
            table.unsubscribe(&t, 2, Encoding::Json),
            Some(InterestChange::Lost)
        );
        assert_eq!(table.unsubscribe(&t, 2, Encoding::Json), None, "repeat");
        assert_eq!(
            table.unsubscribe(&t, 3, Encoding::MsgPack),
            Some(InterestChange::Lost)
        );
        assert_eq!(table.topic_count(), 0, "empty topics are dropped");
        assert_eq!(table.subscribers(&t).count(), 0);
    }
}
