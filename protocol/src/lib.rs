//! coregate's wire protocol, sans-IO: the types and byte-level rules of
//! `PROTOCOL.md`, with no runtime, socket or clock in sight, so the gateway, the load
//! harness and the tests all share one definition and can drive it with plain bytes.
//!
//! # Layout
//!
//! - [`encoding`]: the two encodings (JSON, MessagePack), their subprotocol names and
//!   `Sec-WebSocket-Protocol` negotiation (§1).
//! - [`close`]: close codes and the reconnect advice of §7.
//! - [`topic`]: validated [`Topic`]s (cheap to clone: `Arc<str>`) and the [`TopicPattern`]s
//!   of the JWT `topics` claim (§3).
//! - [`claims`]: the JWT claim set (§1); verification is the gateway's job.
//! - [`message`]: [`ClientMessage`] (§4) and [`ServerMessage`] (§5) with their envelopes.
//! - [`codec`]: one message in, one message out. Client input is decoded with simd-json
//!   (JSON, in place) and rmp-serde (MessagePack), after hostile-input checks (size, depth,
//!   MessagePack declared lengths walked before anything is allocated); fields are then read
//!   by hand so errors name the field ([`DecodeError`]).
//! - [`framing`]: several messages per frame (§2): splitting incoming frames without
//!   allocating and joining outgoing ones into a reused buffer ([`FrameBuilder`]).
//! - [`publication`]: backend events (§6), decoded once and encoded per encoding with a few
//!   `memcpy`s, since the gateway never looks inside their `d`; `d` is made only in the
//!   encodings asked for ([`EncodingSet`]: those in use), and a message can be written after
//!   room for its frame header in one buffer of exactly the frame's size.
//!
//! Nothing here panics on peer input: every failure is a typed error the gateway maps to an
//! `error` reply or a close code in one place.

pub mod claims;
pub mod close;
pub mod codec;
pub mod encoding;
pub mod error;
pub mod framing;
pub mod message;
mod msgpack;
mod node;
pub mod publication;
pub mod topic;
mod wire;

pub use claims::Claims;
pub use close::{CloseCode, Reconnect};
pub use codec::{
    decode_client, decode_server, encode_client, encode_server, DecodedServerMessage,
    DEFAULT_MAX_MESSAGE_SIZE, MAX_NESTING_DEPTH,
};
pub use encoding::{
    negotiate, Encoding, Negotiated, NegotiationError, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK,
};
pub use error::{DecodeError, DecodeErrorWithRef};
pub use framing::{
    decode_client_frame, message_separator, split_server_frame, ClientFrameMessages, FrameBuilder,
    FrameFull,
};
pub use message::{
    ClientEnvelope, ClientMessage, ErrorCode, HistoryPublication, PresenceEntry, PresenceStatus,
    ServerEnvelope, ServerMessage, StreamPosition, VoiceParticipant, DEFAULT_HISTORY_LIMIT,
    MAX_PRESENCE_QUERY_USERS,
};
pub use publication::{EncodingSet, Publication, PublicationError};
pub use topic::{Namespace, Topic, TopicError, TopicPattern, TopicPatterns, MAX_TOPIC_LEN};
