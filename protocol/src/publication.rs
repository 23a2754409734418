//! Backend publications (PROTOCOL.md §6), decoded once and encodable to either encoding.
//!
//! A publication's `d` is opaque to the gateway, so it is never turned into typed data: at
//! decode time it is re-emitted in the encodings asked for (an [`EncodingSet`]: the ingestor
//! asks for those that the topic's local subscribers use), as compact JSON and/or
//! MessagePack, and every later [`Publication::encode`] in one of them is a handful of
//! `memcpy`s around those bytes. Work for an encoding nobody uses is not done at all: a form
//! that was not made is converted from the other one only if it is asked for after all (a
//! subscriber whose interest raced the publication), which costs one more parse of `d`.
//! The compact JSON re-emission matters for framing too: a backend may pretty-print, and a
//! raw newline inside `d` would split an NDJSON frame.
//!
//! [`Publication::encode_with_headroom`] writes a message after room for a frame header in
//! one buffer of exactly the final size: the envelope's size is computed exactly before
//! anything is written, so a delivery costs one allocation and no copy.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

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

/// A set of [`Encoding`]s: the encodings a topic's local subscribers use, and the forms of a
/// publication's `d` to make.
#[derive(Copy, Clone, Default, PartialEq, Eq, Hash)]
pub struct EncodingSet(u8);

impl EncodingSet {
    /// No encoding.
    pub const EMPTY: EncodingSet = EncodingSet(0);
    /// JSON alone.
    pub const JSON: EncodingSet = EncodingSet(1);
    /// MessagePack alone.
    pub const MSGPACK: EncodingSet = EncodingSet(2);
    /// Both encodings.
    pub const ALL: EncodingSet = EncodingSet(3);

    fn bit(encoding: Encoding) -> u8 {
        1 << encoding.index()
    }

    /// The set holding `encoding` alone.
    pub fn only(encoding: Encoding) -> EncodingSet {
        EncodingSet(Self::bit(encoding))
    }

    /// Adds `encoding`.
    pub fn insert(&mut self, encoding: Encoding) {
        self.0 |= Self::bit(encoding);
    }

