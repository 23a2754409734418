//! Message types of PROTOCOL.md §4 (client → server) and §5 (server → client).
//!
//! Both enums derive `Serialize` *untagged*: serializing a message writes its payload (`d`)
//! only, because the envelope (`op`, `ref`, `topic`, `offset`) is written by the codec
//! around it ([`crate::encode_server`], [`crate::encode_client`]). Use those, not
//! `serde_json::to_vec(&message)`, to produce wire bytes.

use std::collections::BTreeMap;

/// Payload-level error codes used in `error` events.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message could not be decoded or was invalid.
    BadRequest,
    /// The `op` is not one the server knows.
    UnknownOp,
    /// Not allowed (e.g. subscribing to a topic the token does not grant).
    Forbidden,
    /// A limit was reached (topics per connection, users per presence query, …).
    Limit,
    /// Too many requests; see `retry_after_ms`.
    RateLimited,
    /// `refresh` with a token that failed verification or names another `sub`.
    InvalidToken,
    /// A topic that does not parse.
    InvalidTopic,
    /// The request needs something that is not ready yet.
    NotReady,
    /// The feature is not configured on this gateway, or the backend did not answer.
    Unavailable,
    /// History or presence of something that does not exist (a topic without history).
    NotFound,
}

impl ErrorCode {
    /// The wire name (`bad_request`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Limit => "limit",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotFound => "not_found",
        }
    }

    pub(crate) fn from_wire(s: &str) -> Option<ErrorCode> {
        Some(match s {
            "bad_request" => ErrorCode::BadRequest,
            "unknown_op" => ErrorCode::UnknownOp,
            "forbidden" => ErrorCode::Forbidden,
            "limit" => ErrorCode::Limit,
            "rate_limited" => ErrorCode::RateLimited,
            "invalid_token" => ErrorCode::InvalidToken,
            "invalid_topic" => ErrorCode::InvalidTopic,
            "not_ready" => ErrorCode::NotReady,
            "unavailable" => ErrorCode::Unavailable,
            "not_found" => ErrorCode::NotFound,
            _ => return None,
        })
    }
}

/// A user's presence. Clients may set every status but `offline`, which the tracker
/// derives (last connection gone); `invisible` users read as `offline` to others.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// Connected and active.
    Online,
    /// Connected, idle.
    Away,
    /// Do not disturb.
    Busy,
    /// Connected but shown as offline.
    Invisible,
    /// Not connected (server-side only).
    Offline,
}

impl PresenceStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceStatus::Online => "online",
            PresenceStatus::Away => "away",
            PresenceStatus::Busy => "busy",
            PresenceStatus::Invisible => "invisible",
            PresenceStatus::Offline => "offline",
        }
    }

    pub(crate) fn from_wire(s: &str) -> Option<PresenceStatus> {
        Some(match s {
            "online" => PresenceStatus::Online,
            "away" => PresenceStatus::Away,
            "busy" => PresenceStatus::Busy,
            "invisible" => PresenceStatus::Invisible,
            "offline" => PresenceStatus::Offline,
            _ => return None,
        })
    }

    /// Whether a client may set this status with `presence_set`.
    pub fn is_settable_by_client(self) -> bool {
        !matches!(self, PresenceStatus::Offline)
    }
}

/// The most user ids one `presence_query` may name (PROTOCOL.md §4); enforced by the
/// gateway, which answers `error {code: limit}` beyond it.
pub const MAX_PRESENCE_QUERY_USERS: usize = 100;

