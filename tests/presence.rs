//! End-to-end tests of presence (PROTOCOL.md §4–§5, issue 12): real gateway processes
//! and real WebSocket clients, on one node's embedded bus and on two nodes sharing a
//! private `redis-server`.
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
async fn with_presence_off_nothing_is_announced_or_stored_and_queries_are_unavailable() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let embedded = Gateway::start(&["--presence", "false"]);
    let with_redis = Gateway::start(&["--redis-url", url.as_str(), "--presence", "false"]);
    for gw in [&embedded, &with_redis] {
        let mut bob = watcher(gw, "bob", &["presence:alice"]).await;
        let _alice = connect(gw, "alice").await;
        bob.expect_silence(QUIET).await;
        let r#ref = bob
            .send(ClientMessage::PresenceQuery {
                user_ids: vec!["alice".to_owned()],
            })
            .await;
        let error = bob.wait_op("error").await;
        assert_eq!(error.r#ref, Some(r#ref));
        assert_eq!(error.d["code"], "unavailable");
    }
    assert_eq!(redis_keys(&redis, "*presence*").await, Vec::<String>::new());
}

/// A node on `redis` with a short grace and lease.
fn node(redis: &RedisServer) -> Gateway {
    let url = redis.url();
    Gateway::start(&[
        "--redis-url",
        url.as_str(),
        "--presence-grace",
        "1s",
        "--presence-ttl",
        "2s",
    ])
}

/// `bob` on `a` and `carol` on `b`, both watching `presence:alice`.
async fn watchers(redis: &RedisServer, a: &Gateway, b: &Gateway) -> (Client, Client) {
    let bob = watcher(a, "bob", &["presence:alice"]).await;
    let carol = watcher(b, "carol", &["presence:alice"]).await;
    redis.wait_numsub("presence:alice", 2).await;
    (bob, carol)
}

async fn redis_keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    let mut conn = redis.conn().await;
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn across_two_nodes_the_presence_claims_topics_receive_the_updates_once() {
    let redis = RedisServer::start().await;
    let a = node(&redis);
    let b = node(&redis);
    let mut bob = watcher(&b, "bob", &["server:7"]).await;
    redis.wait_numsub("server:7", 1).await;
    let alice = Client::ready(&a, &token("alice", &["server:7"]), Encoding::Json).await;
    expect_update(&mut bob, "server:7", "alice", "online").await;
    bob.expect_silence(QUIET).await;
    drop(alice);
    expect_update(&mut bob, "server:7", "alice", "offline").await;
    bob.expect_silence(QUIET).await;
}

#[tokio::test]
async fn across_two_nodes_presence_is_user_level_and_announced_once() {
    let redis = RedisServer::start().await;
    let a = node(&redis);
    let b = node(&redis);
    let (mut bob, mut carol) = watchers(&redis, &a, &b).await;
    let mut alice_a = connect(&a, "alice").await;
    for client in [&mut bob, &mut carol] {
        expect_update(client, "presence:alice", "alice", "online").await;
    }
    let alice_b = connect(&b, "alice").await;
    bob.expect_silence(QUIET).await;
    // Invisible on a: offline to everyone, on both nodes; the truth to herself.
    set(&mut alice_a, PresenceStatus::Invisible).await;
    for client in [&mut bob, &mut carol] {
        expect_update(client, "presence:alice", "alice", "offline").await;
    }
    assert_eq!(query(&mut carol, &["alice"]).await[0]["status"], "offline");
    assert_eq!(
        query(&mut alice_a, &["alice"]).await[0]["status"],
        "invisible"
    );
    set(&mut alice_a, PresenceStatus::Online).await;
    for client in [&mut bob, &mut carol] {
        expect_update(client, "presence:alice", "alice", "online").await;
    }
    // Her tab on a closes: still online (on b), whatever the grace.
    drop(alice_a);
    carol.expect_silence(Duration::from_millis(2_500)).await;
    bob.expect_silence(QUIET).await;
    assert_eq!(query(&mut bob, &["alice"]).await[0]["status"], "online");
    // Her last tab closes: offline once, after the grace (the sweep runs every second).
    let closed = Instant::now();
    drop(alice_b);
    for client in [&mut bob, &mut carol] {
        expect_update(client, "presence:alice", "alice", "offline").await;
    }
    let after = closed.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(3_500),
        "offline came {after:?} after the last close"
    );
    for client in [&mut bob, &mut carol] {
        client.expect_silence(Duration::from_millis(1_200)).await;
    }
    assert_eq!(
        query(&mut carol, &["alice"]).await,
        json!([{"user_id": "alice", "status": "offline", "since": 0}])
    );
    assert!(redis_keys(&redis, "presence:u:alice").await.is_empty());
}

