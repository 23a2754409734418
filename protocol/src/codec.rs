//! Encoding and decoding of single messages in either encoding.
//!
//! Decoding of client input is the hostile path: size is checked before anything else,
//! nesting is bounded (simd-json's depth limit for JSON, the structure walk of
//! the `msgpack` module for MessagePack), MessagePack lengths are validated before rmp-serde
//! allocates, and fields are then read by hand so errors name the field.

use simd_json::BorrowedValue;

use crate::error::{DecodeError, DecodeErrorWithRef};
use crate::message::{ClientEnvelope, ServerEnvelope, ServerMessage};
use crate::msgpack;
use crate::node::{self, Node};
use crate::wire::{self, Envelope};
use crate::Encoding;

/// The deepest nesting of maps/arrays accepted in any message (the envelope counts as 1).
pub const MAX_NESTING_DEPTH: usize = 32;
/// The default `max_message_size`: a client message larger than this is refused.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// Decodes ONE client message (not a multi-message frame; see
/// [`crate::decode_client_frame`]). JSON input is mutated in place by simd-json (strings are
/// unescaped into it), which is why it takes `&mut`.
pub fn decode_client(
    encoding: Encoding,
    input: &mut [u8],
    max_size: usize,
) -> Result<ClientEnvelope, DecodeErrorWithRef> {
    if input.len() > max_size {
        return Err(DecodeError::TooLarge {
            size: input.len(),
            max: max_size,
        }
        .into());
    }
    match encoding {
        Encoding::Json => {
            if wire::is_blank(input) {
                return Err(DecodeError::Empty.into());
            }
            let root = wire::parse_json(input)?;
            node::client_envelope(&root)
        }
        Encoding::MsgPack => {
            let len = msgpack::value_len(input)?;
            if len < input.len() {
                return Err(DecodeError::TrailingBytes {
                    count: input.len() - len,
                }
                .into());
            }
            decode_walked_msgpack(input)
        }
    }
}

/// Decodes one MessagePack client message whose structure [`msgpack::value_len`] has
/// already validated (so rmp-serde's size hints are bounded by the input).
pub(crate) fn decode_walked_msgpack(input: &[u8]) -> Result<ClientEnvelope, DecodeErrorWithRef> {
    let root: BorrowedValue<'_> = rmp_serde::from_slice(input).map_err(|e| wire::rmp_error(&e))?;
    node::client_envelope(&root)
}

/// Appends one server message to `out`. `d` is omitted for ops without a payload (`pong`);
/// `ref`, `topic` and `offset` only when given.
pub fn encode_server(encoding: Encoding, envelope: &ServerEnvelope<'_>, out: &mut Vec<u8>) {
    Envelope {
        encoding,
        op: envelope.message.op(),
        has_d: envelope.message.has_payload(),
        r#ref: envelope.r#ref,
        topic: envelope.topic,
        offset: envelope.offset,
        epoch: None,
    }
    .write_with(envelope.message, out);
}

/// Appends one client message to `out` (client side: tests and the load harness).
pub fn encode_client(encoding: Encoding, envelope: &ClientEnvelope, out: &mut Vec<u8>) {
    Envelope {
        encoding,
        op: envelope.message.op(),
        has_d: envelope.message.has_payload(),
        r#ref: envelope.r#ref,
        topic: None,
        offset: None,
        epoch: None,
    }
    .write_with(&envelope.message, out);
}

/// A server message decoded generically (client side): any op, including backend events,
/// with `d` as a `serde_json::Value` (MessagePack converted).
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedServerMessage {
    /// The op.
    pub op: String,
    /// The payload; `Null` when absent.
    pub d: serde_json::Value,
    /// The `ref` of the request this replies to.
    pub r#ref: Option<u64>,
    /// The topic, for topic events.
    pub topic: Option<String>,
    /// The stream offset, for topic events with history.
    pub offset: Option<u64>,
    /// The stream's epoch, beside `offset`.
    pub epoch: Option<String>,
}

impl DecodedServerMessage {
    /// Interprets the message as one of the gateway's own [`ServerMessage`]s;
    /// [`DecodeError::UnknownOp`] for backend events.
    pub fn to_message(&self) -> Result<ServerMessage, DecodeError> {
        let d = (!self.d.is_null()).then_some(&self.d);
        node::server_message(&self.op, d)
    }
}

/// Decodes one server message (client side: tests and the load harness). JSON goes through
/// serde_json (the input is borrowed, not mutable); MessagePack is walked first like client
/// input.
pub fn decode_server(
    encoding: Encoding,
    input: &[u8],
) -> Result<DecodedServerMessage, DecodeError> {
    let root: serde_json::Value = match encoding {
        Encoding::Json => {
            if wire::is_blank(input) {
                return Err(DecodeError::Empty);
            }
            serde_json::from_slice(input).map_err(|e| DecodeError::Malformed(e.to_string()))?
        }
        Encoding::MsgPack => {
            let len = msgpack::value_len(input)?;
            if len < input.len() {
                return Err(DecodeError::TrailingBytes {
                    count: input.len() - len,
                });
            }
            rmp_serde::from_slice(input).map_err(|e| wire::rmp_error(&e))?
        }
    };
    let serde_json::Value::Object(mut map) = root else {
        return Err(DecodeError::WrongType {
            field: "message",
            expected: "a map",
        });
    };
    let get_u64 = |map: &serde_json::Map<String, serde_json::Value>, field: &'static str| {
        map.get(field)
            .filter(|v| !v.is_null())
            .map(|v| {
                v.as_u64().ok_or(DecodeError::WrongType {
                    field,
                    expected: "an unsigned integer",
                })
            })
            .transpose()
    };
    let r#ref = get_u64(&map, "ref")?;
    let offset = get_u64(&map, "offset")?;
    let op = match map.get("op") {
        None => return Err(DecodeError::MissingField("op")),
        Some(op) => Node::as_str(op)
            .ok_or(DecodeError::WrongType {
                field: "op",
                expected: "a string",
            })?
            .to_owned(),
    };
    let get_string = |map: &serde_json::Map<String, serde_json::Value>, field: &'static str| {
        map.get(field)
            .filter(|v| !v.is_null())
            .map(|v| {
                Node::as_str(v)
                    .map(str::to_owned)
                    .ok_or(DecodeError::WrongType {
                        field,
                        expected: "a string",
                    })
            })
            .transpose()
    };
    let topic = get_string(&map, "topic")?;
    let epoch = get_string(&map, "epoch")?;
    let d = map.remove("d").unwrap_or(serde_json::Value::Null);
    Ok(DecodedServerMessage {
        op,
        d,
        r#ref,
        topic,
        offset,
        epoch,
    })
}
