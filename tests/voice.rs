//! End to end: voice channels (docs/protocol.md §4–§5) through real gateways, over real
//! WebSockets and real UDP on loopback, with str0m peers (the load harness's): two
//! clients hear each other, a bad answer is refused and the connection lives, a
//! forbidden channel and a full room are refused, and a room spans two nodes sharing a
//! `redis-server`, taken over when its owner dies. The Python tests (`tests/voice_aiortc`)
//! do the same with aiortc, a WebRTC stack nobody here wrote.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use common::voice::VoiceClient;
use common::{token, Client, Gateway};
use coregate_protocol::{ClientMessage, Encoding};

async fn voice_client(gw: &Gateway, user: &str, topics: &[&str]) -> VoiceClient {
    let client = Client::ready(gw, &token(user, topics), Encoding::Json).await;
    VoiceClient::new(client, user).await
}

/// Once both sessions are up, both talk until each has heard 25 frames (half a second)
/// of the other.
async fn talk_until_heard(a: &VoiceClient, b: &VoiceClient) {
    for c in [a, b] {
        c.wait_for(
            Duration::from_secs(5),
            "a connected session",
            VoiceClient::connected,
        )
        .await;
        c.talk(true);
    }
    a.wait_heard(&b.user_id, 25, Duration::from_secs(5)).await;
    b.wait_heard(&a.user_id, 25, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn two_clients_join_through_the_gateway_and_hear_each_other() {
    let gw = Gateway::start(&[]);
    let alice = voice_client(&gw, "alice", &["voice:*"]).await;
    let bob = voice_client(&gw, "bob", &["voice:*"]).await;
    alice.join("lounge");
    let state = alice.wait_op("voice_room_state", 1).await;
    assert_eq!(state.d["participants"][0]["user_id"], "alice");
    bob.join("lounge");
    alice.wait_op("voice_user_joined", 1).await;
    // 25 frames: half a second of audio each way, over the gateway's UDP port.
    talk_until_heard(&alice, &bob).await;
    let forwarded = gw.metric("coregate_voice_packets_forwarded_total").await;
    assert!(forwarded >= 50.0, "{forwarded}");
    assert_eq!(gw.metric("coregate_voice_participants").await, 2.0);
    // Bob leaves: Alice is told and renegotiated; Bob's connection is out of the room.
    bob.send(ClientMessage::VoiceLeave {
        channel: "lounge".into(),
    });
    let left = alice.wait_op("voice_user_left", 1).await;
    assert_eq!(left.d["user_id"], "bob");
    alice.wait_op("voice_offer", 3).await;
    bob.send(ClientMessage::VoiceMute {
        channel: "lounge".into(),
    });
    let error = bob.wait_op("voice_error", 1).await;
    assert_eq!(error.d["code"], "not_in_room");
}

#[tokio::test]
async fn a_malformed_answer_is_refused_bad_sdp_and_the_connection_lives() {
    let gw = Gateway::start(&[]);
    let alice = voice_client(&gw, "alice", &["voice:*"]).await;
    alice.answer_offers(false);
    alice.join("lounge");
    alice.wait_op("voice_offer", 1).await;
    alice.send(ClientMessage::VoiceAnswer {
        channel: "lounge".into(),
        sdp: "v=0\r\nthis is not an answer\r\n".into(),
    });
    let error = alice.wait_op("voice_error", 1).await;
    assert_eq!(error.d["code"], "bad_sdp");
    alice.send(ClientMessage::Ping);
    alice.wait_op("pong", 1).await;
    assert!(!alice.is_closed());
}

#[tokio::test]
async fn a_forbidden_channel_and_a_full_room_are_refused() {
    let gw = Gateway::start(&["--voice-room-size", "2"]);
    let mallory = voice_client(&gw, "mallory", &["voice:public-*"]).await;
    mallory.join("staff");
    let error = mallory.wait_op("voice_error", 1).await;
    assert_eq!(error.d["code"], "forbidden");
    assert_eq!(error.d["channel"], "staff");
    assert!(error.r#ref.is_some(), "the join's ref");
    let clients = [
        voice_client(&gw, "a", &["voice:*"]).await,
        voice_client(&gw, "b", &["voice:*"]).await,
        voice_client(&gw, "c", &["voice:*"]).await,
    ];
    clients[0].join("small");
    clients[0].wait_op("voice_room_state", 1).await;
    clients[1].join("small");
    clients[1].wait_op("voice_room_state", 1).await;
    clients[2].join("small");
    let error = clients[2].wait_op("voice_error", 1).await;
    assert_eq!(error.d["code"], "room_full");
    assert_eq!(error.d["channel"], "small");
    assert!(error.r#ref.is_some(), "the join's ref, from the SFU");
    // Refused: the connection is in no room.
    clients[2].send(ClientMessage::VoiceMute {
        channel: "small".into(),
    });
    let error = clients[2].wait_op("voice_error", 2).await;
    assert_eq!(error.d["code"], "not_in_room");
}

#[tokio::test]
async fn a_room_spans_two_nodes_and_a_dead_owner_is_taken_over() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let mut one = Gateway::start(&["--redis-url", &url]);
    let two = Gateway::start(&["--redis-url", &url]);
    for gw in [&one, &two] {
        gw.wait_ready_status(200, Duration::from_secs(10)).await;
    }
    let alice = voice_client(&one, "alice", &["voice:*"]).await;
    let bob = voice_client(&two, "bob", &["voice:*"]).await;
    alice.join("lounge");
    alice.wait_op("voice_room_state", 1).await;
    // Node one owns the room: Bob, on node two, is signaled through Redis and sends
    // his media to node one's UDP address.
    bob.join("lounge");
    let state = bob.wait_op("voice_room_state", 1).await;
    assert_eq!(state.d["participants"].as_array().unwrap().len(), 2);
    talk_until_heard(&alice, &bob).await;
    assert_eq!(one.metric("coregate_voice_participants").await, 2.0);
    assert_eq!(two.metric("coregate_voice_participants").await, 0.0);
    // Node one dies: its lease runs out, node two takes the room over and Bob joins
    // it again there, in a new session.
    one.kill();
    bob.wait_for(Duration::from_secs(15), "a second session", |c| {
        c.sessions() >= 2
    })
    .await;
    bob.wait_for(
        Duration::from_secs(5),
        "a connected session",
        VoiceClient::connected,
    )
    .await;
    assert_eq!(two.metric("coregate_voice_participants").await, 1.0);
    let states: Vec<_> = bob
        .signals()
        .into_iter()
        .filter(|m| m.op == "voice_room_state")
        .collect();
    assert_eq!(states[1].d["participants"][0]["user_id"], "bob");
}
