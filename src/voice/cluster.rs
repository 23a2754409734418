//! Rooms across nodes, through Redis. A room's media goes through one SFU: the room's
//! owner, the node whose id is in `<prefix>voice:room:{<channel>}` (set with `NX` by
//! the first node to need it, with a lease of [`LEASE`] that the owner renews while the
//! room has anyone in it, and deletes once it is empty). A node whose client joins a
//! room another node owns relays that connection's voice ops to the owner, and the
//! owner relays its signals back, each over the Redis pub/sub channel of the receiving
//! node, `<prefix>voice:node:<node id>`; the client's media goes straight to the owner's
//! UDP address, which the owner's offer carries. When the owner dies, its lease runs
//! out; the nodes with participants in the room notice within a second ([`CHECK`]) and
//! join them again, to whichever node takes the room over (the first to claim it): each
//! such client gets a new `voice_room_state` and `voice_offer`, for a new WebRTC session.
//!
//! Limits, as built: every node must reach every other's UDP address (`--voice-announce`);
//! a takeover costs the room's participants a few seconds of silence (the lease, then a
//! new ICE and DTLS handshake); while Redis is unreachable each node serves the rooms of
//! its own clients alone (a room split over nodes stays split until Redis is back and
//! its members rejoin).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use coregate_protocol::{ServerMessage, VoiceParticipant};
use coregate_shards::hub::ConnKey;
use coregate_shards::{VoiceAction, VoiceRequest};
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sfu::{Peer, Signal};

/// How long a room's ownership holds without a renewal: what a dead owner costs its
/// room's participants before another node takes it over.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often the owner renews its rooms' leases (well within [`LEASE`]).
const RENEW: Duration = Duration::from_millis(1500);
/// How often a node checks that the rooms its clients are in remotely still have their
/// owner.
const CHECK: Duration = Duration::from_secs(1);
/// Relayed messages waiting for the SFU's loop; past it they are dropped (logged).
const INBOX: usize = 4096;

/// Where the cluster's state lives.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub url: String,
    pub prefix: String,
    /// This node's id: new at every start.
    pub node_id: Arc<str>,
    /// How long one Redis command may take.
    pub timeout: Duration,
}

impl ClusterSettings {
    fn room_key(&self, channel: &str) -> String {
        format!("{}voice:room:{{{channel}}}", self.prefix)
    }
    fn node_channel(&self, node: &str) -> String {
        format!("{}voice:node:{node}", self.prefix)
    }
}

/// What one node relays to another.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Relay {
    /// A voice op of a connection on node `from`, for the room's owner.
    Request {
        from: String,
        shard_id: usize,
        conn: u64,
        user_id: String,
        name: Option<String>,
        channel: String,
        #[serde(flatten)]
        action: VoiceAction,
        #[serde(rename = "ref")]
        r#ref: Option<u64>,
    },
    /// The owner's signal to a connection on the receiving node.
    Signal {
        shard_id: usize,
        conn: u64,
        op: String,
        d: Value,
        #[serde(rename = "ref")]
        r#ref: Option<u64>,
        left: Option<String>,
    },
}

/// What came from other nodes (or from a room's owner going away).
#[derive(Debug, Default)]
pub struct ClusterEvent {
    /// Voice ops for this node's SFU.
    pub requests: Vec<(Peer, VoiceRequest)>,
    /// Signals for this node's connections.
    pub signals: Vec<Signal>,
}

/// A local connection in a room another node owns.
#[derive(Debug, Clone)]
struct Membership {
    channel: String,
    owner: Arc<str>,
    user_id: String,
    name: Option<String>,
}

/// This node's part of the cluster; see the module docs.
pub struct Cluster {
    settings: ClusterSettings,
    client: Option<redis::Client>,
    conn: Option<MultiplexedConnection>,
    inbox: tokio::sync::mpsc::Receiver<Relay>,
    /// Rooms this node owns, as far as it knows.
    owned: HashSet<String>,
    /// This node's connections in rooms other nodes own.
    remote: HashMap<Peer, Membership>,
    next_renewal: tokio::time::Instant,
    next_check: tokio::time::Instant,
}

/// Renews a room's lease if this node (ARGV[1]) holds it: `PEXPIRE` to ARGV[2] ms.
const RENEW_IF_OURS: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
/// Gives a room up if this node (ARGV[1]) holds it.
const RELEASE_IF_OURS: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) else return 0 end";

