//! History without Redis (the embedded bus): each topic's stream in memory, with the
//! semantics of the Redis function (`history_redis`): an epoch made when the stream is
//! first written (a read of a topic never published to answers its `unwritten`
//! position and makes nothing), offsets from 1, the last `size` publications kept, none older
//! than the TTL. The position (epoch and offset) outlives the publications by
//! [`META_TTL`], so that offsets never go backwards while a client may still hold one;
//! past it the stream is forgotten and the next one has a new epoch. A node restart
//! starts every stream again (a new epoch: clients are told `recovered: false`).
//!
//! Sans-IO: every call takes `now`; the ingestor's loop passes the clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coregate_protocol::{Publication, StreamPosition, Topic};
use coregate_shards::history::{
    select, unwritten, HistoryPolicy, HistoryRequest, ReadFor, Retention, TopicHistory,
};
use coregate_shards::{ShardMessage, SharedDelivery};

/// How long a stream's position is kept after its last publication or read, here and
/// in Redis. A history TTL is at most [`MAX_HISTORY_TTL`] (checked at start-up), so the
/// position outlives what it counts.
pub const META_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// The longest history TTL a rule may give.
pub const MAX_HISTORY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often the embedded bus forgets what expired.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// One topic's stream.
struct Stream {
    retention: Retention,
    epoch: Arc<str>,
    offset: u64,
    /// Oldest first: when each was appended, and the publication (with its position),
    /// shared with every connection that is delivered or replayed it.
    held: VecDeque<(Instant, Arc<SharedDelivery>)>,
    /// The last publication or read: the position is forgotten [`META_TTL`] after it.
    touched: Instant,
}

impl Stream {
    fn new(retention: Retention, now: Instant) -> Stream {
        Stream {
            retention,
            epoch: new_epoch(),
            offset: 0,
            held: VecDeque::new(),
            touched: now,
        }
    }

    /// Drops what is past the TTL.
    fn expire(&mut self, now: Instant) {
        let ttl = self.retention.ttl;
        while self
            .held
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > ttl)
        {
            self.held.pop_front();
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.offset,
            epoch: self.epoch.to_string(),
        }
    }
}

/// An epoch nobody has seen: random, so that a restarted node never reuses one.
fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:016x}", fastrand::u64(..)))
}

/// Every topic's stream; see the module docs.
pub struct HistoryStore {
    policy: HistoryPolicy,
    streams: HashMap<Topic, Stream>,
}

impl HistoryStore {
    pub fn new(policy: HistoryPolicy) -> HistoryStore {
        HistoryStore {
            policy,
            streams: HashMap::new(),
        }
    }

    /// The stream of `topic`, made if it has history and none exists yet.
    fn stream(&mut self, topic: &Topic, now: Instant) -> Option<&mut Stream> {
        let retention = self.policy.retention(topic)?;
        let stream = self
            .streams
            .entry(topic.clone())
            .or_insert_with(|| Stream::new(retention, now));
        stream.touched = now;
        stream.expire(now);
        Some(stream)
    }

    /// The stream of `topic` if it was ever written (and not forgotten).
    fn existing(&mut self, topic: &Topic, now: Instant) -> Option<&mut Stream> {
        let stream = self.streams.get_mut(topic)?;
        stream.touched = now;
        stream.expire(now);
        Some(stream)
    }

    /// A publication on its way to the subscribers: appended to its topic's stream,
    /// with its position, if the topic has history (ephemeral events never are).
    pub fn append(&mut self, publication: Publication, now: Instant) -> Arc<SharedDelivery> {
        let stream = match publication.is_ephemeral() {
            true => None,
            false => self.stream(publication.topic(), now),
        };
        let Some(stream) = stream else {
            return Arc::new(SharedDelivery::new(publication, now));
        };
        stream.offset += 1;
        let publication = publication.with_position(stream.offset, stream.epoch.clone());
        let delivery = Arc::new(SharedDelivery::new(publication, now));
        if stream.held.len() == stream.retention.size {
            stream.held.pop_front();
        }
        stream.held.push_back((now, delivery.clone()));
        delivery
    }

    /// One read of `topic`'s stream (see [`ReadFor`]); `None` if it has no history.
    pub fn read(&mut self, topic: &Topic, read: &ReadFor, now: Instant) -> Option<TopicHistory> {
        self.policy.retention(topic)?;
        let Some(stream) = self.existing(topic, now) else {
            return Some(select(topic, read, unwritten(), &[]));
        };
        let held: Vec<_> = stream.held.iter().map(|(_, d)| d.clone()).collect();
        Some(select(topic, read, stream.position(), &held))
    }

    /// Answers a shard's request: where it must go, and the message.
    pub fn answer(&mut self, request: HistoryRequest, now: Instant) -> (usize, ShardMessage) {
        let read = request
            .reads
            .iter()
            .filter_map(|(topic, read)| self.read(topic, read, now))
            .collect();
        let message = ShardMessage::History {
            conn: request.conn,
            ticket: request.ticket,
            answer: Ok(read),
        };
        (request.shard_id, message)
    }

    /// Forgets the streams untouched for [`META_TTL`], and the publications past their
    /// TTL in the others.
    pub fn sweep(&mut self, now: Instant) {
        self.streams.retain(|_, stream| {
            stream.expire(now);
            now.saturating_duration_since(stream.touched) < META_TTL
        });
    }