    /// Whether `encoding` is in the set.
    pub fn contains(self, encoding: Encoding) -> bool {
        self.0 & Self::bit(encoding) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The encodings in the set, in [`Encoding::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Encoding> {
        Encoding::ALL.into_iter().filter(move |e| self.contains(*e))
    }
}

impl From<Encoding> for EncodingSet {
    fn from(encoding: Encoding) -> Self {
        EncodingSet::only(encoding)
    }
}

impl FromIterator<Encoding> for EncodingSet {
    fn from_iter<I: IntoIterator<Item = Encoding>>(iter: I) -> Self {
        let mut set = EncodingSet::EMPTY;
        for encoding in iter {
            set.insert(encoding);
        }
        set
    }
}

impl fmt::Debug for EncodingSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// An event for a topic, ready to be encoded to any encoding without parsing again.
///
/// Equality compares the forms of `d` as made: the same event decoded for different
/// encodings compares unequal.
#[derive(Clone, PartialEq, Eq)]
pub struct Publication {
    topic: Topic,
    op: Box<str>,
    exclude_user: Option<Box<str>>,
    offset: Option<u64>,
    /// The epoch of the stream `offset` is in; shared by every publication of a stream.
    epoch: Option<Arc<str>>,
    /// The forms of `d` made: `d` as compact JSON (if made) followed by `d` as MessagePack
    /// (if made), in one allocation; empty when there is no `d`.
    d: Box<[u8]>,
    /// Where the JSON form ends in `d` (0 when it was not made).
    d_json_len: usize,
    /// Which forms `d` holds; empty exactly when the publication has no `d`.
    d_forms: EncodingSet,
}

impl fmt::Debug for Publication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publication")
            .field("topic", &self.topic)
            .field("op", &self.op)
            .field(
                "d",
                &self
                    .d_json()
                    .map(|d| String::from_utf8_lossy(&d).into_owned()),
            )
            .field("d_forms", &self.d_forms)
            .field("exclude_user", &self.exclude_user)
            .field("offset", &self.offset)
            .field("epoch", &self.epoch)
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
    /// The forms of `d` that constructors without an [`EncodingSet`] make: JSON, the form
    /// that republishing through Redis ([`Publication::to_backend_payload`]) needs. The other
    /// is converted from it on first use.
    pub const DEFAULT_FORMS: EncodingSet = EncodingSet::JSON;

    /// Decodes a Redis payload `{"op": "...", "d": ..., "exclude_user"?: "<sub>"}` published
    /// on `topic` (the channel prefix already stripped by the caller). The input is mutated
    /// (simd-json unescapes in place). Unknown keys are ignored; `d` may be absent. `d` is
    /// made in [`Publication::DEFAULT_FORMS`].
    pub fn from_backend_payload(
        topic: Topic,
        payload: &mut [u8],
        max_size: usize,
    ) -> Result<Publication, PublicationError> {
        Self::from_backend_payload_in(topic, payload, max_size, Self::DEFAULT_FORMS)
    }

    /// [`Publication::from_backend_payload`], making `d` in the encodings of `forms` only
    /// (JSON when `forms` is empty: a publication with a `d` holds at least one form).
    pub fn from_backend_payload_in(
        topic: Topic,
        payload: &mut [u8],
        max_size: usize,
        forms: EncodingSet,
    ) -> Result<Publication, PublicationError> {
        let root = parse(payload, max_size)?;
        let publication = Self::from_root(topic, &root, forms)?;
        // Set by the `coregate_publish` Redis function for a topic with history; both or
        // neither.
        let offset = root.get("offset").and_then(Node::as_u64);
        let epoch = opt_str(&root, "epoch").ok().flatten();
        Ok(match (offset, epoch) {
            (Some(offset), Some(epoch)) => publication.with_position(offset, Arc::from(epoch)),
            _ => publication,
        })
    }

    /// The topic named by a Redis `channel`, which must be `<prefix><topic>`.
    pub fn topic_of_channel(channel: &[u8], prefix: &str) -> Result<Topic, PublicationError> {
        let topic = std::str::from_utf8(channel)
            .ok()
            .and_then(|c| c.strip_prefix(prefix))
            .ok_or_else(|| PublicationError::ForeignChannel {
                prefix: prefix.to_owned(),
            })?;
        Ok(Topic::parse(topic)?)
    }

    /// Decodes a message received from Redis on `channel`, which must be
    /// `<prefix><topic>` (PROTOCOL.md §6). The size limit is checked before anything
    /// else, so an oversize payload costs no parsing. `d` is made in
    /// [`Publication::DEFAULT_FORMS`]; the ingestor, which knows the encodings in use, calls
    /// [`Publication::topic_of_channel`] and [`Publication::from_backend_payload_in`].
    pub fn from_redis_message(
        channel: &[u8],
        prefix: &str,
        payload: &mut [u8],
        max_size: usize,
    ) -> Result<Publication, PublicationError> {
        check_size(payload, max_size)?;
        let topic = Self::topic_of_channel(channel, prefix)?;
        Self::from_backend_payload(topic, payload, max_size)
    }

    /// The Redis channel a publication on `topic` goes to: `<prefix><topic>`.
    pub fn redis_channel(prefix: &str, topic: &Topic) -> String {
        let mut channel = String::with_capacity(prefix.len() + topic.as_str().len());
        channel.push_str(prefix);
        channel.push_str(topic.as_str());
        channel
    }

    /// Decodes an admin `POST /publish` body `{"topic", "op", "d", "exclude_user"?}`;
    /// `d` is made in [`Publication::DEFAULT_FORMS`].
    pub fn from_admin_body(
        body: &mut [u8],
        max_size: usize,
    ) -> Result<Publication, PublicationError> {
        Self::from_admin_body_in(body, max_size, Self::DEFAULT_FORMS)
    }

    /// [`Publication::from_admin_body`], making `d` in the encodings of `forms` only (JSON
    /// when `forms` is empty).
    pub fn from_admin_body_in(
        body: &mut [u8],
        max_size: usize,
        forms: EncodingSet,
    ) -> Result<Publication, PublicationError> {
        let root = parse(body, max_size)?;
        let topic = opt_str(&root, "topic")?.ok_or(PublicationError::MissingTopic)?;
        let topic = Topic::parse(topic)?;
        Self::from_root(topic, &root, forms)
    }

    fn from_root(
        topic: Topic,
        root: &BorrowedValue<'_>,
        forms: EncodingSet,
    ) -> Result<Publication, PublicationError> {
        let op = opt_str(root, "op")?
            .filter(|op| !op.is_empty())
            .ok_or(PublicationError::MissingOp)?;
        let exclude_user = opt_str(root, "exclude_user")?.map(Box::from);
        let forms = at_least_json(forms);
        let (d, d_json_len, d_forms) = match root.get("d") {
            None => (Box::default(), 0, EncodingSet::EMPTY),
            Some(d) => {
                let mut buf = Vec::with_capacity(64);
                if forms.contains(Encoding::Json) {
                    infallible(d.write(&mut buf));
                }
                let d_json_len = buf.len();
                if forms.contains(Encoding::MsgPack) {
                    infallible(rmp_serde::encode::write_named(&mut buf, d));
                }
                (buf.into_boxed_slice(), d_json_len, forms)
            }
        };
        Ok(Publication {
            topic,
            op: op.into(),
            exclude_user,
            offset: None,
            epoch: None,
            d,
            d_json_len,
            d_forms,
        })
    }

    /// An event born on the node (typing, presence), with `d` given as a JSON value; `d` is
    /// made in [`Publication::DEFAULT_FORMS`].
    pub fn new(
        topic: Topic,
        op: &str,
        d: serde_json::Value,
        exclude_user: Option<String>,
    ) -> Publication {
        Self::from_serialize(topic, op, Some(&d), exclude_user)
    }

    /// An event born on the node from one of the gateway's own messages (e.g.
    /// [`ServerMessage::TypingStart`] on a channel topic); `d` is made in
    /// [`Publication::DEFAULT_FORMS`].
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
        let (d, d_json_len, d_forms) = match d {
            None => (Box::default(), 0, EncodingSet::EMPTY),
            Some(d) => {
                let forms = at_least_json(Self::DEFAULT_FORMS);
                let mut buf = Vec::with_capacity(64);
                if forms.contains(Encoding::Json) {
                    infallible(serde_json::to_writer(&mut buf, d));
                }
                let d_json_len = buf.len();
                if forms.contains(Encoding::MsgPack) {
                    infallible(rmp_serde::encode::write_named(&mut buf, d));
                }
                (buf.into_boxed_slice(), d_json_len, forms)
            }
        };
        Publication {
            topic,
            op: op.into(),
            exclude_user: exclude_user.map(String::into_boxed_str),
            offset: None,
            epoch: None,
            d,
            d_json_len,
            d_forms,
        }
    }

    /// The same publication at `offset` in its topic's stream of `epoch` (assigned when
    /// it was appended).
    pub fn with_position(mut self, offset: u64, epoch: Arc<str>) -> Publication {
        self.offset = Some(offset);
        self.epoch = Some(epoch);
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

    /// The epoch of the stream `offset` is in, if any.
    pub fn epoch(&self) -> Option<&Arc<str>> {
        self.epoch.as_ref()
    }

    /// Whether it is ephemeral (`typing_*`): shed first under backpressure, never stored.
    pub fn is_ephemeral(&self) -> bool {
        self.op.starts_with("typing_")
    }

    /// Whether the publication has a `d`.
    pub fn has_d(&self) -> bool {
        !self.d_forms.is_empty()
    }

    /// The encodings `d` was made in (empty when there is no `d`). An encoding outside it
    /// still encodes, by converting `d` from the other form.
    pub fn d_forms(&self) -> EncodingSet {
        self.d_forms
    }

    /// `d` in `encoding` as made at decode time; `None` if it has no `d` or `d` was not made
    /// in `encoding`.
    pub fn d_made(&self, encoding: Encoding) -> Option<&[u8]> {
        if !self.d_forms.contains(encoding) {
            return None;
        }
        Some(match encoding {
            Encoding::Json => &self.d[..self.d_json_len],
            Encoding::MsgPack => &self.d[self.d_json_len..],
        })
    }

    /// `d` in `encoding`, converted from the other form if it was not made in this one;
    /// `None` if the publication has no `d`.
    pub fn d(&self, encoding: Encoding) -> Option<Cow<'_, [u8]>> {
        if let Some(d) = self.d_made(encoding) {
            return Some(Cow::Borrowed(d));
        }
        let other = match encoding {
            Encoding::Json => Encoding::MsgPack,
            Encoding::MsgPack => Encoding::Json,
        };
        let source = self.d_made(other)?;
        Some(Cow::Owned(convert(other, source, encoding)))
    }

    /// `d` as compact JSON (no newlines), if the publication has one.
    pub fn d_json(&self) -> Option<Cow<'_, [u8]>> {
        self.d(Encoding::Json)
    }

    /// `d` as MessagePack, if the publication has one.
    pub fn d_msgpack(&self) -> Option<Cow<'_, [u8]>> {
        self.d(Encoding::MsgPack)
    }

    /// The full server message `{op, d, topic, offset?}` in `encoding`, in a buffer of its
    /// own (one allocation, sized exactly) to be shared by every subscriber.
    pub fn encode(&self, encoding: Encoding) -> Bytes {
        Bytes::from(self.encode_with_headroom(encoding, |_| 0).0)
    }

    /// The full server message in `encoding` after `headroom(len)` zeroed bytes, where `len`
    /// is the message's size: room for a frame header (whose size depends on the message's),
    /// which the caller writes into it afterwards. Returns the buffer and the room, which is
    /// always `headroom` of the message's actual size.
    ///
    /// The size is computed before anything is written, so the buffer is one allocation of
    /// exactly the frame's size (its length is its capacity, which `Bytes::from` adopts as it
    /// is) and the message is never copied. The computation assumes that `op` and the topic
    /// need no JSON escaping, which is all but always so; when they do, the buffer grows, and
    /// if that changes the header's size the message is moved within it.
    pub fn encode_with_headroom(
        &self,
        encoding: Encoding,
        mut headroom: impl FnMut(usize) -> usize,
    ) -> (Vec<u8>, usize) {
        let d = self.d(encoding);
        let d = d.as_deref().unwrap_or_default();
        let len = self.encoded_len(encoding, d.len());
        let room = headroom(len);
        let mut out = Vec::with_capacity(room + len);
        out.resize(room, 0);
        self.write(encoding, d, &mut out);
        let actual = out.len() - room;
        if actual == len {
            return (out, room);
        }
        // Escaping made the message longer than computed: fix the room up.
        let needed = headroom(actual);
        if needed > room {
            out.splice(..0, std::iter::repeat_n(0, needed - room));
        } else {
            out.drain(..room - needed);
        }
        (out, needed)
    }

    /// The size of the full server message in `encoding`, `d` being `d_len` bytes in it:
    /// exact unless `op` or the topic needs JSON escaping (then a little short). Counting
    /// escapes here would cost a scan per message for a case that all but never happens.
    fn encoded_len(&self, encoding: Encoding, d_len: usize) -> usize {
        let topic = self.topic.as_str();
        let has_d = self.has_d();
        match encoding {
            Encoding::Json => {
                let offset = self.offset.map_or(0, |o| 10 + decimal_len(o));
                let epoch = self.epoch.as_ref().map_or(0, |e| 11 + e.len());
                let d = if has_d { 5 + d_len } else { 0 };
                // {"op":"…"  ,"d":…  ,"topic":"…"  ,"offset":N  ,"epoch":"…"  }
                6 + self.op.len() + 2 + d + 9 + topic.len() + 2 + offset + epoch + 1
            }
            Encoding::MsgPack => {
                let offset = self.offset.map_or(0, |o| 7 + uint_len(o));
                let epoch = self.epoch.as_ref().map_or(0, |e| 6 + str_len(e.len()));
                let d = if has_d { 2 + d_len } else { 0 };
                1 + 3 + str_len(self.op.len()) + d + 6 + str_len(topic.len()) + offset + epoch
            }
        }
    }

    /// Appends the full server message to `out`.
    pub fn encode_into(&self, encoding: Encoding, out: &mut Vec<u8>) {
        let d = self.d(encoding);
        self.write(encoding, d.as_deref().unwrap_or_default(), out);
    }

    fn write(&self, encoding: Encoding, d: &[u8], out: &mut Vec<u8>) {
        let envelope = Envelope {
            encoding,
            op: &self.op,
            has_d: self.has_d(),
            r#ref: None,
            topic: Some(self.topic.as_str()),
            offset: self.offset,
            epoch: self.epoch.as_deref(),
        };
        envelope.head(out);
        out.extend_from_slice(d);
        envelope.tail(out);
    }

    /// The backend payload `{"op","d","exclude_user"?}` as JSON, for republishing through
    /// Redis. The offset is not included: it is the stream's business.
    pub fn to_backend_payload(&self) -> Vec<u8> {
        let d = self.d_json();
        let d_len = d.as_ref().map_or(0, |d| d.len());
        let mut out = Vec::with_capacity(self.op.len() + d_len + 48);
        out.extend_from_slice(b"{\"op\":");
        wire::write_json_str(&mut out, &self.op);
        if let Some(d) = d {
            out.extend_from_slice(b",\"d\":");
            out.extend_from_slice(&d);
        }
        if let Some(user) = &self.exclude_user {
            out.extend_from_slice(b",\"exclude_user\":");
            wire::write_json_str(&mut out, user);
        }
        out.push(b'}');
        out
    }
}

/// A publication with a `d` holds at least one form of it; JSON is the canonical one.
fn at_least_json(forms: EncodingSet) -> EncodingSet {
    if forms.is_empty() {
        EncodingSet::JSON
    } else {
        forms
    }
}

fn check_size(payload: &[u8], max_size: usize) -> Result<(), PublicationError> {
    if payload.len() > max_size {
        return Err(PublicationError::TooLarge {
            size: payload.len(),
            max: max_size,
        });
    }
    Ok(())
}

/// `d` made by this module in `from`, re-emitted in `to`: the slow path for a form that was
/// not made at decode time. The input is our own output, so it parses; should it not, `d`
/// becomes `null` rather than a panic on the delivery path.
fn convert(from: Encoding, d: &[u8], to: Encoding) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.len() + d.len() / 4 + 8);
    let converted = match (from, to) {
        (Encoding::Json, Encoding::MsgPack) => {
            let mut input = d.to_vec();
            let parsed = wire::parse_json(&mut input);
            parsed.is_ok_and(|value| rmp_serde::encode::write_named(&mut out, &value).is_ok())
        }
        (Encoding::MsgPack, Encoding::Json) => {
            let parsed = rmp_serde::from_slice::<BorrowedValue<'_>>(d);
            parsed.is_ok_and(|value| value.write(&mut out).is_ok())
        }
        _ => {
            out.extend_from_slice(d);
            true
        }
    };
    if !converted {
        debug_assert!(false, "our own {from} `d` did not convert to {to}");
        out.clear();
        match to {
            Encoding::Json => out.extend_from_slice(b"null"),
            Encoding::MsgPack => out.push(0xc0),
        }
    }
    out
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
        let mp = p
            .clone()
            .with_position(7, "e1".into())
            .encode(Encoding::MsgPack);
        let v: serde_json::Value = rmp_serde::from_slice(&mp).expect("valid msgpack");
        assert_eq!(
            v,
            serde_json::json!({"op": "message_new", "topic": "channel:1", "offset": 7, "epoch": "e1",
                "d": {"id": 1, "text": "hi\nthere", "tags": ["a", "b"], "x": 1.5, "n": null}})
        );
        let backend: serde_json::Value =
            serde_json::from_slice(&p.to_backend_payload()).expect("json");
        assert_eq!(backend["exclude_user"], "alice");
        assert_eq!(backend["d"]["tags"][1], "b");
    }

    #[test]
    fn a_payload_from_the_publish_function_carries_its_position() {
        let mut input =
            br#"{"offset":42,"epoch":"1764770000","op":"message_new","d":{"id":1}}"#.to_vec();
        let p = Publication::from_backend_payload(topic(), &mut input, 4096).expect("decode");
        assert_eq!(
            (p.offset(), p.epoch().map(|e| &**e)),
            (Some(42), Some("1764770000"))
        );
        let v: serde_json::Value = serde_json::from_slice(&p.encode(Encoding::Json)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"op": "message_new", "topic": "channel:1", "d": {"id": 1},
                "offset": 42, "epoch": "1764770000"})
        );
        // An offset without its epoch means nothing: delivered without a position.
        let mut input = br#"{"offset":42,"op":"message_new"}"#.to_vec();
        let p = Publication::from_backend_payload(topic(), &mut input, 4096).expect("decode");
        assert_eq!(p.offset(), None);
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
                let mut p = Publication::from_backend_payload_in(
                    topic(),
                    &mut input,
                    1024,
                    EncodingSet::ALL,
                )
                .expect("decode");
                if let Some(o) = offset {
                    p = p.with_position(o, "1764770000123456".into());
                }
                for e in Encoding::ALL {
                    let mut out = Vec::new();
                    p.encode_into(e, &mut out);
                    let d_len = p.d_made(e).map_or(0, <[u8]>::len);
                    assert_eq!(p.encoded_len(e, d_len), out.len(), "{e} {offset:?}");
                }
            }
        }
    }

    #[test]
    fn admin_body() {
        let mut body = br#"{"topic":"server:9","op":"x","d":[1]}"#.to_vec();
        let p = Publication::from_admin_body(&mut body, 1024).expect("decode");
        assert_eq!(p.topic().as_str(), "server:9");
        assert_eq!(p.d_json().as_deref(), Some(&b"[1]"[..]));
        assert_eq!(p.d_msgpack().as_deref(), Some(&[0x91, 0x01][..]));
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

    #[test]
    fn d_is_made_only_in_the_forms_asked_for() {
        let payload = br#"{"op":"x","d":{"a":[1,"b"]}}"#;
        let decode = |forms| {
            Publication::from_backend_payload_in(topic(), &mut payload.to_vec(), 1024, forms)
                .expect("decode")
        };
        let json = decode(EncodingSet::JSON);
        assert_eq!(json.d_forms(), EncodingSet::JSON);
        assert_eq!(json.d_made(Encoding::Json), Some(&br#"{"a":[1,"b"]}"#[..]));
        assert_eq!(json.d_made(Encoding::MsgPack), None);
        let msgpack = decode(EncodingSet::MSGPACK);
        assert_eq!(msgpack.d_forms(), EncodingSet::MSGPACK);
        assert_eq!(msgpack.d_made(Encoding::Json), None);
        let msgpack_d = [0x81, 0xa1, b'a', 0x92, 0x01, 0xa1, b'b'];
        assert_eq!(msgpack.d_made(Encoding::MsgPack), Some(&msgpack_d[..]));
        let both = decode(EncodingSet::ALL);
        assert_eq!(both.d_made(Encoding::Json), json.d_made(Encoding::Json));
        assert_eq!(both.d_made(Encoding::MsgPack), Some(&msgpack_d[..]));
        assert_eq!(
            decode(EncodingSet::EMPTY),
            json,
            "a `d` is always held in some form"
        );
        // A form that was not made converts from the other, to the same bytes.
        for p in [&json, &msgpack] {
            for e in Encoding::ALL {
                assert_eq!(p.d(e), both.d(e), "{e} from {:?}", p.d_forms());
                assert_eq!(p.encode(e), both.encode(e));
            }
        }
        assert_eq!(msgpack.to_backend_payload(), json.to_backend_payload());
        let no_d = Publication::from_backend_payload_in(
            topic(),
            &mut br#"{"op":"y"}"#.to_vec(),
            100,
            EncodingSet::ALL,
        )
        .expect("decode");
        assert!(!no_d.has_d() && no_d.d_forms().is_empty() && no_d.d_json().is_none());
    }

    #[test]
    fn node_events_make_the_default_forms() {
        let p = Publication::new(topic(), "x", serde_json::json!([1]), None);
        assert_eq!(p.d_forms(), Publication::DEFAULT_FORMS);
        assert_eq!(p.d_msgpack().as_deref(), Some(&[0x91, 0x01][..]));
    }

    #[test]
    fn escaping_moves_the_message_to_keep_the_room_right() {
        let header = |len: usize| if len < 126 { 2 } else { 4 };
        // The message is 34 + k + (op as JSON) bytes, `d` being k x's; the size is computed
        // without escapes, so a 125-byte estimate can turn into 126 bytes or more.
        for (op, k, computed, actual, room) in [
            ("a\"b\"c\t", 70, 112, 115, 2), // grows, same header
            ("a\u{0}", 87, 125, 130, 4),    // grows past the 2-byte header's reach
            ("\\", 88, 125, 126, 4),        // by one byte, at the boundary
            ("ab", 87, 125, 125, 2),        // no escape: exact
        ] {
            let p = Publication::new(topic(), op, serde_json::json!("x".repeat(k)), None);
            assert_eq!(p.encoded_len(Encoding::Json, k + 2), computed, "{op:?}");
            let encoded = p.encode(Encoding::Json);
            assert_eq!(encoded.len(), actual, "{op:?}");
            let (framed, got) = p.encode_with_headroom(Encoding::Json, header);
            assert_eq!(got, room, "{op:?}");
            assert_eq!(&framed[..got], &[0; 4][..got]);
            assert_eq!(&framed[got..], &encoded[..]);
            let v: serde_json::Value = serde_json::from_slice(&encoded).expect("json");
            assert_eq!(v["op"], op);
        }
    }

    #[test]
    fn headroom_precedes_the_message_in_one_exact_buffer() {
        let p = Publication::new(topic(), "x", serde_json::json!([1]), None);
        let mut seen = None;
        let (buf, room) = p.encode_with_headroom(Encoding::MsgPack, |len| {
            seen = Some(len);
            3
        });
        assert_eq!(room, 3);
        assert_eq!(&buf[..3], &[0, 0, 0]);
        assert_eq!(&buf[3..], &p.encode(Encoding::MsgPack)[..]);
        assert_eq!(seen, Some(buf.len() - 3));
        assert_eq!(buf.len(), buf.capacity());
        assert_eq!(
            &buf[3..],
            &[
                0x83, 0xa2, b'o', b'p', 0xa1, b'x', 0xa1, b'd', 0x91, 0x01, 0xa5, b't', b'o', b'p',
                b'i', b'c', 0xa9, b'c', b'h', b'a', b'n', b'n', b'e', b'l', b':', b'1'
            ][..]
        );
    }

    #[test]
    fn encoding_sets() {
        let mut set = EncodingSet::default();
        assert!(set.is_empty());
        set.insert(Encoding::MsgPack);
        assert_eq!(set, EncodingSet::MSGPACK);
        assert!(set.contains(Encoding::MsgPack) && !set.contains(Encoding::Json));
        assert_eq!(EncodingSet::from(Encoding::Json), EncodingSet::JSON);
        assert_eq!(
            Encoding::ALL.into_iter().collect::<EncodingSet>(),
            EncodingSet::ALL
        );
        assert_eq!(EncodingSet::ALL.iter().collect::<Vec<_>>(), Encoding::ALL);
        assert_eq!(format!("{:?}", EncodingSet::ALL), "{Json, MsgPack}");
    }
}
