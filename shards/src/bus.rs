//! Cross-thread plumbing between the shards and the node's ingestor.
//!
//! Direction ingestor → shard: one bounded crossbeam queue per shard carrying
//! [`SharedDelivery`]s (an event already encoded once per encoding in use), plus an
//! [`AtomicWaker`] so that an idle shard sleeps instead of spinning and a busy one is
//! not woken once per event. Answers to a connection's own requests (`rpc`, `history`,
//! `presence_query`, voice signaling) take a second queue of their own, which is never
//! full (see [`ShardSender::answer`]): a dropped event is a gap the client can recover,
//! a dropped answer would leave a request waiting for ever. Direction shard → ingestor: a bounded flume channel of
//! [`IngestorCommand`]s (interest changes and node-born publications).

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use coregate_protocol::{Encoding, Publication, Topic};

use crate::ws;

/// The most shards a node may run; [`ShardSet`] is a bitmask of this width.
pub const MAX_SHARDS: usize = 128;

/// A set of shard ids, as a bitmask: the ingestor keeps one per topic and encoding.
#[derive(Copy, Clone, Default, PartialEq, Eq, Hash, Debug)]
pub struct ShardSet(u128);

impl ShardSet {
    pub fn insert(&mut self, shard_id: usize) {
        self.0 |= 1 << shard_id;
    }
    pub fn remove(&mut self, shard_id: usize) {
        self.0 &= !(1 << shard_id);
    }
    pub fn contains(&self, shard_id: usize) -> bool {
        self.0 & (1 << shard_id) != 0
    }
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
    pub fn union(self, other: ShardSet) -> ShardSet {
        ShardSet(self.0 | other.0)
    }
    /// The shard ids in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let shard_id = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(shard_id)
        })
    }
}

/// One message ready to be written to a WebSocket: a complete frame (header and
/// payload), whose payload alone can also be joined into a batch.
#[derive(Clone, Debug)]
pub struct WireMessage {
    framed: Bytes,
    header_len: usize,
}

impl WireMessage {
    /// Frames an already encoded message as one WebSocket data frame (a copy of it).
    pub fn new(encoding: Encoding, message: &[u8]) -> WireMessage {
        let framed = ws::data_frame(encoding, message);
        WireMessage {
            header_len: framed.len() - message.len(),
            framed,
        }
    }

    /// Encodes `publication` in `encoding` as one WebSocket data frame, in one buffer of
    /// exactly the frame's size: the envelope's size is computed before it is written, so
    /// the header's room is left in front of it and the header written there afterwards
    /// ([`Publication::encode_with_headroom`] keeps the room right in the rare case where
    /// escaping makes the envelope longer than computed). One allocation, no copy, where
    /// encoding into a buffer and then framing it with [`WireMessage::new`] costs two and a
    /// copy.
    pub fn from_publication(encoding: Encoding, publication: &Publication) -> WireMessage {
        let (mut framed, header_len) =
            publication.encode_with_headroom(encoding, |len| ws::data_header_len(encoding, len));
        let len = framed.len() - header_len;
        if !ws::write_data_header(encoding, len, &mut framed[..header_len]) {
            // The room does not fit the header of the envelope's actual size (the protocol
            // crate guarantees that it does, so this is a bug): frame it by copying rather
            // than send a wrong header.
            debug_assert!(
                false,
                "{encoding} envelope of {len} bytes overran its header room"
            );
            return WireMessage::new(encoding, &framed[header_len..]);
        }
        WireMessage {
            framed: Bytes::from(framed),
            header_len,
        }
    }
    /// The whole frame, to be written as it is when the message goes out alone.
    pub fn framed(&self) -> &Bytes {
        &self.framed
    }
    /// The encoded message without its frame header, for joining into a batch.
    pub fn message(&self) -> &[u8] {
        &self.framed[self.header_len..]
    }
}

/// A publication on its way to every local subscriber of its topic, shared by all
/// shards. Encodings are filled once: the ingestor fills those it knows are in use (and
/// decoded the publication's `d` in those only), and a shard that finds one missing (its
/// interest raced the publication) fills it itself, still once per node, converting `d`
/// if it has to.
#[derive(Debug)]
pub struct SharedDelivery {
    publication: Publication,
    wire: [OnceLock<WireMessage>; 2],
    /// When the node received the publication; the publish→write latency starts here.
    pub received_at: Instant,
}

