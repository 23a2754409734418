//! Voice signaling on a connection, through the harness with its driven clock: who may
//! join which room, the ops handed to the SFU, what the SFU says back, leaving (by op,
//! by the SFU, by another join, by the connection's end). The SFU is played by the
//! test, which reads the requests and answers as the node's `voice` thread would.
#![allow(clippy::unwrap_used)]

use coregate_protocol::{Encoding, ServerMessage};
use serde_json::json;

use crate::config::ShardConfig;
use crate::hub::ConnKey;
use crate::testing::{Harness, VOICE_QUEUE};
use crate::voice::{VoiceAction, VoiceRequest};

/// The voice ops the hub handed the SFU since the last call.
fn requests(h: &Harness) -> Vec<VoiceRequest> {
    h.voice_requests.drain().collect()
}

fn actions(h: &Harness) -> Vec<(String, VoiceAction)> {
    requests(h)
        .into_iter()
        .map(|r| (r.channel, r.action))
        .collect()
}

fn join(h: &mut Harness, key: ConnKey, channel: &str) {
    h.send(
        key,
        &format!(r#"{{"op":"voice_join","d":{{"channel":"{channel}"}},"ref":1}}"#),
    );
}

fn subscriptions(h: &Harness, key: ConnKey) -> Vec<&str> {
    let mut topics: Vec<&str> = h
        .hub
        .session(key)
        .unwrap()
        .subscriptions()
        .iter()
        .map(|t| t.as_str())
        .collect();
    topics.sort_unstable();
    topics
}

#[test]
fn a_join_is_authorized_by_the_token_and_handed_to_the_sfu_with_who_is_joining() {
    let mut h = Harness::new(ShardConfig::default());
    let alice = h.connect_ready("alice", Encoding::Json);
    h.read(alice);
    join(&mut h, alice, "staff-1");
    let read = h.read(alice);
    assert_eq!(read.ops(), ["voice_error"]);
    assert_eq!(read.first("voice_error")["d"]["code"], "forbidden");
    assert_eq!(read.first("voice_error")["ref"], 1);
    join(&mut h, alice, "bad channel");
    assert_eq!(
        h.read(alice).first("voice_error")["d"]["code"],
        "bad_request"
    );
    assert!(requests(&h).is_empty());
    join(&mut h, alice, "open-1");
    assert!(
        h.read(alice).ops().is_empty(),
        "the SFU answers, not the session"
    );
    let request = requests(&h).remove(0);
    assert_eq!(
        (
            request.shard_id,
            request.conn,
            request.user_id.as_str(),
            request.name.as_deref(),
            request.channel.as_str(),
            request.action
        ),
        (
            0,
            alice,
            "alice",
            Some("alice's name"),
            "open-1",
            VoiceAction::Join
        )
    );
    // The room's topic, for the backend's events to its participants.
    assert_eq!(
        subscriptions(&h, alice),
        ["global", "user:alice", "voice:open-1"]
    );
}

#[test]
fn ops_go_to_the_sfu_only_for_the_room_the_connection_is_in() {
    let mut h = Harness::new(ShardConfig::default());
    let alice = h.connect_ready("alice", Encoding::Json);
    h.read(alice);
    h.send(
        alice,
        r#"{"op":"voice_mute","d":{"channel":"open-1"},"ref":4}"#,
    );
    let read = h.read(alice);
    assert_eq!(read.first("voice_error")["d"]["code"], "not_in_room");
    assert_eq!(read.first("voice_error")["ref"], 4);
    join(&mut h, alice, "open-1");
    for op in [
        r#"{"op":"voice_answer","d":{"channel":"open-1","sdp":"v=0"}}"#,
        r#"{"op":"voice_ice_candidate","d":{"channel":"open-1","candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host"}}"#,
        r#"{"op":"voice_mute","d":{"channel":"open-1"}}"#,
        r#"{"op":"voice_unmute","d":{"channel":"open-1"}}"#,
        r#"{"op":"voice_answer","d":{"channel":"open-2","sdp":"v=0"}}"#,
        r#"{"op":"voice_leave","d":{"channel":"open-1"}}"#,
        r#"{"op":"voice_mute","d":{"channel":"open-1"}}"#,
    ] {
        h.send(alice, op);
    }
    let channel = || "open-1".to_owned();
    assert_eq!(
        actions(&h),
        [
            (channel(), VoiceAction::Join),
            (channel(), VoiceAction::Answer { sdp: "v=0".into() }),
            (
                channel(),
                VoiceAction::IceCandidate {
                    candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into()
                }
            ),
            (channel(), VoiceAction::Mute),
            (channel(), VoiceAction::Unmute),
            (channel(), VoiceAction::Leave),
        ]
    );
    let read = h.read(alice);
    assert_eq!(
        read.count("voice_error"),
        2,
        "open-2, then open-1 after leaving"
    );
    assert_eq!(subscriptions(&h, alice), ["global", "user:alice"]);
}

#[test]
fn the_sfu_speaks_on_the_priority_lane_and_can_take_the_connection_out_of_the_room() {
    let mut h = Harness::new(ShardConfig::default());
    let alice = h.connect_ready("alice", Encoding::Json);
    h.read(alice);
    join(&mut h, alice, "open-1");
    requests(&h);
    // Events queued on the normal lane do not hold a signal back.
    for n in 0..3 {
        h.publish("voice:open-1", "call_note", json!({ "n": n }));
    }
    let now = h.now().instant;
    let offer = ServerMessage::VoiceOffer {
        channel: "open-1".into(),
        sdp: "v=0 offer".into(),
    };
    h.hub.answer_voice(alice, offer, None, None, now);
    let read = h.read(alice);
    assert_eq!(read.ops()[0], "voice_offer");
    assert_eq!(
        read.first("voice_offer")["d"],
        json!({"channel": "open-1", "sdp": "v=0 offer"})
    );
    assert_eq!(read.count("call_note"), 3);
    // Timed out (ICE): the SFU says so, and the connection is out of the room.
    let left = ServerMessage::VoiceUserLeft {
        channel: "open-1".into(),
        user_id: "alice".into(),
        name: None,
    };
    h.hub
        .answer_voice(alice, left, None, Some("open-1".into()), now);
    assert_eq!(h.read(alice).ops(), ["voice_user_left"]);
    assert_eq!(subscriptions(&h, alice), ["global", "user:alice"]);
    h.send(alice, r#"{"op":"voice_mute","d":{"channel":"open-1"}}"#);
    assert_eq!(
        h.read(alice).first("voice_error")["d"]["code"],
        "not_in_room"
    );
    assert!(requests(&h).is_empty());
}

#[test]
fn joining_another_room_leaves_the_first_and_the_end_of_the_connection_leaves_for_it() {
    let mut h = Harness::new(ShardConfig::default());
    let alice = h.connect_ready("alice", Encoding::Json);
    h.read(alice);
    join(&mut h, alice, "open-1");
    join(&mut h, alice, "open-1");
    join(&mut h, alice, "open-2");
    let one = || "open-1".to_owned();
    assert_eq!(
        actions(&h),
        [
            (one(), VoiceAction::Join),
            // Again in the same room: a new WebRTC session, the room topic kept.
            (one(), VoiceAction::Join),
            (one(), VoiceAction::Leave),
            ("open-2".to_owned(), VoiceAction::Join),
        ]
    );
    assert_eq!(
        subscriptions(&h, alice),
        ["global", "user:alice", "voice:open-2"]
    );
    h.hub.remove(alice);
    assert_eq!(actions(&h), [("open-2".to_owned(), VoiceAction::Gone)]);
}

#[test]
fn a_full_sfu_queue_refuses_the_join_unavailable_and_leaves_no_room_behind() {
    let mut h = Harness::new(ShardConfig::default());
    let alice = h.connect_ready("alice", Encoding::Json);
    h.read(alice);
    join(&mut h, alice, "open-1");
    for _ in 1..VOICE_QUEUE {
        h.send(alice, r#"{"op":"voice_mute","d":{"channel":"open-1"}}"#);
    }
    h.read(alice);
    let bob = h.connect_ready("bob", Encoding::Json);
    h.read(bob);
    join(&mut h, bob, "open-1");
    let read = h.read(bob);
    assert_eq!(read.first("voice_error")["d"]["code"], "unavailable");
    assert_eq!(h.hub.session(bob).unwrap().voice_channel(), None);
    assert_eq!(subscriptions(&h, bob), ["global", "user:bob"]);
    assert_eq!(h.stats.snapshot().voice_requests_refused, 1);
    assert_eq!(requests(&h).len(), VOICE_QUEUE);
}

#[test]
fn answers_to_the_sfus_offers_are_free_and_unsolicited_ones_are_charged() {
    let mut h = Harness::new(ShardConfig::default());
    let alice = h.connect_ready("alice", Encoding::Json);
    h.read(alice);
    join(&mut h, alice, "open-1");
    let answer = r#"{"op":"voice_answer","d":{"channel":"open-1","sdp":"v=0"}}"#;
    let mut sent = requests(&h).len();
    // A churning room: 60 offers, each answered, far past the event burst (20).
    for _ in 0..60 {
        let now = h.now().instant;
        let offer = ServerMessage::VoiceOffer {
            channel: "open-1".into(),
            sdp: "v=0 offer".into(),
        };
        h.hub.answer_voice(alice, offer, None, None, now);
        h.send(alice, answer);
        sent += requests(&h).len();
    }
    assert_eq!(
        h.read(alice).count("error"),
        0,
        "no answer owed was refused"
    );
    assert_eq!(sent, 61, "the join and the 60 answers");
    // Answers nobody asked for are charged like any message: past the burst, refused.
    for _ in 0..30 {
        h.send(alice, answer);
    }
    let read = h.read(alice);
    assert!(read.count("error") > 0, "{:?}", read.ops());
    assert_eq!(read.first("error")["d"]["code"], "rate_limited");
}
