//! Backend publications (PROTOCOL.md §6), decoded once and encodable to either encoding.
//!
//! A publication's `d` is opaque to the gateway, so it is never turned into typed data: at
//! decode time it is re-emitted once as compact JSON and once as MessagePack, and every later
//! [`Publication::encode`] is a handful of `memcpy`s around those bytes. The compact JSON
//! re-emission matters for framing too: a backend may pretty-print, and a raw newline inside
//! `d` would split an NDJSON frame.

use std::fmt;

use bytes::Bytes;
use simd_json::prelude::Writable;
use simd_json::BorrowedValue;

use crate::error::DecodeError;
use crate::message::ServerMessage;
use crate::node::Node;
use crate::topic::{Topic, TopicError};
use crate::wire::{self, infallible, Envelope};
use crate::Encoding;

/// Why a backend payload or admin body was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PublicationError {
    /// Larger than the maximum; refused before parsing.
    #[error("publication is {size} bytes, the maximum is {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// Nested deeper than [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH).
    #[error("publication is nested deeper than {max} levels")]
    TooDeep {
        /// The maximum.
        max: usize,
    },
    /// Not UTF-8.
    #[error("publication is not valid UTF-8")]
    InvalidUtf8,
    /// Empty or whitespace only.
    #[error("publication is empty")]
    Empty,
    /// Not JSON.
    #[error("malformed publication: {0}")]
    Malformed(String),
    /// The payload is not a JSON object.
    #[error("publication must be a JSON object")]
    NotAnObject,
    /// No `op`, or an empty one.
    #[error("publication has no op")]
    MissingOp,
    /// Admin body without `topic`.
    #[error("publication has no topic")]
    MissingTopic,
    /// A field of the wrong type.
    #[error("publication field `{field}` must be {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it should have been.
        expected: &'static str,
    },
    /// The admin body's topic, or the topic named by a Redis channel, does not parse.
    #[error("bad topic: {0}")]
    BadTopic(#[from] TopicError),
    /// A Redis message on a channel outside the configured prefix (or not UTF-8): not
    /// one of ours, so it names no topic.
    #[error("channel is not under the prefix `{prefix}`")]
    ForeignChannel {
        /// The configured channel prefix.
        prefix: String,
    },
}

impl PublicationError {
    /// Whether the payload was refused for its size alone (counted apart from
    /// malformed payloads: an oversize one is a backend sizing problem, not a bug).
    pub fn is_too_large(&self) -> bool {
        matches!(self, PublicationError::TooLarge { .. })
    }
}

impl From<DecodeError> for PublicationError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::TooLarge { size, max } => PublicationError::TooLarge { size, max },
            DecodeError::TooDeep { max } => PublicationError::TooDeep { max },
            DecodeError::InvalidUtf8 => PublicationError::InvalidUtf8,
            DecodeError::Empty => PublicationError::Empty,
            DecodeError::Malformed(m) => PublicationError::Malformed(m),
            other => PublicationError::Malformed(other.to_string()),
        }
    }
}

/// An event for a topic, ready to be encoded to any encoding without parsing again.
#[derive(Clone, PartialEq, Eq)]
pub struct Publication {
    topic: Topic,
    op: Box<str>,
    exclude_user: Option<Box<str>>,
    offset: Option<u64>,
    /// `d` as compact JSON followed by `d` as MessagePack; empty when there is no `d`.
    d: Box<[u8]>,
    /// Where the JSON form ends in `d`.
    d_json_len: usize,
    has_d: bool,
}

impl fmt::Debug for Publication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publication")
            .field("topic", &self.topic)
            .field("op", &self.op)
            .field("d", &self.d_json().map(String::from_utf8_lossy))
            .field("exclude_user", &self.exclude_user)
            .field("offset", &self.offset)
            .finish()
    }
}

fn parse(input: &mut [u8], max_size: usize) -> Result<BorrowedValue<'_>, PublicationError> {
    if input.len() > max_size {
        return Err(PublicationError::TooLarge {
            size: input.len(),
            max: max_size,
        });
    }
    if wire::is_blank(input) {
        return Err(PublicationError::Empty);
    }
    let root = wire::parse_json(input)?;
    if !root.is_map() {
        return Err(PublicationError::NotAnObject);
    }
    Ok(root)
}

