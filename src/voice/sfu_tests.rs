//! The SFU with real WebRTC peers (str0m clients from the load harness) on an in-memory
//! network and a virtual clock: joins, offers and answers, ICE and DTLS, Opus forwarded
//! to every other participant, mute, leave and renegotiation, a full room, a bad answer,
//! a participant that never connects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coregate_protocol::ServerMessage;
use coregate_shards::hub::ConnKey;
use coregate_shards::{VoiceAction, VoiceRequest};
use loadtest::voice_peer::{VoicePeer, FRAME};

use super::sfu::{Peer, Sfu, SfuConfig, CONNECT_TIMEOUT};
use super::VoiceStats;

const SFU: &str = "10.0.0.1:3478";
const TICK: Duration = Duration::from_millis(5);

/// One participant: its connection's address, its WebRTC side, what the SFU told it.
struct Client {
    peer: Peer,
    user_id: String,
    rtc: Option<VoicePeer>,
    signals: Vec<(ServerMessage, Option<String>)>,
    /// The `ref`s the SFU's signals carried (refusals of an op echo its `ref`).
    refs: Vec<Option<u64>>,
    /// Answers offers by itself (tests of bad answers turn it off).
    answers: bool,
    talking: bool,
    next_frame: Instant,
}

/// The SFU and its clients on an in-memory network.
struct Net {
    sfu: Sfu,
    stats: Arc<VoiceStats>,
    clients: Vec<Client>,
    start: Instant,
    now: Instant,
}

fn sfu_addr() -> SocketAddr {
    SFU.parse().unwrap()
}

impl Net {
    fn new(room_size: usize) -> Net {
        let stats = Arc::new(VoiceStats::default());
        let config = SfuConfig {
            announce: sfu_addr(),
            local: sfu_addr(),
            room_size,
        };
        let now = Instant::now();
        Net {
            sfu: Sfu::new(config, stats.clone()),
            stats,
            clients: Vec::new(),
            start: now,
            now,
        }
    }

    /// A client of `user_id`; its index.
    fn client(&mut self, user_id: &str) -> usize {
        let n = self.clients.len();
        self.clients.push(Client {
            peer: Peer {
                node: None,
                shard_id: 0,
                conn: ConnKey::from_raw(n as u64),
            },
            user_id: user_id.to_owned(),
            rtc: None,
            signals: Vec::new(),
            refs: Vec::new(),
            answers: true,
            talking: false,
            next_frame: self.now,
        });
        n
    }

    fn request(&mut self, client: usize, channel: &str, action: VoiceAction) {
        let c = &self.clients[client];
        let request = VoiceRequest {
            shard_id: 0,
            conn: c.peer.conn,
            user_id: c.user_id.clone(),
            name: None,
            channel: channel.to_owned(),
            action,
            r#ref: Some(client as u64 + 100),
        };
        let peer = c.peer.clone();
        self.sfu.handle_request(peer, request, self.now);
        self.deliver();
    }

    fn join(&mut self, client: usize, channel: &str) {
        // A new WebRTC session for every join, as a browser makes a new peer connection.
        let local: SocketAddr = format!("10.0.1.{}:5000", client + 1).parse().unwrap();
        self.clients[client].rtc = Some(VoicePeer::new(local, self.now));
        self.request(client, channel, VoiceAction::Join);
    }

