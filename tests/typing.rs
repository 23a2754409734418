//! End-to-end tests of typing indicators (PROTOCOL.md §4–§5): real gateway processes,
//! on the embedded bus and on two nodes sharing a private `redis-server`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{token, Client, Gateway, WAIT};
use coregate_protocol::{ClientMessage, DecodedServerMessage, Encoding};
use serde_json::json;

/// Nothing more may arrive within this after an expected event (duplicates).
const QUIET: Duration = Duration::from_millis(300);
/// Past the per-user typing rate (one `typing_start` a second).
const PAST_RATE: Duration = Duration::from_millis(1_100);

async fn ready(gw: &Gateway, user: &str, topics: &[&str]) -> Client {
    let mut client = Client::ready(gw, &token(user, &["channel:*"]), Encoding::Json).await;
    client.subscribe(topics).await;
    client
}

async fn start(client: &mut Client, topic: &str) {
    client
        .send(ClientMessage::TypingStart {
            topic: topic.into(),
        })
        .await;
}

async fn stop(client: &mut Client, topic: &str) {
    client
        .send(ClientMessage::TypingStop {
            topic: topic.into(),
        })
        .await;
}

/// The next message must be `op` by `user` on `topic`.
async fn expect_typing(client: &mut Client, op: &str, user: &str, topic: &str) {
    let message: DecodedServerMessage = client.next().await.unwrap();
    assert_eq!(message.op, op, "{message:?}");
    assert_eq!(message.topic.as_deref(), Some(topic), "{message:?}");
    assert_eq!(
        message.d,
        json!({"user_id": user, "name": user.to_uppercase()}),
        "{message:?}"
    );
}