fn opt_str<'v>(
    root: &'v BorrowedValue<'_>,
    field: &'static str,
) -> Result<Option<&'v str>, PublicationError> {
    match root.get(field).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or(PublicationError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

impl Publication {
    /// Decodes a Redis payload `{"op": "...", "d": ..., "exclude_user"?: "<sub>"}` published
    /// on `topic` (the channel prefix already stripped by the caller). The input is mutated
    /// (simd-json unescapes in place). Unknown keys are ignored; `d` may be absent.
    pub fn from_backend_payload(
        topic: Topic,
        payload: &mut [u8],
        max_size: usize,
    ) -> Result<Publication, PublicationError> {
        let root = parse(payload, max_size)?;
        Self::from_root(topic, &root)
    }

    /// Decodes a message received from Redis on `channel`, which must be
    /// `<prefix><topic>` (PROTOCOL.md §6). The size limit is checked before anything
    /// else, so an oversize payload costs no parsing.
    pub fn from_redis_message(
        channel: &[u8],
        prefix: &str,
        payload: &mut [u8],
        max_size: usize,
    ) -> Result<Publication, PublicationError> {
        if payload.len() > max_size {
            return Err(PublicationError::TooLarge {
                size: payload.len(),
                max: max_size,
            });
        }
        let topic = std::str::from_utf8(channel)
            .ok()
            .and_then(|c| c.strip_prefix(prefix))
            .ok_or_else(|| PublicationError::ForeignChannel {
                prefix: prefix.to_owned(),
            })?;
        let topic = Topic::parse(topic)?;
        Self::from_backend_payload(topic, payload, max_size)
    }

    /// The Redis channel a publication on `topic` goes to: `<prefix><topic>`.
    pub fn redis_channel(prefix: &str, topic: &Topic) -> String {
        let mut channel = String::with_capacity(prefix.len() + topic.as_str().len());
        channel.push_str(prefix);
        channel.push_str(topic.as_str());
        channel
    }

    /// Decodes an admin `POST /publish` body `{"topic", "op", "d", "exclude_user"?}`.
    pub fn from_admin_body(
        body: &mut [u8],
        max_size: usize,
    ) -> Result<Publication, PublicationError> {
        let root = parse(body, max_size)?;
        let topic = opt_str(&root, "topic")?.ok_or(PublicationError::MissingTopic)?;
        let topic = Topic::parse(topic)?;
        Self::from_root(topic, &root)
    }

    fn from_root(topic: Topic, root: &BorrowedValue<'_>) -> Result<Publication, PublicationError> {
        let op = opt_str(root, "op")?
            .filter(|op| !op.is_empty())
            .ok_or(PublicationError::MissingOp)?;
        let exclude_user = opt_str(root, "exclude_user")?.map(Box::from);
        let (d, d_json_len, has_d) = match root.get("d") {
            None => (Box::default(), 0, false),
            Some(d) => {
                let mut buf = Vec::with_capacity(64);
                infallible(d.write(&mut buf));
                let d_json_len = buf.len();
                infallible(rmp_serde::encode::write_named(&mut buf, d));
                (buf.into_boxed_slice(), d_json_len, true)
            }
        };
        Ok(Publication {
            topic,
            op: op.into(),
            exclude_user,
            offset: None,
            d,
            d_json_len,
            has_d,
        })
    }

    /// An event born on the node (typing, presence), with `d` given as a JSON value.
    pub fn new(
        topic: Topic,
        op: &str,
        d: serde_json::Value,
        exclude_user: Option<String>,
    ) -> Publication {
        Self::from_serialize(topic, op, Some(&d), exclude_user)
    }

    /// An event born on the node from one of the gateway's own messages (e.g.
    /// [`ServerMessage::TypingStart`] on a channel topic).
    pub fn from_message(
        topic: Topic,
        message: &ServerMessage,
        exclude_user: Option<String>,
    ) -> Publication {
        let d = message.has_payload().then_some(message);
        Self::from_serialize(topic, message.op(), d, exclude_user)
    }

    fn from_serialize<P: serde::Serialize>(
        topic: Topic,
        op: &str,
        d: Option<&P>,
        exclude_user: Option<String>,
    ) -> Publication {
        let (d, d_json_len, has_d) = match d {
            None => (Box::default(), 0, false),
            Some(d) => {
                let mut buf = Vec::with_capacity(64);
                infallible(serde_json::to_writer(&mut buf, d));
                let d_json_len = buf.len();
                infallible(rmp_serde::encode::write_named(&mut buf, d));
                (buf.into_boxed_slice(), d_json_len, true)
            }
        };
        Publication {
            topic,
            op: op.into(),
            exclude_user: exclude_user.map(String::into_boxed_str),
            offset: None,
            d,
            d_json_len,
            has_d,
        }
    }

    /// The same publication with a history `offset` (assigned when appended to the topic's
    /// stream).
    pub fn with_offset(mut self, offset: u64) -> Publication {
        self.offset = Some(offset);
        self
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The op.
    pub fn op(&self) -> &str {
        &self.op
    }

    /// The user whose connections must not receive it (typically the author).
    pub fn exclude_user(&self) -> Option<&str> {
        self.exclude_user.as_deref()
    }

    /// The history offset, if any.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// Whether it is ephemeral (`typing_*`): shed first under backpressure, never stored.
    pub fn is_ephemeral(&self) -> bool {
        self.op.starts_with("typing_")
    }

    /// `d` as compact JSON (no newlines), if the publication has one.
    pub fn d_json(&self) -> Option<&[u8]> {
        self.has_d.then(|| &self.d[..self.d_json_len])
    }

    /// `d` as MessagePack, if the publication has one.
    pub fn d_msgpack(&self) -> Option<&[u8]> {
        self.has_d.then(|| &self.d[self.d_json_len..])
    }

    fn d_for(&self, encoding: Encoding) -> &[u8] {
        match encoding {
            Encoding::Json => &self.d[..self.d_json_len],
            Encoding::MsgPack => &self.d[self.d_json_len..],
        }
    }

    /// The full server message `{op, d, topic, offset?}` in `encoding`, in a buffer of its
    /// own (one allocation, sized up front) to be shared by every subscriber.
    pub fn encode(&self, encoding: Encoding) -> Bytes {
        // Sized exactly (in the usual no-escaping case) because `Bytes::from(Vec)` only
        // adopts the allocation without a second one when length equals capacity.
        let mut out = Vec::with_capacity(self.encoded_len(encoding));
        self.encode_into(encoding, &mut out);
        Bytes::from(out)
    }

    /// The encoded size: exact unless `op` or the topic needs JSON escaping.
    fn encoded_len(&self, encoding: Encoding) -> usize {
        let topic = self.topic.as_str();
        let d = self.d_for(encoding).len();
        match encoding {
            Encoding::Json => {
                let offset = self.offset.map_or(0, |o| 10 + decimal_len(o));
                let d = if self.has_d { 5 + d } else { 0 };
                // {"op":"…"  ,"d":…  ,"topic":"…"  ,"offset":N  }
                6 + self.op.len() + 2 + d + 9 + topic.len() + 2 + offset + 1
            }
            Encoding::MsgPack => {
                let offset = self.offset.map_or(0, |o| 7 + uint_len(o));
                let d = if self.has_d { 2 + d } else { 0 };
                1 + 3 + str_len(self.op.len()) + d + 6 + str_len(topic.len()) + offset
            }
        }
    }

    /// Appends the full server message to `out`.
    pub fn encode_into(&self, encoding: Encoding, out: &mut Vec<u8>) {
        let envelope = Envelope {
            encoding,
            op: &self.op,
            has_d: self.has_d,
            r#ref: None,
            topic: Some(self.topic.as_str()),
            offset: self.offset,
        };
        envelope.head(out);
        out.extend_from_slice(self.d_for(encoding));
        envelope.tail(out);
    }

    /// The backend payload `{"op","d","exclude_user"?}` as JSON, for republishing through
    /// Redis. The offset is not included: it is the stream's business.
    pub fn to_backend_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.op.len() + self.d_json_len + 48);
        out.extend_from_slice(b"{\"op\":");
        wire::write_json_str(&mut out, &self.op);
        if let Some(d) = self.d_json() {
            out.extend_from_slice(b",\"d\":");
            out.extend_from_slice(d);
        }
        if let Some(user) = &self.exclude_user {
            out.extend_from_slice(b",\"exclude_user\":");
            wire::write_json_str(&mut out, user);
        }
        out.push(b'}');
        out
    }
}

fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |l| l as usize + 1)
}

/// Bytes of a MessagePack str of `len` bytes (marker and length included).
fn str_len(len: usize) -> usize {
    len + match len {
        0..=31 => 1,
        32..=255 => 2,
        256..=65535 => 3,
        _ => 5,
    }
}

/// Bytes of a MessagePack unsigned integer as `rmp::encode::write_uint` writes it.
fn uint_len(n: u64) -> usize {
    match n {
        0..=127 => 1,
        128..=255 => 2,
        256..=65535 => 3,
        65536..=0xffff_ffff => 5,
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_NESTING_DEPTH;

    fn topic() -> Topic {
        Topic::parse("channel:1").expect("topic")
    }

    #[test]
    fn backend_payload_round_trip() {
        let mut input = br#"{ "op": "message_new",
            "d": { "id": 1, "text": "hi\nthere", "tags": ["a", "b"], "x": 1.5, "n": null },
            "exclude_user": "alice", "junk": [1,2] }"#
            .to_vec();
        let p = Publication::from_backend_payload(topic(), &mut input, 4096).expect("decode");
        assert_eq!(p.op(), "message_new");
        assert_eq!(p.exclude_user(), Some("alice"));
        assert!(!p.is_ephemeral());
        let json = p.encode(Encoding::Json);
        assert!(!json.contains(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&json).expect("valid json");
        assert_eq!(
            v,
            serde_json::json!({"op": "message_new", "topic": "channel:1",
                "d": {"id": 1, "text": "hi\nthere", "tags": ["a", "b"], "x": 1.5, "n": null}})
        );
        let mp = p.clone().with_offset(7).encode(Encoding::MsgPack);
        let v: serde_json::Value = rmp_serde::from_slice(&mp).expect("valid msgpack");
        assert_eq!(
            v,
            serde_json::json!({"op": "message_new", "topic": "channel:1", "offset": 7,
                "d": {"id": 1, "text": "hi\nthere", "tags": ["a", "b"], "x": 1.5, "n": null}})
        );
        let backend: serde_json::Value =
            serde_json::from_slice(&p.to_backend_payload()).expect("json");
        assert_eq!(backend["exclude_user"], "alice");
        assert_eq!(backend["d"]["tags"][1], "b");
    }

    #[test]
    fn encoded_len_is_exact() {
        for offset in [
            None,
            Some(0),
            Some(127),
            Some(128),
            Some(70_000),
            Some(u64::MAX),
        ] {
            for d in [&b"1"[..], &br#"{"a":"x"}"#[..]] {
                let mut input = format!(
                    r#"{{"op":"message_new","d":{}}}"#,
                    String::from_utf8_lossy(d)
                )
                .into_bytes();
                let mut p =
                    Publication::from_backend_payload(topic(), &mut input, 1024).expect("decode");
                if let Some(o) = offset {
                    p = p.with_offset(o);
                }
                for e in Encoding::ALL {
                    let mut out = Vec::new();
                    p.encode_into(e, &mut out);
                    assert_eq!(p.encoded_len(e), out.len(), "{e} {offset:?}");
                }
            }
        }
    }

    #[test]
    fn admin_body() {
        let mut body = br#"{"topic":"server:9","op":"x","d":[1]}"#.to_vec();
        let p = Publication::from_admin_body(&mut body, 1024).expect("decode");
        assert_eq!(p.topic().as_str(), "server:9");
        assert_eq!(p.d_json(), Some(&b"[1]"[..]));
        assert_eq!(p.d_msgpack(), Some(&[0x91, 0x01][..]));
        let bad = |s: &[u8]| Publication::from_admin_body(&mut s.to_vec(), 1024).expect_err("bad");
        assert_eq!(bad(br#"{"op":"x"}"#), PublicationError::MissingTopic);
        assert_eq!(
            bad(br#"{"topic":"nope","op":"x"}"#),
            PublicationError::BadTopic(TopicError::UnknownNamespace("nope".into()))
        );
        assert_eq!(
            bad(br#"{"topic":1,"op":"x"}"#),
            PublicationError::WrongType {
                field: "topic",
                expected: "a string"
            }
        );
    }

    #[test]
    fn hostile_payloads() {
        let bad = |s: &[u8], max: usize| {
            Publication::from_backend_payload(topic(), &mut s.to_vec(), max).expect_err("bad")
        };
        assert_eq!(
            bad(b"{\"op\":\"x\"}", 5),
            PublicationError::TooLarge { size: 10, max: 5 }
        );
        assert_eq!(bad(b"  ", 100), PublicationError::Empty);
        assert_eq!(bad(b"[1]", 100), PublicationError::NotAnObject);
        assert_eq!(bad(br#"{"d":1}"#, 100), PublicationError::MissingOp);
        assert_eq!(bad(br#"{"op":""}"#, 100), PublicationError::MissingOp);
        assert!(matches!(
            bad(b"{\"op\":", 100),
            PublicationError::Malformed(_)
        ));
        assert_eq!(
            bad(b"{\"op\":\"\xff\"}", 100),
            PublicationError::InvalidUtf8
        );
        let deep = format!(
            "{{\"op\":\"x\",\"d\":{}{}}}",
            "[".repeat(MAX_NESTING_DEPTH),
            "]".repeat(MAX_NESTING_DEPTH)
        );
        assert_eq!(
            bad(deep.as_bytes(), 1 << 20),
            PublicationError::TooDeep {
                max: MAX_NESTING_DEPTH
            }
        );
    }

    #[test]
    fn redis_messages() {
        let mut payload = br#"{"op":"message_new","d":{"id":1},"exclude_user":"bob"}"#.to_vec();
        let p = Publication::from_redis_message(b"cg:channel:7", "cg:", &mut payload, 1024)
            .expect("decode");
        assert_eq!(p.topic().as_str(), "channel:7");
        assert_eq!(p.exclude_user(), Some("bob"));
        assert_eq!(Publication::redis_channel("cg:", p.topic()), "cg:channel:7");
        let mut round_trip = p.to_backend_payload();
        let q = Publication::from_redis_message(b"channel:7", "", &mut round_trip, 1024)
            .expect("own payload decodes");
        assert_eq!(p, q);
        let bad = |channel: &[u8], payload: &[u8], max: usize| {
            Publication::from_redis_message(channel, "cg:", &mut payload.to_vec(), max)
                .expect_err("bad")
        };
        assert_eq!(
            bad(b"other:channel:7", br#"{"op":"x"}"#, 100),
            PublicationError::ForeignChannel {
                prefix: "cg:".into()
            }
        );
        assert_eq!(
            bad(b"cg:\xff", br#"{"op":"x"}"#, 100),
            PublicationError::ForeignChannel {
                prefix: "cg:".into()
            }
        );
        assert!(matches!(
            bad(b"cg:nope:1", br#"{"op":"x"}"#, 100),
            PublicationError::BadTopic(_)
        ));
        let too_large = bad(b"cg:channel:7", br#"{"op":"x"}"#, 5);
        assert!(too_large.is_too_large());
        assert_eq!(too_large, PublicationError::TooLarge { size: 10, max: 5 });
        assert!(!bad(b"cg:channel:7", b"not json", 100).is_too_large());
    }

    #[test]
    fn node_events_and_ephemeral() {
        let msg = ServerMessage::TypingStart {
            user_id: "u1".into(),
            name: None,
        };
        let p = Publication::from_message(topic(), &msg, Some("u1".into()));
        assert!(p.is_ephemeral());
        assert_eq!(
            &p.encode(Encoding::Json)[..],
            br#"{"op":"typing_start","d":{"user_id":"u1"},"topic":"channel:1"}"#
        );
        let p = Publication::new(topic(), "x", serde_json::json!({"a": [true]}), None);
        assert_eq!(
            &p.encode(Encoding::Json)[..],
            br#"{"op":"x","d":{"a":[true]},"topic":"channel:1"}"#
        );
        let p = Publication::from_backend_payload(topic(), &mut br#"{"op":"y"}"#.to_vec(), 100)
            .expect("no d is fine");
        assert_eq!(
            &p.encode(Encoding::Json)[..],
            br#"{"op":"y","topic":"channel:1"}"#
        );
        let mp = p.encode(Encoding::MsgPack);
        let v: serde_json::Value = rmp_serde::from_slice(&mp).expect("valid msgpack");
        assert_eq!(v, serde_json::json!({"op": "y", "topic": "channel:1"}));
    }
}