    /// Hands the SFU's output to the clients, and their answers back, until quiet.
    fn deliver(&mut self) {
        loop {
            let output = self.sfu.take_output();
            if output.datagrams.is_empty() && output.signals.is_empty() {
                return;
            }
            for datagram in output.datagrams {
                let now = self.now;
                if let Some(rtc) = self
                    .clients
                    .iter_mut()
                    .filter_map(|c| c.rtc.as_mut())
                    .find(|r| r.local() == datagram.destination)
                {
                    rtc.handle_datagram(sfu_addr(), &datagram.contents, now);
                }
            }
            for signal in output.signals {
                let at = self
                    .clients
                    .iter()
                    .position(|c| c.peer == signal.to)
                    .expect("a signal for a client");
                self.clients[at]
                    .signals
                    .push((signal.message.clone(), signal.left.clone()));
                self.clients[at].refs.push(signal.r#ref);
                match signal.message {
                    ServerMessage::VoiceOffer { channel, sdp } if self.clients[at].answers => {
                        let rtc = self.clients[at].rtc.as_mut().expect("joined");
                        let answer = rtc.answer(&sdp).expect("a usable offer");
                        let request = VoiceRequest {
                            shard_id: 0,
                            conn: signal.to.conn,
                            user_id: self.clients[at].user_id.clone(),
                            name: None,
                            channel,
                            action: VoiceAction::Answer { sdp: answer },
                            r#ref: None,
                        };
                        self.sfu.handle_request(signal.to, request, self.now);
                    }
                    ServerMessage::VoiceIceCandidate { candidate, .. } => {
                        if let Some(rtc) = self.clients[at].rtc.as_mut() {
                            rtc.add_remote_candidate(&candidate);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Runs the network for `span` of virtual time.
    fn run(&mut self, span: Duration) {
        let end = self.now + span;
        while self.now < end {
            self.now += TICK;
            let now = self.now;
            self.sfu.handle_timeout(now);
            self.deliver();
            for c in &mut self.clients {
                let Some(rtc) = c.rtc.as_mut() else {
                    continue;
                };
                rtc.handle_timeout(now);
                while c.talking && c.next_frame <= now {
                    rtc.send_audio(now);
                    c.next_frame += FRAME;
                }
                let (datagrams, _) = rtc.poll(now);
                let from = rtc.local();
                for (_, contents) in datagrams {
                    self.sfu.handle_datagram(from, &contents, now);
                }
            }
            self.deliver();
        }
    }

    fn talk(&mut self, client: usize, talking: bool) {
        self.clients[client].talking = talking;
        self.clients[client].next_frame = self.now;
    }

    fn heard(&self, listener: usize, speaker: usize) -> u64 {
        let user = &self.clients[speaker].user_id;
        self.clients[listener]
            .rtc
            .as_ref()
            .map_or(0, |r| r.heard_from(user).packets)
    }

    /// The codes of the `voice_error`s the client got, in order.
    fn error_codes(&self, client: usize) -> Vec<String> {
        self.clients[client]
            .signals
            .iter()
            .filter_map(|(m, _)| match m {
                ServerMessage::VoiceError { code, .. } => Some(code.clone()),
                _ => None,
            })
            .collect()
    }

    fn ops(&self, client: usize) -> Vec<&'static str> {
        self.clients[client]
            .signals
            .iter()
            .map(|(m, _)| m.op())
            .collect()
    }
}

#[test]
fn two_participants_connect_and_each_hears_the_other() {
    let mut net = Net::new(25);
    let (alice, bob) = (net.client("alice"), net.client("bob"));
    net.join(alice, "room");
    assert_eq!(
        net.ops(alice),
        ["voice_room_state", "voice_offer", "voice_ice_candidate"]
    );
    net.join(bob, "room");
    net.run(Duration::from_secs(1));
    for c in [alice, bob] {
        let connected = net.clients[c].rtc.as_ref().unwrap().connected_at();
        assert!(connected.is_some(), "client {c} connected");
    }
    // Bob's join: Alice is told, and offered a line for Bob's audio.
    assert!(net.ops(alice).contains(&"voice_user_joined"));
    assert_eq!(
        net.ops(alice)
            .iter()
            .filter(|o| **o == "voice_offer")
            .count(),
        2
    );
    let ServerMessage::VoiceRoomState { participants, .. } = &net.clients[bob].signals[0].0 else {
        panic!("room state first");
    };
    let users: Vec<&str> = participants.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(users, ["alice", "bob"]);
    net.talk(alice, true);
    net.talk(bob, true);
    net.run(Duration::from_secs(1));
    // ~50 frames a second each way; the first few go before the other's line is up.
    assert!(
        net.heard(bob, alice) >= 40,
        "bob heard {}",
        net.heard(bob, alice)
    );
    assert!(
        net.heard(alice, bob) >= 40,
        "alice heard {}",
        net.heard(alice, bob)
    );
    assert_eq!(net.heard(alice, alice), 0, "nobody hears themselves");
    assert!(
        net.stats
            .packets_forwarded
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 80
    );
    assert_eq!(net.stats.connect_time.snapshot().0.iter().sum::<u64>(), 2);
}

#[test]
fn a_third_participant_renegotiates_the_room_and_everyone_hears_everyone() {
    let mut net = Net::new(25);
    let users = [net.client("a"), net.client("b"), net.client("c")];
    net.join(users[0], "room");
    net.join(users[1], "room");
    net.run(Duration::from_millis(500));
    net.join(users[2], "room");
    net.run(Duration::from_millis(500));
    for u in users {
        net.talk(u, true);
    }
    net.run(Duration::from_secs(1));
    for listener in users {
        for speaker in users {
            let heard = net.heard(listener, speaker);
            if listener == speaker {
                assert_eq!(heard, 0);
            } else {
                assert!(heard >= 40, "{listener} heard {heard} from {speaker}");
            }
        }
    }
}

#[test]
fn a_muted_participant_is_not_forwarded_and_the_room_is_told() {
    let mut net = Net::new(25);
    let (alice, bob) = (net.client("alice"), net.client("bob"));
    net.join(alice, "room");
    net.join(bob, "room");
    net.run(Duration::from_millis(500));
    net.talk(alice, true);
    net.run(Duration::from_millis(500));
    net.request(alice, "room", VoiceAction::Mute);
    assert!(net.ops(bob).contains(&"voice_user_muted"));
    assert!(net.ops(alice).contains(&"voice_user_muted"));
    net.run(Duration::from_millis(100));
    let before = net.heard(bob, alice);
    net.run(Duration::from_secs(1));
    assert_eq!(
        net.heard(bob, alice),
        before,
        "nothing forwarded while muted"
    );
    net.request(alice, "room", VoiceAction::Unmute);
    assert!(net.ops(bob).contains(&"voice_user_unmuted"));
    net.run(Duration::from_secs(1));
    assert!(net.heard(bob, alice) >= before + 40);
}

#[test]
fn leaving_tells_the_room_and_renegotiates_the_others() {
    let mut net = Net::new(25);
    let (alice, bob, carol) = (net.client("alice"), net.client("bob"), net.client("carol"));
    for c in [alice, bob, carol] {
        net.join(c, "room");
    }
    net.run(Duration::from_secs(1));
    let offers = |net: &Net, c| net.ops(c).iter().filter(|o| **o == "voice_offer").count();
    let before = offers(&net, alice);
    net.request(carol, "room", VoiceAction::Leave);
    let (_, left) = net.clients[carol].signals.last().unwrap();
    assert_eq!(left.as_deref(), Some("room"), "carol is out");
    assert!(net.ops(alice).contains(&"voice_user_left"));
    assert_eq!(offers(&net, alice), before + 1, "carol's line stopped");
    net.run(Duration::from_millis(300));
    net.talk(alice, true);
    net.run(Duration::from_secs(1));
    assert!(net.heard(bob, alice) >= 40, "the room goes on");
    assert_eq!(net.sfu.room_sizes().collect::<Vec<_>>(), [("room", 2)]);
    // The connection of the last two ends: the room is gone.
    net.request(alice, "room", VoiceAction::Gone);
    net.request(bob, "room", VoiceAction::Gone);
    assert_eq!(net.sfu.room_sizes().count(), 0);
}

#[test]
fn a_full_room_refuses_and_other_rooms_are_apart() {
    let mut net = Net::new(2);
    let clients = [
        net.client("a"),
        net.client("b"),
        net.client("c"),
        net.client("d"),
    ];
    net.join(clients[0], "room");
    net.join(clients[1], "room");
    net.join(clients[2], "room");
    let (refusal, left) = net.clients[clients[2]].signals.last().unwrap();
    assert!(
        matches!(refusal, ServerMessage::VoiceError { code, channel, .. }
        if code == "room_full" && channel.as_deref() == Some("room"))
    );
    assert_eq!(left.as_deref(), Some("room"));
    // The refusal echoes the join's ref (the harness's refs are the client's index + 100).
    assert_eq!(net.clients[clients[2]].refs.last(), Some(&Some(102)));
    net.join(clients[3], "other");
    net.run(Duration::from_millis(500));
    net.talk(clients[3], true);
    net.talk(clients[0], true);
    net.run(Duration::from_millis(500));
    assert_eq!(net.heard(clients[0], clients[3]), 0);
    assert_eq!(net.heard(clients[3], clients[0]), 0);
    assert!(net.heard(clients[1], clients[0]) > 0);
    // Only b joined a's room after a.
    let joined: Vec<&str> = net.clients[clients[0]]
        .signals
        .iter()
        .filter_map(|(m, _)| match m {
            ServerMessage::VoiceUserJoined { user_id, .. } => Some(user_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(joined, ["b"]);
}

#[test]
fn a_bad_answer_is_refused_bad_sdp_and_a_fresh_offer_can_still_be_answered() {
    let mut net = Net::new(25);
    let alice = net.client("alice");
    net.clients[alice].answers = false;
    net.join(alice, "room");
    for garbage in ["not sdp", "v=0\r\n"] {
        net.request(
            alice,
            "room",
            VoiceAction::Answer {
                sdp: garbage.into(),
            },
        );
        let codes = net.error_codes(alice);
        assert_eq!(codes.last().map(String::as_str), Some("bad_sdp"));
        assert_eq!(net.clients[alice].refs.last(), Some(&Some(100)));
    }
    // An answer with no offer waiting is refused too, and the participant stays.
    assert_eq!(net.sfu.room_sizes().collect::<Vec<_>>(), [("room", 1)]);
    // Join again and answer properly: connected.
    net.clients[alice].answers = true;
    net.join(alice, "room");
    net.run(Duration::from_secs(1));
    assert!(net.clients[alice]
        .rtc
        .as_ref()
        .unwrap()
        .connected_at()
        .is_some());
}

#[test]
fn a_participant_that_never_connects_is_removed_when_its_time_is_up() {
    let mut net = Net::new(25);
    let (alice, bob) = (net.client("alice"), net.client("bob"));
    net.join(alice, "room");
    net.run(Duration::from_millis(500));
    // Bob joins but his datagrams never arrive: his session never comes up.
    net.clients[bob].answers = false;
    net.join(bob, "room");
    net.run(CONNECT_TIMEOUT - Duration::from_secs(1));
    assert_eq!(net.sfu.room_sizes().collect::<Vec<_>>(), [("room", 2)]);
    net.run(Duration::from_secs(2));
    assert_eq!(net.sfu.room_sizes().collect::<Vec<_>>(), [("room", 1)]);
    assert_eq!(net.error_codes(bob), ["timeout"]);
    assert_eq!(
        net.clients[bob].signals.last().unwrap().1.as_deref(),
        Some("room")
    );
    assert!(net.ops(alice).contains(&"voice_user_left"));
    // Alice, who connected, stays for as long as her session lives.
    assert!(net.now - net.start > CONNECT_TIMEOUT);
}

#[test]
fn datagrams_for_nobody_are_counted_and_dropped() {
    let mut net = Net::new(25);
    let from: SocketAddr = "10.9.9.9:1".parse().unwrap();
    let now = net.now;
    net.sfu
        .handle_datagram(from, &[0x80, 0x6f, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1], now);
    net.sfu.handle_datagram(from, b"", now);
    let unknown = net
        .stats
        .datagrams_unknown
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(unknown, 2);
    assert!(net.sfu.take_output().datagrams.is_empty());
}