impl Cluster {
    /// Starts listening on this node's channel (reconnecting as needed).
    pub async fn start(settings: ClusterSettings) -> Cluster {
        let client = match redis::Client::open(settings.url.as_str()) {
            Ok(client) => Some(client),
            Err(error) => {
                tracing::error!(%error, "voice: bad Redis URL; rooms stay on this node");
                None
            }
        };
        let (tx, inbox) = tokio::sync::mpsc::channel(INBOX);
        if let Some(client) = &client {
            let channel = settings.node_channel(&settings.node_id);
            tokio::spawn(listen(client.clone(), channel, tx));
        }
        let now = tokio::time::Instant::now();
        Cluster {
            settings,
            client,
            conn: None,
            inbox,
            owned: HashSet::new(),
            remote: HashMap::new(),
            next_renewal: now + RENEW,
            next_check: now + CHECK,
        }
    }

    /// A connection of this node's op: handled here (returned, for the local SFU) when
    /// this node owns the room, relayed to the owner otherwise.
    pub async fn route_local(
        &mut self,
        peer: Peer,
        request: VoiceRequest,
    ) -> Vec<(Peer, VoiceRequest)> {
        let mut local = Vec::new();
        let joining = request.action == VoiceAction::Join;
        if let Some(member) = self.remote.get(&peer).cloned() {
            let same_room = member.channel == request.channel;
            if same_room && !joining {
                if matches!(request.action, VoiceAction::Leave | VoiceAction::Gone) {
                    self.remote.remove(&peer);
                }
                self.relay_request(&member.owner, &peer, request).await;
                return local;
            }
            if joining {
                // Joining anew (this room or another): out of the old one first.
                self.remote.remove(&peer);
                let mut leave = request.clone();
                leave.channel = member.channel.clone();
                leave.action = VoiceAction::Leave;
                self.relay_request(&member.owner, &peer, leave).await;
            }
        }
        if !joining {
            local.push((peer, request));
            return local;
        }
        match self.owner_of(&request.channel).await {
            Some(owner) if *owner != *self.settings.node_id => {
                let member = Membership {
                    channel: request.channel.clone(),
                    owner: owner.clone(),
                    user_id: request.user_id.clone(),
                    name: request.name.clone(),
                };
                self.remote.insert(peer.clone(), member);
                self.relay_request(&owner, &peer, request).await;
            }
            // Ours, or Redis cannot say: served here.
            _ => local.push((peer, request)),
        }
        local
    }

