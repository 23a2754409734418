//! The node's routing table: topic → shards (one set per encoding), and the fan-out of
//! a publication to exactly those shards.
//!
//! Each publication is encoded once per encoding that has subscribers and handed,
//! reference-counted, to the interested shards over their bounded queues; a full
//! queue is counted and logged, never waited on. The router is the same with or
//! without Redis: only where publications come from differs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use coregate_protocol::{Encoding, Publication, Topic};
use coregate_shards::{InterestChange, ShardMessage, ShardSender, ShardSet, SharedDelivery};

use super::log_limit::LogLimit;
use super::IngestorStats;

/// See the module docs.
pub struct Router {
    shards: Vec<ShardSender>,
    /// Per topic, per encoding: the shards with at least one local subscriber.
    interest: HashMap<Topic, [ShardSet; 2]>,
    stats: Arc<IngestorStats>,
    full_warnings: LogLimit,
}

impl Router {
    pub fn new(shards: Vec<ShardSender>, stats: Arc<IngestorStats>) -> Router {
        Router {
            shards,
            interest: HashMap::new(),
            stats,
            full_warnings: LogLimit::per_second(),
        }
    }

    /// Applies a shard's interest change. Returns the node-wide change, if any: the
    /// topic's first local subscriber on any shard, or its last one gone. That is
    /// when the node's Redis subscription must follow.
    pub fn change_interest(
        &mut self,
        shard_id: usize,
        topic: Topic,
        encoding: Encoding,
        change: InterestChange,
    ) -> Option<(Topic, InterestChange)> {
        let node_change = match change {
            InterestChange::Gained => {
                let known = self.interest.contains_key(&topic);
                self.interest.entry(topic.clone()).or_default()[encoding.index()].insert(shard_id);
                (!known).then_some((topic, InterestChange::Gained))
            }
            InterestChange::Lost => {
                let emptied = self.interest.get_mut(&topic).is_some_and(|sets| {
                    sets[encoding.index()].remove(shard_id);
                    sets.iter().all(ShardSet::is_empty)
                });
                if emptied {
                    self.interest.remove(&topic);
                }
                emptied.then_some((topic, InterestChange::Lost))
            }
        };
        self.stats
            .topics_of_interest
            .store(self.interest.len() as u64, Ordering::Relaxed);
        node_change
    }

    /// The counters this router updates, shared with the rest of the ingestor.
    pub fn stats(&self) -> &Arc<IngestorStats> {
        &self.stats
    }

    /// Whether any local shard wants `topic`.
    pub fn is_wanted(&self, topic: &Topic) -> bool {
        self.interest.contains_key(topic)
    }

    /// Every topic some local shard wants.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.interest.keys()
    }

    /// Encodes once per encoding in use and hands the event to each interested shard.
    pub fn deliver(&mut self, publication: Publication) {
        self.stats.publications.fetch_add(1, Ordering::Relaxed);
        let Some(sets) = self.interest.get(publication.topic()).copied() else {
            self.stats
                .publications_without_subscribers
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let delivery = SharedDelivery::new(publication, Instant::now());
        for encoding in Encoding::ALL {
            if !sets[encoding.index()].is_empty() {
                delivery.wire(encoding);
            }
        }
        let delivery = Arc::new(delivery);
        for shard_id in sets[0].union(sets[1]).iter() {
            let Some(shard) = self.shards.get(shard_id) else {
                continue;
            };
            if let Err(error) = shard.try_send(ShardMessage::Deliver(delivery.clone())) {
                self.stats.shard_queue_full.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.full_warnings.allow(Instant::now()) {
                    tracing::warn!(%error, suppressed, "event dropped: a shard's queue is full");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_interest_follows_the_first_and_last_shard() {
        let mut router = Router::new(Vec::new(), Arc::new(IngestorStats::default()));
        let topic = Topic::parse("channel:1").expect("topic");
        let gained = |r: &mut Router, shard, enc| {
            r.change_interest(shard, topic.clone(), enc, InterestChange::Gained)
        };
        let lost = |r: &mut Router, shard, enc| {
            r.change_interest(shard, topic.clone(), enc, InterestChange::Lost)
        };
        assert_eq!(
            gained(&mut router, 0, Encoding::Json),
            Some((topic.clone(), InterestChange::Gained))
        );
        assert_eq!(gained(&mut router, 1, Encoding::Json), None);
        assert_eq!(gained(&mut router, 1, Encoding::MsgPack), None);
        assert_eq!(lost(&mut router, 0, Encoding::Json), None);
        assert_eq!(lost(&mut router, 1, Encoding::Json), None);
        assert!(router.is_wanted(&topic));
        assert_eq!(
            lost(&mut router, 1, Encoding::MsgPack),
            Some((topic.clone(), InterestChange::Lost))
        );
        assert!(!router.is_wanted(&topic));
        assert_eq!(lost(&mut router, 1, Encoding::MsgPack), None, "idempotent");
    }
}
