//! The test harness of the sans-IO parts (quinn-proto's `Pair` is the model): a
//! [`LocalHub`] with any number of sessions, a virtual clock the test moves by hand, and
//! clients that speak literal WebSocket bytes. Nothing sleeps; every test runs in
//! microseconds of its own time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use coregate_protocol::{
    decode_server, encode_client, split_server_frame, ClientEnvelope, Encoding, Publication, Topic,
    TopicPatterns,
};

use crate::admission::Admission;
use crate::auth::{AuthError, Identity, TokenVerifier};
use crate::authorizer::{MembershipCheck, SharedAuthorizer};
use crate::backend::{RpcCall, SharedBackend};
use crate::bus::{IngestorCommand, SharedDelivery};
use crate::config::ShardConfig;
use crate::hub::{ConnKey, LocalHub, NodeLinks};
use crate::session::{Now, Start};
use crate::stats::ShardStats;

/// The wall clock's time at the harness's start, in unix seconds.
pub const UNIX_START: u64 = 1_800_000_000;

/// Tokens for the harness: `"<user>"` (valid for an hour from [`UNIX_START`]),
/// `"<user>@<exp>"` (expiring at unix second `exp`), or `"bad"`. Every user may
/// subscribe to `channel:*` and join the voice channels `open-*`.
pub struct TestVerifier;

impl TokenVerifier for TestVerifier {
    fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token == "bad" || token.is_empty() {
            return Err(AuthError::BadSignature);
        }
        let (user, exp) = match token.split_once('@') {
            Some((user, exp)) => (user, exp.parse().map_err(|_| AuthError::Malformed)?),
            None => (token, UNIX_START + 3600),
        };
        Ok(Identity {
            user_id: user.into(),
            name: Some(format!("{user}'s name").into()),
            expires_at: exp,
            topics: TopicPatterns::parse_list(["channel:*", "voice:open-*"]).expect("patterns"),
            extras: None,
        })
    }
}

pub use crate::ws::client_frame;

/// A text frame of `text`.
pub fn text(text: &str) -> Vec<u8> {
    client_frame(0x1, text.as_bytes())
}

/// What a client read: messages (decoded to JSON values) and, last, a close code.
#[derive(Debug, Default)]
pub struct Received {
    /// `(op, whole message)` in arrival order.
    pub messages: Vec<(String, serde_json::Value)>,
    /// Data frames read, for batching tests.
    pub frames: usize,
    pub close: Option<u16>,
    /// Bytes of WebSocket pongs read.
    pub pongs: usize,
}

impl Received {
    pub fn ops(&self) -> Vec<&str> {
        self.messages.iter().map(|(op, _)| op.as_str()).collect()
    }
    pub fn count(&self, op: &str) -> usize {
        self.messages.iter().filter(|(o, _)| o == op).count()
    }
    pub fn first(&self, op: &str) -> &serde_json::Value {
        &self
            .messages
            .iter()
            .find(|(o, _)| o == op)
            .unwrap_or_else(|| panic!("no {op} in {:?}", self.ops()))
            .1
    }
}

/// Splits server bytes into frames (unmasked) and decodes them.
pub fn parse_server_bytes(encoding: Encoding, mut bytes: &[u8]) -> Received {
    let mut received = Received::default();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 2, "truncated frame header");
        let opcode = bytes[0] & 0x0f;
        assert_eq!(bytes[1] & 0x80, 0, "server frames are unmasked");
        let (len, header) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            len => (len as usize, 2),
        };
        let payload = &bytes[header..header + len];
        bytes = &bytes[header + len..];
        match opcode {
            0x1 | 0x2 => {
                received.frames += 1;
                for message in split_server_frame(encoding, payload).unwrap() {
                    let decoded = decode_server(encoding, message).unwrap();
                    let mut value = serde_json::json!({ "op": decoded.op, "d": decoded.d });
                    if let Some(r#ref) = decoded.r#ref {
                        value["ref"] = r#ref.into();
                    }
                    if let Some(topic) = decoded.topic {
                        value["topic"] = topic.into();
                    }
                    if let Some(offset) = decoded.offset {
                        value["offset"] = offset.into();
                    }
                    if let Some(epoch) = decoded.epoch {
                        value["epoch"] = epoch.into();
                    }
                    received.messages.push((decoded.op, value));
                }
            }
            0x8 => received.close = Some(u16::from_be_bytes([payload[0], payload[1]])),
            0xA => received.pongs += 1,
            other => panic!("unexpected opcode {other}"),
        }
    }
    received
}

/// How many `rpc` calls the harness's backend queue holds.
pub const RPC_QUEUE: usize = 4;
/// How many voice ops the harness's SFU queue holds.
pub const VOICE_QUEUE: usize = 8;

/// A hub, its virtual clock and the other ends of its queues.
pub struct Harness {
    pub hub: LocalHub,
    pub stats: Arc<ShardStats>,
    /// What the hub told the ingestor.
    pub ingestor: flume::Receiver<IngestorCommand>,
    /// Membership questions, with the `redis` authorizer.
    pub checks: Option<flume::Receiver<MembershipCheck>>,
    /// `rpc` calls for the backend (a backend is always configured here; the queue
    /// holds [`RPC_QUEUE`]).
    pub rpc_calls: flume::Receiver<RpcCall>,
    /// Voice ops for the SFU (voice is always on here; the queue holds [`VOICE_QUEUE`]).
    pub voice_requests: flume::Receiver<crate::voice::VoiceRequest>,
    start: Instant,
    elapsed: Duration,
}