    /// The room's owner: this node if it owns it or just claimed it, else the node
    /// named in Redis; `None` when Redis cannot be asked.
    async fn owner_of(&mut self, channel: &str) -> Option<Arc<str>> {
        if self.owned.contains(channel) {
            return Some(self.settings.node_id.clone());
        }
        let key = self.settings.room_key(channel);
        let node_id = self.settings.node_id.clone();
        let lease = LEASE.as_millis() as u64;
        let claimed: Option<String> = self
            .command(|mut conn| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&*node_id)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease)
                    .arg("GET")
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
            .await
            .ok()?;
        match claimed {
            // `SET … NX GET` answers the value that was there, if any.
            Some(owner) if *owner != *self.settings.node_id => Some(Arc::from(owner)),
            _ => {
                self.owned.insert(channel.to_owned());
                Some(self.settings.node_id.clone())
            }
        }
    }

    /// Relays a connection's op to the node that owns its room.
    async fn relay_request(&mut self, owner: &str, peer: &Peer, request: VoiceRequest) {
        let relay = Relay::Request {
            from: self.settings.node_id.to_string(),
            shard_id: peer.shard_id,
            conn: peer.conn.to_raw(),
            user_id: request.user_id,
            name: request.name,
            channel: request.channel,
            action: request.action,
            r#ref: request.r#ref,
        };
        self.publish(owner, &relay).await;
    }

    /// Relays the SFU's signal to the node of its connection.
    pub async fn send_signal(&mut self, signal: Signal) {
        let Some(node) = signal.to.node.clone() else {
            return;
        };
        let relay = Relay::Signal {
            shard_id: signal.to.shard_id,
            conn: signal.to.conn.to_raw(),
            op: signal.message.op().to_owned(),
            d: serde_json::to_value(&signal.message).unwrap_or(Value::Null),
            r#ref: signal.r#ref,
            left: signal.left,
        };
        self.publish(&node, &relay).await;
    }

    async fn publish(&mut self, node: &str, relay: &Relay) {
        let Ok(payload) = serde_json::to_string(relay) else {
            return;
        };
        let channel = self.settings.node_channel(node);
        let sent = self
            .command(|mut conn| async move {
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&payload)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await;
        if let Err(error) = sent {
            tracing::warn!(%error, node, "voice: a relay to another node was lost");
        }
    }

    /// Waits for what other nodes relay, or for the next check of the remote rooms'
    /// owners (whose departures become joins again).
    pub async fn next_event(&mut self) -> ClusterEvent {
        tokio::select! {
            relay = self.inbox.recv() => match relay {
                Some(relay) => self.received(relay),
                None => std::future::pending().await,
            },
            _ = tokio::time::sleep_until(self.next_check) => {
                self.next_check = tokio::time::Instant::now() + CHECK;
                self.check_owners().await
            }
        }
    }

    fn received(&mut self, relay: Relay) -> ClusterEvent {
        let mut event = ClusterEvent::default();
        match relay {
            Relay::Request {
                from,
                shard_id,
                conn,
                user_id,
                name,
                channel,
                action,
                r#ref,
            } => {
                let node = (*from != *self.settings.node_id).then(|| Arc::from(from));
                let peer = Peer {
                    node,
                    shard_id,
                    conn: ConnKey::from_raw(conn),
                };
                if action == VoiceAction::Join {
                    // Relayed here because this node owns the room.
                    self.owned.insert(channel.clone());
                }
                let request = VoiceRequest {
                    shard_id,
                    conn: peer.conn,
                    user_id,
                    name,
                    channel,
                    action,
                    r#ref,
                };
                event.requests.push((peer, request));
            }
            Relay::Signal {
                shard_id,
                conn,
                op,
                d,
                r#ref,
                left,
            } => {
                let Some(message) = voice_message(&op, d) else {
                    return event;
                };
                let to = Peer {
                    node: None,
                    shard_id,
                    conn: ConnKey::from_raw(conn),
                };
                if left.is_some() {
                    self.remote.remove(&to);
                }
                event.signals.push(Signal {
                    to,
                    message,
                    r#ref,
                    left,
                });
            }
        }
        event
    }

    /// The rooms this node's clients are in remotely whose owner's lease is gone: their
    /// members join again (to whichever node now takes the room).
    async fn check_owners(&mut self) -> ClusterEvent {
        let mut event = ClusterEvent::default();
        let rooms: HashSet<(String, Arc<str>)> = self
            .remote
            .values()
            .map(|m| (m.channel.clone(), m.owner.clone()))
            .collect();
        for (channel, owner) in rooms {
            let key = self.settings.room_key(&channel);
            let Ok(now) = self
                .command(|mut conn| async move {
                    redis::cmd("GET")
                        .arg(&key)
                        .query_async::<Option<String>>(&mut conn)
                        .await
                })
                .await
            else {
                continue; // Redis cannot say: nothing is decided
            };
            if now.as_deref() == Some(&*owner) {
                continue;
            }
            tracing::info!(channel, %owner, "voice: a room's owner is gone; its members join again");
            let members: Vec<(Peer, Membership)> = self
                .remote
                .iter()
                .filter(|(_, m)| m.channel == channel && m.owner == owner)
                .map(|(p, m)| (p.clone(), m.clone()))
                .collect();
            for (peer, member) in members {
                self.remote.remove(&peer);
                let rejoin = VoiceRequest {
                    shard_id: peer.shard_id,
                    conn: peer.conn,
                    user_id: member.user_id,
                    name: member.name,
                    channel: member.channel,
                    action: VoiceAction::Join,
                    r#ref: None,
                };
                let local = Box::pin(self.route_local(peer, rejoin)).await;
                event.requests.extend(local);
            }
        }
        event
    }

    /// Renews the leases of the rooms this node's SFU holds, claims those it holds
    /// without owning them, and gives up those it no longer holds. At most every
    /// [`RENEW`]; cheap to call after every event.
    pub async fn keep_rooms<'a>(&mut self, rooms: impl Iterator<Item = (&'a str, usize)>) {
        let now = tokio::time::Instant::now();
        if now < self.next_renewal {
            return;
        }
        self.next_renewal = now + RENEW;
        let held: HashSet<String> = rooms.map(|(room, _)| room.to_owned()).collect();
        let emptied: Vec<String> = self.owned.difference(&held).cloned().collect();
        let lease = LEASE.as_millis() as u64;
        for room in held {
            let key = self.settings.room_key(&room);
            let node_id = self.settings.node_id.clone();
            let renewed = self
                .command(|mut conn| async move {
                    redis::cmd("EVAL")
                        .arg(RENEW_IF_OURS)
                        .arg(1)
                        .arg(&key)
                        .arg(&*node_id)
                        .arg(lease)
                        .query_async::<i64>(&mut conn)
                        .await
                })
                .await;
            match renewed {
                Ok(1) => {
                    self.owned.insert(room);
                }
                // Not ours (lost while Redis was away, or never claimed): claim it.
                Ok(_) => {
                    self.owned.remove(&room);
                    let _ = self.owner_of(&room).await;
                }
                Err(_) => {}
            }
        }
        for room in emptied {
            self.owned.remove(&room);
            let key = self.settings.room_key(&room);
            let node_id = self.settings.node_id.clone();
            let _ = self
                .command(|mut conn| async move {
                    redis::cmd("EVAL")
                        .arg(RELEASE_IF_OURS)
                        .arg(1)
                        .arg(&key)
                        .arg(&*node_id)
                        .query_async::<i64>(&mut conn)
                        .await
                })
                .await;
        }
    }

    /// Runs one command on the node's connection (made, or made again, as needed),
    /// within the timeout.
    async fn command<T, F, Fut>(&mut self, run: F) -> redis::RedisResult<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let timed_out =
            || redis::RedisError::from((redis::ErrorKind::Io, "voice: Redis timed out"));
        if self.conn.is_none() {
            let Some(client) = &self.client else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "voice: no Redis",
                )));
            };
            let connect = client.get_multiplexed_async_connection();
            let conn = tokio::time::timeout(self.settings.timeout, connect)
                .await
                .map_err(|_| timed_out())??;
            self.conn = Some(conn);
        }
        let conn = self.conn.clone().expect("made above");
        let result = tokio::time::timeout(self.settings.timeout, run(conn))
            .await
            .map_err(|_| timed_out())
            .and_then(|r| r);
        if result
            .as_ref()
            .is_err_and(|e| e.is_io_error() || e.is_connection_dropped() || e.is_timeout())
        {
            self.conn = None;
        }
        result
    }
}