impl SharedDelivery {
    pub fn new(publication: Publication, received_at: Instant) -> SharedDelivery {
        SharedDelivery {
            publication,
            wire: [OnceLock::new(), OnceLock::new()],
            received_at,
        }
    }
    pub fn publication(&self) -> &Publication {
        &self.publication
    }
    pub fn topic(&self) -> &Topic {
        self.publication.topic()
    }
    /// The message in `encoding`, encoded on first use.
    pub fn wire(&self, encoding: Encoding) -> &WireMessage {
        self.wire[encoding.index()]
            .get_or_init(|| WireMessage::from_publication(encoding, &self.publication))
    }
    /// The message in `encoding` if it has been encoded already; never encodes.
    pub fn encoded(&self, encoding: Encoding) -> Option<&WireMessage> {
        self.wire[encoding.index()].get()
    }
    /// Whether `user_id`'s connections must not receive this event.
    pub fn excludes(&self, user_id: &str) -> bool {
        self.publication.exclude_user() == Some(user_id)
    }
    pub fn is_ephemeral(&self) -> bool {
        self.publication.is_ephemeral()
    }
}

/// What a shard receives from outside its core.
#[derive(Debug)]
pub enum ShardMessage {
    Deliver(Arc<SharedDelivery>),
    /// Stop accepting and close every connection with `reconnect` + 1012, spread
    /// over `window` so that clients do not all come back in the same instant.
    Drain {
        window: std::time::Duration,
    },
    /// The node's answer to a connection's `presence_query`, sent to that connection
    /// with the query's `ref` if it is still there.
    PresenceState {
        conn: crate::hub::ConnKey,
        r#ref: Option<u64>,
        users: PresenceAnswer,
    },
    /// The backend's answer to a connection's `rpc`, sent to that connection with the
    /// call's `ref` if it is still there.
    RpcResult {
        conn: crate::hub::ConnKey,
        r#ref: Option<u64>,
        answer: crate::backend::RpcAnswer,
    },
    /// The node's answer to a connection's [`crate::history::HistoryRequest`].
    History {
        conn: crate::hub::ConnKey,
        ticket: u64,
        answer: crate::history::HistoryAnswer,
    },
    /// The SFU's signal to a connection in a voice room (an offer, a candidate, the
    /// room's events, an error). `left`: the SFU no longer has it in `channel` (it left,
    /// timed out, or was refused), so the connection forgets the room.
    Voice {
        conn: crate::hub::ConnKey,
        message: coregate_protocol::ServerMessage,
        /// The `ref` of the op it answers, if it answers one.
        r#ref: Option<u64>,
        left: Option<String>,
    },
}

/// What the node answers a `presence_query`.
#[derive(Debug)]
pub enum PresenceAnswer {
    /// The users' states: `presence_state`.
    Users(Vec<coregate_protocol::PresenceEntry>),
    /// The state could not be read now (Redis unreachable): `error {code: not_ready}`.
    NotReady,
    /// Presence is switched off on this node (`--presence false`):
    /// `error {code: unavailable}`.
    Disabled,
}

/// Why a message could not be handed to a shard.
#[derive(Debug, thiserror::Error)]
pub enum HandOffError {
    #[error("shard {shard_id} queue is full")]
    Full { shard_id: usize },
    #[error("shard {shard_id} has stopped")]
    Stopped { shard_id: usize },
}

/// The sending side of a shard's inbox; held by the ingestor (any thread).
#[derive(Clone)]
pub struct ShardSender {
    shard_id: usize,
    // Declared before `_closer`: a clone's queue handle is dropped before its share of
    // the closer, so the last wake-up finds the queue disconnected.
    queue: crossbeam_channel::Sender<ShardMessage>,
    answers: crossbeam_channel::Sender<ShardMessage>,
    waker: Arc<AtomicWaker>,
    _closer: Arc<WakeOnLastDrop>,
}

/// Wakes the shard once the last sender is gone, so that a parked router sees the
/// disconnection at once instead of at its next unrelated wake-up.
struct WakeOnLastDrop(Arc<AtomicWaker>);

impl Drop for WakeOnLastDrop {
    fn drop(&mut self) {
        self.0.wake();
    }
}