/// A message from a client (PROTOCOL.md §4). Topic names stay raw strings: the gateway
/// validates each one and reports the bad ones in an `error` reply rather than failing the
/// whole message.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum ClientMessage {
    /// In-band authentication.
    Identify {
        /// The JWT.
        token: String,
    },
    /// Replace the token before it expires (same `sub`).
    Refresh {
        /// The new JWT.
        token: String,
    },
    /// Heartbeat.
    Ping,
    /// Subscribe to topics, optionally recovering history.
    Subscribe {
        /// Topic names.
        topics: Vec<String>,
        /// The last position seen per topic, to replay what was missed.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<BTreeMap<String, StreamPosition>>,
    },
    /// Unsubscribe from topics.
    Unsubscribe {
        /// Topic names.
        topics: Vec<String>,
    },
    /// The user started typing in `topic`.
    TypingStart {
        /// Topic name.
        topic: String,
    },
    /// The user stopped typing in `topic`.
    TypingStop {
        /// Topic name.
        topic: String,
    },
    /// Set the user's presence.
    PresenceSet {
        /// Any status but `offline`.
        status: PresenceStatus,
    },
    /// Ask for the presence of some users.
    PresenceQuery {
        /// At most [`MAX_PRESENCE_QUERY_USERS`].
        user_ids: Vec<String>,
    },
    /// The latest publications of a topic with history (PROTOCOL.md §4), answered
    /// `history`; authorized like `subscribe`.
    History {
        /// Topic name.
        topic: String,
        /// At most this many publications (the latest ones); default
        /// [`DEFAULT_HISTORY_LIMIT`], never more than the topic's history holds.
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
        /// Only the publications after this position.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<StreamPosition>,
    },
    /// A call to the application backend (PROTOCOL.md §8), answered `rpc_result` with
    /// the same `ref`.
    Rpc {
        /// What to call; the backend's own vocabulary.
        method: String,
        /// The call's payload, any value, handed to the backend as JSON.
        d: serde_json::Value,
    },
    /// Join a voice channel.
    VoiceJoin {
        /// Voice channel id.
        channel: String,
    },
    /// Leave a voice channel.
    VoiceLeave {
        /// Voice channel id.
        channel: String,
    },
    /// SDP answer to the server's offer.
    VoiceAnswer {
        /// Voice channel id.
        channel: String,
        /// SDP.
        sdp: String,
    },
    /// A client ICE candidate.
    VoiceIceCandidate {
        /// Voice channel id.
        channel: String,
        /// The candidate line.
        candidate: String,
    },
    /// Mute self.
    VoiceMute {
        /// Voice channel id.
        channel: String,
    },
    /// Unmute self.
    VoiceUnmute {
        /// Voice channel id.
        channel: String,
    },
}

impl ClientMessage {
    /// Every client op, in PROTOCOL.md order.
    pub const OPS: [&'static str; 17] = [
        "identify",
        "refresh",
        "ping",
        "subscribe",
        "unsubscribe",
        "typing_start",
        "typing_stop",
        "presence_set",
        "presence_query",
        "history",
        "rpc",
        "voice_join",
        "voice_leave",
        "voice_answer",
        "voice_ice_candidate",
        "voice_mute",
        "voice_unmute",
    ];

    /// The wire `op`.
    pub fn op(&self) -> &'static str {
        match self {
            ClientMessage::Identify { .. } => "identify",
            ClientMessage::Refresh { .. } => "refresh",
            ClientMessage::Ping => "ping",
            ClientMessage::Subscribe { .. } => "subscribe",
            ClientMessage::Unsubscribe { .. } => "unsubscribe",
            ClientMessage::TypingStart { .. } => "typing_start",
            ClientMessage::TypingStop { .. } => "typing_stop",
            ClientMessage::PresenceSet { .. } => "presence_set",
            ClientMessage::PresenceQuery { .. } => "presence_query",
            ClientMessage::History { .. } => "history",
            ClientMessage::Rpc { .. } => "rpc",
            ClientMessage::VoiceJoin { .. } => "voice_join",
            ClientMessage::VoiceLeave { .. } => "voice_leave",
            ClientMessage::VoiceAnswer { .. } => "voice_answer",
            ClientMessage::VoiceIceCandidate { .. } => "voice_ice_candidate",
            ClientMessage::VoiceMute { .. } => "voice_mute",
            ClientMessage::VoiceUnmute { .. } => "voice_unmute",
        }
    }

    /// Whether the message carries a `d` on the wire (`ping` does not).
    pub fn has_payload(&self) -> bool {
        !matches!(self, ClientMessage::Ping)
    }
}

/// A decoded client message with its correlation id.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientEnvelope {
    /// Echoed in the reply, when given.
    pub r#ref: Option<u64>,
    /// The message.
    pub message: ClientMessage,
}

/// One user in a `presence_state` reply.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresenceEntry {
    /// The user.
    pub user_id: String,
    /// Their status (`invisible` is reported as `offline`).
    pub status: PresenceStatus,
    /// When the status last changed (ms since the epoch).
    pub since: u64,
}

