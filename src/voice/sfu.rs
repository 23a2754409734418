//! The selective forwarding unit, sans-IO: rooms of participants, each with its own
//! WebRTC session, and the Opus RTP each participant sends forwarded, untouched, to
//! every other participant of its room. No socket and no clock: the driver
//! (`super::run`) hands in requests from the shards, datagrams from the UDP socket and
//! the time, and takes out datagrams to send and signals for the connections
//! ([`Sfu::take_output`]). Tests drive it with str0m clients and a virtual clock.
//!
//! One UDP socket carries every participant. A datagram finds its participant by its
//! source address (a map), or, the first time an address is seen, by the server-side
//! ICE ufrag its STUN check names (another map): never by asking every session.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coregate_protocol::{ServerMessage, VoiceParticipant};
use coregate_shards::hub::ConnKey;
use coregate_shards::{VoiceAction, VoiceRequest};
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::media::MediaData;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc};

use super::participant::Participant;
use super::stun;
use super::VoiceStats;

/// How long a participant has, from its join, to bring its WebRTC session up (ICE and
/// DTLS); then it is removed (`voice_error {code: timeout}`), like one whose session
/// fails later. Long enough for a slow network's round trips, short enough that an
/// abandoned join does not linger in the room.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a participant's signals go: its connection, on its shard, on its node (`None`:
/// this node; otherwise the id of the node that holds the socket, see `super::cluster`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub node: Option<Arc<str>>,
    pub shard_id: usize,
    pub conn: ConnKey,
}

/// A participant's id: never reused, so that a stale one finds no one.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(u64);

/// What the SFU says to one participant's connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub to: Peer,
    pub message: ServerMessage,
    /// The `ref` of the op this answers (a refusal of it), if it answers one.
    pub r#ref: Option<u64>,
    /// The SFU no longer has the participant in this room.
    pub left: Option<String>,
}

/// One datagram to send from the SFU's socket.
#[derive(Debug)]
pub struct Datagram {
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// What the SFU has to hand out since the driver last took it.
#[derive(Debug, Default)]
pub struct SfuOutput {
    pub datagrams: Vec<Datagram>,
    pub signals: Vec<Signal>,
}

/// The SFU's fixed settings.
#[derive(Clone)]
pub struct SfuConfig {
    /// The UDP address clients send to (the host candidate in every offer).
    pub announce: SocketAddr,
    /// The socket's own address (the destination of what it receives).
    pub local: SocketAddr,
    /// Participants a room holds at most.
    pub room_size: usize,
}

/// Why a participant leaves its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// `voice_leave`: told `voice_user_left` like the others.
    Left,
    /// Its connection ended: nobody to tell.
    Gone,
    /// Joined again (this room or another): the new session replaces this one.
    Replaced,
    /// Its WebRTC session did not come up in time, or failed.
    TimedOut,
}

/// The SFU; see the module docs.
pub struct Sfu {
    config: SfuConfig,
    crypto: Arc<CryptoProvider>,
    /// One DTLS certificate for every session: generating one per join would cost
    /// every join a key generation, and the fingerprint identifies the server anyway.
    certificate: DtlsCert,
    participants: HashMap<ParticipantId, Participant>,
    next_id: u64,
    /// Each room's participants, in joining order.
    rooms: HashMap<String, Vec<ParticipantId>>,
    by_peer: HashMap<Peer, ParticipantId>,
    by_ufrag: HashMap<String, ParticipantId>,
    by_address: HashMap<SocketAddr, ParticipantId>,
    /// When each session next wants the clock, and the connect deadlines.
    timers: BTreeSet<(Instant, ParticipantId)>,
    output: SfuOutput,
    stats: Arc<VoiceStats>,
}

impl Sfu {
    pub fn new(config: SfuConfig, stats: Arc<VoiceStats>) -> Sfu {
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        let certificate = crypto
            .dtls_provider
            .generate_certificate()
            .expect("the crypto provider makes DTLS certificates");
        Sfu {
            config,
            crypto,
            certificate,
            participants: HashMap::new(),
            next_id: 0,
            rooms: HashMap::new(),
            by_peer: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_address: HashMap::new(),
            timers: BTreeSet::new(),
            output: SfuOutput::default(),
            stats,
        }
    }

    /// Datagrams to send and signals for connections, produced since the last call.
    pub fn take_output(&mut self) -> SfuOutput {
        std::mem::take(&mut self.output)
    }

    /// The rooms and how many are in each (for tests and the owner's lease).
    pub fn room_sizes(&self) -> impl Iterator<Item = (&str, usize)> {
        self.rooms
            .iter()
            .map(|(room, ids)| (room.as_str(), ids.len()))
    }

