//! End-to-end tests of presence (PROTOCOL.md §4–§5, issue 12) on one node, on the
//! embedded bus: real gateway processes and real WebSocket clients. With Redis,
//! presence across nodes is not built yet; the last test pins what such a node does.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{now, sign, Client, Gateway, SECRET, WAIT};
use coregate_protocol::{ClientMessage, DecodedServerMessage, Encoding, PresenceStatus};
use serde_json::{json, Value};

/// Nothing more may arrive within this after an expected event (duplicates).
const QUIET: Duration = Duration::from_millis(300);

/// A token for `sub` that may watch presence and servers, announcing its own presence
/// on the topics of `presence` besides `presence:<sub>`.
fn token(sub: &str, presence: &[&str]) -> String {
    sign(
        json!({
            "sub": sub,
            "exp": now() + 3600,
            "topics": ["presence:*", "server:*"],
            "presence": presence,
        }),
        SECRET,
    )
}

async fn connect(gw: &Gateway, user: &str) -> Client {
    Client::ready(gw, &token(user, &[]), Encoding::Json).await
}

/// A client of `user` subscribed to `topics`.
async fn watcher(gw: &Gateway, user: &str, topics: &[&str]) -> Client {
    let mut client = connect(gw, user).await;
    client.subscribe(topics).await;
    client
}

/// The next message must be `presence_update` of `user` to `status` on `topic`.
async fn expect_update(client: &mut Client, topic: &str, user: &str, status: &str) -> u64 {
    let message: DecodedServerMessage = client.next().await.unwrap();
    assert_eq!(message.op, "presence_update", "{message:?}");
    assert_eq!(message.topic.as_deref(), Some(topic), "{message:?}");
    assert_eq!(message.d["user_id"], user, "{message:?}");
    assert_eq!(message.d["status"], status, "{message:?}");
    let since = message.d["since"].as_u64().unwrap();
    let now_ms = now() * 1000;
    assert!(
        since + 60_000 > now_ms && since < now_ms + 2_000,
        "since {since} is not now"
    );
    since
}

async fn query(client: &mut Client, users: &[&str]) -> Value {
    let r#ref = client
        .send(ClientMessage::PresenceQuery {
            user_ids: users.iter().map(|u| u.to_string()).collect(),
        })
        .await;
    let reply = client.wait_op("presence_state").await;
    assert_eq!(reply.r#ref, Some(r#ref));
    reply.d["users"].clone()
}

async fn set(client: &mut Client, status: PresenceStatus) {
    client.send(ClientMessage::PresenceSet { status }).await;
}

#[tokio::test]
async fn two_tabs_closing_one_keeps_the_user_online_closing_both_goes_offline_after_the_grace() {
    let gw = Gateway::start(&["--presence-grace", "1s"]);
    let mut bob = watcher(&gw, "bob", &["presence:alice"]).await;
    let tab1 = connect(&gw, "alice").await;
    expect_update(&mut bob, "presence:alice", "alice", "online").await;
    let tab2 = connect(&gw, "alice").await;
    bob.expect_silence(QUIET).await;
    drop(tab1);
    // Past the grace: still online, nothing announced.
    bob.expect_silence(Duration::from_millis(1_500)).await;
    assert_eq!(query(&mut bob, &["alice"]).await[0]["status"], "online");
    let closed = Instant::now();
    drop(tab2);
    expect_update(&mut bob, "presence:alice", "alice", "offline").await;
    let after = closed.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < WAIT,
        "offline came {after:?} after the last close"
    );
    bob.expect_silence(QUIET).await;
    let users = query(&mut bob, &["alice"]).await;
    assert_eq!(
        users,
        json!([{"user_id": "alice", "status": "offline", "since": 0}])
    );
}

#[tokio::test]
async fn a_reload_within_the_grace_announces_nothing() {
    let gw = Gateway::start(&["--presence-grace", "2s"]);
    let mut bob = watcher(&gw, "bob", &["presence:alice"]).await;
    let tab = connect(&gw, "alice").await;
    expect_update(&mut bob, "presence:alice", "alice", "online").await;
    drop(tab);
    let _reloaded = connect(&gw, "alice").await;
    // Well past the grace of the first connection's close: no offline, no online.
    bob.expect_silence(Duration::from_millis(3_000)).await;
    assert_eq!(query(&mut bob, &["alice"]).await[0]["status"], "online");
}

