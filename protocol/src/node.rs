//! Typed extraction from a decoded document tree.
//!
//! Client messages arrive as a `simd_json::BorrowedValue` (from simd-json for JSON, from
//! rmp-serde for MessagePack) and server messages, on the client side, as a
//! `serde_json::Value`. Both are read through [`Node`], so each op's fields are extracted by
//! one piece of code with precise errors (`MissingField("token")`,
//! `WrongType { field: "topics", .. }`) instead of serde's stringly ones.

use std::collections::BTreeMap;

use simd_json::{BorrowedValue, StaticNode};

use crate::error::{truncate_for_echo, DecodeError, DecodeErrorWithRef};
use crate::message::{
    ClientEnvelope, ClientMessage, ErrorCode, HistoryPublication, PresenceEntry, PresenceStatus,
    ServerMessage, StreamPosition, VoiceParticipant,
};

/// Read access to a JSON-like document tree.
pub(crate) trait Node: Sized {
    /// The value under `key` when `self` is a map.
    fn get(&self, key: &str) -> Option<&Self>;
    fn is_map(&self) -> bool;
    fn is_null(&self) -> bool;
    fn as_str(&self) -> Option<&str>;
    fn as_u64(&self) -> Option<u64>;
    fn as_bool(&self) -> Option<bool>;
    fn items(&self) -> Option<&[Self]>;
    /// The value as JSON, whatever it is (a payload passed through, e.g. `rpc`'s `d`).
    fn to_json(&self) -> serde_json::Value;
    /// Calls `f` for each entry when `self` is a map; `None` when it is not.
    fn for_each_entry(
        &self,
        f: &mut dyn FnMut(&str, &Self) -> Result<(), DecodeError>,
    ) -> Option<Result<(), DecodeError>>;
}

impl Node for BorrowedValue<'_> {
    fn to_json(&self) -> serde_json::Value {
        // Only a value JSON cannot hold (a NaN from MessagePack) fails: it reads as null.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
    fn get(&self, key: &str) -> Option<&Self> {
        match self {
            BorrowedValue::Object(o) => o.get(key),
            _ => None,
        }
    }
    fn is_map(&self) -> bool {
        matches!(self, BorrowedValue::Object(_))
    }
    fn is_null(&self) -> bool {
        matches!(self, BorrowedValue::Static(StaticNode::Null))
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            BorrowedValue::String(s) => Some(s),
            _ => None,
        }
    }
    fn as_u64(&self) -> Option<u64> {
        match self {
            BorrowedValue::Static(StaticNode::U64(n)) => Some(*n),
            BorrowedValue::Static(StaticNode::I64(n)) => u64::try_from(*n).ok(),
            _ => None,
        }
    }
    fn as_bool(&self) -> Option<bool> {
        match self {
            BorrowedValue::Static(StaticNode::Bool(b)) => Some(*b),
            _ => None,
        }
    }
    fn items(&self) -> Option<&[Self]> {
        match self {
            BorrowedValue::Array(a) => Some(a.as_slice()),
            _ => None,
        }
    }
    fn for_each_entry(
        &self,
        f: &mut dyn FnMut(&str, &Self) -> Result<(), DecodeError>,
    ) -> Option<Result<(), DecodeError>> {
        match self {
            BorrowedValue::Object(o) => Some(o.iter().try_for_each(|(k, v)| f(k, v))),
            _ => None,
        }
    }
}

impl Node for serde_json::Value {
    fn to_json(&self) -> serde_json::Value {
        self.clone()
    }
    fn get(&self, key: &str) -> Option<&Self> {
        match self {
            serde_json::Value::Object(o) => o.get(key),
            _ => None,
        }
    }
    fn is_map(&self) -> bool {
        self.is_object()
    }
    fn is_null(&self) -> bool {
        serde_json::Value::is_null(self)
    }
    fn as_str(&self) -> Option<&str> {
        serde_json::Value::as_str(self)
    }
    fn as_u64(&self) -> Option<u64> {
        serde_json::Value::as_u64(self)
    }
    fn as_bool(&self) -> Option<bool> {
        serde_json::Value::as_bool(self)
    }
    fn items(&self) -> Option<&[Self]> {
        self.as_array().map(Vec::as_slice)
    }
    fn for_each_entry(
        &self,
        f: &mut dyn FnMut(&str, &Self) -> Result<(), DecodeError>,
    ) -> Option<Result<(), DecodeError>> {
        self.as_object()
            .map(|o| o.iter().try_for_each(|(k, v)| f(k, v)))
    }
}