impl ShardSender {
    /// Queues without blocking; a full queue is the caller's to count and log.
    pub fn try_send(&self, message: ShardMessage) -> Result<(), HandOffError> {
        let shard_id = self.shard_id;
        self.queue.try_send(message).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => HandOffError::Full { shard_id },
            crossbeam_channel::TrySendError::Disconnected(_) => HandOffError::Stopped { shard_id },
        })?;
        // Wakes the shard only if it registered (it is idle); otherwise an atomic swap.
        self.waker.wake();
        Ok(())
    }
    /// Queues the answer to a request one of the shard's connections made (its `rpc`,
    /// `history` or `presence_query`, a voice signal). Never refused for space: what
    /// waits here is bounded by the requests the shard's own connections have made and
    /// not yet had answered, which each session bounds (`rpc_max_in_flight`, the
    /// history reads and queries in flight), and the shard drains it before its events.
    /// Fails only once the shard has stopped.
    pub fn answer(&self, message: ShardMessage) -> Result<(), HandOffError> {
        let shard_id = self.shard_id;
        self.answers
            .send(message)
            .map_err(|_| HandOffError::Stopped { shard_id })?;
        self.waker.wake();
        Ok(())
    }
    pub fn shard_id(&self) -> usize {
        self.shard_id
    }
}

/// The receiving side of a shard's inbox; owned by the shard.
pub struct LocalInbox {
    queue: crossbeam_channel::Receiver<ShardMessage>,
    answers: crossbeam_channel::Receiver<ShardMessage>,
    waker: Arc<AtomicWaker>,
}

impl LocalInbox {
    /// Waits for the next message; `None` once every sender is gone.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<ShardMessage>> {
        match self.next() {
            Ok(message) => return Poll::Ready(Some(message)),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return Poll::Ready(None),
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
        self.waker.register(cx.waker());
        // A message sent between the first check and the registration must not be missed.
        match self.next() {
            Ok(message) => Poll::Ready(Some(message)),
            Err(crossbeam_channel::TryRecvError::Disconnected) => Poll::Ready(None),
            Err(crossbeam_channel::TryRecvError::Empty) => Poll::Pending,
        }
    }
    /// The next message if one is already queued.
    pub fn try_recv(&self) -> Option<ShardMessage> {
        self.next().ok()
    }
    /// Answers first: each is a request a client is waiting on, and there are few.
    /// Disconnected once both queues' senders are gone (they go together).
    fn next(&self) -> Result<ShardMessage, crossbeam_channel::TryRecvError> {
        match self.answers.try_recv() {
            Ok(message) => Ok(message),
            Err(_) => self.queue.try_recv(),
        }
    }
    pub fn len(&self) -> usize {
        self.queue.len() + self.answers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.answers.is_empty()
    }
}

/// A shard's inbox: the sender for the ingestor, the receiver for the shard.
pub fn shard_inbox(shard_id: usize, capacity: usize) -> (ShardSender, LocalInbox) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let (answers_tx, answers_rx) = crossbeam_channel::unbounded();
    let waker = Arc::new(AtomicWaker::new());
    (
        ShardSender {
            shard_id,
            queue: tx,
            answers: answers_tx,
            waker: waker.clone(),
            _closer: Arc::new(WakeOnLastDrop(waker.clone())),
        },
        LocalInbox {
            queue: rx,
            answers: answers_rx,
            waker,
        },
    )
}

/// Whether a topic gained its first or lost its last local subscriber of one encoding.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum InterestChange {
    Gained,
    Lost,
}

/// What shards (and the admin API) tell the ingestor.
#[derive(Debug)]
pub enum IngestorCommand {
    Interest {
        shard_id: usize,
        topic: Topic,
        encoding: Encoding,
        change: InterestChange,
    },
    /// A publication to deliver on every node (through Redis when configured).
    Publish(Publication),
    /// A typing transition of one connection: the ingestor dedups it node-wide (and
    /// across nodes through Redis), applies the per-user rate and the TTL, and announces
    /// only the user-level `typing_start` / `typing_stop`.
    Typing(TypingSignal),
    /// A presence signal of one connection: the ingestor counts connections per user
    /// node-wide, applies the grace and announces only user-level transitions.
    Presence(PresenceSignal),
    /// Reads of topics' streams (positions, recovery, `history`), answered with a
    /// [`ShardMessage::History`]. Sent after the connection's `Interest` in the same
    /// topics, so that whatever the read does not hold reaches it live.
    History(crate::history::HistoryRequest),
}