    /// Topics with a stream in memory.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> HistoryStore {
        HistoryStore::new(HistoryPolicy::parse("channel:=3/1m").unwrap())
    }

    fn topic(name: &str) -> Topic {
        Topic::parse(name).unwrap()
    }

    fn publish(store: &mut HistoryStore, name: &str, n: u64, now: Instant) -> Option<u64> {
        let publication = Publication::new(topic(name), "message_new", json!({ "n": n }), None);
        store.append(publication, now).publication().offset()
    }

    /// Where `channel:1`'s stream stands, as a fresh subscribe reads it.
    fn position(store: &mut HistoryStore, now: Instant) -> StreamPosition {
        let fresh = ReadFor::Subscribe { since: None };
        store
            .read(&topic("channel:1"), &fresh, now)
            .unwrap()
            .position
    }

    fn offsets(history: &TopicHistory) -> Vec<u64> {
        history
            .publications
            .iter()
            .map(|d| d.publication().offset().unwrap())
            .collect()
    }

    fn since(offset: u64, epoch: &str) -> ReadFor {
        ReadFor::Subscribe {
            since: Some(StreamPosition {
                offset,
                epoch: epoch.into(),
            }),
        }
    }

    #[test]
    fn offsets_grow_per_topic_and_only_topics_with_history_get_them() {
        let mut store = store();
        let t0 = Instant::now();
        assert_eq!(publish(&mut store, "channel:1", 1, t0), Some(1));
        assert_eq!(publish(&mut store, "channel:1", 2, t0), Some(2));
        assert_eq!(publish(&mut store, "channel:2", 1, t0), Some(1));
        assert_eq!(publish(&mut store, "server:1", 1, t0), None);
        let typing = Publication::new(topic("channel:1"), "typing_start", json!({}), None);
        assert_eq!(store.append(typing, t0).publication().offset(), None);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn a_recovery_gets_everything_after_since_while_it_is_held() {
        let mut store = store();
        let t0 = Instant::now();
        assert_eq!(
            position(&mut store, t0),
            unwritten(),
            "a read makes nothing"
        );
        assert_eq!(store.len(), 0);
        for n in 1..=5 {
            publish(&mut store, "channel:1", n, t0);
        }
        let epoch = position(&mut store, t0).epoch;
        assert!(!epoch.is_empty());
        // Size 3: offsets 3, 4, 5 are held.
        let read = store
            .read(&topic("channel:1"), &since(2, &epoch), t0)
            .unwrap();
        assert!(read.complete);
        assert_eq!(offsets(&read), [3, 4, 5]);
        assert_eq!(read.position.offset, 5);
        // Offset 2 itself is gone: a gap for a client that last saw 1.
        let gap = store
            .read(&topic("channel:1"), &since(1, &epoch), t0)
            .unwrap();
        assert!(!gap.complete);
        assert!(gap.publications.is_empty());
        // Another epoch is never recovered.
        let other = store
            .read(&topic("channel:1"), &since(4, "elsewhere"), t0)
            .unwrap();
        assert!(!other.complete);
    }

    #[test]
    fn a_gap_too_old_is_not_recovered_but_the_position_stays() {
        let mut store = store();
        let t0 = Instant::now();
        publish(&mut store, "channel:1", 1, t0);
        publish(&mut store, "channel:1", 2, t0);
        let epoch = position(&mut store, t0).epoch;
        let later = t0 + Duration::from_secs(61);
        // Past the TTL nothing is held, but the client that saw 2 missed nothing.
        let whole = store
            .read(&topic("channel:1"), &since(2, &epoch), later)
            .unwrap();
        assert!(whole.complete);
        let gap = store
            .read(&topic("channel:1"), &since(1, &epoch), later)
            .unwrap();
        assert!(!gap.complete);
        assert_eq!(
            publish(&mut store, "channel:1", 3, later),
            Some(3),
            "never backwards"
        );
        store.sweep(later);
        assert_eq!(store.len(), 1, "the position outlives the publications");
        store.sweep(later + META_TTL);
        assert_eq!(store.len(), 0);
        publish(&mut store, "channel:1", 4, later + META_TTL);
        let again = position(&mut store, later + META_TTL);
        assert_ne!(again.epoch, epoch, "forgotten: a new epoch");
        assert_eq!(again.offset, 1);
    }

    #[test]
    fn history_reads_the_latest_or_pages_forward_from_since() {
        let mut store = store();
        let t0 = Instant::now();
        for n in 1..=3 {
            publish(&mut store, "channel:1", n, t0);
        }
        let epoch = position(&mut store, t0).epoch;
        let latest = ReadFor::History {
            since: None,
            limit: 2,
        };
        assert_eq!(
            offsets(&store.read(&topic("channel:1"), &latest, t0).unwrap()),
            [2, 3]
        );
        let page = ReadFor::History {
            since: Some(StreamPosition { offset: 1, epoch }),
            limit: 1,
        };
        assert_eq!(
            offsets(&store.read(&topic("channel:1"), &page, t0).unwrap()),
            [2]
        );
        assert!(store.read(&topic("server:1"), &latest, t0).is_none());
    }
}