impl Harness {
    pub fn new(config: ShardConfig) -> Harness {
        Self::build(config, false)
    }

    /// With the `redis` authorizer: membership questions land in [`Harness::checks`].
    pub fn with_membership(config: ShardConfig) -> Harness {
        Self::build(config, true)
    }

    fn build(config: ShardConfig, membership: bool) -> Harness {
        let (ingestor_tx, ingestor) = flume::bounded(1024);
        let (authorizer, checks) = if membership {
            let (tx, rx) = flume::bounded(64);
            let authorizer =
                SharedAuthorizer::new(tx, Duration::from_secs(5), Duration::from_millis(100));
            (Some(authorizer), Some(rx))
        } else {
            (None, None)
        };
        let stats = Arc::new(ShardStats::default());
        let admission = Arc::new(Admission::new(&config));
        let (rpc_tx, rpc_calls) = flume::bounded(RPC_QUEUE);
        let (voice_tx, voice_requests) = flume::bounded(VOICE_QUEUE);
        let hub = LocalHub::new(
            0,
            Arc::new(config),
            stats.clone(),
            Arc::new(TestVerifier),
            admission,
            NodeLinks {
                ingestor: ingestor_tx,
                authorizer,
                backend: Some(SharedBackend::default().with_rpc(rpc_tx)),
                voice: Some(crate::voice::SharedVoice::new(voice_tx)),
            },
        );
        Harness {
            hub,
            stats,
            ingestor,
            checks,
            rpc_calls,
            voice_requests,
            start: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    pub fn now(&self) -> Now {
        Now {
            instant: self.start + self.elapsed,
            unix_secs: UNIX_START + self.elapsed.as_secs(),
        }
    }

    /// Moves the clock and lets the hub act on what came due.
    pub fn advance(&mut self, by: Duration) {
        self.elapsed += by;
        self.hub.handle_timeouts(self.now().instant);
    }

    /// A connection that upgraded without a token (in-band `identify`).
    pub fn connect(&mut self, encoding: Encoding) -> ConnKey {
        let now = self.now();
        self.hub.connect(encoding, Start::Identify, now)
    }

    /// A connection whose upgrade carried `token`, ready at once.
    pub fn connect_ready(&mut self, token: &str, encoding: Encoding) -> ConnKey {
        let identity = TestVerifier.verify(token).unwrap();
        let admission = Arc::new(Admission::new(self.hub.config()));
        let user = admission.claim_user(identity).unwrap();
        let now = self.now();
        let start = Start::Ready { user, data: None };
        self.hub.connect(encoding, start, now)
    }

    /// A JSON connection of `user`, subscribed to `topic`, its replies read.
    pub fn connect_subscribed(&mut self, user: &str, topic: &str) -> ConnKey {
        let key = self.connect_ready(user, Encoding::Json);
        self.send(
            key,
            &format!(r#"{{"op":"subscribe","d":{{"topics":["{topic}"]}}}}"#),
        );
        let read = self.read(key);
        assert_eq!(read.count("subscribed"), 1, "{:?}", read.ops());
        key
    }

    /// Feeds raw bytes, as read from the socket.
    pub fn input(&mut self, key: ConnKey, bytes: &[u8]) {
        let now = self.now();
        self.hub.handle_input(key, bytes, now);
    }

    /// Sends one JSON text frame.
    pub fn send(&mut self, key: ConnKey, json: &str) {
        self.input(key, &text(json));
    }

    /// Sends one message in the connection's own encoding.
    pub fn send_message(&mut self, key: ConnKey, envelope: ClientEnvelope) {
        let encoding = self.hub.session(key).map(|s| s.encoding()).unwrap();
        let mut encoded = Vec::new();
        encode_client(encoding, &envelope, &mut encoded);
        let opcode = if encoding.is_binary() { 0x2 } else { 0x1 };
        self.input(key, &client_frame(opcode, &encoded));
    }

    /// Everything the connection hands out now, as the socket would carry it.
    pub fn transmit(&mut self, key: ConnKey) -> Vec<u8> {
        let encoding = self.hub.session(key).map(|s| s.encoding()).unwrap();
        let mut out = Vec::new();
        while let Some(transmit) = self.hub.poll_transmit(key, self.now().instant) {
            out.extend_from_slice(transmit.bytes(encoding));
        }
        out
    }

    /// Everything the connection hands out now, decoded.
    pub fn read(&mut self, key: ConnKey) -> Received {
        let encoding = self.hub.session(key).map(|s| s.encoding()).unwrap();
        let bytes = self.transmit(key);
        parse_server_bytes(encoding, &bytes)
    }

    /// Publishes `d` with `op` on `topic` to this shard, as the ingestor would.
    pub fn publish(&mut self, topic: &str, op: &str, d: serde_json::Value) {
        let publication = Publication::new(Topic::parse(topic).unwrap(), op, d, None);
        let delivery = Arc::new(SharedDelivery::new(publication, self.now().instant));
        let now = self.now().instant;
        self.hub.route(delivery, now);
    }

    /// Whether the connection is closing, with its close frame handed out.
    pub fn is_closing(&self, key: ConnKey) -> bool {
        self.hub.session(key).is_some_and(|s| s.is_closing())
    }

    /// The commands the hub has handed the ingestor so far.
    pub fn ingestor_commands(&self) -> Vec<IngestorCommand> {
        self.ingestor.try_iter().collect()
    }
}