/// What a connection tells the node about its user's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceSignal {
    /// The connection became ready: one more connection of the user. `topics` are
    /// where the user's transitions are announced: `presence:<sub>` and the `presence`
    /// claim's topics.
    Connect { user_id: String, topics: Vec<Topic> },
    /// A ready connection ended (whatever ended it).
    Disconnect { user_id: String },
    /// `presence_set`.
    Set {
        user_id: String,
        status: coregate_protocol::PresenceStatus,
    },
    /// `presence_query`: answered to `conn` on `shard_id` with a
    /// [`ShardMessage::PresenceState`].
    Query {
        shard_id: usize,
        conn: crate::hub::ConnKey,
        r#ref: Option<u64>,
        viewer: String,
        user_ids: Vec<String>,
    },
}

/// What a connection did about typing on a topic.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TypingAction {
    /// `typing_start`.
    Start,
    /// `typing_stop`, an unsubscribe from the topic, or the connection's close.
    Stop,
}

/// A typing transition, as the session saw it; see [`IngestorCommand::Typing`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypingSignal {
    pub topic: Topic,
    pub user_id: String,
    /// The token's `name` claim, carried into the announcements.
    pub name: Option<String>,
    pub action: TypingAction,
}

impl TypingAction {
    /// The op announced to the topic's other subscribers.
    pub fn op(self) -> &'static str {
        match self {
            TypingAction::Start => "typing_start",
            TypingAction::Stop => "typing_stop",
        }
    }
}

impl TypingSignal {
    /// The announcement of this transition: `{user_id, name?}` on the topic, excluding
    /// the typist's own connections (PROTOCOL.md §5).
    pub fn announcement(&self) -> Publication {
        announcement(
            &self.topic,
            &self.user_id,
            self.name.as_deref(),
            self.action,
        )
    }
}

/// `typing_start` / `typing_stop` `{user_id, name?}` on `topic`, excluding `user_id`.
pub fn announcement(
    topic: &Topic,
    user_id: &str,
    name: Option<&str>,
    action: TypingAction,
) -> Publication {
    let mut d = serde_json::json!({ "user_id": user_id });
    if let Some(name) = name {
        d["name"] = serde_json::Value::String(name.to_owned());
    }
    Publication::new(topic.clone(), action.op(), d, Some(user_id.to_owned()))
}

/// The shard's handle on the ingestor.
pub type IngestorSender = flume::Sender<IngestorCommand>;

#[cfg(test)]
mod tests {
    use super::*;
    use coregate_protocol::EncodingSet;

    #[test]
    fn an_answer_gets_through_a_full_inbox_and_goes_first() {
        let (sender, inbox) = shard_inbox(0, 1);
        let drain = || ShardMessage::Drain {
            window: std::time::Duration::ZERO,
        };
        sender.try_send(drain()).expect("room for one event");
        assert!(matches!(
            sender.try_send(drain()),
            Err(HandOffError::Full { shard_id: 0 })
        ));
        let answer = ShardMessage::History {
            conn: crate::hub::ConnKey::for_tests(3),
            ticket: 7,
            answer: Ok(Vec::new()),
        };
        sender
            .answer(answer)
            .expect("answers are never refused for space");
        assert_eq!(inbox.len(), 2);
        assert!(matches!(
            inbox.try_recv(),
            Some(ShardMessage::History { ticket: 7, .. })
        ));
        assert!(matches!(inbox.try_recv(), Some(ShardMessage::Drain { .. })));
        assert!(inbox.is_empty());
        drop(inbox);
        assert!(matches!(
            sender.answer(drain()),
            Err(HandOffError::Stopped { shard_id: 0 })
        ));
    }

