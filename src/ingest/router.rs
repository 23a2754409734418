//! The node's routing table: topic → shards (one set per encoding), and the fan-out of
//! a publication to exactly those shards.
//!
//! Each publication is encoded once per encoding that has subscribers and handed,
//! reference-counted, to the interested shards over their bounded queues; a full
//! queue is counted and logged, never waited on. The router is the same with or
//! without Redis: only where publications come from differs.
//!
//! Work follows the encodings in use: a message from Redis is decoded with its `d` made
//! only in the encodings the topic's local subscribers use (and not parsed at all for a
//! topic nobody here wants), and only those encodings are framed. A publication made
//! elsewhere on the node (`/publish`, typing) arrives with `d` as JSON; MessagePack, if in
//! use, is converted from it while framing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use coregate_protocol::{Encoding, EncodingSet, Publication, PublicationError, Topic};
use coregate_shards::history::HistoryPolicy;
use coregate_shards::{InterestChange, ShardMessage, ShardSender, SharedDelivery};

use super::interest::{InterestTable, Transition, Wanted};
use super::log_limit::LogLimit;
use super::IngestorStats;

/// See the module docs.
pub struct Router {
    shards: Vec<ShardSender>,
    /// Per topic, per encoding: the shards with at least one local subscriber.
    interest: InterestTable,
    stats: Arc<IngestorStats>,
    full_warnings: LogLimit,
    /// `--history`: which topics' publications should come with an offset.
    history: HistoryPolicy,
}