/// Listens on this node's channel for ever, reconnecting after a loss.
async fn listen(client: redis::Client, channel: String, to_sfu: tokio::sync::mpsc::Sender<Relay>) {
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(&channel).await.is_ok() {
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(payload) = message.get_payload::<String>() else {
                            continue;
                        };
                        match serde_json::from_str::<Relay>(&payload) {
                            Ok(relay) => {
                                if to_sfu.try_send(relay).is_err() {
                                    if to_sfu.is_closed() {
                                        return;
                                    }
                                    tracing::warn!("voice: the SFU is behind; a relay was dropped");
                                }
                            }
                            Err(error) => tracing::warn!(%error, "voice: an unreadable relay"),
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "voice: cannot listen on Redis yet"),
        }
        if to_sfu.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The voice message `op` with payload `d`, as the owner's SFU made it.
fn voice_message(op: &str, d: Value) -> Option<ServerMessage> {
    #[derive(Deserialize)]
    struct ChannelSdp {
        channel: String,
        sdp: String,
    }
    #[derive(Deserialize)]
    struct ChannelCandidate {
        channel: String,
        candidate: String,
    }
    #[derive(Deserialize)]
    struct ChannelUser {
        channel: String,
        user_id: String,
        #[serde(default)]
        name: Option<String>,
    }
    #[derive(Deserialize)]
    struct RoomState {
        channel: String,
        participants: Vec<VoiceParticipant>,
    }
    #[derive(Deserialize)]
    struct Failure {
        code: String,
        message: String,
        #[serde(default)]
        channel: Option<String>,
    }
    let message = match op {
        "voice_offer" => {
            let ChannelSdp { channel, sdp } = serde_json::from_value(d).ok()?;
            ServerMessage::VoiceOffer { channel, sdp }
        }
        "voice_ice_candidate" => {
            let ChannelCandidate { channel, candidate } = serde_json::from_value(d).ok()?;
            ServerMessage::VoiceIceCandidate { channel, candidate }
        }
        "voice_user_joined" | "voice_user_left" | "voice_user_muted" | "voice_user_unmuted" => {
            let ChannelUser {
                channel,
                user_id,
                name,
            } = serde_json::from_value(d).ok()?;
            match op {
                "voice_user_joined" => ServerMessage::VoiceUserJoined {
                    channel,
                    user_id,
                    name,
                },
                "voice_user_left" => ServerMessage::VoiceUserLeft {
                    channel,
                    user_id,
                    name,
                },
                "voice_user_muted" => ServerMessage::VoiceUserMuted { channel, user_id },
                _ => ServerMessage::VoiceUserUnmuted { channel, user_id },
            }
        }
        "voice_room_state" => {
            let RoomState {
                channel,
                participants,
            } = serde_json::from_value(d).ok()?;
            ServerMessage::VoiceRoomState {
                channel,
                participants,
            }
        }
        "voice_error" => {
            let Failure {
                code,
                message,
                channel,
            } = serde_json::from_value(d).ok()?;
            ServerMessage::VoiceError {
                code,
                message,
                channel,
            }
        }
        _ => return None,
    };
    Some(message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_voice_signal_crosses_nodes_as_it_was() {
        let user = |op: &str| {
            let (channel, user_id) = ("c".to_owned(), "u".to_owned());
            match op {
                "joined" => ServerMessage::VoiceUserJoined {
                    channel,
                    user_id,
                    name: Some("U".into()),
                },
                "left" => ServerMessage::VoiceUserLeft {
                    channel,
                    user_id,
                    name: None,
                },
                "muted" => ServerMessage::VoiceUserMuted { channel, user_id },
                _ => ServerMessage::VoiceUserUnmuted { channel, user_id },
            }
        };
        let messages = [
            ServerMessage::VoiceOffer {
                channel: "c".into(),
                sdp: "v=0\r\n".into(),
            },
            ServerMessage::VoiceIceCandidate {
                channel: "c".into(),
                candidate: "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host".into(),
            },
            user("joined"),
            user("left"),
            user("muted"),
            user("unmuted"),
            ServerMessage::VoiceRoomState {
                channel: "c".into(),
                participants: vec![VoiceParticipant {
                    user_id: "u".into(),
                    name: None,
                    muted: true,
                }],
            },
            ServerMessage::VoiceError {
                code: "room_full".into(),
                message: "full".into(),
                channel: Some("c".into()),
            },
        ];
        for message in messages {
            let relay = Relay::Signal {
                shard_id: 3,
                conn: ConnKey::from_raw(7 << 32 | 9).to_raw(),
                op: message.op().to_owned(),
                d: serde_json::to_value(&message).unwrap(),
                r#ref: Some(4),
                left: Some("c".into()),
            };
            let text = serde_json::to_string(&relay).unwrap();
            let Relay::Signal {
                op, d, conn, r#ref, ..
            } = serde_json::from_str(&text).unwrap()
            else {
                panic!("a signal");
            };
            assert_eq!((conn, r#ref), (7 << 32 | 9, Some(4)));
            assert_eq!(voice_message(&op, d), Some(message));
        }
        assert_eq!(voice_message("pong", Value::Null), None);
    }

    #[test]
    fn a_request_crosses_nodes_with_its_action() {
        for action in [
            VoiceAction::Join,
            VoiceAction::Answer { sdp: "v=0".into() },
            VoiceAction::IceCandidate {
                candidate: "candidate:x".into(),
            },
            VoiceAction::Gone,
        ] {
            let relay = Relay::Request {
                from: "n1".into(),
                shard_id: 1,
                conn: 5,
                user_id: "alice".into(),
                name: None,
                channel: "open-1".into(),
                action: action.clone(),
                r#ref: Some(9),
            };
            let text = serde_json::to_string(&relay).unwrap();
            let Relay::Request {
                action: back,
                r#ref,
                ..
            } = serde_json::from_str(&text).unwrap()
            else {
                panic!("a request");
            };
            assert_eq!((back, r#ref), (action, Some(9)));
        }
    }
}