#[tokio::test]
async fn the_presence_claims_topics_receive_the_updates() {
    let gw = Gateway::start(&["--presence-grace", "1s"]);
    let mut bob = watcher(&gw, "bob", &["server:7", "server:8"]).await;
    let alice = Client::ready(
        &gw,
        &token("alice", &["server:7", "server:8"]),
        Encoding::Json,
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let message = bob.next().await.unwrap();
        assert_eq!(message.op, "presence_update", "{message:?}");
        assert_eq!(message.d["status"], "online");
        seen.push(message.topic.unwrap());
    }
    seen.sort();
    assert_eq!(seen, ["server:7", "server:8"]);
    bob.expect_silence(QUIET).await;
    drop(alice);
    for _ in 0..2 {
        let message = bob.next().await.unwrap();
        assert_eq!(message.op, "presence_update", "{message:?}");
        assert_eq!(message.d["status"], "offline");
    }
}

#[tokio::test]
async fn presence_set_and_invisible_read_as_offline_to_others_and_true_to_oneself() {
    let gw = Gateway::start(&["--presence-grace", "1s"]);
    let mut bob = watcher(&gw, "bob", &["presence:alice"]).await;
    let mut alice = connect(&gw, "alice").await;
    expect_update(&mut bob, "presence:alice", "alice", "online").await;
    set(&mut alice, PresenceStatus::Away).await;
    expect_update(&mut bob, "presence:alice", "alice", "away").await;
    set(&mut alice, PresenceStatus::Away).await;
    bob.expect_silence(QUIET).await;
    set(&mut alice, PresenceStatus::Invisible).await;
    let since = expect_update(&mut bob, "presence:alice", "alice", "offline").await;
    let users = query(&mut bob, &["alice", "carol"]).await;
    assert_eq!(
        users,
        json!([
            {"user_id": "alice", "status": "offline", "since": since},
            {"user_id": "carol", "status": "offline", "since": 0},
        ])
    );
    assert_eq!(
        query(&mut alice, &["alice"]).await[0]["status"],
        "invisible"
    );
    set(&mut alice, PresenceStatus::Busy).await;
    expect_update(&mut bob, "presence:alice", "alice", "busy").await;
    // `offline` is not the client's to set.
    let r#ref = alice
        .send(ClientMessage::PresenceSet {
            status: PresenceStatus::Offline,
        })
        .await;
    let error = alice.wait_op("error").await;
    assert_eq!(error.r#ref, Some(r#ref));
    assert_eq!(error.d["code"], "bad_request");
    bob.expect_silence(QUIET).await;
}

#[tokio::test]
async fn presence_query_answers_many_users_and_refuses_more_than_100() {
    let gw = Gateway::start(&[]);
    let _alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;
    let users = query(&mut bob, &["alice", "bob", "nobody"]).await;
    let statuses: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["online", "online", "offline"]);
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let r#ref = bob
        .send(ClientMessage::PresenceQuery { user_ids: many })
        .await;
    let error = bob.wait_op("error").await;
    assert_eq!(error.r#ref, Some(r#ref));
    assert_eq!(error.d["code"], "limit");
}

#[tokio::test]
async fn with_redis_presence_is_not_announced_and_a_query_is_refused() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let gw = Gateway::start(&["--redis-url", url.as_str(), "--presence-grace", "1s"]);
    let mut bob = watcher(&gw, "bob", &["presence:alice"]).await;
    redis.wait_numsub("presence:alice", 1).await;
    let mut alice = connect(&gw, "alice").await;
    set(&mut alice, PresenceStatus::Away).await;
    drop(alice);
    bob.expect_silence(Duration::from_millis(1_500)).await;
    let r#ref = bob
        .send(ClientMessage::PresenceQuery {
            user_ids: vec!["alice".into()],
        })
        .await;
    let error = bob.wait_op("error").await;
    assert_eq!(error.r#ref, Some(r#ref));
    assert_eq!(error.d["code"], "bad_request");
    assert_eq!(gw.metric("coregate_redis_published_total").await, 0.0);
}