/// One participant in a `voice_room_state`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VoiceParticipant {
    /// The user.
    pub user_id: String,
    /// Display name, when the token had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether they are muted.
    pub muted: bool,
}

/// A message the gateway itself produces (PROTOCOL.md §5). Backend events are not here:
/// they travel as [`crate::Publication`]s, decoded once and never re-typed.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum ServerMessage {
    /// First frame after the upgrade.
    Hello {
        /// This connection's session id.
        session_id: String,
        /// How often the client must `ping`.
        heartbeat_interval_ms: u64,
    },
    /// Authentication succeeded.
    Ready {
        /// The `sub`.
        user_id: String,
        /// The session id.
        session_id: String,
        /// The automatic subscriptions.
        topics: Vec<String>,
        /// What the backend's connect call gave for this client (the user, their
        /// servers, …), passed through.
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<serde_json::Value>,
    },
    /// Reply to `ping`.
    Pong,
    /// Reply to `refresh`.
    Refreshed {
        /// The new token's expiry.
        exp: u64,
    },
    /// Reply to `subscribe`.
    Subscribed {
        /// The topics now subscribed.
        topics: Vec<String>,
        /// Per topic with history, where its stream stands now.
        #[serde(skip_serializing_if = "Option::is_none")]
        positions: Option<BTreeMap<String, StreamPosition>>,
        /// Per topic asked for with `since`, whether what was missed is replayed (it
        /// comes right after this reply, before the live publications).
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<BTreeMap<String, bool>>,
    },
    /// Reply to `unsubscribe`.
    Unsubscribed {
        /// The topics no longer subscribed.
        topics: Vec<String>,
    },
    /// A request failed; never fatal by itself.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
        /// The topics concerned (e.g. refused subscriptions).
        #[serde(skip_serializing_if = "Option::is_none")]
        topics: Option<Vec<String>>,
        /// When rate limited, how long to wait.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// Another user started typing (sent with `topic`).
    TypingStart {
        /// The typist.
        user_id: String,
        /// Their display name.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Another user stopped typing (sent with `topic`).
    TypingStop {
        /// The typist.
        user_id: String,
        /// Their display name.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// A watched user's status changed (sent with `topic: presence:<id>`).
    PresenceUpdate {
        /// The user.
        user_id: String,
        /// The new status.
        status: PresenceStatus,
        /// When it changed.
        since: u64,
    },
    /// Reply to `presence_query`.
    PresenceState {
        /// One entry per queried user.
        users: Vec<PresenceEntry>,
    },
    /// An `rpc` that got no result, with the code the backend (or the gateway, for
    /// `unavailable`, `limit`, `forbidden`) gave: `error` on the wire, like [`Self::Error`],
    /// but its code is not limited to [`ErrorCode`], since a backend's own codes pass
    /// through (PROTOCOL.md §7).
    RpcError {
        /// The backend's code, or one of §7's.
        code: String,
        /// Human-readable detail.
        message: String,
    },
    /// Reply to `history`: the publications in order, and where the stream stands.
    History {
        /// Topic name.
        topic: String,
        /// Oldest first.
        publications: Vec<HistoryPublication>,
        /// The stream's current offset.
        offset: u64,
        /// The stream's epoch.
        epoch: String,
    },
    /// The backend's answer to an `rpc` (with its `ref`).
    RpcResult {
        /// Whatever the backend answered as `d`.
        d: serde_json::Value,
    },
    /// The SFU (re)negotiates.
    VoiceOffer {
        /// Voice channel id.
        channel: String,
        /// SDP offer.
        sdp: String,
    },
    /// A server ICE candidate.
    VoiceIceCandidate {
        /// Voice channel id.
        channel: String,
        /// The candidate line.
        candidate: String,
    },
    /// Someone joined the room.
    VoiceUserJoined {
        /// Voice channel id.
        channel: String,
        /// The user.
        user_id: String,
        /// Their display name.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Someone left the room.
    VoiceUserLeft {
        /// Voice channel id.
        channel: String,
        /// The user.
        user_id: String,
        /// Their display name.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Someone muted.
    VoiceUserMuted {
        /// Voice channel id.
        channel: String,
        /// The user.
        user_id: String,
    },
    /// Someone unmuted.
    VoiceUserUnmuted {
        /// Voice channel id.
        channel: String,
        /// The user.
        user_id: String,
    },
    /// The room on join.
    VoiceRoomState {
        /// Voice channel id.
        channel: String,
        /// Everyone in it.
        participants: Vec<VoiceParticipant>,
    },
    /// A voice failure.
    VoiceError {
        /// Machine-readable code.
        code: String,
        /// Human-readable detail.
        message: String,
        /// The voice channel it is about, when there is one.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
    },
    /// Sent right before a server-initiated close the client should retry.
    Reconnect {
        /// Why.
        reason: String,
        /// How long to wait before reconnecting.
        retry_after_ms: u64,
    },
}

impl ServerMessage {
    /// The wire `op`.
    pub fn op(&self) -> &'static str {
        match self {
            ServerMessage::Hello { .. } => "hello",
            ServerMessage::Ready { .. } => "ready",
            ServerMessage::Pong => "pong",
            ServerMessage::Refreshed { .. } => "refreshed",
            ServerMessage::Subscribed { .. } => "subscribed",
            ServerMessage::Unsubscribed { .. } => "unsubscribed",
            ServerMessage::Error { .. } => "error",
            ServerMessage::TypingStart { .. } => "typing_start",
            ServerMessage::TypingStop { .. } => "typing_stop",
            ServerMessage::PresenceUpdate { .. } => "presence_update",
            ServerMessage::PresenceState { .. } => "presence_state",
            ServerMessage::History { .. } => "history",
            ServerMessage::RpcResult { .. } => "rpc_result",
            ServerMessage::RpcError { .. } => "error",
            ServerMessage::VoiceOffer { .. } => "voice_offer",
            ServerMessage::VoiceIceCandidate { .. } => "voice_ice_candidate",
            ServerMessage::VoiceUserJoined { .. } => "voice_user_joined",
            ServerMessage::VoiceUserLeft { .. } => "voice_user_left",
            ServerMessage::VoiceUserMuted { .. } => "voice_user_muted",
            ServerMessage::VoiceUserUnmuted { .. } => "voice_user_unmuted",
            ServerMessage::VoiceRoomState { .. } => "voice_room_state",
            ServerMessage::VoiceError { .. } => "voice_error",
            ServerMessage::Reconnect { .. } => "reconnect",
        }
    }

    /// Whether the message goes to the front of the outbound queue and is never shed:
    /// voice signaling and control replies (PROTOCOL.md §5 "Priority").
    pub fn is_priority(&self) -> bool {
        !matches!(
            self,
            ServerMessage::TypingStart { .. }
                | ServerMessage::TypingStop { .. }
                | ServerMessage::PresenceUpdate { .. }
                | ServerMessage::PresenceState { .. }
                // Up to a whole topic's history: an event's size, not a control reply's.
                | ServerMessage::History { .. }
        )
    }

    /// Whether the message is ephemeral (`typing_*`): the first thing shed from a congested
    /// connection.
    pub fn is_ephemeral(&self) -> bool {
        matches!(
            self,
            ServerMessage::TypingStart { .. } | ServerMessage::TypingStop { .. }
        )
    }

    /// Whether the message carries a `d` on the wire (`pong` does not).
    pub fn has_payload(&self) -> bool {
        !matches!(self, ServerMessage::Pong)
    }
}

/// `history`'s default `limit`.
pub const DEFAULT_HISTORY_LIMIT: u64 = 50;

/// Where a topic's stream stands (PROTOCOL.md §6): offsets only compare within one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct StreamPosition {
    /// The offset of the stream's last publication (0 before the first).
    pub offset: u64,
    /// The stream's epoch; a new one means its earlier offsets are gone.
    pub epoch: String,
}

/// One publication in a `history` reply.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryPublication {
    /// The publication's op.
    pub op: String,
    /// Its payload, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d: Option<serde_json::Value>,
    /// Its offset in the stream.
    pub offset: u64,
}