const A_STRING: &str = "a string";
const A_U64: &str = "an unsigned integer";
const A_BOOL: &str = "a boolean";
const A_MAP: &str = "a map";
const STRINGS: &str = "an array of strings";

fn wrong(field: &'static str, expected: &'static str) -> DecodeError {
    DecodeError::WrongType { field, expected }
}

fn req<'n, N: Node>(d: &'n N, field: &'static str) -> Result<&'n N, DecodeError> {
    d.get(field).ok_or(DecodeError::MissingField(field))
}

/// Absent and `null` both read as "not given".
fn opt<'n, N: Node>(d: &'n N, field: &'static str) -> Option<&'n N> {
    d.get(field).filter(|v| !v.is_null())
}

fn string<N: Node>(d: &N, field: &'static str) -> Result<String, DecodeError> {
    req(d, field)?
        .as_str()
        .map(str::to_owned)
        .ok_or(wrong(field, A_STRING))
}

fn opt_string<N: Node>(d: &N, field: &'static str) -> Result<Option<String>, DecodeError> {
    opt(d, field)
        .map(|v| v.as_str().map(str::to_owned).ok_or(wrong(field, A_STRING)))
        .transpose()
}

fn uint<N: Node>(d: &N, field: &'static str) -> Result<u64, DecodeError> {
    req(d, field)?.as_u64().ok_or(wrong(field, A_U64))
}

fn opt_uint<N: Node>(d: &N, field: &'static str) -> Result<Option<u64>, DecodeError> {
    opt(d, field)
        .map(|v| v.as_u64().ok_or(wrong(field, A_U64)))
        .transpose()
}

fn boolean<N: Node>(d: &N, field: &'static str) -> Result<bool, DecodeError> {
    req(d, field)?.as_bool().ok_or(wrong(field, A_BOOL))
}

fn string_list_of<N: Node>(v: &N, field: &'static str) -> Result<Vec<String>, DecodeError> {
    let items = v.items().ok_or(wrong(field, STRINGS))?;
    items
        .iter()
        .map(|i| i.as_str().map(str::to_owned).ok_or(wrong(field, STRINGS)))
        .collect()
}

fn string_list<N: Node>(d: &N, field: &'static str) -> Result<Vec<String>, DecodeError> {
    string_list_of(req(d, field)?, field)
}

fn opt_map<N: Node, T>(
    d: &N,
    field: &'static str,
    expected: &'static str,
    value: impl Fn(&N) -> Option<T>,
) -> Result<Option<BTreeMap<String, T>>, DecodeError> {
    let Some(v) = opt(d, field) else {
        return Ok(None);
    };
    let mut map = BTreeMap::new();
    v.for_each_entry(&mut |k, v| {
        let v = value(v).ok_or(wrong(field, expected))?;
        map.insert(k.to_owned(), v);
        Ok(())
    })
    .ok_or(wrong(field, expected))??;
    Ok(Some(map))
}

/// `{offset, epoch}`, as `since` and `positions` carry it.
fn position<N: Node>(v: &N) -> Option<StreamPosition> {
    Some(StreamPosition {
        offset: v.get("offset")?.as_u64()?,
        epoch: v.get("epoch")?.as_str()?.to_owned(),
    })
}

const A_POSITION_MAP: &str = "a map of topic to {offset, epoch}";

fn status<N: Node>(
    d: &N,
    field: &'static str,
    client: bool,
) -> Result<PresenceStatus, DecodeError> {
    let s = req(d, field)?.as_str().ok_or(wrong(field, A_STRING))?;
    match PresenceStatus::from_wire(s) {
        Some(st) if !client || st.is_settable_by_client() => Ok(st),
        _ => Err(DecodeError::InvalidValue {
            field,
            expected: if client {
                "one of online, away, busy, invisible"
            } else {
                "one of online, away, busy, invisible, offline"
            },
        }),
    }
}

fn payload<N: Node>(d: Option<&N>) -> Result<&N, DecodeError> {
    match d {
        None => Err(DecodeError::MissingField("d")),
        Some(d) if d.is_map() => Ok(d),
        Some(_) => Err(wrong("d", A_MAP)),
    }
}