    /// The next instant [`Sfu::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// One connection's voice op.
    pub fn handle_request(&mut self, peer: Peer, request: VoiceRequest, now: Instant) {
        let VoiceRequest {
            user_id,
            name,
            channel,
            action,
            r#ref,
            ..
        } = request;
        if action == VoiceAction::Join {
            return self.join(peer, user_id, name, channel, r#ref, now);
        }
        let Some(&id) = self.by_peer.get(&peer) else {
            return;
        };
        if self.participants[&id].channel != channel {
            return;
        }
        match action {
            VoiceAction::Join => {}
            VoiceAction::Leave => self.remove(id, Departure::Left, now),
            VoiceAction::Gone => self.remove(id, Departure::Gone, now),
            VoiceAction::Answer { sdp } => self.answer(id, &sdp, r#ref, now),
            VoiceAction::IceCandidate { candidate } => self.add_candidate(id, &candidate, r#ref),
            VoiceAction::Mute | VoiceAction::Unmute => {
                let muted = action == VoiceAction::Mute;
                self.set_muted(id, muted);
            }
        }
    }

    fn join(
        &mut self,
        peer: Peer,
        user_id: String,
        name: Option<String>,
        channel: String,
        r#ref: Option<u64>,
        now: Instant,
    ) {
        if let Some(&previous) = self.by_peer.get(&peer) {
            self.remove(previous, Departure::Replaced, now);
        }
        let size = self.rooms.get(&channel).map_or(0, Vec::len);
        if size >= self.config.room_size {
            let message = format!(
                "the voice channel `{channel}` holds {} participants at most",
                self.config.room_size
            );
            let refusal = voice_error("room_full", message, &channel);
            self.output.signals.push(Signal {
                to: peer,
                message: refusal,
                r#ref,
                left: Some(channel),
            });
            return;
        }
        let id = ParticipantId(self.next_id);
        self.next_id += 1;
        let creds = IceCreds::new();
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .set_local_ice_credentials(creds.clone())
            .set_crypto_provider(self.crypto.clone())
            .set_dtls_cert(self.certificate.clone())
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        if let Ok(candidate) = Candidate::host(self.config.announce, "udp") {
            rtc.add_local_candidate(candidate);
        }
        let participant = Participant::new(
            peer.clone(),
            user_id,
            name,
            channel.clone(),
            rtc,
            creds.ufrag.clone(),
            now,
            now + CONNECT_TIMEOUT,
        );
        let joined = ServerMessage::VoiceUserJoined {
            channel: channel.clone(),
            user_id: participant.user_id.clone(),
            name: participant.name.clone(),
        };
        self.participants.insert(id, participant);
        self.by_peer.insert(peer.clone(), id);
        self.by_ufrag.insert(creds.ufrag, id);
        self.timers.insert((now + CONNECT_TIMEOUT, id));
        let room = self.rooms.entry(channel.clone()).or_default();
        room.push(id);
        let others: Vec<ParticipantId> = room.iter().copied().filter(|o| *o != id).collect();
        self.stats.joins.fetch_add(1, Ordering::Relaxed);
        self.count_gauges();
        let participants = self.rooms[&channel]
            .iter()
            .map(|p| {
                let p = &self.participants[p];
                VoiceParticipant {
                    user_id: p.user_id.clone(),
                    name: p.name.clone(),
                    muted: p.muted,
                }
            })
            .collect();
        let state = ServerMessage::VoiceRoomState {
            channel: channel.clone(),
            participants,
        };
        self.signal(&peer, state, None);
        for other in &others {
            let to = self.participants[other].peer.clone();
            self.signal(&to, joined.clone(), None);
        }
        self.negotiate(id, now);
        for other in others {
            self.negotiate(other, now);
        }
    }

    /// Sends `id` the offer that matches its room now, if one is due and none is
    /// outstanding, then its host candidate (also in the offer's SDP).
    fn negotiate(&mut self, id: ParticipantId, now: Instant) {
        let Some(participant) = self.participants.get(&id) else {
            return;
        };
        let channel = participant.channel.clone();
        let others: Vec<(ParticipantId, String)> = self.rooms[&channel]
            .iter()
            .filter(|o| **o != id)
            .map(|o| (*o, self.participants[o].user_id.clone()))
            .collect();
        let others: Vec<(ParticipantId, &str)> =
            others.iter().map(|(o, u)| (*o, u.as_str())).collect();
        let participant = self.participants.get_mut(&id).expect("looked up above");
        let Some(sdp) = participant.offer(&others) else {
            return;
        };
        let peer = participant.peer.clone();
        let first = participant.connected_at.is_none();
        let offer = ServerMessage::VoiceOffer {
            channel: channel.clone(),
            sdp,
        };
        self.signal(&peer, offer, None);
        if first {
            if let Ok(candidate) = Candidate::host(self.config.announce, "udp") {
                let candidate = ServerMessage::VoiceIceCandidate {
                    channel,
                    candidate: candidate.to_sdp_string(),
                };
                self.signal(&peer, candidate, None);
            }
        }
        self.poll(id, now);
    }

    fn answer(&mut self, id: ParticipantId, sdp: &str, r#ref: Option<u64>, now: Instant) {
        let participant = self.participants.get_mut(&id).expect("a participant");
        match participant.answer(sdp) {
            Ok(again) => {
                if again {
                    self.negotiate(id, now);
                }
                self.poll(id, now);
            }
            Err(error) => {
                let peer = participant.peer.clone();
                let refusal = voice_error("bad_sdp", error.to_string(), &participant.channel);
                self.refuse(&peer, refusal, r#ref);
                // A fresh offer to answer, if the spent one changed the room.
                self.negotiate(id, now);
            }
        }
    }

    fn add_candidate(&mut self, id: ParticipantId, raw: &str, r#ref: Option<u64>) {
        let line = raw.trim().trim_start_matches("a=");
        if line.is_empty() {
            return; // the end of the client's candidates
        }
        let participant = self.participants.get_mut(&id).expect("a participant");
        match Candidate::from_sdp_string(line) {
            Ok(candidate) => participant.rtc.add_remote_candidate(candidate),
            Err(error) => {
                let peer = participant.peer.clone();
                let message = format!("not an ICE candidate: {error}");
                let refusal = voice_error("bad_sdp", message, &participant.channel);
                self.refuse(&peer, refusal, r#ref);
            }
        }
    }

    fn set_muted(&mut self, id: ParticipantId, muted: bool) {
        let participant = self.participants.get_mut(&id).expect("a participant");
        participant.muted = muted;
        let (channel, user_id) = (participant.channel.clone(), participant.user_id.clone());
        let message = if muted {
            ServerMessage::VoiceUserMuted {
                channel: channel.clone(),
                user_id,
            }
        } else {
            ServerMessage::VoiceUserUnmuted {
                channel: channel.clone(),
                user_id,
            }
        };
        self.tell_room(&channel, &message);
    }

    /// Takes `id` out of its room: the others are told and renegotiated.
    fn remove(&mut self, id: ParticipantId, why: Departure, now: Instant) {
        let Some(mut participant) = self.participants.remove(&id) else {
            return;
        };
        participant.rtc.disconnect();
        self.by_peer.remove(&participant.peer);
        self.by_ufrag.remove(&participant.ufrag);
        for address in &participant.addresses {
            self.by_address.remove(address);
        }
        if let Some(at) = participant.next_timeout {
            self.timers.remove(&(at, id));
        }
        self.timers.remove(&(participant.connect_deadline, id));
        let channel = participant.channel.clone();
        let room = self.rooms.get_mut(&channel).expect("a participant's room");
        room.retain(|p| *p != id);
        let empty = room.is_empty();
        if empty {
            self.rooms.remove(&channel);
        }
        self.count_gauges();
        let left = ServerMessage::VoiceUserLeft {
            channel: channel.clone(),
            user_id: participant.user_id.clone(),
            name: participant.name.clone(),
        };
        match why {
            Departure::Left => self.signal(&participant.peer, left.clone(), Some(channel.clone())),
            Departure::TimedOut => {
                let message = voice_error(
                    "timeout",
                    "the voice connection (ICE, DTLS) failed or did not come up".into(),
                    &channel,
                );
                self.signal(&participant.peer, message, None);
                self.signal(&participant.peer, left.clone(), Some(channel.clone()));
            }
            Departure::Gone | Departure::Replaced => {}
        }
        self.tell_room(&channel, &left);
        for other in self.rooms.get(&channel).cloned().unwrap_or_default() {
            self.negotiate(other, now);
        }
    }

    /// One datagram the socket received from `source`.
    pub fn handle_datagram(&mut self, source: SocketAddr, contents: &[u8], now: Instant) {
        self.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
        let id = match self.by_address.get(&source) {
            Some(&id) => id,
            None => {
                let Some(&id) = stun::server_ufrag(contents).and_then(|u| self.by_ufrag.get(u))
                else {
                    self.stats.datagrams_unknown.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                self.by_address.insert(source, id);
                if let Some(p) = self.participants.get_mut(&id) {
                    p.addresses.push(source);
                }
                id
            }
        };
        let Ok(contents) = contents.try_into() else {
            return;
        };
        let participant = self
            .participants
            .get_mut(&id)
            .expect("mapped to a participant");
        let receive = Receive {
            proto: Protocol::Udp,
            source,
            destination: self.config.local,
            contents,
        };
        if participant
            .rtc
            .handle_input(Input::Receive(now, receive))
            .is_err()
        {
            return self.remove(id, Departure::TimedOut, now);
        }
        self.poll(id, now);
    }

    /// Acts on every session's timers and every connect deadline due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id));
            let Some(participant) = self.participants.get_mut(&id) else {
                continue;
            };
            if at == participant.connect_deadline && participant.connected_at.is_none() {
                self.remove(id, Departure::TimedOut, now);
                continue;
            }
            if participant.next_timeout == Some(at) {
                participant.next_timeout = None;
                if participant.rtc.handle_input(Input::Timeout(now)).is_err() {
                    self.remove(id, Departure::TimedOut, now);
                    continue;
                }
                self.poll(id, now);
            }
        }
    }

    /// Drains `id`'s session: datagrams to send, its events, and the media it received,
    /// forwarded to the others of its room.
    fn poll(&mut self, id: ParticipantId, now: Instant) {
        let mut media = Vec::new();
        let mut failed = false;
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        loop {
            match participant.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    let at = at.max(now);
                    if participant.next_timeout != Some(at) {
                        if let Some(old) = participant.next_timeout.replace(at) {
                            self.timers.remove(&(old, id));
                        }
                        self.timers.insert((at, id));
                    }
                    break;
                }
                Ok(Output::Transmit(transmit)) => self.output.datagrams.push(Datagram {
                    destination: transmit.destination,
                    contents: transmit.contents.to_vec(),
                }),
                Ok(Output::Event(Event::Connected)) => {
                    participant.connected_at = Some(now);
                    let waited = now.saturating_duration_since(participant.joined_at);
                    self.stats.connect_time.observe(waited, 1);
                }
                Ok(Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                ))) => {
                    failed = true;
                    break;
                }
                Ok(Output::Event(Event::MediaData(data))) => {
                    if participant.is_uplink(data.mid) && !participant.muted {
                        media.push(data);
                    }
                }
                Ok(Output::Event(_)) => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            return self.remove(id, Departure::TimedOut, now);
        }
        let mut touched = Vec::new();
        for data in media {
            self.forward(id, &data, &mut touched);
        }
        touched.sort_unstable();
        touched.dedup();
        for other in touched {
            self.poll(other, now);
        }
    }

    /// `source`'s audio to every other participant of its room, as it came; the
    /// sessions written to are pushed to `touched`, for polling.
    fn forward(
        &mut self,
        source: ParticipantId,
        data: &MediaData,
        touched: &mut Vec<ParticipantId>,
    ) {
        let channel = &self.participants[&source].channel;
        let others: Vec<ParticipantId> = self.rooms[channel]
            .iter()
            .copied()
            .filter(|o| *o != source)
            .collect();
        for other in others {
            let participant = self.participants.get_mut(&other).expect("in the room");
            let Some(mid) = participant.line_for(source) else {
                continue;
            };
            let Some(writer) = participant.rtc.writer(mid) else {
                continue;
            };
            let Some(pt) = writer.match_params(data.params) else {
                continue;
            };
            if writer
                .write(pt, data.network_time, data.time, data.data.clone())
                .is_ok()
            {
                self.stats.packets_forwarded.fetch_add(1, Ordering::Relaxed);
            }
            touched.push(other);
        }
    }

    /// Tells everyone in `channel` `message`.
    fn tell_room(&mut self, channel: &str, message: &ServerMessage) {
        let peers: Vec<Peer> = self
            .rooms
            .get(channel)
            .into_iter()
            .flatten()
            .map(|id| self.participants[id].peer.clone())
            .collect();
        for peer in peers {
            self.signal(&peer, message.clone(), None);
        }
    }

    fn signal(&mut self, to: &Peer, message: ServerMessage, left: Option<String>) {
        self.output.signals.push(Signal {
            to: to.clone(),
            message,
            r#ref: None,
            left,
        });
    }

    /// A refusal of the op with `ref`: its connection stays in the room.
    fn refuse(&mut self, to: &Peer, refusal: ServerMessage, r#ref: Option<u64>) {
        self.output.signals.push(Signal {
            to: to.clone(),
            message: refusal,
            r#ref,
            left: None,
        });
    }

    fn count_gauges(&self) {
        self.stats
            .participants
            .store(self.participants.len() as u64, Ordering::Relaxed);
        self.stats
            .rooms
            .store(self.rooms.len() as u64, Ordering::Relaxed);
    }
}

/// A `voice_error` about `channel`.
fn voice_error(code: &str, message: String, channel: &str) -> ServerMessage {
    ServerMessage::VoiceError {
        code: code.to_owned(),
        message,
        channel: Some(channel.to_owned()),
    }
}