    #[test]
    fn dropping_the_last_sender_wakes_a_waiting_shard() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(false.into()));
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let (sender, inbox) = shard_inbox(0, 4);
        let second = sender.clone();
        assert!(inbox.poll_recv(&mut cx).is_pending());
        drop(sender);
        assert!(
            !flag.0.load(std::sync::atomic::Ordering::SeqCst),
            "one sender is left"
        );
        drop(second);
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(matches!(inbox.poll_recv(&mut cx), Poll::Ready(None)));
    }

    fn topic() -> Topic {
        Topic::parse("channel:1").expect("topic")
    }

    /// `{"op":"x","d":"aaa…","topic":"channel:1"}` with `n` a's, `d` made in `forms`.
    fn publication(n: usize, forms: EncodingSet) -> Publication {
        let mut payload = format!(r#"{{"op":"x","d":"{}"}}"#, "a".repeat(n)).into_bytes();
        Publication::from_backend_payload_in(topic(), &mut payload, 1 << 20, forms).expect("decode")
    }

    /// The envelope of [`publication`], spelled out byte by byte.
    fn envelope(encoding: Encoding, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        match encoding {
            Encoding::Json => {
                out.extend_from_slice(br#"{"op":"x","d":""#);
                out.resize(out.len() + n, b'a');
                out.extend_from_slice(br#"","topic":"channel:1"}"#);
            }
            Encoding::MsgPack => {
                out.extend_from_slice(&[0x83, 0xa2, b'o', b'p', 0xa1, b'x', 0xa1, b'd']);
                match n {
                    0..=31 => out.push(0xa0 | n as u8),
                    32..=255 => out.extend_from_slice(&[0xd9, n as u8]),
                    256..=65_535 => out.extend_from_slice(&[0xda, (n >> 8) as u8, n as u8]),
                    _ => {
                        out.push(0xdb);
                        out.extend_from_slice(&(n as u32).to_be_bytes());
                    }
                }
                out.resize(out.len() + n, b'a');
                out.extend_from_slice(&[0xa5, b't', b'o', b'p', b'i', b'c', 0xa9]);
                out.extend_from_slice(b"channel:1");
            }
        }
        out
    }

    #[test]
    fn framed_is_exactly_header_then_envelope() {
        // (encoding, length of `d`'s string, the frame header); JSON envelopes are
        // 37 + n bytes, MessagePack ones 25 + n (fixstr), 26 + n, 27 + n, 29 + n.
        let cases: [(Encoding, usize, &[u8]); 10] = [
            (Encoding::Json, 0, &[0x81, 37]),
            (Encoding::Json, 88, &[0x81, 125]),
            (Encoding::Json, 89, &[0x81, 126, 0x00, 126]),
            (Encoding::Json, 65_498, &[0x81, 126, 0xff, 0xff]),
            (
                Encoding::Json,
                65_499,
                &[0x81, 127, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00],
            ),
            (Encoding::MsgPack, 10, &[0x82, 35]),
            (Encoding::MsgPack, 99, &[0x82, 125]),
            (Encoding::MsgPack, 300, &[0x82, 126, 0x01, 0x47]),
            (Encoding::MsgPack, 65_508, &[0x82, 126, 0xff, 0xff]),
            (
                Encoding::MsgPack,
                70_000,
                &[0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x8d],
            ),
        ];
        for (encoding, n, header) in cases {
            let expected_envelope = envelope(encoding, n);
            let mut expected = header.to_vec();
            expected.extend_from_slice(&expected_envelope);
            for forms in [EncodingSet::only(encoding), EncodingSet::ALL] {
                let wire = WireMessage::from_publication(encoding, &publication(n, forms));
                assert_eq!(wire.framed()[..], expected[..], "{encoding} {n} {forms:?}");
                assert_eq!(wire.message(), &expected_envelope[..]);
                // The same bytes as framing the encoded message by copying it.
                let copied = WireMessage::new(encoding, &expected_envelope);
                assert_eq!(copied.framed(), wire.framed());
            }
        }
    }

    #[test]
    fn a_missing_encoding_is_filled_on_first_use() {
        let both = SharedDelivery::new(publication(3, EncodingSet::ALL), Instant::now());
        for encoding in Encoding::ALL {
            let delivery =
                SharedDelivery::new(publication(3, EncodingSet::only(encoding)), Instant::now());
            let other = match encoding {
                Encoding::Json => Encoding::MsgPack,
                Encoding::MsgPack => Encoding::Json,
            };
            assert!(delivery.encoded(encoding).is_none() && delivery.encoded(other).is_none());
            assert_eq!(delivery.wire(other).framed(), both.wire(other).framed());
            assert!(delivery.encoded(other).is_some() && delivery.encoded(encoding).is_none());
            let first: *const WireMessage = delivery.wire(other);
            assert!(std::ptr::eq(first, delivery.wire(other)), "encoded once");
        }
    }

    #[test]
    fn shard_set_iterates_members_in_order() {
        let mut set = ShardSet::default();
        assert!(set.is_empty());
        for id in [0, 5, 64, 127] {
            set.insert(id);
        }
        set.remove(5);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 64, 127]);
        assert!(set.contains(64) && !set.contains(5));
    }
}