/// The envelope keys every message shares: checks the root is a map, reads `ref` and `op`.
/// A `ref` that cannot be read makes the whole message fail (without a ref to echo).
fn envelope<N: Node>(root: &N) -> Result<(Option<u64>, &str), DecodeErrorWithRef> {
    if !root.is_map() {
        return Err(wrong("message", A_MAP).into());
    }
    let r#ref = opt_uint(root, "ref")?;
    let op = req(root, "op")
        .and_then(|op| op.as_str().ok_or(wrong("op", A_STRING)))
        .map_err(|error| DecodeErrorWithRef { error, r#ref })?;
    Ok((r#ref, op))
}

/// Decodes a client envelope from a document tree.
pub(crate) fn client_envelope<N: Node>(root: &N) -> Result<ClientEnvelope, DecodeErrorWithRef> {
    let (r#ref, op) = envelope(root)?;
    client_message(op, root.get("d"))
        .map(|message| ClientEnvelope { r#ref, message })
        .map_err(|error| DecodeErrorWithRef { error, r#ref })
}

fn client_message<N: Node>(op: &str, d: Option<&N>) -> Result<ClientMessage, DecodeError> {
    use ClientMessage as M;
    // `ping` has no payload; whatever `d` it carries is ignored.
    if op == "ping" {
        return Ok(M::Ping);
    }
    if !M::OPS.contains(&op) {
        return Err(DecodeError::UnknownOp(truncate_for_echo(op)));
    }
    let d = payload(d)?;
    Ok(match op {
        "identify" => M::Identify {
            token: string(d, "token")?,
        },
        "refresh" => M::Refresh {
            token: string(d, "token")?,
        },
        "subscribe" => M::Subscribe {
            topics: string_list(d, "topics")?,
            since: opt_map(d, "since", A_POSITION_MAP, position)?,
        },
        "unsubscribe" => M::Unsubscribe {
            topics: string_list(d, "topics")?,
        },
        "typing_start" => M::TypingStart {
            topic: string(d, "topic")?,
        },
        "typing_stop" => M::TypingStop {
            topic: string(d, "topic")?,
        },
        "presence_set" => M::PresenceSet {
            status: status(d, "status", true)?,
        },
        "presence_query" => M::PresenceQuery {
            user_ids: string_list(d, "user_ids")?,
        },
        "history" => M::History {
            topic: string(d, "topic")?,
            limit: opt_uint(d, "limit")?,
            since: opt(d, "since")
                .map(|v| position(v).ok_or(wrong("since", "{offset, epoch}")))
                .transpose()?,
        },
        "rpc" => M::Rpc {
            method: string(d, "method")?,
            d: opt(d, "d").map_or(serde_json::Value::Null, Node::to_json),
        },
        "voice_join" => M::VoiceJoin {
            channel: string(d, "channel")?,
        },
        "voice_leave" => M::VoiceLeave {
            channel: string(d, "channel")?,
        },
        "voice_answer" => M::VoiceAnswer {
            channel: string(d, "channel")?,
            sdp: string(d, "sdp")?,
        },
        "voice_ice_candidate" => M::VoiceIceCandidate {
            channel: string(d, "channel")?,
            candidate: string(d, "candidate")?,
        },
        "voice_mute" => M::VoiceMute {
            channel: string(d, "channel")?,
        },
        "voice_unmute" => M::VoiceUnmute {
            channel: string(d, "channel")?,
        },
        other => return Err(DecodeError::UnknownOp(truncate_for_echo(other))),
    })
}

/// Decodes a gateway-generated server message from its `op` and `d` (client side).
pub(crate) fn server_message<N: Node>(
    op: &str,
    d: Option<&N>,
) -> Result<ServerMessage, DecodeError> {
    use ServerMessage as M;
    if op == "pong" {
        return Ok(M::Pong);
    }
    let known = matches!(
        op,
        "hello"
            | "ready"
            | "refreshed"
            | "subscribed"
            | "unsubscribed"
            | "error"
            | "typing_start"
            | "typing_stop"
            | "presence_update"
            | "presence_state"
            | "rpc_result"
            | "history"
            | "voice_offer"
            | "voice_ice_candidate"
            | "voice_user_joined"
            | "voice_user_left"
            | "voice_user_muted"
            | "voice_user_unmuted"
            | "voice_room_state"
            | "voice_error"
            | "reconnect"
    );
    if !known {
        return Err(DecodeError::UnknownOp(truncate_for_echo(op)));
    }
    let d = payload(d)?;
    Ok(match op {
        "hello" => M::Hello {
            session_id: string(d, "session_id")?,
            heartbeat_interval_ms: uint(d, "heartbeat_interval_ms")?,
        },
        "ready" => M::Ready {
            user_id: string(d, "user_id")?,
            session_id: string(d, "session_id")?,
            topics: string_list(d, "topics")?,
            data: opt(d, "data").map(Node::to_json),
        },
        "refreshed" => M::Refreshed {
            exp: uint(d, "exp")?,
        },
        "subscribed" => M::Subscribed {
            topics: string_list(d, "topics")?,
            positions: opt_map(d, "positions", A_POSITION_MAP, position)?,
            recovered: opt_map(d, "recovered", "a map of topic to boolean", Node::as_bool)?,
        },
        "unsubscribed" => M::Unsubscribed {
            topics: string_list(d, "topics")?,
        },
        "error" => {
            let code = req(d, "code")?.as_str().ok_or(wrong("code", A_STRING))?;
            M::Error {
                code: ErrorCode::from_wire(code).ok_or(DecodeError::InvalidValue {
                    field: "code",
                    expected: "a known error code",
                })?,
                message: string(d, "message")?,
                topics: opt(d, "topics")
                    .map(|v| string_list_of(v, "topics"))
                    .transpose()?,
                retry_after_ms: opt_uint(d, "retry_after_ms")?,
            }
        }
        "typing_start" => M::TypingStart {
            user_id: string(d, "user_id")?,
            name: opt_string(d, "name")?,
        },
        "typing_stop" => M::TypingStop {
            user_id: string(d, "user_id")?,
            name: opt_string(d, "name")?,
        },
        "presence_update" => M::PresenceUpdate {
            user_id: string(d, "user_id")?,
            status: status(d, "status", false)?,
            since: uint(d, "since")?,
        },
        "history" => M::History {
            topic: string(d, "topic")?,
            publications: req(d, "publications")?
                .items()
                .ok_or(wrong("publications", "an array of maps"))?
                .iter()
                .map(|p| {
                    Ok(HistoryPublication {
                        op: string(p, "op")?,
                        d: opt(p, "d").map(Node::to_json),
                        offset: uint(p, "offset")?,
                    })
                })
                .collect::<Result<_, DecodeError>>()?,
            offset: uint(d, "offset")?,
            epoch: string(d, "epoch")?,
        },
        "rpc_result" => M::RpcResult {
            d: opt(d, "d").map_or(serde_json::Value::Null, Node::to_json),
        },
        "presence_state" => M::PresenceState {
            users: req(d, "users")?
                .items()
                .ok_or(wrong("users", "an array of maps"))?
                .iter()
                .map(|u| {
                    Ok(PresenceEntry {
                        user_id: string(u, "user_id")?,
                        status: status(u, "status", false)?,
                        since: uint(u, "since")?,
                    })
                })
                .collect::<Result<_, DecodeError>>()?,
        },
        "voice_offer" => M::VoiceOffer {
            channel: string(d, "channel")?,
            sdp: string(d, "sdp")?,
        },
        "voice_ice_candidate" => M::VoiceIceCandidate {
            channel: string(d, "channel")?,
            candidate: string(d, "candidate")?,
        },
        "voice_user_joined" => M::VoiceUserJoined {
            channel: string(d, "channel")?,
            user_id: string(d, "user_id")?,
            name: opt_string(d, "name")?,
        },
        "voice_user_left" => M::VoiceUserLeft {
            channel: string(d, "channel")?,
            user_id: string(d, "user_id")?,
            name: opt_string(d, "name")?,
        },
        "voice_user_muted" => M::VoiceUserMuted {
            channel: string(d, "channel")?,
            user_id: string(d, "user_id")?,
        },
        "voice_user_unmuted" => M::VoiceUserUnmuted {
            channel: string(d, "channel")?,
            user_id: string(d, "user_id")?,
        },
        "voice_room_state" => M::VoiceRoomState {
            channel: string(d, "channel")?,
            participants: req(d, "participants")?
                .items()
                .ok_or(wrong("participants", "an array of maps"))?
                .iter()
                .map(|p| {
                    Ok(VoiceParticipant {
                        user_id: string(p, "user_id")?,
                        name: opt_string(p, "name")?,
                        muted: boolean(p, "muted")?,
                    })
                })
                .collect::<Result<_, DecodeError>>()?,
        },
        "voice_error" => M::VoiceError {
            code: string(d, "code")?,
            message: string(d, "message")?,
            channel: opt_string(d, "channel")?,
        },
        "reconnect" => M::Reconnect {
            reason: string(d, "reason")?,
            retry_after_ms: uint(d, "retry_after_ms")?,
        },
        other => return Err(DecodeError::UnknownOp(truncate_for_echo(other))),
    })
}