#[tokio::test]
async fn a_start_reaches_every_other_subscriber_once_and_never_the_typists_own_tabs() {
    let gw = Gateway::start(&["--typing-ttl", "30s"]);
    let mut tab1 = ready(&gw, "alice", &["channel:1"]).await;
    let mut tab2 = ready(&gw, "alice", &["channel:1"]).await;
    let mut bob = ready(&gw, "bob", &["channel:1"]).await;
    let mut carol = ready(&gw, "carol", &["channel:1"]).await;
    start(&mut tab1, "channel:1").await;
    for client in [&mut bob, &mut carol] {
        expect_typing(client, "typing_start", "alice", "channel:1").await;
    }
    // The other tab repeats it past the rate, within the TTL: not re-broadcast.
    tokio::time::sleep(PAST_RATE).await;
    start(&mut tab2, "channel:1").await;
    bob.expect_silence(QUIET).await;
    // One stop, whichever tab stops; the second stop announces nothing.
    stop(&mut tab1, "channel:1").await;
    for client in [&mut bob, &mut carol] {
        expect_typing(client, "typing_stop", "alice", "channel:1").await;
    }
    stop(&mut tab2, "channel:1").await;
    for client in [&mut bob, &mut carol, &mut tab1, &mut tab2] {
        client.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn silence_for_the_ttl_yields_exactly_one_stop() {
    let gw = Gateway::start(&["--typing-ttl", "1s"]);
    let mut alice = ready(&gw, "alice", &["channel:1"]).await;
    let mut bob = ready(&gw, "bob", &["channel:1"]).await;
    let started = Instant::now();
    start(&mut alice, "channel:1").await;
    expect_typing(&mut bob, "typing_start", "alice", "channel:1").await;
    expect_typing(&mut bob, "typing_stop", "alice", "channel:1").await;
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < WAIT,
        "stopped after {after:?}"
    );
    bob.expect_silence(Duration::from_millis(1_500)).await;
    // The next start is a new indicator.
    start(&mut alice, "channel:1").await;
    expect_typing(&mut bob, "typing_start", "alice", "channel:1").await;
}

#[tokio::test]
async fn a_disconnect_stops_every_indicator_the_connection_had_open() {
    let gw = Gateway::start(&["--typing-ttl", "30s"]);
    let mut alice = ready(&gw, "alice", &["channel:1", "channel:2"]).await;
    let mut bob = ready(&gw, "bob", &["channel:1", "channel:2"]).await;
    start(&mut alice, "channel:1").await;
    expect_typing(&mut bob, "typing_start", "alice", "channel:1").await;
    tokio::time::sleep(PAST_RATE).await;
    start(&mut alice, "channel:2").await;
    expect_typing(&mut bob, "typing_start", "alice", "channel:2").await;
    drop(alice);
    let mut stopped = Vec::new();
    for _ in 0..2 {
        let message = bob.next().await.unwrap();
        assert_eq!(message.op, "typing_stop", "{message:?}");
        assert_eq!(message.d["user_id"], json!("alice"));
        stopped.push(message.topic.unwrap());
    }
    stopped.sort();
    assert_eq!(stopped, ["channel:1", "channel:2"]);
    bob.expect_silence(QUIET).await;
}

#[tokio::test]
async fn typing_on_a_topic_not_subscribed_is_forbidden() {
    let gw = Gateway::start(&[]);
    let mut alice = ready(&gw, "alice", &["channel:1"]).await;
    let mut bob = ready(&gw, "bob", &["channel:2"]).await;
    let r#ref = alice
        .send(ClientMessage::TypingStart {
            topic: "channel:2".into(),
        })
        .await;
    let error = alice.expect_op("error").await;
    assert_eq!(error.d["code"], json!("forbidden"));
    assert_eq!(error.r#ref, Some(r#ref));
    bob.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_users_starts_over_the_rate_are_dropped_quietly() {
    let gw = Gateway::start(&["--typing-ttl", "30s"]);
    let mut alice = ready(&gw, "alice", &["channel:1", "channel:2"]).await;
    let mut bob = ready(&gw, "bob", &["channel:1", "channel:2"]).await;
    start(&mut alice, "channel:1").await;
    start(&mut alice, "channel:2").await;
    expect_typing(&mut bob, "typing_start", "alice", "channel:1").await;
    bob.expect_silence(QUIET).await;
    alice.expect_silence(Duration::from_millis(50)).await;
    // Stops are never dropped.
    stop(&mut alice, "channel:1").await;
    expect_typing(&mut bob, "typing_stop", "alice", "channel:1").await;
}

fn node(redis: &RedisServer, ttl: &str) -> Gateway {
    let url = redis.url();
    Gateway::start(&["--redis-url", url.as_str(), "--typing-ttl", ttl])
}

/// `alice` on both nodes, `bob` on `a`, `carol` on `b`, all on `topic`.
async fn two_nodes(redis: &RedisServer, a: &Gateway, b: &Gateway, topic: &str) -> [Client; 4] {
    let alice_a = ready(a, "alice", &[topic]).await;
    let alice_b = ready(b, "alice", &[topic]).await;
    let bob = ready(a, "bob", &[topic]).await;
    let carol = ready(b, "carol", &[topic]).await;
    redis.wait_numsub(topic, 2).await;
    [alice_a, alice_b, bob, carol]
}

#[tokio::test]
async fn across_two_nodes_a_repeat_is_deduped_and_the_ttl_stop_comes_once() {
    let redis = RedisServer::start().await;
    let a = node(&redis, "2s");
    let b = node(&redis, "2s");
    let [mut alice_a, mut alice_b, mut bob, mut carol] =
        two_nodes(&redis, &a, &b, "channel:7").await;
    start(&mut alice_a, "channel:7").await;
    for client in [&mut bob, &mut carol] {
        expect_typing(client, "typing_start", "alice", "channel:7").await;
    }
    // The same user, from the other node: extends, announces nothing.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let extended = Instant::now();
    start(&mut alice_b, "channel:7").await;
    bob.expect_silence(QUIET).await;
    carol.expect_silence(Duration::from_millis(50)).await;
    // One stop on every node, announced by one node, after the extended deadline.
    for client in [&mut bob, &mut carol] {
        expect_typing(client, "typing_stop", "alice", "channel:7").await;
    }
    let after = extended.elapsed();
    assert!(
        after >= Duration::from_millis(1_800),
        "stopped after {after:?}"
    );
    for client in [&mut bob, &mut carol, &mut alice_a, &mut alice_b] {
        client.expect_silence(Duration::from_millis(1_000)).await;
    }
    let published = a.metric("coregate_redis_published_total").await
        + b.metric("coregate_redis_published_total").await;
    assert_eq!(published, 2.0, "one start and one stop, in all");
    let mut conn = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("typing:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test]
async fn across_two_nodes_a_stop_or_a_disconnect_on_the_other_node_is_announced_once() {
    let redis = RedisServer::start().await;
    let a = node(&redis, "2s");
    let b = node(&redis, "2s");
    let [mut alice_a, mut alice_b, mut bob, mut carol] =
        two_nodes(&redis, &a, &b, "channel:8").await;
    start(&mut alice_a, "channel:8").await;
    for client in [&mut bob, &mut carol] {
        expect_typing(client, "typing_start", "alice", "channel:8").await;
    }
    // Stopped from the node that does not own it: one stop; the owner's check at the
    // deadline then finds nothing to announce.
    stop(&mut alice_b, "channel:8").await;
    for client in [&mut bob, &mut carol] {
        expect_typing(client, "typing_stop", "alice", "channel:8").await;
    }
    bob.expect_silence(Duration::from_millis(2_500)).await;
    carol.expect_silence(Duration::from_millis(50)).await;
    // Started on b (past the rate there), then b's tab closes: one stop, on both nodes.
    start(&mut alice_b, "channel:8").await;
    for client in [&mut bob, &mut carol] {
        expect_typing(client, "typing_start", "alice", "channel:8").await;
    }
    drop(alice_b);
    for client in [&mut bob, &mut carol] {
        expect_typing(client, "typing_stop", "alice", "channel:8").await;
    }
    for client in [&mut bob, &mut carol, &mut alice_a] {
        client.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn a_node_killed_with_an_open_indicator_has_it_stopped_once_by_a_survivor() {
    let redis = RedisServer::start().await;
    let a = node(&redis, "1s");
    let b = node(&redis, "1s");
    let [mut alice_a, _alice_b, _bob, mut carol] = two_nodes(&redis, &a, &b, "channel:5").await;
    let started = Instant::now();
    start(&mut alice_a, "channel:5").await;
    expect_typing(&mut carol, "typing_start", "alice", "channel:5").await;
    // SIGKILL: no close is handled, the owner's check never runs.
    drop(a);
    expect_typing(&mut carol, "typing_stop", "alice", "channel:5").await;
    let after = started.elapsed();
    // The TTL, then overdue by 2 s, found by b's sweep (every second).
    assert!(
        after >= Duration::from_millis(2_900) && after < Duration::from_millis(4_900),
        "stopped after {after:?}"
    );
    carol.expect_silence(Duration::from_millis(1_500)).await;
    assert_eq!(b.metric("coregate_redis_published_total").await, 1.0);
}