#[tokio::test]
async fn a_reconnect_to_the_other_node_within_the_grace_announces_nothing() {
    let redis = RedisServer::start().await;
    let a = node(&redis);
    let b = node(&redis);
    let (mut bob, mut carol) = watchers(&redis, &a, &b).await;
    let alice = connect(&a, "alice").await;
    for client in [&mut bob, &mut carol] {
        expect_update(client, "presence:alice", "alice", "online").await;
    }
    drop(alice);
    let _back = connect(&b, "alice").await;
    bob.expect_silence(Duration::from_millis(3_000)).await;
    carol.expect_silence(QUIET).await;
    assert_eq!(query(&mut bob, &["alice"]).await[0]["status"], "online");
}

#[tokio::test]
async fn a_node_killed_has_its_users_taken_offline_once_by_a_survivor() {
    let redis = RedisServer::start().await;
    let a = node(&redis);
    let b = node(&redis);
    let c = node(&redis);
    let (mut bob, mut carol) = watchers(&redis, &b, &c).await;
    let _alice = connect(&a, "alice").await;
    for client in [&mut bob, &mut carol] {
        expect_update(client, "presence:alice", "alice", "online").await;
    }
    let killed = Instant::now();
    // SIGKILL: no close is handled; only the lease tells.
    drop(a);
    for client in [&mut bob, &mut carol] {
        expect_update(client, "presence:alice", "alice", "offline").await;
    }
    let after = killed.elapsed();
    // The lease (2 s) plus the grace (1 s), found by a sweep (every second).
    assert!(
        after >= Duration::from_millis(1_900) && after < Duration::from_millis(5_500),
        "offline came {after:?} after the kill"
    );
    for client in [&mut bob, &mut carol] {
        client.expect_silence(Duration::from_millis(1_500)).await;
    }
    assert_eq!(query(&mut bob, &["alice"]).await[0]["status"], "offline");
    assert!(redis_keys(&redis, "presence:u:alice").await.is_empty());
    // The dead node's set is gone; the survivors' (bob's, carol's) remain.
    assert_eq!(redis_keys(&redis, "presence:node:*").await.len(), 2);
}

#[tokio::test]
async fn while_redis_is_down_a_query_is_not_ready_and_signals_go_out_once_it_is_back() {
    let mut redis = RedisServer::start().await;
    let a = node(&redis);
    let mut bob = connect(&a, "bob").await;
    assert_eq!(query(&mut bob, &["bob"]).await[0]["status"], "online");
    redis.kill();
    let r#ref = bob
        .send(ClientMessage::PresenceQuery {
            user_ids: vec!["bob".into()],
        })
        .await;
    let error = bob.wait_op("error").await;
    assert_eq!(error.r#ref, Some(r#ref));
    assert_eq!(error.d["code"], "not_ready");
    // Alice connects during the outage: her signal waits and goes out afterwards.
    let _alice = connect(&a, "alice").await;
    redis.start_again().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let r#ref = bob
            .send(ClientMessage::PresenceQuery {
                user_ids: vec!["alice".into()],
            })
            .await;
        let reply = bob.next().await.unwrap();
        assert_eq!(reply.r#ref, Some(r#ref));
        if reply.op == "presence_state" && reply.d["users"][0]["status"] == "online" {
            break;
        }
        assert!(Instant::now() < deadline, "alice never online: {reply:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn signal(gw: &Gateway, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(gw.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_node_thought_dead_that_comes_back_counts_its_users_again() {
    let redis = RedisServer::start().await;
    let a = node(&redis);
    let b = node(&redis);
    let mut carol = watcher(&b, "carol", &["presence:alice"]).await;
    redis.wait_numsub("presence:alice", 1).await;
    let _alice = connect(&a, "alice").await;
    expect_update(&mut carol, "presence:alice", "alice", "online").await;
    // Stopped past its lease and the grace: b takes alice offline.
    signal(&a, "STOP");
    expect_update(&mut carol, "presence:alice", "alice", "offline").await;
    // Back: its sweep finds its lease gone and puts its connections back.
    signal(&a, "CONT");
    expect_update(&mut carol, "presence:alice", "alice", "online").await;
    carol.expect_silence(Duration::from_millis(1_500)).await;
    assert_eq!(query(&mut carol, &["alice"]).await[0]["status"], "online");
}