/// A server message ready to encode, with the envelope keys that vary per send.
#[derive(Clone, Copy, Debug)]
pub struct ServerEnvelope<'a> {
    /// The message.
    pub message: &'a ServerMessage,
    /// The `ref` of the request this replies to.
    pub r#ref: Option<u64>,
    /// The topic, for topic events (`typing_*`, `presence_update`).
    pub topic: Option<&'a str>,
    /// The stream offset, for topic events with history.
    pub offset: Option<u64>,
}

impl<'a> ServerEnvelope<'a> {
    /// An envelope with no `ref`, `topic` or `offset`.
    pub fn new(message: &'a ServerMessage) -> Self {
        ServerEnvelope {
            message,
            r#ref: None,
            topic: None,
            offset: None,
        }
    }

    /// The same envelope replying to `r#ref`.
    pub fn with_ref(self, r#ref: Option<u64>) -> Self {
        ServerEnvelope { r#ref, ..self }
    }

    /// The same envelope for `topic`.
    pub fn with_topic(self, topic: &'a str) -> Self {
        ServerEnvelope {
            topic: Some(topic),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_classification() {
        assert!(ServerMessage::Pong.is_priority());
        assert!(ServerMessage::VoiceOffer {
            channel: "c".into(),
            sdp: "s".into()
        }
        .is_priority());
        let typing = ServerMessage::TypingStart {
            user_id: "u".into(),
            name: None,
        };
        assert!(!typing.is_priority());
        assert!(typing.is_ephemeral());
        assert!(!ServerMessage::PresenceUpdate {
            user_id: "u".into(),
            status: PresenceStatus::Online,
            since: 1
        }
        .is_priority());
    }

    /// The codes of the error-code table in docs/protocol.md §7 ("Error codes and close
    /// codes"), read from the file itself: its first table, one code in backticks per
    /// row (the row for the backend's own codes names none).
    fn protocol_section_7_error_codes() -> Vec<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
        let doc = std::fs::read_to_string(path).expect("docs/protocol.md is readable");
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with("7. "))
            .expect("docs/protocol.md has a §7");
        section
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .skip(2) // the header and its separator
            .filter_map(|row| {
                let cell = row.split('|').nth(1)?.trim();
                let code = cell.strip_prefix('`')?.strip_suffix('`')?;
                Some(code.to_owned())
            })
            .collect()
    }

    #[test]
    fn the_error_codes_are_those_of_the_protocol_table() {
        // An exhaustive match: a new variant does not compile until it is listed here.
        let all = |code: ErrorCode| match code {
            ErrorCode::BadRequest
            | ErrorCode::UnknownOp
            | ErrorCode::Forbidden
            | ErrorCode::Limit
            | ErrorCode::RateLimited
            | ErrorCode::InvalidToken
            | ErrorCode::InvalidTopic
            | ErrorCode::NotReady
            | ErrorCode::Unavailable
            | ErrorCode::NotFound => code,
        };
        let variants = [
            ErrorCode::BadRequest,
            ErrorCode::UnknownOp,
            ErrorCode::Forbidden,
            ErrorCode::Limit,
            ErrorCode::RateLimited,
            ErrorCode::InvalidToken,
            ErrorCode::InvalidTopic,
            ErrorCode::NotReady,
            ErrorCode::Unavailable,
            ErrorCode::NotFound,
        ]
        .map(all);
        let table = protocol_section_7_error_codes();
        assert!(table.len() >= variants.len(), "the table read: {table:?}");
        for code in variants {
            assert!(
                table.iter().any(|listed| listed == code.as_str()),
                "`{}` is sent by the gateway but not in docs/protocol.md §7",
                code.as_str()
            );
        }
        for listed in &table {
            assert!(
                ErrorCode::from_wire(listed).is_some(),
                "`{listed}` is in docs/protocol.md §7 but the gateway has no such code"
            );
        }
        let mut unique = table.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), table.len(), "a code listed twice: {table:?}");
    }

    #[test]
    fn wire_names_round_trip() {
        for s in [
            ErrorCode::BadRequest,
            ErrorCode::UnknownOp,
            ErrorCode::Forbidden,
            ErrorCode::Limit,
            ErrorCode::RateLimited,
            ErrorCode::InvalidToken,
            ErrorCode::InvalidTopic,
            ErrorCode::NotReady,
            ErrorCode::Unavailable,
            ErrorCode::NotFound,
        ] {
            assert_eq!(ErrorCode::from_wire(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).expect("ser"),
                format!("\"{}\"", s.as_str())
            );
        }
        for s in [
            PresenceStatus::Online,
            PresenceStatus::Away,
            PresenceStatus::Busy,
            PresenceStatus::Invisible,
            PresenceStatus::Offline,
        ] {
            assert_eq!(PresenceStatus::from_wire(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).expect("ser"),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
