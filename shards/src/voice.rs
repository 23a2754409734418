//! Voice signaling as a shard sees it (PROTOCOL.md §4–§5). A shard never touches media:
//! a connection's `voice_*` ops become [`VoiceRequest`]s on a bounded queue to the node's
//! SFU (the binary's `voice` thread, which owns the UDP socket, the WebRTC sessions and
//! the rooms), and what the SFU says to a connection comes back through the shard's
//! answers queue as a [`ShardMessage::Voice`](crate::ShardMessage::Voice), to the front
//! of the connection's output (the priority lane, bounded by its control budget).

use crate::hub::ConnKey;

/// What a connection asks of the SFU. Serializable: across nodes, the node that holds
/// the connection relays it to the node that holds the room.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum VoiceAction {
    /// `voice_join`: join (or join again, with a new WebRTC session) the room.
    Join,
    /// `voice_leave`.
    Leave,
    /// `voice_answer`: the client's SDP answer to the SFU's last offer.
    Answer { sdp: String },
    /// `voice_ice_candidate`: one of the client's ICE candidates.
    IceCandidate { candidate: String },
    /// `voice_mute`.
    Mute,
    /// `voice_unmute`.
    Unmute,
    /// The connection ended (whatever ended it) while in the room.
    Gone,
}

/// One connection's voice op, on its way to the SFU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceRequest {
    /// Where the SFU's signals for this participant go.
    pub shard_id: usize,
    pub conn: ConnKey,
    pub user_id: String,
    /// The token's `name`, carried into the room's events.
    pub name: Option<String>,
    /// The voice channel id (the topic `voice:<channel>`).
    pub channel: String,
    pub action: VoiceAction,
    /// The op's `ref`: the SFU's refusal of it (`room_full`, `bad_sdp`) echoes it.
    pub r#ref: Option<u64>,
}

/// The SFU's queue is full, or the SFU has stopped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct VoiceBusy;

/// The node's SFU, as every shard sees it: the sending side of its request queue.
#[derive(Debug, Clone)]
pub struct SharedVoice {
    requests: flume::Sender<VoiceRequest>,
}

impl SharedVoice {
    pub fn new(requests: flume::Sender<VoiceRequest>) -> SharedVoice {
        SharedVoice { requests }
    }

    /// Queues without blocking the shard.
    pub fn send(&self, request: VoiceRequest) -> Result<(), VoiceBusy> {
        self.requests.try_send(request).map_err(|_| VoiceBusy)
    }
}