impl Router {
    pub fn new(
        shards: Vec<ShardSender>,
        stats: Arc<IngestorStats>,
        history: HistoryPolicy,
    ) -> Router {
        Router {
            shards,
            interest: InterestTable::default(),
            stats,
            full_warnings: LogLimit::per_second(),
            history,
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
        let wanted = matches!(change, InterestChange::Gained);
        let node_change = match self.interest.set(&topic, encoding, shard_id, wanted) {
            Transition {
                was_wanted: false,
                is_wanted: true,
            } => Some((topic, InterestChange::Gained)),
            Transition {
                was_wanted: true,
                is_wanted: false,
            } => Some((topic, InterestChange::Lost)),
            _ => None,
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
        self.interest.contains(topic)
    }

    /// Every topic some local shard wants.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.interest.topics()
    }

    /// Decodes a message that Redis delivered on `channel` and delivers it, with `d` made
    /// only in the encodings in use for its topic. A payload for a topic nobody here wants
    /// (an UNSUBSCRIBE racing it) is counted and dropped unparsed. Errors are the caller's
    /// to count and log.
    pub fn receive(
        &mut self,
        channel: &[u8],
        prefix: &str,
        payload: &[u8],
        max_size: usize,
    ) -> Result<(), PublicationError> {
        if payload.len() > max_size {
            return Err(PublicationError::TooLarge {
                size: payload.len(),
                max: max_size,
            });
        }
        let topic = Publication::topic_of_channel(channel, prefix)?;
        let Some(sets) = self.interest.get(&topic) else {
            self.stats.publications.fetch_add(1, Ordering::Relaxed);
            self.stats
                .publications_without_subscribers
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        // simd-json parses in place, and the message is Redis's.
        let mut payload = payload.to_vec();
        let publication = Publication::from_backend_payload_in(
            topic,
            &mut payload,
            max_size,
            encodings_in(&sets),
        )?;
        let unrecoverable = publication.offset().is_none()
            && !publication.is_ephemeral()
            && self.history.retention(publication.topic()).is_some();
        if unrecoverable {
            self.stats
                .history_publications_without_offset
                .fetch_add(1, Ordering::Relaxed);
        }
        self.deliver_to(publication, sets);
        Ok(())
    }

    /// Encodes once per encoding in use and hands the event to each interested shard.
    /// The delivery is made already: the embedded bus's history holds the same one, so
    /// a replay is encoded no more than the live event.
    pub fn deliver_shared(&mut self, delivery: Arc<SharedDelivery>) {
        let Some(sets) = self.interest.get(delivery.topic()) else {
            self.stats.publications.fetch_add(1, Ordering::Relaxed);
            self.stats
                .publications_without_subscribers
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.send_delivery(delivery, sets);
    }

    /// Every shard's inbox, by shard id.
    pub fn shards(&self) -> &[ShardSender] {
        &self.shards
    }

    /// Hands one shard the answer to a request of one of its connections
    /// ([`ShardSender::answer`]: never refused for space; a stopped shard has no one
    /// waiting).
    pub fn answer(&self, shard_id: usize, message: ShardMessage) {
        if let Some(shard) = self.shards.get(shard_id) {
            let _ = shard.answer(message);
        }
    }

    fn deliver_to(&mut self, publication: Publication, sets: Wanted) {
        let delivery = Arc::new(SharedDelivery::new(publication, Instant::now()));
        self.send_delivery(delivery, sets);
    }

    fn send_delivery(&mut self, delivery: Arc<SharedDelivery>, sets: Wanted) {
        self.stats.publications.fetch_add(1, Ordering::Relaxed);
        for encoding in encodings_in(&sets).iter() {
            delivery.wire(encoding);
        }
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

/// The encodings with at least one interested shard.
fn encodings_in(sets: &Wanted) -> EncodingSet {
    Encoding::ALL
        .into_iter()
        .filter(|e| !sets[e.index()].is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use coregate_shards::bus::LocalInbox;
    use coregate_shards::shard_inbox;

    #[test]
    fn node_interest_follows_the_first_and_last_shard() {
        let mut router = Router::new(
            Vec::new(),
            Arc::new(IngestorStats::default()),
            HistoryPolicy::default(),
        );
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

    const PAYLOAD: &[u8] = br#"{"op":"message_new","d":{"id":1,"text":"hi"}}"#;

    /// A router over two shards with their inboxes.
    fn two_shards() -> (Router, Vec<LocalInbox>) {
        let (senders, inboxes) = (0..2).map(|id| shard_inbox(id, 8)).unzip();
        (
            Router::new(
                senders,
                Arc::new(IngestorStats::default()),
                HistoryPolicy::default(),
            ),
            inboxes,
        )
    }

    fn delivered(inbox: &LocalInbox) -> Arc<SharedDelivery> {
        match inbox.try_recv() {
            Some(ShardMessage::Deliver(delivery)) => delivery,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    #[test]
    fn only_the_encodings_in_use_are_made() {
        for (in_use, unused) in [
            (Encoding::Json, Encoding::MsgPack),
            (Encoding::MsgPack, Encoding::Json),
        ] {
            let (mut router, inboxes) = two_shards();
            let topic = Topic::parse("channel:1").expect("topic");
            router.change_interest(1, topic.clone(), in_use, InterestChange::Gained);
            router
                .receive(b"cg:channel:1", "cg:", PAYLOAD, 1024)
                .expect("routed");
            assert!(inboxes[0].try_recv().is_none());
            let delivery = delivered(&inboxes[1]);
            // Framed in the encoding in use by the ingestor, and `d` decoded in it alone:
            // nothing at all was made for the other.
            assert!(delivery.encoded(in_use).is_some(), "{in_use}");
            assert!(delivery.encoded(unused).is_none(), "{unused} framed");
            assert_eq!(delivery.publication().d_forms(), EncodingSet::only(in_use));
            let expected = Publication::from_redis_message(
                b"cg:channel:1",
                "cg:",
                &mut PAYLOAD.to_vec(),
                1024,
            )
            .expect("decode")
            .encode(in_use);
            assert_eq!(delivery.wire(in_use).message(), &expected[..]);
        }
    }

    #[test]
    fn both_encodings_when_both_are_in_use() {
        let (mut router, inboxes) = two_shards();
        let topic = Topic::parse("channel:1").expect("topic");
        router.change_interest(0, topic.clone(), Encoding::Json, InterestChange::Gained);
        router.change_interest(1, topic.clone(), Encoding::MsgPack, InterestChange::Gained);
        router
            .receive(b"channel:1", "", PAYLOAD, 1024)
            .expect("routed");
        let (first, second) = (delivered(&inboxes[0]), delivered(&inboxes[1]));
        assert!(Arc::ptr_eq(&first, &second), "one delivery for the node");
        assert_eq!(first.publication().d_forms(), EncodingSet::ALL);
        assert!(Encoding::ALL.iter().all(|e| first.encoded(*e).is_some()));
    }

    #[test]
    fn node_publications_are_framed_in_the_encodings_in_use_only() {
        let (mut router, inboxes) = two_shards();
        let topic = Topic::parse("channel:1").expect("topic");
        router.change_interest(0, topic.clone(), Encoding::MsgPack, InterestChange::Gained);
        let publication = Publication::new(topic, "x", serde_json::json!([1]), None);
        router.deliver_shared(Arc::new(SharedDelivery::new(publication, Instant::now())));
        let delivery = delivered(&inboxes[0]);
        assert!(delivery.encoded(Encoding::MsgPack).is_some());
        assert!(delivery.encoded(Encoding::Json).is_none());
    }

    #[test]
    fn nothing_is_parsed_for_a_topic_nobody_wants() {
        let (mut router, inboxes) = two_shards();
        router
            .receive(b"channel:9", "", b"not even json", 1024)
            .expect("dropped unparsed");
        assert!(inboxes.iter().all(|inbox| inbox.try_recv().is_none()));
        let stats = router.stats();
        assert_eq!(stats.publications.load(Ordering::Relaxed), 1);
        assert_eq!(
            stats
                .publications_without_subscribers
                .load(Ordering::Relaxed),
            1
        );
        let topic = Topic::parse("channel:9").expect("topic");
        router.change_interest(0, topic, Encoding::Json, InterestChange::Gained);
        assert!(matches!(
            router.receive(b"channel:9", "", b"not even json", 1024),
            Err(PublicationError::Malformed(_))
        ));
        assert!(router
            .receive(b"channel:9", "", PAYLOAD, 10)
            .is_err_and(|e| e.is_too_large()));
        assert!(matches!(
            router.receive(b"other:channel:9", "cg:", PAYLOAD, 1024),
            Err(PublicationError::ForeignChannel { .. })
        ));
    }
}
